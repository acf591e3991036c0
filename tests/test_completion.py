"""When an upload counts as complete (rename, checksum file, quiet) and partials expire."""

from __future__ import annotations

import hashlib
import os
from datetime import UTC, datetime
from pathlib import Path

import pytest

from difusor.ingest.scan import Intake
from difusor.ingest.store import Quarantined, Store, Stored
from difusor.logic.archive import Reason, parse_checksum
from difusor.logic.completion import Listed, ReadyUpload, decide
from difusor.models import Completion, IngestSpec

from .archives import make_zip, site_files

pytestmark = pytest.mark.unit

NOW = 1_717_383_600.0
RENAME = IngestSpec(completion=Completion.RENAME)
CHECKSUM = IngestSpec(completion=Completion.CHECKSUM_FILE)
QUIET = IngestSpec(completion=Completion.QUIET, quiet_seconds=10)


def listed(name: str, *, size: int = 100, age: float = 1.0) -> Listed:
    return Listed(name, size, NOW - age)


def test_rename_counts_only_final_archive_names() -> None:
    listing = [
        listed(".20240602_2040.zip.part"),
        listed("20240602_2100.zip.filepart"),
        listed("20240602_2120.tar.gz.tmp"),
        listed("20240602_2140.zip"),
        listed("20240602_2200.tar.gz"),
        listed("notas.txt"),
    ]
    decision = decide(listing, ingest=RENAME, now=NOW)
    assert decision.ready == [
        ReadyUpload("20240602_2140.zip", None),
        ReadyUpload("20240602_2200.tar.gz", None),
    ]
    assert decision.expired == []


def test_checksum_file_mode_waits_for_the_companion() -> None:
    waiting = decide([listed("20240602_2040.zip")], ingest=CHECKSUM, now=NOW)
    assert waiting.ready == []
    arrived = decide(
        [listed("20240602_2040.zip"), listed("20240602_2040.zip.sha256")], ingest=CHECKSUM, now=NOW
    )
    assert arrived.ready == [ReadyUpload("20240602_2040.zip", "20240602_2040.zip.sha256")]


def test_rename_mode_passes_a_checksum_companion_along_when_present() -> None:
    decision = decide(
        [listed("20240602_2040.zip"), listed("20240602_2040.zip.sha256")], ingest=RENAME, now=NOW
    )
    assert decision.ready == [ReadyUpload("20240602_2040.zip", "20240602_2040.zip.sha256")]


def test_quiet_mode_never_takes_a_file_seen_for_the_first_time() -> None:
    old = listed("20240602_2040.zip", age=600)
    assert decide([old], ingest=QUIET, now=NOW).ready == []
    assert decide([old], ingest=QUIET, now=NOW, previous={old.name: old}).ready == [
        ReadyUpload(old.name, None)
    ]


def test_quiet_mode_waits_while_the_file_grows_or_was_just_written() -> None:
    before = listed("20240602_2040.zip", size=100, age=600)
    grown = listed("20240602_2040.zip", size=200, age=600)
    assert decide([grown], ingest=QUIET, now=NOW, previous={before.name: before}).ready == []
    fresh = listed("20240602_2040.zip", age=3)
    assert decide([fresh], ingest=QUIET, now=NOW, previous={fresh.name: fresh}).ready == []


def test_partials_older_than_the_ttl_expire_and_younger_ones_stay() -> None:
    ttl = RENAME.partial_ttl_seconds
    listing = [
        listed(".20240602_2040.zip.part", age=ttl + 1),
        listed(".20240602_2100.zip.part", age=ttl - 1),
        listed("basura.bin", age=ttl + 1),
        listed("20240602_2120.zip", age=ttl + 100),
    ]
    decision = decide(listing, ingest=RENAME, now=NOW)
    assert decision.expired == [".20240602_2040.zip.part", "basura.bin"]
    assert decision.ready == [ReadyUpload("20240602_2120.zip", None)]


def test_archive_still_waiting_for_its_checksum_expires_after_the_ttl() -> None:
    late = listed("20240602_2040.zip", age=CHECKSUM.partial_ttl_seconds + 1)
    assert decide([late], ingest=CHECKSUM, now=NOW).expired == ["20240602_2040.zip"]


def test_checksum_lines_in_sha256sum_format_are_read() -> None:
    digest = "ab" * 32
    assert parse_checksum(f"{digest}  20240602_2040.zip\n", "20240602_2040.zip") == digest
    assert parse_checksum(f"{digest.upper()} *dir/20240602_2040.zip", "20240602_2040.zip") == digest
    assert parse_checksum(f"{digest}\n", "20240602_2040.zip") == digest
    assert parse_checksum(f"{digest}  otro.zip\n", "20240602_2040.zip") is None
    assert parse_checksum(digest[:40], "20240602_2040.zip") is None


def test_intake_stores_a_checksummed_upload_and_removes_expired_partials(tmp_path: Path) -> None:
    store = Store(tmp_path / "prep")
    store.recover()
    archive = make_zip(store.incoming / "20240602_2040_PREP.zip", site_files())
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    stale = store.incoming / ".old.zip.part"
    stale.write_bytes(b"half")
    os.utime(stale, (NOW - 7200, NOW - 7200))
    intake = Intake(store)
    now = datetime.fromtimestamp(NOW, UTC)
    assert intake.run(ingest=CHECKSUM, pinned=None, now=now) == []
    assert not stale.exists()
    (store.incoming / f"{archive.name}.sha256").write_text(f"{digest}  {archive.name}\n")
    [outcome] = intake.run(ingest=CHECKSUM, pinned=None, now=now)
    assert isinstance(outcome, Stored)
    assert outcome.archive_sha256 == digest
    assert not any(store.incoming.iterdir())


def test_intake_quarantines_an_upload_whose_checksum_file_disagrees(tmp_path: Path) -> None:
    store = Store(tmp_path / "prep")
    store.recover()
    archive = make_zip(store.incoming / "20240602_2040_PREP.zip", site_files())
    (store.incoming / f"{archive.name}.sha256").write_text(f"{'0' * 64}  {archive.name}\n")
    [outcome] = Intake(store).run(
        ingest=CHECKSUM, pinned=None, now=datetime.fromtimestamp(NOW, UTC)
    )
    assert isinstance(outcome, Quarantined)
    assert outcome.reason is Reason.CHECKSUM_MISMATCH
    assert sorted(p.name for p in store.quarantine_dir.iterdir()) == [
        archive.name,
        f"{archive.name}.reason.json",
        f"{archive.name}.sha256",
    ]
