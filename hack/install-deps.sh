#!/usr/bin/env bash
# Installs from Debian the real programs the tests drive (nginx, sshd/sftp, Varnish, openssl, wrk,
# Prometheus and promtool, GoAccess) and what builds the images and runs the real node (mmdebstrap,
# buildah, runc, nftables, socat) and what `difusor report` / `difusor diagram` need (Graphviz,
# poppler's pdftoppm for the report's tests, Pango, HarfBuzz and fonts for WeasyPrint), only
# those that are missing, without starting any of them as a system service.
set -euo pipefail

declare -A want=(
  [nginx]=nginx
  [sshd]=openssh-server
  [sftp]=openssh-client
  [varnishd]=varnish
  [openssl]=openssl
  [wrk]=wrk
  [unzip]=unzip
  [prometheus]=prometheus
  [promtool]=prometheus
  [mmdebstrap]=mmdebstrap
  [buildah]=buildah
  [runc]=runc
  [nft]=nftables
  [socat]=socat
  [ip]=iproute2
  [goaccess]=goaccess
  [dot]=graphviz
  [pdftoppm]=poppler-utils
)
# Libraries, modules and fonts (no command to look for): WeasyPrint loads Pango through ffi.
# libnginx-mod-http-lua: the rendered nginx.conf reads `current` with it (as in difusor-nginx).
libs=(libnginx-mod-http-lua libpango-1.0-0 libpangoft2-1.0-0 libharfbuzz-subset0 fonts-dejavu-core)
missing=()
for cmd in "${!want[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || [[ -x "/usr/sbin/$cmd" ]] || missing+=("${want[$cmd]}")
done
for pkg in "${libs[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]} == 0)); then
  echo "install-deps: ${!want[*]} already installed" >&2
  exit 0
fi
if [[ $EUID -ne 0 ]]; then
  echo "install-deps: need root to apt-get install: ${missing[*]}" >&2
  exit 1
fi
echo "install-deps: installing ${missing[*]}" >&2
# The tests start these programs themselves on loopback; keep the packages' services stopped.
policy=/usr/sbin/policy-rc.d
created_policy=0
if [[ ! -e $policy ]]; then
  printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && created_policy=1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# sort -u: one package can bring several of the commands (prometheus and promtool).
mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
((created_policy)) && rm -f "$policy"
echo "install-deps: done" >&2
