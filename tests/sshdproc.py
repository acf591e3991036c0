"""The real OpenSSH sshd on loopback with difusor's rendered config, as the pod runs it: non-root."""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from difusor.models import SftpSpec
from difusor.render.sshd import render_sshd_config

from .conftest import require_binary

#: The account a root test run drops to, so that sshd runs unprivileged as in the pod. Not
#: `nobody`: sshd refuses it as a locked account.
UNPRIVILEGED = "difusor-sftp"


@dataclass(frozen=True)
class Sshd:
    """A running sshd: where to reach it, who may log in and with which key."""

    port: int
    user: str
    client_key: Path
    known_hosts: Path
    upload_dir: Path
    config: Path
    log: Path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _run_as() -> tuple[str, list[str]]:
    """The user sshd runs as and the command prefix that switches to it."""
    if os.geteuid() != 0:
        return pwd.getpwuid(os.geteuid()).pw_name, []
    setpriv = require_binary("setpriv")
    try:
        entry = pwd.getpwnam(UNPRIVILEGED)
    except KeyError:
        # Kept afterwards: concurrent test runs share it, and it has no password and no home.
        subprocess.run(
            [
                require_binary("useradd"),
                "--system",
                "--no-create-home",
                "--home-dir",
                "/nonexistent",
                "--shell",
                "/usr/sbin/nologin",
                "--password",
                "*",
                UNPRIVILEGED,
            ],
            check=True,
            timeout=60,
        )
        entry = pwd.getpwnam(UNPRIVILEGED)
    return UNPRIVILEGED, [
        setpriv,
        f"--reuid={entry.pw_uid}",
        f"--regid={entry.pw_gid}",
        "--clear-groups",
    ]


def _keygen(path: Path) -> None:
    subprocess.run(
        [require_binary("ssh-keygen"), "-q", "-t", "ed25519", "-N", "", "-f", str(path)],
        check=True,
        timeout=60,
    )


def _wait_for_port(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    for _ in range(300):
        if proc.poll() is not None:
            raise RuntimeError(f"sshd exited with {proc.returncode}: {log.read_text()}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"sshd did not listen on {port}: {log.read_text()}")


@contextmanager
def running_sshd(*, sftp: SftpSpec | None = None, plain: bool = False) -> Iterator[Sshd]:
    """sshd on 127.0.0.1 at a free port with the rendered config; killed when the block ends.

    Only the user, the port and the paths differ from the pod's config. Under root the process
    drops to an unprivileged user, so it is exactly the non-root sshd of the pod. `plain` runs
    sshd with its defaults instead (the benchmark's baseline).
    """
    sshd_bin = require_binary("sshd")
    user, prefix = _run_as()
    entry = pwd.getpwnam(user)
    base = Path(tempfile.mkdtemp(prefix="difusor-sshd-"))
    proc: subprocess.Popen[bytes] | None = None
    try:
        base.chmod(0o755)
        etc = base / "etc"
        run = base / "run"
        etc.mkdir()
        run.mkdir()
        # The content volume's layout: the agent's store lives at upload.parent.
        upload = base / "prep" / "incoming"
        upload.mkdir(parents=True)
        host_key = etc / "ssh_host_ed25519_key"
        _keygen(host_key)
        client_key = base / "client_ed25519"
        _keygen(client_key)
        authorized = etc / "authorized_keys"
        authorized.write_text(client_key.with_suffix(".pub").read_text())
        port = free_port()
        known_hosts = base / "known_hosts"
        known_hosts.write_text(f"[127.0.0.1]:{port} {host_key.with_suffix('.pub').read_text()}")
        for path in (host_key, run, upload):
            os.chown(path, entry.pw_uid, entry.pw_gid)
        config = etc / "sshd_config"
        rendered = (
            _plain_config(port, host_key, authorized, run / "sshd.pid")
            if plain
            else render_sshd_config(
                sftp or SftpSpec(authorized_keys_secret="keys"),
                port=port,
                listen_addresses=("127.0.0.1",),
                host_keys=(str(host_key),),
                authorized_keys_file=str(authorized),
                upload_dir=str(upload),
                pid_file=str(run / "sshd.pid"),
                user=user,
            )
        )
        config.write_text(rendered)
        log = base / "sshd.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [*prefix, sshd_bin, "-D", "-e", "-f", str(config)],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        _wait_for_port(port, proc, log)
        yield Sshd(port, user, client_key, known_hosts, upload, config, log)
    finally:
        if proc is not None:
            proc.kill()
            proc.wait(timeout=30)
        shutil.rmtree(base, ignore_errors=True)


def _plain_config(port: int, host_key: Path, authorized: Path, pid_file: Path) -> str:
    return (
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {host_key}\nPidFile {pid_file}\n"
        f"AuthorizedKeysFile {authorized}\nUsePAM no\nStrictModes no\n"
        "Subsystem sftp internal-sftp\n"
    )


def client_options(sshd: Sshd) -> list[str]:
    """ssh/sftp options that trust only this sshd's host key and offer only the client key."""
    return [
        "-o",
        "BatchMode=yes",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        f"UserKnownHostsFile={sshd.known_hosts}",
        "-o",
        "GlobalKnownHostsFile=/dev/null",
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "ConnectTimeout=30",
        "-F",
        "/dev/null",
        "-i",
        str(sshd.client_key),
    ]


def sftp_batch(
    sshd: Sshd, commands: Sequence[str], *, timeout: float = 600, options: Sequence[str] = ()
) -> subprocess.CompletedProcess[str]:
    """Runs `sftp -b` with these commands against the sshd (a failing command ends the batch);
    `options` go to sftp before the others (`-l` to limit its rate, for one)."""
    return subprocess.run(
        [
            require_binary("sftp"),
            *options,
            *client_options(sshd),
            "-P",
            str(sshd.port),
            "-b",
            "-",
            f"{sshd.user}@127.0.0.1",
        ],
        input="\n".join(commands) + "\n",
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
