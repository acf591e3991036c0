"""Attack detection on synthetic access logs: exact per-minute figures, signals and deny hints."""

from __future__ import annotations

import ast
import json

import pytest

from difusor.logic import attack
from difusor.logic.attack import (
    AttackSignal,
    LogRecord,
    MinuteFigures,
    Talker,
    Thresholds,
    address_range,
    detect_attacks,
    minute_figures,
    suggest_deny_list,
)

pytestmark = pytest.mark.unit

#: 2024-06-03T02:00:00Z (20:00 in Mexico City on election night), a whole minute.
T0 = 1717380000


def _records(minute: int, rows: list[tuple[str, int, int]]) -> list[LogRecord]:
    """`count` records per (address, status, count), spread over one minute."""
    out = []
    for addr, status, count in rows:
        out += [LogRecord(T0 + 60 * minute + (i % 60) + 0.123, addr, status) for i in range(count)]
    return out


def _minute(minute: int, requests: int, rejected: int = 0) -> MinuteFigures:
    return MinuteFigures(T0 + 60 * minute, requests, rejected, 0, (), ())


def test_a_log_line_parses_into_a_record() -> None:
    line = (
        '{"ts":1717380000.123,"time":"2024-06-02T20:00:00-06:00","addr":"203.0.113.7",'
        '"peer":"10.0.0.5","method":"GET","path":"/json/main.json","query":"","status":429,'
        '"bytes":0,"rt":0.000,"ua":"curl","ref":"","host":"prep","cut":"20240602_2000"}'
    )
    assert LogRecord.from_json(json.loads(line)) == LogRecord(
        1717380000.123, "203.0.113.7", 429, "/json/main.json"
    )


def test_addresses_group_by_slash_24_and_slash_48() -> None:
    assert address_range("203.0.113.77") == "203.0.113.0/24"
    assert address_range("2001:db8:1:2::5") == "2001:db8:1::/48"
    assert address_range("203.0.113.77", prefix_v4=16) == "203.0.0.0/16"
    assert address_range("") is None
    assert address_range("unix:") is None


def test_per_minute_figures_are_exact() -> None:
    records = _records(
        0,
        [
            ("203.0.113.7", 429, 3),
            ("203.0.113.7", 200, 2),
            ("203.0.113.8", 200, 2),
            ("198.51.100.1", 403, 1),
            ("2001:db8:1:2::5", 200, 1),
            ("2001:db8:1:ffff::9", 429, 1),
            ("", 400, 1),
        ],
    ) + _records(2, [("192.0.2.1", 200, 1)])
    figures = minute_figures(reversed(records), top=2)
    assert [f.minute for f in figures] == [T0, T0 + 60, T0 + 120]
    first, quiet, last = figures
    assert (first.requests, first.too_many, first.forbidden, first.rejected) == (11, 4, 1, 5)
    assert first.rejected_share == pytest.approx(5 / 11)
    assert first.top_addresses == (Talker("203.0.113.7", 5, 3), Talker("203.0.113.8", 2, 0))
    assert first.top_ranges == (Talker("203.0.113.0/24", 7, 3), Talker("2001:db8:1::/48", 2, 1))
    assert quiet == MinuteFigures(T0 + 60, 0, 0, 0, (), ())
    assert quiet.rejected_share == 0.0
    assert (last.requests, last.top_addresses) == (1, (Talker("192.0.2.1", 1, 0),))
    assert minute_figures([]) == []


def test_ties_between_talkers_are_broken_by_address() -> None:
    (figure,) = minute_figures(_records(0, [("10.0.0.2", 200, 1), ("10.0.0.1", 200, 1)]), top=5)
    assert [t.key for t in figure.top_addresses] == ["10.0.0.1", "10.0.0.2"]


def test_a_high_rejected_share_signals_an_attack() -> None:
    limits = Thresholds(rejected_share=0.2, min_requests=100)
    figures = [_minute(0, 100, 19), _minute(1, 100, 20), _minute(2, 99, 99)]
    (signal,) = detect_attacks(figures, thresholds=limits)
    assert signal == AttackSignal(T0 + 60, ("rejected-share",), 100, 0.2, None, ())


