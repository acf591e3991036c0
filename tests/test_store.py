"""The versioned store: snapshots, overlays, hard links, manifests, retention, swaps, recovery."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from difusor.ingest import store as store_module
from difusor.ingest.store import Quarantined, Store, Stored
from difusor.logic.archive import (
    META_DIR,
    ManifestEntry,
    Reason,
    canonical_manifest,
    manifest_digest,
)
from difusor.models import IngestMode, IngestSpec
from difusor.render.nginx import SWAP_COUNTER

from .archives import StreamedStore, make_tar, make_zip, site_files
from .conftest import REPO, require_binary

NOW = datetime(2024, 6, 3, 2, 0, tzinfo=UTC)
FIRST = "20240602_2040"
SECOND = "20240602_2100"
STEPS = ("extracting", "extracted", "composed", "manifest", "synced", "renamed", "cleaned")


def files_on_disk(version: Path) -> dict[str, bytes]:
    """Every file of a version but difusor's own, by path."""
    return {
        p.relative_to(version).as_posix(): p.read_bytes()
        for p in version.rglob("*")
        if p.is_file() and META_DIR not in p.relative_to(version).parts
    }


def assert_manifest_matches(store: Store, cut: str) -> None:
    """The manifest lists exactly the files on disk, with their sizes and SHA-256."""
    entries = store.manifest(cut)
    on_disk = files_on_disk(store.versions / cut)
    assert {e.path for e in entries} == set(on_disk)
    for e in entries:
        assert e.size == len(on_disk[e.path])
        assert e.sha256 == hashlib.sha256(on_disk[e.path]).hexdigest()
    document = json.loads((store.versions / cut / META_DIR / "manifest.json").read_text())
    assert document["digest"] == manifest_digest(entries)
    record = store.cut_record(cut)
    assert record["id"] == cut
    assert record["manifestDigest"] == document["digest"]


def stored(store: Store, archive: Path, **ingest: object) -> Stored:
    outcome = store.process(archive, ingest=IngestSpec.model_validate(ingest), now=NOW)
    assert isinstance(outcome, Stored), outcome
    return outcome


@pytest.fixture(params=["at the rename", "while arriving"])
def store(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Store]:
    """An empty store; archives extracted at the rename or as they arrive (StreamedStore)."""
    store = (StreamedStore if request.param == "while arriving" else Store)(tmp_path / "prep")
    store.recover()
    yield store
    if isinstance(store, StreamedStore) and "killed" not in request.node.name:
        # Every archive these tests store is a good one: each was extracted while it arrived.
        assert store.used > 0


@pytest.mark.unit
def test_flat_zip_snapshot_is_stored_with_manifest_and_cut_record(store: Store) -> None:
    files = site_files(cut=FIRST)
    outcome = stored(store, make_zip(store.incoming / f"{FIRST}_PREP.zip", files))
    assert files_on_disk(store.versions / FIRST) == files
    assert_manifest_matches(store, FIRST)
    assert outcome.files == len(files)
    assert outcome.bytes == sum(len(d) for d in files.values())
    assert outcome.time == "2024-06-02T20:40:00-06:00"
    assert outcome.manifest_digest.startswith("sha256:")
    assert not any(store.incoming.iterdir())


@pytest.mark.unit
def test_tar_gz_wrapped_in_one_folder_is_stored_without_the_folder(store: Store) -> None:
    files = site_files(cut=FIRST)
    stored(store, make_tar(store.incoming / f"{FIRST}.tar.gz", files, wrap="PREP_MICH_2024"))
    assert files_on_disk(store.versions / FIRST) == files
    assert_manifest_matches(store, FIRST)


@pytest.mark.unit
def test_plain_tar_snapshot_is_stored(store: Store) -> None:
    files = site_files(cut=FIRST)
    stored(store, make_tar(store.incoming / f"{FIRST}.tar", files, gz=False))
    assert files_on_disk(store.versions / FIRST) == files


