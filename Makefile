# difusor: one way to build, lint and test, locally and in CI (see README.md).
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

include hack/versions.env
# uv sync honours UV_PROJECT_ENVIRONMENT; so does everything here that runs from the venv.
VENV := $(or $(UV_PROJECT_ENVIRONMENT),$(CURDIR)/.venv)
PY := $(VENV)/bin/python
export DIFUSOR_CACHE ?= $(HOME)/.cache/difusor
GIVEN_PATH := $(PATH)
export PATH := $(VENV)/bin:$(DIFUSOR_CACHE)/bin:$(PATH)
PYTEST_ARGS ?=

.PHONY: help
help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

.PHONY: venv
venv: ## create .venv from uv.lock (reproducible), with the pinned uv in the cache
	@PATH="$(GIVEN_PATH)" bash hack/bootstrap-uv.sh >/dev/null
	$(DIFUSOR_CACHE)/bin/uv sync --frozen --quiet

.PHONY: deps
deps: ## install nginx, OpenSSH, Varnish, openssl, wrk, mmdebstrap, buildah, runc, nftables, socat from Debian when missing
	bash hack/install-deps.sh

.PHONY: k8s-bins
k8s-bins: venv ## build (or reuse) the pinned control-plane binaries in $(DIFUSOR_CACHE)/bin
	bash hack/build-k8s.sh >/dev/null

.PHONY: node-bins
node-bins: ## build (or reuse) containerd, kubelet, kube-proxy, the CNI plugins and the pause image
	bash hack/build-node.sh >/dev/null

.PHONY: setup
setup: venv deps k8s-bins node-bins ## everything the tests need (the node tier builds the images)

.PHONY: lint
lint: venv ## ruff, ruff format --check, mypy strict, import-linter
	$(VENV)/bin/ruff check operator tests bench hack
	$(VENV)/bin/ruff format --check operator tests bench hack
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

.PHONY: fmt
fmt: venv ## format the code
	$(VENV)/bin/ruff check --fix operator tests bench hack
	$(VENV)/bin/ruff format operator tests bench hack

.PHONY: crds
crds: venv ## regenerate crds/ from the pydantic models
	$(VENV)/bin/difusor crds -o crds

.PHONY: cluster-up
cluster-up: venv k8s-bins ## start the local control plane (etcd, apiserver, controllers, kwok) on loopback
	bash hack/cluster.sh up

.PHONY: cluster-down
cluster-down: ## stop the local control plane
	bash hack/cluster.sh down

.PHONY: test
test: setup lint ## everything: lint, unit, cluster, e2e and node tests
	$(PY) -m pytest $(PYTEST_ARGS)

.PHONY: test-unit
test-unit: venv ## only the tests that need no process nor cluster
	$(PY) -m pytest -m unit $(PYTEST_ARGS)

.PHONY: demo
demo: venv deps k8s-bins ## run it locally: control plane, operator, publication on host pods, cuts over SFTP
	$(PY) hack/demo.py up

.PHONY: demo-down
demo-down: venv ## stop what `make demo` started
	$(PY) hack/demo.py down

.PHONY: manifests
manifests: ## copy crds/ into the chart and render manifests/install.yaml from it
	bash hack/render-manifests.sh

IMAGE ?= ghcr.io/difusor/difusor:dev
NGINX_IMAGE ?= ghcr.io/difusor/difusor-nginx:dev
export IMAGE NGINX_IMAGE
.PHONY: image
image: ## build the images (difusor, nginx): buildah on a Debian base from mmdebstrap, or Docker
	bash hack/image.sh

.PHONY: node-up
node-up: venv k8s-bins ## join a real node (containerd, kubelet, kube-proxy in a network namespace) to the local control plane
	bash hack/node.sh up

.PHONY: node-down
node-down: ## stop the real node and remove what it made
	bash hack/node.sh down

.PHONY: kind-up
kind-up: ## kind cluster with Traefik, the images, the chart and a sample publication; needs Docker
	bash hack/kind.sh up

.PHONY: kind-down
kind-down: ## delete the kind cluster
	bash hack/kind.sh down

.PHONY: kind-test
kind-test: ## the node-tier tests (and the rest) against the kind cluster (after kind-up)
	PYTEST_ARGS="$(PYTEST_ARGS)" bash hack/kind.sh test
