"""Benchmark: `difusor report` for a 24-hour night against GoAccess's HTML report of the same log.

Generates 24 hours of readers over 3 pods (and 72 cuts), compacts each pod's log into its hourly
payloads as the agents would ship them, then times the memoria técnica (decode the payloads,
merge, analyse, charts, HTML and PDF) and GoAccess writing its HTML report from the raw log.
Prints one JSON object.

    .venv/bin/python bench/report.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.stats import GOACCESS_FORMAT
from tests.loggen import NIGHT_START, RULES, generate, geolite2_database, per_pod

from difusor.logic.stats import Compactor, HourStats
from difusor.report.data import Evidence
from difusor.report.geo import GeoLookup
from difusor.report.memoria import build, write

PODS = 3


def cuts(start: datetime, count: int) -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    for i in range(count):
        received = start + timedelta(minutes=20 * i, seconds=40)
        out.append(
            {
                "spec": {
                    "id": f"cut_{i:03d}",
                    "time": (start + timedelta(minutes=20 * i)).isoformat(),
                },
                "status": {
                    "phase": "Promoted",
                    "receivedAt": received.isoformat(),
                    "verifiedAt": (received + timedelta(seconds=3)).isoformat(),
                    "servingAt": (received + timedelta(seconds=5 + i % 7)).isoformat(),
                },
            }
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer readers")
    args = parser.parse_args()
    visitors = 2000 if args.quick else 15000
    reqs = generate(visitors=visitors, pods=PODS, hours=24.0, seed=24, surge=True)
    logs = per_pod(reqs, PODS)
    payloads: list[tuple[str, dict[str, bytes]]] = []
    for index, lines in enumerate(logs):
        compactor = Compactor(RULES, salt=b"bench")
        for text in lines:
            compactor.feed(text)
        payloads += [(f"web-{index}", s.payload()) for s in compactor.hours.values()]
    stored = sum(len(v) for _, files in payloads for v in files.values())
    start = datetime.fromtimestamp(NIGHT_START, UTC)
    publication = {
        "metadata": {"name": "prep-michoacan", "namespace": "difusor", "uid": "bench"},
        "spec": {"host": "prep.example.mx", "sftp": {"authorizedKeysSecret": "iem-keys"}},
        "status": {},
    }
    with tempfile.TemporaryDirectory(prefix="difusor-bench-report-") as tmp:
        began_cpu, began = time.process_time(), time.perf_counter()
        hours = [(pod, HourStats.from_payload(files)) for pod, files in payloads]
        memoria = build(
            Evidence(publication, cuts(start, 72), [], hours, []),
            start=start,
            end=start + timedelta(hours=24),
            geo=GeoLookup(geolite2_database()),
            geo_source="GeoLite2-City",
            now=start + timedelta(days=5),
        )
        _, pdf = write(memoria, Path(tmp))
        ours_wall, ours_cpu = time.perf_counter() - began, time.process_time() - began_cpu
        pages = subprocess.run(
            ["pdfinfo", str(pdf)], capture_output=True, text=True, check=False
        ).stdout
        log = Path(tmp) / "access.log"
        log.write_text("".join(sorted(line for lines in logs for line in lines)))
        binary = shutil.which("goaccess")
        if binary is None:
            raise SystemExit("goaccess is not installed: bash hack/install-deps.sh")
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        began = time.perf_counter()
        subprocess.run(
            [
                binary, str(log), "--no-progress", "--log-format", GOACCESS_FORMAT,
                "--datetime-format", "%s", "-o", str(Path(tmp) / "goaccess.html"),
            ],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        ga_wall = time.perf_counter() - began
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        ga_cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    page_count = next(
        (int(line.split()[-1]) for line in pages.splitlines() if line.startswith("Pages:")), None
    )
    print(
        json.dumps(
            {
                "hours": 24,
                "pods": PODS,
                "requests": len(reqs),
                "visits": len(memoria.night.sessions),
                "stored_bytes": stored,
                "report_wall_s": round(ours_wall, 2),
                "report_cpu_s": round(ours_cpu, 2),
                "pdf_pages": page_count,
                "charts": memoria.charts,
                "tables": memoria.tables,
                "goaccess_html_wall_s": round(ga_wall, 2),
                "goaccess_html_cpu_s": round(ga_cpu, 2),
                "ratio_cpu_goaccess_over_ours": round(ga_cpu / ours_cpu, 2),
            }
        )
    )


if __name__ == "__main__":
    main()
