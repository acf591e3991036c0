"""Benchmark: our access-log compaction against GoAccess on the same generated log.

Prints one JSON object: lines per CPU second (and per wall second) of `logic.stats.Compactor`
and of GoAccess (Debian) parsing the same JSON log, their ratio, the unique visitors each finds
next to the truth, and the error of the HLL sketch at 10^6 visitors spread over pods and hours.
CPU seconds are the fair measure on a shared machine: GoAccess's are its rusage, ours the
process time of the loop.

    .venv/bin/python bench/stats.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import math
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import datasketches
from tests.loggen import NIGHT_START, RULES, generate, per_pod, truth

from difusor.logic.stats import HOUR_LG_K, Compactor, merge_night

#: GoAccess reads our JSON lines with this template (GoAccess 1.6+ JSON log formats).
GOACCESS_FORMAT = (
    '{"ts":"%x.%^","time":"%^","addr":"%h","peer":"%^","method":"%m","path":"%U",'
    '"query":"%q","status":"%s","bytes":"%b","rt":"%T","ua":"%u","ref":"%R","host":"%v",'
    '"cut":"%^"}'
)


def ours(lines: list[bytes]) -> tuple[float, float, Compactor]:
    compactor = Compactor(RULES, salt=b"bench")
    cpu, wall = time.process_time(), time.perf_counter()
    for raw in lines:
        compactor.feed(raw)
    for stats in compactor.hours.values():
        stats.payload()
    return time.process_time() - cpu, time.perf_counter() - wall, compactor


def goaccess(log: Path, out: Path) -> tuple[float, float, dict[str, object]]:
    binary = shutil.which("goaccess")
    if binary is None:
        raise SystemExit("goaccess is not installed: bash hack/install-deps.sh")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    wall = time.perf_counter()
    subprocess.run(
        [
            binary, str(log), "--no-progress", "--log-format", GOACCESS_FORMAT,
            "--datetime-format", "%s", "-o", str(out),
        ],
        check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    wall = time.perf_counter() - wall
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    general: dict[str, object] = json.loads(out.read_text())["general"]
    return cpu, wall, general


def sketch_error(visitors: int, *, trials: int, pods: int = 3, hours: int = 24) -> dict[str, float]:
    """Relative error of the union of per-pod, per-hour sketches over `visitors` distinct ones."""
    errors = []
    for trial in range(trials):
        rng = random.Random(trial)
        sketches = [datasketches.hll_sketch(HOUR_LG_K) for _ in range(pods * hours)]
        for _ in range(visitors):
            key = rng.getrandbits(64)
            # Each reader is seen on 1-3 pod-hours, as polls spread over pods and hours.
            for _ in range(rng.randint(1, 3)):
                sketches[rng.randrange(len(sketches))].update(key)
        union = datasketches.hll_union(HOUR_LG_K)
        for sketch in sketches:
            union.update(sketch)
        errors.append(union.get_result().get_estimate() / visitors - 1)
    return {
        "visitors": visitors,
        "trials": trials,
        "lg_k": HOUR_LG_K,
        "documented_rse": 1.04 / math.sqrt(2**HOUR_LG_K),
        "mean_abs_error": statistics.fmean(abs(e) for e in errors),
        "max_abs_error": max(abs(e) for e in errors),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smaller log and fewer trials")
    args = parser.parse_args()
    visitors = 3000 if args.quick else 20000
    hours = 2.0 if args.quick else 4.0
    reqs = generate(visitors=visitors, pods=1, hours=hours, seed=1)
    with tempfile.TemporaryDirectory(prefix="difusor-bench-stats-") as tmp:
        log = Path(tmp) / "access.log"
        log.write_text("".join(per_pod(reqs, 1)[0]))
        lines = log.read_bytes().splitlines(keepends=True)
        ga_cpu, ga_wall, general = goaccess(log, Path(tmp) / "goaccess.json")
        our_cpu, our_wall, compactor = ours(lines)
    night = merge_night(
        [("web-0", s) for s in compactor.hours.values()],
        start=NIGHT_START,
        end=NIGHT_START + int(hours * 3600),
    )
    known = truth(reqs)
    readers_and_bots = len({(r.addr, r.ua) for r in reqs})
    out = {
        "lines": len(lines),
        "ours_lines_per_cpu_s": round(len(lines) / our_cpu),
        "goaccess_lines_per_cpu_s": round(len(lines) / ga_cpu),
        "ratio_cpu": round(ga_cpu / our_cpu, 2),
        "ours_lines_per_wall_s": round(len(lines) / our_wall),
        "goaccess_lines_per_wall_s": round(len(lines) / ga_wall),
        "visitors": {
            "truth_readers": known.visitors,
            "truth_addr_ua_pairs_with_bots": readers_and_bots,
            "ours_exact": night.visitors_exact,
            "ours_sketch": round(night.visitors.estimate),
            "goaccess": general["unique_visitors"],
            "note": (
                "GoAccess counts every (address, day, user agent) including bots and clients "
                "that only got errors; ours counts readers: no bots, at least one 2xx/3xx"
            ),
        },
        "requests": {"ours": night.totals.requests, "goaccess": general["total_requests"]},
        "sketch_error": sketch_error(
            1_000_000 if not args.quick else 100_000, trials=2 if args.quick else 5
        ),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
