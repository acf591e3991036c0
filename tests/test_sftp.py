"""Uploads through the real OpenSSH sshd and sftp with the rendered config, then the intake."""

from __future__ import annotations

import hashlib
import os
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from difusor.ingest.scan import Intake
from difusor.ingest.store import Store, Stored
from difusor.models import Completion, IngestMode, IngestSpec

from .archives import make_tar, make_zip, site_files
from .conftest import require_binary
from .sshdproc import Sshd, client_options, running_sshd, sftp_batch

pytestmark = pytest.mark.e2e

NOW = datetime(2024, 6, 3, 2, 0, tzinfo=UTC)


@pytest.fixture
def sshd() -> Iterator[Sshd]:
    require_binary("sftp")
    with running_sshd() as server:
        yield server
        log = server.log.read_text()
    assert "Unsupported option" not in log
    assert "Deprecated option" not in log


def store_of(sshd: Sshd) -> Store:
    store = Store(sshd.upload_dir.parent)
    store.recover()
    return store


def upload(sshd: Sshd, archive: Path, *, rename: bool = True) -> None:
    """Uploads as the usual clients do: a temporary name, renamed when the transfer is done."""
    commands = (
        [f"put {archive} .{archive.name}.part", f"rename .{archive.name}.part {archive.name}"]
        if rename
        else [f"put {archive} {archive.name}"]
    )
    result = sftp_batch(sshd, commands)
    assert result.returncode == 0, result.stderr


