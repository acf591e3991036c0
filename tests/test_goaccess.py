"""Our statistics side by side with GoAccess (Debian) on the same generated access log."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from difusor.logic.stats import Compactor, merge_night

from .conftest import require_binary
from .loggen import BOTS, NIGHT_START, RULES, generate, per_pod, truth

pytestmark = pytest.mark.e2e

GOACCESS_FORMAT = (
    '{"ts":"%x.%^","time":"%^","addr":"%h","peer":"%^","method":"%m","path":"%U",'
    '"query":"%q","status":"%s","bytes":"%b","rt":"%T","ua":"%u","ref":"%R","host":"%v",'
    '"cut":"%^"}'
)


def run_goaccess(log: Path, tmp: Path) -> dict[str, int]:
    out = tmp / "goaccess.json"
    subprocess.run(
        [
            require_binary("goaccess"), str(log), "--no-progress", "--log-format",
            GOACCESS_FORMAT, "--datetime-format", "%s", "-o", str(out),
        ],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    general: dict[str, int] = json.loads(out.read_text())["general"]
    return general


def ours(lines: list[str], hours: float) -> tuple[int, int]:
    compactor = Compactor(RULES, salt=b"goaccess")
    for text in lines:
        compactor.feed(text)
    night = merge_night(
        [("web-0", s) for s in compactor.hours.values()],
        start=NIGHT_START,
        end=NIGHT_START + int(hours * 3600),
    )
    return night.totals.requests, night.visitors_exact


def test_unique_visitors_agree_with_goaccess_where_the_definitions_agree(tmp_path: Path) -> None:
    # Readers only, within one day (GoAccess counts a visitor once per day).
    reqs = generate(visitors=1200, pods=1, hours=2.0, seed=4, bots=0, flooders=0)
    log = tmp_path / "access.log"
    (lines,) = per_pod(reqs, 1)
    log.write_text("".join(lines))
    general = run_goaccess(log, tmp_path)
    requests, visitors = ours(lines, 2.0)
    assert general["total_requests"] == requests == len(reqs)
    assert general["unique_visitors"] == visitors == truth(reqs).visitors


def test_goaccess_counts_bots_as_visitors_and_we_count_them_apart(tmp_path: Path) -> None:
    reqs = generate(visitors=600, pods=1, hours=1.0, seed=6, bots=3, flooders=0)
    log = tmp_path / "access.log"
    (lines,) = per_pod(reqs, 1)
    log.write_text("".join(lines))
    general = run_goaccess(log, tmp_path)
    _, visitors = ours(lines, 1.0)
    bot_clients = {(r.addr, r.ua) for r in reqs if r.ua in BOTS}
    assert general["unique_visitors"] == visitors + len(bot_clients)
