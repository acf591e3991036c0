"""Uploads extracted while they arrive: the same version as at the rename, or the ordinary path."""

from __future__ import annotations

import os
import random
import threading
import zipfile
from datetime import UTC, datetime
from pathlib import Path

import pytest

from difusor.ingest import stream
from difusor.ingest.scan import Intake, watch_incoming
from difusor.ingest.store import Store, Stored
from difusor.models import IngestSpec

from .archives import make_tar, make_zip, site_files
from .conftest import wait_for

pytestmark = pytest.mark.unit

NOW = datetime(2024, 6, 3, 2, 0, tzinfo=UTC)
CUT = "20240602_2100"
PIECE = 4096


def big_site() -> dict[str, bytes]:
    """A site with enough actas that its archive spans several reads and blocks, and one member
    too big to be handed to the writers whole (it is inflated as it arrives)."""
    noise = random.Random(5).randbytes(stream.DEFER_LIMIT + (1 << 20))
    return (
        site_files(cut=CUT, actas=20000)
        | site_files(cut=CUT, actas=3000, seed=7)
        | {"data/fotos.bin": noise}
    )


def reference(tmp_path: Path, archive: Path) -> Stored:
    """The cut stored from a copy of the archive the ordinary way, in another store."""
    other = Store(tmp_path / "reference")
    other.recover()
    copy = other.incoming / archive.name
    copy.write_bytes(archive.read_bytes())
    outcome = other.process(copy, ingest=IngestSpec(), now=NOW)
    assert isinstance(outcome, Stored)
    return outcome


def upload_in_pieces(data: bytes, partial: Path, final: Path, started: threading.Event) -> None:
    """Writes the archive under a temporary name in small pieces, then renames it."""
    with partial.open("wb") as out:
        for offset in range(0, len(data), PIECE):
            out.write(data[offset : offset + PIECE])
            out.flush()
            if offset == PIECE * 8:
                started.wait(60)
    os.rename(partial, final)


@pytest.mark.parametrize("kind", ["zip", "tar.gz", "tar"])
def test_upload_followed_while_it_grows_is_stored_as_the_ordinary_path_stores_it(
    tmp_path: Path, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    finished: list[stream.Prepared | None] = []
    finish = stream.Prefetch.finish

    def spy(self: stream.Prefetch, path: Path) -> stream.Prepared | None:
        finished.append(finish(self, path))
        return finished[-1]

    monkeypatch.setattr(stream.Prefetch, "finish", spy)
    store = Store(tmp_path / "prep")
    store.recover()
    name = f"{CUT}_PREP.{kind}"
    source = tmp_path / name
    if kind == "zip":
        make_zip(source, big_site(), wrap="PREP")
    else:
        make_tar(source, big_site(), gz=kind == "tar.gz", wrap="PREP")
    expected = reference(tmp_path, source)
    wake = threading.Event()
    intake = Intake(store, prefetch=True, wake=wake)
    started = threading.Event()
    writer = threading.Thread(
        target=upload_in_pieces,
        args=(
            source.read_bytes(),
            store.incoming / f".{name}.part",
            store.incoming / name,
            started,
        ),
    )
    writer.start()
    try:
        wait_for("the partial upload", (store.incoming / f".{name}.part").exists, interval=0.01)
        assert intake.run(ingest=IngestSpec(), pinned=None, now=NOW) == []
        assert len(intake.following) == 1
        started.set()
        # The follower wakes the loop when the client renames the file.
        assert wake.wait(60)
        writer.join(60)
        [outcome] = intake.run(ingest=IngestSpec(), pinned=None, now=NOW)
    finally:
        started.set()
        writer.join(60)
        intake.close()
    assert isinstance(outcome, Stored)
    [prepared] = finished
    assert prepared is not None, "the prefetch gave up: the ordinary path stored it"
    assert outcome.manifest_digest == expected.manifest_digest
    assert outcome.archive_sha256 == expected.archive_sha256
    assert outcome.files == expected.files
    assert sorted(p.name for p in store.versions.iterdir()) == [CUT]
    assert not intake.following


def test_bytes_rewritten_after_they_were_read_send_the_upload_down_the_ordinary_path(
    tmp_path: Path,
) -> None:
    store = Store(tmp_path / "prep")
    store.recover()
    name = f"{CUT}_PREP.zip"
    source = make_zip(tmp_path / name, big_site())
    good = source.read_bytes()
    with zipfile.ZipFile(source) as archive:
        central = archive.start_dir
    partial = store.incoming / f".{name}.part"
    # A client that wrote a block wrong and then wrote it again in place, as a retry can. The
    # wrong bytes are in the central directory, which the parser leaves to the end: only
    # reading the file again tells the difference.
    damaged = bytearray(good)
    damaged[central + 46 : central + 50] = b"XXXX"
    partial.write_bytes(bytes(damaged))
    prefetch = store.prefetch(partial, ingest=IngestSpec())
    assert prefetch is not None
    wait_for(
        "the prefetch to read the whole file",
        lambda: prefetch.arrival.position == len(good),
        interval=0.01,
    )
    with partial.open("r+b") as out:
        out.write(good)
    final = store.incoming / name
    os.rename(partial, final)
    assert prefetch.finish(final) is None
    assert not prefetch.work.exists()
    outcome = store.process(final, ingest=IngestSpec(), now=NOW)
    assert isinstance(outcome, Stored)
    assert outcome.manifest_digest == reference(tmp_path, tmp_path / name).manifest_digest


def test_upload_that_goes_away_stops_being_followed_and_leaves_nothing(tmp_path: Path) -> None:
    store = Store(tmp_path / "prep")
    store.recover()
    partial = store.incoming / f".{CUT}_PREP.tar.gz.part"
    data = make_tar(tmp_path / "x.tar.gz", big_site()).read_bytes()
    partial.write_bytes(data[: len(data) // 2])
    intake = Intake(store, prefetch=True)
    assert intake.run(ingest=IngestSpec(), pinned=None, now=NOW) == []
    [prefetch] = intake.following.values()
    partial.unlink()
    assert intake.run(ingest=IngestSpec(), pinned=None, now=NOW) == []
    assert not intake.following
    assert not prefetch.work.exists()
    assert sorted(store.versions.iterdir()) == []


def test_an_upload_wakes_the_loop_as_soon_as_it_appears_and_when_it_is_renamed(
    tmp_path: Path,
) -> None:
    """The loop starts following an upload at once, not on its next pass."""
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    wake, stopping = threading.Event(), threading.Event()
    watcher = threading.Thread(target=watch_incoming, args=(incoming, wake, stopping))
    watcher.start()
    try:
        probes = iter(range(1000))

        def probe() -> bool:
            (incoming / f"probe-{next(probes)}").touch()
            return wake.wait(0.05)

        # The watch is in place once a new file wakes it (the thread starts asynchronously).
        wait_for("the watch", probe)
        for path in incoming.glob("probe-*"):
            path.unlink()
        wake.clear()
        (incoming / ".20240602_2040_PREP.zip.part").write_bytes(b"PK")
        assert wake.wait(5), "creating an upload did not wake the loop"
        wake.clear()
        (incoming / ".20240602_2040_PREP.zip.part").rename(incoming / "20240602_2040_PREP.zip")
        assert wake.wait(5), "renaming an upload into place did not wake the loop"
        wake.clear()
        (incoming / "20240602_2040_PREP.zip").write_bytes(b"PK again")
        assert not wake.wait(0.3), "rewriting a file is not a new upload"
    finally:
        stopping.set()
        watcher.join(timeout=5)
    assert not watcher.is_alive()
