"""Status conditions: computed from observations, transition times changing only on a flip."""

from __future__ import annotations

import pytest

from difusor.logic.conditions import Observation, compute_conditions, set_condition

pytestmark = pytest.mark.unit


def obs(**over: object) -> Observation:
    base: dict[str, object] = {
        "generation": 2, "desired_replicas": 3, "replicas": 3, "ready_replicas": 3,
        "updated_replicas": 3, "workload_observed_generation": 1, "workload_generation": 1, "min_ready": 1,
    }  # fmt: skip
    base.update(over)
    return Observation(**base)  # type: ignore[arg-type]


def by_type(conds: list[dict[str, object]]) -> dict[object, dict[str, object]]:
    return {c["type"]: c for c in conds}


def test_transition_time_changes_only_when_the_status_flips() -> None:
    first = set_condition(
        [], type_="Ready", status=True, reason="Serving", message="a", generation=1, now="t1"
    )
    same = set_condition(
        first, type_="Ready", status=True, reason="Serving", message="b", generation=2, now="t2"
    )
    flipped = set_condition(
        same,
        type_="Ready",
        status=False,
        reason="PodsNotReady",
        message="c",
        generation=2,
        now="t3",
    )
    assert first[0]["lastTransitionTime"] == "t1"
    assert same[0]["lastTransitionTime"] == "t1"
    assert same[0]["message"] == "b"
    assert same[0]["observedGeneration"] == 2
    assert flipped[0]["lastTransitionTime"] == "t3"


def test_a_serving_publication_is_ready_stable_and_not_degraded() -> None:
    conds = by_type(compute_conditions([], obs(active_cut="20240602_2040"), now="t"))
    assert [conds[t]["status"] for t in ("Ready", "Progressing", "Degraded")] == [
        "True",
        "False",
        "False",
    ]
    assert "serving cut 20240602_2040" in str(conds["Ready"]["message"])


def test_a_rollout_is_progressing_and_a_failed_apply_is_degraded() -> None:
    conds = by_type(
        compute_conditions([], obs(updated_replicas=1, apply_error="could not apply X"), now="t")
    )
    assert conds["Progressing"]["reason"] == "RollingOut"
    assert conds["Degraded"]["reason"] == "ApplyFailed"


def test_too_few_ready_pods_is_not_ready_and_degraded() -> None:
    conds = by_type(compute_conditions([], obs(ready_replicas=0, min_ready=2), now="t"))
    assert conds["Ready"]["status"] == "False"
    assert conds["Degraded"]["reason"] == "PodsNotReady"


def test_an_invalid_spec_is_reported_on_every_condition() -> None:
    conds = by_type(compute_conditions([], obs(invalid_spec="spec.ingest.timezone: bad"), now="t"))
    assert conds["Ready"]["reason"] == "InvalidSpec"
    assert conds["Degraded"]["status"] == "True"
    assert conds["Ready"]["message"] == "spec.ingest.timezone: bad"


def test_a_missing_placeholder_degrades_the_publication_before_the_window_opens() -> None:
    missing = "ConfigMap ph (spec.window.placeholderConfigMap) does not exist"
    conditions = compute_conditions(
        [], obs(placeholder_missing=missing), now="2024-06-02T12:00:00Z"
    )
    degraded = next(c for c in conditions if c["type"] == "Degraded")
    assert (degraded["status"], degraded["reason"], degraded["message"]) == (
        "True",
        "PlaceholderMissing",
        missing,
    )