@pytest.mark.unit
def test_files_unchanged_from_the_active_version_are_hard_links(store: Store) -> None:
    stored(store, make_zip(store.incoming / f"{FIRST}.zip", site_files(cut=FIRST)))
    store.swap_current(FIRST)
    changed = site_files(cut=FIRST)
    changed["json/main.json"] = b'{"horaCorte": "21:00"}'
    stored(store, make_zip(store.incoming / f"{SECOND}.zip", changed, wrap="PREP"))
    for path in changed:
        old = os.stat(store.versions / FIRST / path)
        new = os.stat(store.versions / SECOND / path)
        assert (old.st_ino == new.st_ino) is (path != "json/main.json")
    assert files_on_disk(store.versions / SECOND) == changed
    assert files_on_disk(store.versions / FIRST) == site_files(cut=FIRST)


@pytest.mark.unit
def test_overlay_applies_changes_and_deletions_on_top_of_the_active_version(
    store: Store,
) -> None:
    base = site_files(cut=FIRST)
    stored(store, make_zip(store.incoming / f"{FIRST}.zip", base))
    store.swap_current(FIRST)
    overlay = {
        "json/main.json": b'{"horaCorte": "21:00"}',
        "json/nuevo.json": b"[]",
        ".prep-delete": b"# gone\ndatos\njson/distritos/05.json\n",
    }
    outcome = stored(
        store, make_tar(store.incoming / f"{SECOND}.tar.gz", overlay, wrap="x"), mode="overlay"
    )
    expected = {
        k: v for k, v in base.items() if not k.startswith("datos/") and not k.endswith("05.json")
    }
    expected |= {"json/main.json": overlay["json/main.json"], "json/nuevo.json": b"[]"}
    assert files_on_disk(store.versions / SECOND) == expected
    assert_manifest_matches(store, SECOND)
    assert outcome.files == len(expected)
    assert files_on_disk(store.versions / FIRST) == base
    assert (
        os.stat(store.versions / SECOND / "index.html").st_ino
        == os.stat(store.versions / FIRST / "index.html").st_ino
    )


@pytest.mark.unit
def test_overlay_replacing_a_file_by_a_folder_drops_the_file(store: Store) -> None:
    stored(store, make_zip(store.incoming / f"{FIRST}.zip", {"a": b"1", "b/c": b"2"}))
    store.swap_current(FIRST)
    stored(
        store,
        make_zip(store.incoming / f"{SECOND}.zip", {"a/inner": b"3", "b": b"4"}),
        mode=IngestMode.OVERLAY,
    )
    assert files_on_disk(store.versions / SECOND) == {"a/inner": b"3", "b": b"4"}


@pytest.mark.unit
def test_swap_current_points_the_relative_link_at_the_new_version(store: Store) -> None:
    stored(store, make_zip(store.incoming / f"{FIRST}.zip", site_files(cut=FIRST)))
    stored(store, make_zip(store.incoming / f"{SECOND}.zip", site_files(cut=SECOND)))
    store.swap_current(FIRST)
    store.swap_current(SECOND)
    assert os.readlink(store.current) == f"versions/{SECOND}"
    assert store.active_cut() == SECOND
    assert not [p for p in store.root.iterdir() if p.name.startswith(".current")]
    with pytest.raises(FileNotFoundError):
        store.swap_current("20240602_2359")


