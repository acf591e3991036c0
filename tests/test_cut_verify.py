"""`difusor cut verify`: the ingest's verdict on a local archive, as JSON and an exit code."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from .archives import make_tar, make_zip, site_files

pytestmark = pytest.mark.unit


def verify(*args: str) -> tuple[int, dict[str, object]]:
    result = subprocess.run(
        [sys.executable, "-m", "difusor", "cut", "verify", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return result.returncode, json.loads(result.stdout)


def test_valid_archive_prints_its_cut_and_exits_zero(tmp_path: Path) -> None:
    files = site_files()
    archive = make_tar(tmp_path / "20240602_2040_PREP.tar.gz", files, wrap="PREP")
    checksum = tmp_path / "sums"
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    checksum.write_text(f"{digest}  {archive.name}\n")
    code, verdict = verify(str(archive), "--checksum", str(checksum), "--after", "20240602_2020")
    assert code == 0
    assert verdict == {
        "id": "20240602_2040",
        "time": "2024-06-02T20:40:00-06:00",
        "files": len(files),
        "bytes": sum(len(d) for d in files.values()),
        "sha256": digest,
    }


def test_cut_time_follows_the_given_timezone_and_pattern(tmp_path: Path) -> None:
    archive = make_zip(tmp_path / "PREP_MICH-20240602_2040.zip", site_files())
    code, verdict = verify(
        str(archive), "--pattern", r"MICH-(?P<id>\d{8}_\d{4})", "--timezone", "America/Tijuana"
    )
    assert code == 0
    assert verdict["time"] == "2024-06-02T20:40:00-07:00"


def test_stale_archive_prints_the_reason_and_exits_one(tmp_path: Path) -> None:
    archive = make_zip(tmp_path / "20240602_2040.zip", site_files())
    code, verdict = verify(str(archive), "--after", "20240602_2100")
    assert code == 1
    assert verdict["reason"] == "StaleCut"


def test_corrupt_archive_prints_the_reason_and_exits_one(tmp_path: Path) -> None:
    archive = make_tar(tmp_path / "20240602_2040.tar.gz", site_files(actas=3000))
    archive.write_bytes(archive.read_bytes()[:-100])
    code, verdict = verify(str(archive))
    assert code == 1
    assert verdict["reason"] == "CorruptArchive"