def test_a_request_rate_far_above_the_trailing_median_signals_an_anomaly() -> None:
    limits = Thresholds(
        rate_factor=5.0, baseline_minutes=4, min_baseline_minutes=3, min_requests=50
    )
    figures = [
        _minute(0, 1000),  # no baseline yet: never an anomaly
        _minute(1, 100),
        _minute(2, 120),
        _minute(3, 80),
        _minute(4, 600),  # median of 1000, 100, 120, 80 is 110: 600 > 550
        _minute(5, 500),  # median of 100, 120, 80, 600 is 110: 500 < 550
        _minute(6, 2000),  # median of 120, 80, 600, 500 is 310: 2000 > 1550
        _minute(7, 2000),  # median of 80, 600, 500, 2000 is 550: 2000 < 2750
    ]
    signals = detect_attacks(figures, thresholds=limits)
    assert [(s.minute - T0) // 60 for s in signals] == [4, 6]
    assert [s.baseline for s in signals] == [110.0, 310.0]
    assert all(s.reasons == ("rate-anomaly",) for s in signals)


def test_a_quiet_minute_never_signals() -> None:
    limits = Thresholds(min_requests=600, min_baseline_minutes=1)
    figures = [_minute(0, 1), _minute(1, 599, 599)]
    assert detect_attacks(figures, thresholds=limits) == []


def test_both_reasons_are_reported_together() -> None:
    limits = Thresholds(min_requests=10, min_baseline_minutes=2, rejected_share=0.5)
    figures = [_minute(0, 10), _minute(1, 10), _minute(2, 1000, 900)]
    (signal,) = detect_attacks(figures, thresholds=limits)
    assert signal.reasons == ("rejected-share", "rate-anomaly")
    assert signal.rejected_share == 0.9


def test_a_flood_in_a_synthetic_log_becomes_a_deny_list_suggestion() -> None:
    normal = [(f"198.51.100.{i}", 200, 10) for i in range(1, 21)]
    nat = [("192.0.2.10", 200, 150)]
    records = _records(0, normal + nat)
    records += _records(1, [*normal, *nat, ("203.0.113.66", 429, 700), ("203.0.113.67", 429, 100)])
    limits = Thresholds(min_requests=300, rejected_share=0.2)
    signals = detect_attacks(minute_figures(records), thresholds=limits)
    assert len(signals) == 1
    assert signals[0].requests == 1150
    assert signals[0].top_ranges[0] == Talker("203.0.113.0/24", 800, 800)
    assert suggest_deny_list(signals) == ["203.0.113.0/24"]


def test_deny_suggestions_spare_proxies_known_ranges_and_legitimate_crowds() -> None:
    signal = AttackSignal(
        minute=T0,
        reasons=("rejected-share",),
        requests=1000,
        rejected_share=0.6,
        baseline=None,
        top_ranges=(
            Talker("203.0.113.0/24", 300, 300),  # offending
            Talker("10.0.0.0/24", 250, 250),  # the ingress: protected
            Talker("2001:db8:bad::/48", 200, 150),  # offending
            Talker("192.0.2.0/24", 150, 0),  # a busy NAT of readers, never rejected
            Talker("198.51.100.0/24", 120, 120),  # already denied by a wider range
            Talker("100.64.0.0/24", 50, 50),  # below min_share
        ),
    )
    suggestions = suggest_deny_list(
        [signal], protected=["10.0.0.0/8"], existing=["198.51.0.0/16"], min_share=0.1
    )
    assert suggestions == ["203.0.113.0/24", "2001:db8:bad::/48"]
    assert suggest_deny_list([signal], protected=["10.0.0.0/8"], limit=1) == ["203.0.113.0/24"]
    assert suggest_deny_list([]) == []


def test_the_detection_module_touches_no_clock_env_disk_or_network() -> None:
    assert attack.__file__ is not None
    with open(attack.__file__) as handle:
        tree = ast.parse(handle.read())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert imported <= {
        "__future__",
        "ipaddress",
        "statistics",
        "collections",
        "dataclasses",
        "typing",
    }
