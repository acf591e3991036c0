"""Availability and incidents as pure decisions: probe verdicts, the tally, streaks, causes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from difusor.logic.incidents import (
    ATTACK,
    EDGE,
    INGEST,
    PODS_NOT_READY,
    PROMOTION_STUCK,
    Evidence,
    Streak,
    advance,
    classify,
    probe_verdict,
    tally,
)

pytestmark = pytest.mark.unit

T0 = datetime(2026, 11, 30, 20, 0, tzinfo=UTC)
CUT = "20261130_1940"


def test_a_probe_is_good_only_with_200_the_active_cut_and_json() -> None:
    good = {"status": 200, "cut_header": CUT, "body": b'{"a": 1}', "acceptable": [CUT]}
    assert probe_verdict(**good) is None  # type: ignore[arg-type]
    assert probe_verdict(**{**good, "status": 503}) == "answered 503"  # type: ignore[arg-type]
    assert "without X-Prep-Cut" in str(probe_verdict(**{**good, "cut_header": None}))  # type: ignore[arg-type]
    stale = probe_verdict(**{**good, "cut_header": "20261130_1920"})  # type: ignore[arg-type]
    assert stale == f"served cut 20261130_1920, active cut is {CUT}"
    assert "not JSON" in str(probe_verdict(**{**good, "body": b'{"a": '}))  # type: ignore[arg-type]


def test_the_tally_counts_the_month_and_starts_over_in_a_new_one() -> None:
    first = tally(None, ok=True, now=T0, error=None)
    assert first == {
        "month": "2026-11", "probes": 1, "failedProbes": 0, "ratio": 1.0,
        "lastProbeAt": "2026-11-30T20:00:00Z",
    }  # fmt: skip
    second = tally(first, ok=False, now=T0, error="answered 503")
    assert (second["probes"], second["failedProbes"], second["ratio"]) == (2, 1, 0.5)
    assert second["lastError"] == "answered 503"
    december = tally(second, ok=True, now=T0 + timedelta(days=1), error=None)
    assert (december["month"], december["probes"], december["failedProbes"]) == ("2026-12", 1, 0)


def test_an_incident_opens_after_the_failures_in_a_row_and_closes_after_the_successes() -> None:
    streak, action = Streak(), None
    rules = {"failures_to_open": 2, "successes_to_close": 3}
    streak, action = advance(streak, ok=False, now=T0, **rules)
    assert action is None
    assert streak.first_failure == T0
    streak, action = advance(streak, ok=False, now=T0 + timedelta(seconds=5), **rules)
    assert action == "open"
    assert (streak.failed_probes, streak.total_probes) == (2, 2)
    streak = Streak(**{**streak.__dict__, "incident": "inc"})
    for i in range(2):
        streak, action = advance(streak, ok=True, now=T0, **rules)
        assert action is None, i
    streak, action = advance(streak, ok=False, now=T0, **rules)
    assert action is None  # already open: a relapse does not open another
    for _ in range(2):
        streak, action = advance(streak, ok=True, now=T0, **rules)
    streak, action = advance(streak, ok=True, now=T0, **rules)
    assert action == "close"
    assert (streak.failed_probes, streak.total_probes) == (3, 8)


def test_one_failed_probe_between_successes_opens_nothing() -> None:
    rules = {"failures_to_open": 2, "successes_to_close": 3}
    streak, _ = advance(Streak(), ok=False, now=T0, **rules)
    streak, _ = advance(streak, ok=True, now=T0, **rules)
    streak, action = advance(streak, ok=False, now=T0, **rules)
    assert action is None
    assert streak.first_failure == T0


BASE = Evidence(via="Service", error="answered 503", desired_pods=3, ready_pods=3)


@pytest.mark.parametrize(
    ("change", "cause"),
    [
        ({"ready_pods": 0}, PODS_NOT_READY),
        ({"rollout_phase": "Committing", "rollout_seconds": 300.0}, PROMOTION_STUCK),
        ({"attack": True}, ATTACK),
        ({"error": "served cut X, active cut is Y", "rollout_phase": "Staging"}, PROMOTION_STUCK),
        ({"via": "Pods", "ready_pods": 2, "not_ready_pods": ("web-2",)}, PODS_NOT_READY),
        ({"cut_age_seconds": 7200.0}, INGEST),
        ({}, EDGE),
    ],
)
def test_the_probable_cause_follows_the_evidence(change: dict[str, object], cause: str) -> None:
    found, why = classify(Evidence(**{**BASE.__dict__, **change}))  # type: ignore[arg-type]
    assert found == cause
    assert why
