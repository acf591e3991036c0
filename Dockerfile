# syntax=docker/dockerfile:1
# One image for the operator, the web pods' agent and their sftp container (sshd):
#   docker build -t ghcr.io/difusor/difusor:0.1.0 .        (or: make image)
# The builder turns uv.lock into a venv of wheels only (hashes checked) plus difusor's own wheel;
# the final stage has Python, OpenSSH's sshd and that venv, and no compiler nor build tool.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
ARG UV_VERSION=0.13.9
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 UV_NO_CACHE=1
RUN python -m pip install "uv==${UV_VERSION}"
WORKDIR /src
COPY pyproject.toml uv.lock README.md ./
COPY operator ./operator
RUN uv export --frozen --no-dev --no-emit-project --format requirements-txt -o /tmp/requirements.txt \
 && uv build --wheel --out-dir /tmp/dist \
 && python -m venv /opt/difusor \
 && /opt/difusor/bin/pip install --require-hashes --only-binary=:all: --no-deps -r /tmp/requirements.txt \
 && /opt/difusor/bin/pip install --no-deps /tmp/dist/difusor-*.whl \
 && /opt/difusor/bin/pip uninstall --yes pip \
 && /opt/difusor/bin/difusor --help >/dev/null

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="difusor" \
      org.opencontainers.image.description="Operator, agent and SFTP endpoint of a PREP difusor" \
      org.opencontainers.image.source="https://github.com/difusor/difusor" \
      org.opencontainers.image.licenses="Apache-2.0"
# sshd for the institute's uploads (openssh-sftp-server comes with it; Debian's openssh-server
# also depends on openssh-client). The package's generated host keys are removed: the pods mount
# the operator's host-key Secret, the same on every pod. Not pinned: bookworm's security updates
# replace the exact version, and a pin would break the build instead of patching sshd.
# hadolint ignore=DL3008
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends openssh-server \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/* /var/log/apt /var/log/dpkg.log /etc/ssh/ssh_host_*_key* \
 && groupadd --gid 10001 prep \
 && useradd --uid 10001 --gid 10001 --home-dir /srv/prep --no-create-home --shell /usr/sbin/nologin prep
# The uid/gid match RUN_AS_USER of the pods (operator/difusor/render/children.py); the user name
# is the default SFTP login (spec.sftp.user), since a non-root sshd logs in only its own user.
COPY --from=builder /opt/difusor /opt/difusor
ENV PATH=/opt/difusor/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 10001:10001
WORKDIR /tmp
ENTRYPOINT ["difusor"]
CMD ["operator"]
