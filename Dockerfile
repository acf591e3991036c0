# syntax=docker/dockerfile:1
# One image for the operator, the web pods' agent and their sftp container (sshd), and a second
# target with Debian's nginx for the web pods' nginx container:
#   make image                       (hack/image.sh: buildah on a local Debian base, or Docker)
#   docker build -t ghcr.io/difusor/difusor:0.1.0 .
#   docker build --target nginx -t ghcr.io/difusor/difusor-nginx:0.1.0 .
# Both final images are one flattened layer of Debian packages (python3 and openssh-server, or
# nginx) with apt and dpkg removed, plus difusor's venv: no compiler, no package manager, user
# 10001. The python3 of the builder and of the final image are the same Debian package, so the
# venv's interpreter link (/usr/bin/python3) holds.
# BASE_IMAGE is any Debian bookworm root file system; hack/image.sh passes one it made with
# mmdebstrap from Debian's archive when there is no registry to pull debian:bookworm-slim from.
ARG BASE_IMAGE=docker.io/library/debian:bookworm-slim

FROM ${BASE_IMAGE} AS builder
ARG UV_VERSION=0.13.9
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 UV_NO_CACHE=1 DEBIAN_FRONTEND=noninteractive
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
 && rm -rf /var/lib/apt/lists/*
# The optional build secret `ca-certificates` is the build machine's CA bundle, for networks whose
# egress re-signs TLS (hack/image.sh passes it); it is mounted for these steps only, never stored.
RUN --mount=type=secret,id=ca-certificates \
    if [ -s /run/secrets/ca-certificates ]; then \
      export PIP_CERT=/run/secrets/ca-certificates SSL_CERT_FILE=/run/secrets/ca-certificates; fi \
 && python3 -m venv /opt/uv && /opt/uv/bin/pip install "uv==${UV_VERSION}"
WORKDIR /src
COPY pyproject.toml uv.lock ./
COPY operator ./operator
# The wheel's long description is not needed in the image: an empty README keeps documentation
# edits from rebuilding it.
RUN touch README.md
# uv.lock becomes a venv of wheels only (hashes checked) plus difusor's own wheel, compiled: the
# root file system is read-only, so without its .pyc files every start of a container would
# compile the kubernetes client again (minutes on a busy node, past the liveness probe's patience).
RUN --mount=type=secret,id=ca-certificates \
    if [ -s /run/secrets/ca-certificates ]; then \
      export PIP_CERT=/run/secrets/ca-certificates SSL_CERT_FILE=/run/secrets/ca-certificates; fi \
 && /opt/uv/bin/uv export --frozen --no-dev --no-emit-project --format requirements-txt -o /tmp/requirements.txt \
 && /opt/uv/bin/uv build --wheel --python /usr/bin/python3 --out-dir /tmp/dist \
 && python3 -m venv /opt/difusor \
 && /opt/difusor/bin/pip install --require-hashes --only-binary=:all: --no-deps -r /tmp/requirements.txt \
 && /opt/difusor/bin/pip install --no-deps /tmp/dist/difusor-*.whl \
 && /opt/difusor/bin/pip uninstall --yes pip \
 && /opt/difusor/bin/python -m compileall -q /opt/difusor \
 && /opt/difusor/bin/difusor --help >/dev/null

# The runtime root file systems: Debian packages, the user of the pods, then the package manager
# goes (apt purged, dpkg's programs deleted; its status file stays for image scanners).
# sshd for the institute's uploads (openssh-sftp-server comes with it). The package's generated
# host keys are removed: the pods mount the operator's host-key Secret, the same on every pod.
# Not pinned: bookworm's security updates replace the exact version, and a pin would break the
# build instead of patching sshd.
FROM ${BASE_IMAGE} AS difusor-rootfs
# hadolint ignore=DL3008
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 openssh-server \
 && rm -rf /etc/ssh/ssh_host_*_key* \
 && groupadd --gid 10001 prep \
 && useradd --uid 10001 --gid 10001 --home-dir /srv/prep --no-create-home --shell /usr/sbin/nologin prep \
 && dpkg --purge --force-remove-essential apt \
 && rm -rf /usr/bin/dpkg* /usr/sbin/dpkg* /usr/bin/apt* /usr/lib/apt /etc/apt /var/lib/apt \
    /var/cache/apt /var/cache/debconf/*-old /var/log/apt /var/log/dpkg.log

FROM ${BASE_IMAGE} AS nginx-rootfs
# hadolint ignore=DL3008
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends nginx libnginx-mod-http-lua \
 && rm -rf /var/log/nginx/* /var/lib/nginx/* /etc/nginx/sites-enabled/* \
 && groupadd --gid 10001 prep \
 && useradd --uid 10001 --gid 10001 --home-dir /srv/prep --no-create-home --shell /usr/sbin/nologin prep \
 && dpkg --purge --force-remove-essential apt \
 && rm -rf /usr/bin/dpkg* /usr/sbin/dpkg* /usr/bin/apt* /usr/lib/apt /etc/apt /var/lib/apt \
    /var/cache/apt /var/cache/debconf/*-old /var/log/apt /var/log/dpkg.log

# nginx for the web pods' nginx container: the same Debian nginx the host-pod tests run, with its
# lua module (the rendered nginx.conf reads `current` with one readlink per request through it),
# started by the pod's command with the rendered nginx.conf.
FROM scratch AS nginx
COPY --from=nginx-rootfs / /
LABEL org.opencontainers.image.title="difusor-nginx" \
      org.opencontainers.image.description="Debian's nginx, non-root, for the web pods of a PREP difusor" \
      org.opencontainers.image.source="https://github.com/difusor/difusor" \
      org.opencontainers.image.licenses="BSD-2-Clause"
ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
USER 10001:10001
WORKDIR /tmp
STOPSIGNAL SIGQUIT
CMD ["nginx", "-g", "daemon off;"]

FROM scratch
COPY --from=difusor-rootfs / /
COPY --from=builder /opt/difusor /opt/difusor
LABEL org.opencontainers.image.title="difusor" \
      org.opencontainers.image.description="Operator, agent and SFTP endpoint of a PREP difusor" \
      org.opencontainers.image.source="https://github.com/difusor/difusor" \
      org.opencontainers.image.licenses="Apache-2.0"
# The uid/gid match RUN_AS_USER of the pods (operator/difusor/render/children.py); the user name
# is the default SFTP login (spec.sftp.user), since a non-root sshd logs in only its own user.
ENV PATH=/opt/difusor/bin:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 10001:10001
WORKDIR /tmp
ENTRYPOINT ["difusor"]
CMD ["operator"]
