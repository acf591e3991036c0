#!/usr/bin/env bash
# Installs the pinned uv into the cache's bin directory unless it is already there.
#
# uv goes into a venv of its own under the cache (the system's Python stays untouched; Debian's
# python3 refuses `pip install` outside a venv) and is linked into $DIFUSOR_CACHE/bin, which the
# Makefile puts on PATH. Prints the path of uv on stdout.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.env
source "$HERE/versions.env"
CACHE="${DIFUSOR_CACHE:-$HOME/.cache/difusor}"
BIN="$CACHE/bin"
VENV="$CACHE/uv-venv"
log() { echo "bootstrap-uv: $*" >&2; }

if [[ -x "$BIN/uv" ]] && "$BIN/uv" --version 2>/dev/null | grep -qx "uv $UV_VERSION.*"; then
  echo "$BIN/uv"
  exit 0
fi
# The Makefile calls this with the PATH it was given, so python3 is never the project's own venv.
python="$(command -v python3 || true)"
if [[ -n "$python" ]] && ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  python=""
fi
[[ -n "$python" ]] || { log "need python3 >= 3.11 (apt-get install python3)"; exit 1; }
mkdir -p "$BIN"
rm -rf "$VENV"
if ! "$python" -m venv "$VENV" 2>/dev/null; then
  if [[ $EUID -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
    log "python3 cannot make a venv; installing Debian's python3-venv"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
    rm -rf "$VENV"
    "$python" -m venv "$VENV"
  else
    log "$python cannot make a venv: install python3-venv (as root: apt-get install python3-venv)"
    exit 1
  fi
fi
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "uv==$UV_VERSION"
ln -sfn "$VENV/bin/uv" "$BIN/uv"
log "uv $UV_VERSION installed in $BIN"
echo "$BIN/uv"