@pytest.mark.unit
def test_a_big_stored_archive_leaves_incoming_at_once_and_its_blocks_are_freed_after(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    later: list[Callable[[], None]] = []

    class Later:
        """A thread that runs when the test says."""

        def __init__(self, *, target: Callable[..., None], kwargs: dict[str, Any], **_: Any):
            self.run = functools.partial(target, **kwargs)

        def start(self) -> None:
            later.append(self.run)

    monkeypatch.setattr(store_module, "FREED_APART", 1)
    monkeypatch.setattr(store_module, "threading", SimpleNamespace(Thread=Later))
    archive = make_zip(store.incoming / f"{FIRST}.zip", site_files(cut=FIRST))
    stored(store, archive)
    trash = store.versions / f".{archive.name}.stored.partial"
    assert not archive.exists()
    assert trash.is_file()
    assert store.cuts() == [FIRST]
    # A crash before the blocks were freed leaves the work file for recover().
    assert store.recover() == [f"removed unfinished {trash.name}"]
    assert sorted(p.name for p in store.versions.iterdir()) == [FIRST]
    [free] = later
    free()  # the removal finds nothing left to remove
    stored(store, make_zip(store.incoming / f"{SECOND}.zip", site_files(cut=SECOND)))
    assert (store.versions / f".{SECOND}.zip.stored.partial").is_file()
    later.pop()()
    assert sorted(p.name for p in store.versions.iterdir()) == [FIRST, SECOND]


def _swaps(store: Store) -> tuple[int, int]:
    """The swap counter's value and inode."""
    path = store.root / SWAP_COUNTER
    return int.from_bytes(path.read_bytes(), "little"), path.stat().st_ino


@pytest.mark.unit
def test_each_swap_bumps_the_counter_nginx_has_mapped_in_place(store: Store) -> None:
    stored(store, make_zip(store.incoming / f"{FIRST}.zip", site_files(cut=FIRST)))
    stored(store, make_zip(store.incoming / f"{SECOND}.zip", site_files(cut=SECOND)))
    count, inode = _swaps(store)
    store.swap_current(FIRST)
    store.swap_current(SECOND)
    assert _swaps(store) == (count + 2, inode)
    (store.root / SWAP_COUNTER).write_bytes((2**32 - 1).to_bytes(4, "little"))
    store.swap_current(FIRST)
    assert _swaps(store) == (0, inode)
    assert store.recover() == []
    assert _swaps(store) == (0, inode)


@pytest.mark.unit
def test_a_missing_or_short_swap_counter_is_replaced_whole(store: Store) -> None:
    stored(store, make_zip(store.incoming / f"{FIRST}.zip", site_files(cut=FIRST)))
    counter = store.root / SWAP_COUNTER
    counter.unlink()
    (store.root / f"{SWAP_COUNTER}.99.tmp").write_bytes(b"\0")
    assert store.recover() == [
        f"removed temporary file {SWAP_COUNTER}.99.tmp",
        f"created the swap counter {SWAP_COUNTER}",
    ]
    assert counter.read_bytes() == (1).to_bytes(4, "little")
    counter.write_bytes(b"\x07")
    inode = counter.stat().st_ino
    store.swap_current(FIRST)
    assert counter.read_bytes() == (1).to_bytes(4, "little")
    assert counter.stat().st_ino != inode
    assert sorted(p.name for p in store.root.iterdir() if p.name.startswith(SWAP_COUNTER)) == [
        SWAP_COUNTER
    ]


@pytest.mark.unit
def test_retention_keeps_the_newest_and_never_the_active_or_pinned(store: Store) -> None:
    cuts = [f"20240602_{h:02d}00" for h in range(10, 22)]
    for cut in cuts:
        stored(store, make_zip(store.incoming / f"{cut}.zip", site_files(cut=cut)))
    store.swap_current(cuts[3])
    removed = store.prune(keep=4, protected=[cuts[0], None])
    assert store.cuts() == sorted([cuts[0], cuts[3], cuts[-1], cuts[-2]])
    assert sorted(removed) == sorted(set(cuts) - set(store.cuts()))
    assert not [p for p in store.versions.iterdir() if p.name.endswith(".partial")]


@pytest.mark.unit
def test_recovery_removes_leftovers_and_versions_without_a_valid_manifest(store: Store) -> None:
    stored(store, make_zip(store.incoming / f"{FIRST}.zip", site_files(cut=FIRST)))
    store.swap_current(FIRST)
    (store.versions / f"{SECOND}.partial" / "tree").mkdir(parents=True)
    broken = store.versions / "20240602_2120"
    (broken / META_DIR).mkdir(parents=True)
    (broken / META_DIR / "manifest.json").write_text('{"files": [{"path": "a"')
    os.symlink("versions/x", store.root / ".current.123")
    done = store.recover()
    assert len(done) == 3
    assert sorted(p.name for p in store.versions.iterdir()) == [FIRST]
    assert store.active_cut() == FIRST
    assert store.recover() == []


CRASHING_INGEST = """
import sys
from datetime import UTC, datetime
from pathlib import Path
from difusor.ingest.store import Store
from difusor.models import IngestSpec

root, archive, stop, mode = sys.argv[1:5]

def hook(step: str) -> None:
    if step == stop:
        print(step, flush=True)
        sys.stdin.read()

store = Store(Path(root))
store.recover()
store.process(Path(archive), ingest=IngestSpec(mode=mode), now=datetime.now(UTC), hook=hook)
print("finished", flush=True)
"""


@pytest.mark.e2e
@pytest.mark.parametrize("mode", ["snapshot", "overlay"])
@pytest.mark.parametrize("step", STEPS)
def test_ingest_killed_at_any_step_recovers_to_a_whole_version_or_none(
    store: Store, step: str, mode: str
) -> None:
    stored(store, make_zip(store.incoming / f"{FIRST}.zip", site_files(cut=FIRST)))
    store.swap_current(FIRST)
    files = site_files(cut=SECOND, seed=1)
    archive = make_tar(store.incoming / f"{SECOND}.tar.gz", files, wrap="PREP")
    proc = subprocess.Popen(
        [sys.executable, "-c", CRASHING_INGEST, str(store.root), str(archive), step, mode],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == step
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL

    store.recover()
    assert not [p for p in store.versions.iterdir() if p.name.endswith(".partial")]
    assert store.active_cut() == FIRST
    assert files_on_disk(store.versions / FIRST) == site_files(cut=FIRST)
    if (store.versions / SECOND).exists():
        assert_manifest_matches(store, SECOND)
    if archive.exists():
        stored(store, archive, mode=mode)
    assert not archive.exists()
    expected = site_files(cut=FIRST) | files if mode == "overlay" else files
    assert files_on_disk(store.versions / SECOND) == expected
    assert_manifest_matches(store, SECOND)


@contextmanager
def small_volume(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of this size mounted at path; unmounted afterwards. Needs root, never skipped."""
    path.mkdir()
    mount = require_binary("mount")
    result = subprocess.run(
        [mount, "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if result.returncode != 0:
        pytest.fail(f"cannot mount a tmpfs for the disk-reserve test: {result.stderr}")
    try:
        yield path
    finally:
        subprocess.run([require_binary("umount"), str(path)], check=True, timeout=60)


def free_bytes(path: Path) -> int:
    stats = os.statvfs(path)
    return stats.f_bavail * stats.f_frsize


@pytest.mark.e2e
@pytest.mark.parametrize("kind", ["zip", "tar.gz"])
def test_cut_that_would_eat_into_the_disk_reserve_is_quarantined(tmp_path: Path, kind: str) -> None:
    with small_volume(tmp_path / "volume", "8m") as volume:
        store = Store(volume)
        store.recover()
        stored(store, make_zip(store.incoming / f"{FIRST}.zip", site_files(cut=FIRST)))
        store.swap_current(FIRST)
        # Free space minus half the 10 % reserve: fits the disk, not the reserve. Zeros keep
        # the archive tiny, so only the ratio cap has to be lifted.
        fill = free_bytes(volume) - 400 * 1024
        files = {f"datos/parte{i}.csv": bytes(fill // 4) for i in range(4)}
        name = f"{SECOND}.{kind}"
        archive = (
            make_zip(store.incoming / name, files)
            if kind == "zip"
            else make_tar(store.incoming / name, files)
        )
        spec = {"max_compression_ratio": 100000}
        outcome = store.process(archive, ingest=IngestSpec.model_validate(spec), now=NOW)
        assert isinstance(outcome, Quarantined)
        assert outcome.reason is Reason.DISK_RESERVE
        assert store.active_cut() == FIRST
        assert store.cuts() == [FIRST]
        assert files_on_disk(store.current) == site_files(cut=FIRST)
        assert not [p for p in store.versions.iterdir() if p.name != FIRST]


def test_the_canonical_manifest_is_json_dumps_of_each_file_whatever_its_name() -> None:
    """The digest's bytes are built without json.dumps per file; they must stay the same."""
    entries = [
        ManifestEntry('a"b\\c\n\t\x01é𝄞\u2028/x.json', 0, "0" * 64),
        ManifestEntry("ñandú/ü.csv", 10**12, "ab" * 32),
        ManifestEntry("datos/actas/00001.csv", 1234, "cd" * 32),
    ]
    expected = b"".join(
        json.dumps(
            {"path": e.path, "sha256": e.sha256, "size": e.size},
            sort_keys=True,
            separators=(",", ":"),
            ensure_ascii=False,
        ).encode()
        + b"\n"
        for e in sorted(entries, key=lambda e: e.path)
    )
    assert canonical_manifest(entries) == expected
