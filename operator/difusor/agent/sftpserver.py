"""`difusor sftp-server`: the sftp container's entry point; puts the host keys in place, runs sshd."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from difusor.render.children import CONFIG_DIR, HOST_KEYS_DIR
from difusor.render.files import HOST_KEY_NAMES, SSHD_RUNTIME_DIR

#: sshd refuses host keys that a group can read, and a Secret volume with fsGroup is
#: group-readable: the entry point copies them to SSHD_RUNTIME_DIR (an emptyDir) with 0600.


def prepare_host_keys(source: Path, target: Path) -> list[Path]:
    """Copy the private host keys with mode 0600 into a directory only this user can read."""
    target.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(target, 0o700)
    copied = []
    for name in HOST_KEY_NAMES:
        key = source / name
        if not key.exists():
            continue
        dest = target / name
        dest.unlink(missing_ok=True)
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(key.read_bytes())
        copied.append(dest)
    if not copied:
        raise FileNotFoundError(f"no host key in {source}")
    return copied


def run(
    *,
    keys_from: Path = Path(HOST_KEYS_DIR),
    config: Path = Path(CONFIG_DIR) / "sshd_config",
) -> int:
    """Replace this process with sshd in the foreground, logging to stderr."""
    prepare_host_keys(keys_from, Path(SSHD_RUNTIME_DIR))
    sshd = shutil.which("sshd") or "/usr/sbin/sshd"
    os.execv(sshd, [sshd, "-D", "-e", "-f", str(config)])