def ssh(sshd: Sshd, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [require_binary("ssh"), *client_options(sshd), "-p", str(sshd.port), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        stdin=subprocess.DEVNULL,
    )


def served(store: Store) -> dict[str, bytes]:
    return {
        p.relative_to(store.current).as_posix(): p.read_bytes()
        for p in store.current.rglob("*")
        if p.is_file() and ".prep" not in p.relative_to(store.current).parts
    }


def ingest_all(store: Store, ingest: IngestSpec) -> list[object]:
    return list(Intake(store).run(ingest=ingest, pinned=None, now=NOW))


def test_flat_zip_uploaded_with_put_and_rename_is_stored_and_served_unmodified(
    sshd: Sshd, tmp_path: Path
) -> None:
    store = store_of(sshd)
    files = site_files()
    upload(sshd, make_zip(tmp_path / "20240602_2040_PREP.zip", files))
    [outcome] = ingest_all(store, IngestSpec())
    assert isinstance(outcome, Stored)
    store.swap_current(outcome.cut)
    assert served(store) == files
    assert not any(store.incoming.iterdir())


def test_tar_gz_wrapped_in_a_folder_is_stored_without_the_folder(
    sshd: Sshd, tmp_path: Path
) -> None:
    store = store_of(sshd)
    files = site_files()
    upload(sshd, make_tar(tmp_path / "20240602_2040-PREP.tar.gz", files, wrap="PREP_2024"))
    [outcome] = ingest_all(store, IngestSpec())
    assert isinstance(outcome, Stored)
    store.swap_current(outcome.cut)
    assert served(store) == files


def test_overlay_upload_changes_only_what_it_carries(sshd: Sshd, tmp_path: Path) -> None:
    store = store_of(sshd)
    base = site_files()
    upload(sshd, make_zip(tmp_path / "20240602_2040.zip", base))
    [first] = ingest_all(store, IngestSpec(mode=IngestMode.OVERLAY))
    assert isinstance(first, Stored)
    store.swap_current(first.cut)
    change = {"json/main.json": b'{"horaCorte": "2100"}'}
    upload(sshd, make_zip(tmp_path / "20240602_2100.zip", change, wrap="delta"))
    [second] = ingest_all(store, IngestSpec(mode=IngestMode.OVERLAY))
    assert isinstance(second, Stored)
    store.swap_current(second.cut)
    assert served(store) == base | change


def test_half_uploaded_temporary_file_is_never_taken(sshd: Sshd, tmp_path: Path) -> None:
    store = store_of(sshd)
    archive = make_zip(tmp_path / "20240602_2040.zip", site_files())
    result = sftp_batch(sshd, [f"put {archive} .{archive.name}.part"])
    assert result.returncode == 0, result.stderr
    assert ingest_all(store, IngestSpec()) == []
    assert store.cuts() == []


def test_checksum_file_completion_waits_for_the_checksum_upload(sshd: Sshd, tmp_path: Path) -> None:
    store = store_of(sshd)
    spec = IngestSpec(completion=Completion.CHECKSUM_FILE)
    archive = make_zip(tmp_path / "20240602_2040.zip", site_files())
    upload(sshd, archive, rename=False)
    intake = Intake(store)
    assert intake.run(ingest=spec, pinned=None, now=NOW) == []
    checksum = tmp_path / f"{archive.name}.sha256"
    checksum.write_text(f"{hashlib.sha256(archive.read_bytes()).hexdigest()}  {archive.name}\n")
    upload(sshd, checksum, rename=False)
    [outcome] = intake.run(ingest=spec, pinned=None, now=NOW)
    assert isinstance(outcome, Stored)


def test_a_shell_command_is_not_run(sshd: Sshd, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    result = ssh(sshd, f"{sshd.user}@127.0.0.1", f"id; touch {marker}; echo PWNED")
    assert "PWNED" not in result.stdout
    assert "uid=" not in result.stdout
    assert not marker.exists()


def test_a_terminal_is_refused(sshd: Sshd) -> None:
    result = ssh(sshd, "-tt", f"{sshd.user}@127.0.0.1")
    assert "PTY allocation request failed" in result.stderr


def test_tcp_forwarding_is_refused(sshd: Sshd) -> None:
    local = ssh(sshd, "-W", f"127.0.0.1:{sshd.port}", f"{sshd.user}@127.0.0.1")
    assert local.returncode != 0
    assert "administratively prohibited" in local.stderr
    remote = ssh(
        sshd,
        "-N",
        "-o",
        "ExitOnForwardFailure=yes",
        "-R",
        "127.0.0.1:0:127.0.0.1:22",
        f"{sshd.user}@127.0.0.1",
    )
    assert remote.returncode != 0
    assert "forwarding failed" in remote.stderr


def test_password_and_keyboard_interactive_logins_are_refused(sshd: Sshd) -> None:
    result = ssh(
        sshd,
        "-o",
        "PubkeyAuthentication=no",
        "-o",
        "PreferredAuthentications=password,keyboard-interactive",
        f"{sshd.user}@127.0.0.1",
    )
    assert result.returncode == 255
    assert "Permission denied (publickey)" in result.stderr


def test_links_and_folders_cannot_be_made_over_sftp(sshd: Sshd, tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("a")
    assert sftp_batch(sshd, [f"put {tmp_path / 'a.txt'} a.txt"]).returncode == 0
    for command in ("symlink a.txt s", "ln a.txt h", "mkdir sub"):
        result = sftp_batch(sshd, [command])
        assert result.returncode != 0, command
    assert sorted(os.listdir(sshd.upload_dir)) == ["a.txt"]


def test_changed_authorized_keys_take_effect_without_restarting_sshd(
    sshd: Sshd, tmp_path: Path
) -> None:
    pid_before = (sshd.config.parent.parent / "run" / "sshd.pid").read_text()
    new_key = tmp_path / "new_ed25519"
    subprocess.run(
        [require_binary("ssh-keygen"), "-q", "-t", "ed25519", "-N", "", "-f", str(new_key)],
        check=True,
        timeout=60,
    )
    authorized = sshd.config.parent / "authorized_keys"
    # As the kubelet updates a Secret volume: a new file swapped in by rename.
    staged = authorized.with_name("authorized_keys.new")
    staged.write_text(new_key.with_suffix(".pub").read_text())
    os.replace(staged, authorized)
    assert sftp_batch(sshd, ["pwd"]).returncode != 0
    rotated = Sshd(
        sshd.port,
        sshd.user,
        new_key,
        sshd.known_hosts,
        sshd.upload_dir,
        sshd.config,
        sshd.log,
    )
    assert sftp_batch(rotated, ["pwd"]).returncode == 0
    assert (sshd.config.parent.parent / "run" / "sshd.pid").read_text() == pid_before
