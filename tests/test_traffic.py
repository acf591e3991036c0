"""The agent's view of its traffic: following the access log, request metrics, attack reports."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from difusor.agent.traffic import LogFollower, Traffic
from difusor.metrics import AgentMetrics

pytestmark = pytest.mark.unit

T0 = 1780000040.0  # 20 s into a minute


def line(ts: float, addr: str, status: int, size: int = 100) -> str:
    return json.dumps({"ts": ts, "addr": addr, "status": status, "bytes": size, "path": "/"}) + "\n"


def test_the_follower_reads_appended_lines_across_rotation_and_truncation(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    log.write_text("old\n")
    follower = LogFollower(log)
    assert follower.lines() == []  # starts at the end: history is not counted again
    with log.open("a") as f:
        f.write("one\ntw")
    assert follower.lines() == [b"one"]
    with log.open("a") as f:
        f.write("o\n")
    assert follower.lines() == [b"two"]
    with log.open("a") as f:
        f.write("last of the old file\n")
    os.rename(log, tmp_path / "access.log.1")
    log.write_text("first of the new file\n")
    assert follower.lines() == [b"last of the old file"]
    assert follower.lines() == []  # the old file is done: switch
    assert follower.lines() == [b"first of the new file"]
    log.write_text("")
    assert follower.lines() == []
    log.write_text("after truncation\n")
    assert follower.lines() == [b"after truncation"]


def test_requests_are_counted_by_status_and_a_flood_is_reported_with_its_range(
    tmp_path: Path,
) -> None:
    log = tmp_path / "access.log"
    log.write_text("")
    metrics = AgentMetrics()
    traffic = Traffic(log, metrics)
    traffic.read(prefix_v4=32, prefix_v6=128)
    rows = [line(T0 + i / 100, "127.9.200.1", 429 if i % 10 else 200, 0) for i in range(900)]
    rows += [line(T0 + i / 10, f"127.9.1.{i % 5 + 1}", 200) for i in range(100)]
    log.write_text("".join(rows) + "not json\n")
    assert traffic.read(prefix_v4=32, prefix_v6=128) == 1000

    def value(name: str, **labels: str) -> float:
        found = metrics.registry.get_sample_value(name, labels)
        return found or 0.0

    assert value("difusor_http_requests_total", status="429") == 810
    assert value("difusor_http_requests_total", status="200") == 190
    assert value("difusor_http_rate_limited_total") == 810
    assert value("difusor_http_response_bytes_total") == 100 * 100
    report = traffic.report(T0 + 15, min_requests=600, protected=[], existing=[])
    assert report is not None
    assert report.ranges == ("127.9.200.1/32",)
    assert "rejected-share" in report.reasons
    assert value("difusor_attack_signal") == 1
    # The next minute, past the carry-over, is quiet again.
    assert traffic.report(T0 + 60 + 40, min_requests=600, protected=[], existing=[]) is None
    assert value("difusor_attack_signal") == 0


def test_a_busy_minute_without_rejections_is_no_attack(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    log.write_text("")
    traffic = Traffic(log, AgentMetrics())
    traffic.read(prefix_v4=24, prefix_v6=48)
    log.write_text("".join(line(T0 + i / 100, f"127.9.{i % 7}.1", 200) for i in range(2000)))
    traffic.read(prefix_v4=24, prefix_v6=48)
    assert traffic.report(T0 + 30, min_requests=600, protected=[], existing=[]) is None
