"""Ingest throughput: sftp put to stored cut, against a raw sftp upload to a plain sshd.

Prints one JSON object. For each archive size: MB/s of a raw `sftp put` to an sshd with its
defaults, MB/s from the start of the put (temporary name, then rename, as the institute's client
does) through the hardened sshd until the cut is validated and stored, and their ratio. The
institute asks for >= 40 MB/s; the goal is >= 0.8 of raw sftp. Loopback only.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import sys
import tempfile
import time
import zipfile
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.archives import HEADER  # noqa: E402
from tests.sshdproc import running_sshd, sftp_batch  # noqa: E402

from difusor.ingest.scan import Intake  # noqa: E402
from difusor.ingest.store import Store, Stored  # noqa: E402
from difusor.models import IngestSpec  # noqa: E402

MB = 1_000_000


def row_pool(rng: random.Random, size: int) -> list[str]:
    """Rows shaped like the institute's actas CSV (votes, ids, SHA-256 of the acta image)."""
    return [
        f"16{i:05d}B0100,16{i:05d}B01A,16,MICHOACAN,{i % 24 + 1},DISTRITO {i % 24 + 1},"
        f"{i % 2700:04d},{','.join(str(rng.randint(0, 300)) for _ in range(9))},"
        f"{rng.randint(300, 800)},{rng.choice(['', 'Ilegible', 'Sin acta'])},1,"
        f"{hashlib.sha256(str(i).encode()).hexdigest()}\n"
        for i in range(size)
    ]


def make_package(path: Path, target_bytes: int, *, seed: int) -> tuple[int, int]:
    """A zip of CSV and JSON files of about target_bytes; returns (files, uncompressed bytes)."""
    rng = random.Random(seed)
    pool = row_pool(rng, 20000)
    files = 0
    total = 0
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as out:
        while out.fp is not None and out.fp.tell() < target_bytes:
            start = rng.randrange(len(pool))
            rows = pool[start:] + pool[:start]
            csv = f"02/06/2024 20:40 (UTC-6)\n{HEADER}{''.join(rows[: rng.randint(2000, 8000)])}"
            district = files % 24 + 1
            out.writestr(f"PREP/datos/distrito_{district:02d}_{files:05d}.csv", csv)
            card = {"distrito": district, "votos": [rng.randint(0, 10**5) for _ in range(400)]}
            out.writestr(f"PREP/json/distritos/{files:05d}.json", json.dumps(card))
            files += 2
            total += len(csv) + len(json.dumps(card))
        out.writestr("PREP/json/main.json", json.dumps({"horaCorte": "2024-06-02T20:40"}))
    return files + 1, total


def measure(archive: Path, files: int, uncompressed: int) -> dict[str, float | int]:
    """Raw sftp MB/s to a plain sshd, and put-to-stored MB/s through difusor's sshd and store."""
    size = archive.stat().st_size
    with running_sshd(plain=True) as plain:
        started = time.perf_counter()
        result = sftp_batch(plain, [f"put {archive} {plain.upload_dir / archive.name}"])
        raw_seconds = time.perf_counter() - started
        if result.returncode != 0:
            raise RuntimeError(result.stderr)
    with running_sshd() as sshd:
        store = Store(sshd.upload_dir.parent)
        store.recover()
        intake = Intake(store)
        started = time.perf_counter()
        result = sftp_batch(
            sshd,
            [f"put {archive} .{archive.name}.part", f"rename .{archive.name}.part {archive.name}"],
        )
        uploaded = time.perf_counter()
        if result.returncode != 0:
            raise RuntimeError(result.stderr)
        [outcome] = intake.run(ingest=IngestSpec(), pinned=None, now=datetime.now(UTC))
        stored = time.perf_counter()
        if not isinstance(outcome, Stored):
            raise RuntimeError(f"the package was not stored: {outcome}")
    raw = size / MB / raw_seconds
    ingest = size / MB / (stored - started)
    return {
        "archive_mb": round(size / MB, 1),
        "uncompressed_mb": round(uncompressed / MB, 1),
        "files": files,
        "raw_sftp_mbps": round(raw, 1),
        "upload_mbps": round(size / MB / (uploaded - started), 1),
        "ingest_mbps": round(ingest, 1),
        "validate_and_store_seconds": round(stored - uploaded, 2),
        "ratio_to_raw": round(ingest / raw, 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--quick", action="store_true", help="20 MB and 100 MB instead of 50 and 500"
    )
    args = parser.parse_args()
    sizes = (20, 100) if args.quick else (50, 500)
    cases = []
    with tempfile.TemporaryDirectory(prefix="difusor-bench-") as tmp:
        for seed, mb in enumerate(sizes):
            archive = Path(tmp) / f"20240602_{2000 + seed * 20}_PREP.zip"
            files, uncompressed = make_package(archive, mb * MB, seed=seed)
            cases.append(measure(archive, files, uncompressed))
            archive.unlink()
    print(
        json.dumps(
            {
                "benchmark": "ingest",
                "quick": args.quick,
                "institute_min_mbps": 40,
                "goal_ratio_to_raw": 0.8,
                "cases": cases,
                "meets_institute_min": all(c["ingest_mbps"] >= 40 for c in cases),
                "meets_goal_ratio": all(c["ratio_to_raw"] >= 0.8 for c in cases),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
