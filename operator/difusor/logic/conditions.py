"""Status conditions of a publication: computed from observations, transition times kept."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

Condition = dict[str, Any]

#: Reason of Degraded while a CDN purge fails.
PURGE_FAILED_REASON = "PurgeFailed"


@dataclass(frozen=True)
class Observation:
    """What the operator saw of a publication's children in one reconcile."""

    generation: int
    desired_replicas: int
    replicas: int
    ready_replicas: int
    updated_replicas: int
    workload_observed_generation: int
    workload_generation: int
    min_ready: int
    apply_error: str | None = None
    invalid_spec: str | None = None
    active_cut: str | None = None
    rollout_target: str | None = None
    purge_error: str | None = None
    """Why the latest CDN purge failed (it is retried; the cut stays live)."""
    placeholder_missing: str | None = None
    """Why the page due before the window opens cannot be served (its ConfigMap is missing)."""


def set_condition(
    conditions: list[Condition],
    *,
    type_: str,
    status: bool,
    reason: str,
    message: str,
    generation: int,
    now: str,
) -> list[Condition]:
    """Conditions with one of them set; lastTransitionTime changes only when status flips."""
    wanted = "True" if status else "False"
    previous = next((c for c in conditions if c.get("type") == type_), None)
    kept = previous is not None and previous.get("status") == wanted
    updated: Condition = {
        "type": type_,
        "status": wanted,
        "reason": reason,
        "message": message,
        "observedGeneration": generation,
        "lastTransitionTime": previous.get("lastTransitionTime", now) if kept and previous else now,
    }
    out = [c for c in conditions if c.get("type") != type_] + [updated]
    order = {"Ready": 0, "Progressing": 1, "Degraded": 2}
    return sorted(out, key=lambda c: (order.get(str(c.get("type")), 9), str(c.get("type"))))


def compute_conditions(current: list[Condition], obs: Observation, *, now: str) -> list[Condition]:
    """Ready, Progressing and Degraded from one observation."""
    conds = list(current)
    gen = obs.generation

    def put(type_: str, status: bool, reason: str, message: str) -> None:
        nonlocal conds
        conds = set_condition(
            conds,
            type_=type_,
            status=status,
            reason=reason,
            message=message,
            generation=gen,
            now=now,
        )

    if obs.invalid_spec is not None:
        put("Ready", False, "InvalidSpec", obs.invalid_spec)
        put("Progressing", False, "InvalidSpec", "the spec must be fixed before anything changes")
        put("Degraded", True, "InvalidSpec", obs.invalid_spec)
        return conds

    rolling = (
        obs.workload_observed_generation < obs.workload_generation
        or obs.updated_replicas < obs.desired_replicas
        or obs.replicas != obs.desired_replicas
    )
    if obs.rollout_target:
        put("Progressing", True, "PromotingCut", f"promoting cut {obs.rollout_target}")
    elif rolling:
        put(
            "Progressing",
            True,
            "RollingOut",
            f"{obs.updated_replicas}/{obs.desired_replicas} web pods updated",
        )
    else:
        put("Progressing", False, "Stable", f"{obs.desired_replicas} web pods up to date")

    serving = f"{obs.ready_replicas}/{obs.desired_replicas} web pods ready"
    if obs.active_cut:
        serving += f", serving cut {obs.active_cut}"
    if obs.ready_replicas >= max(1, min(obs.min_ready, obs.desired_replicas)):
        put("Ready", True, "Serving", serving)
    else:
        put("Ready", False, "PodsNotReady", serving)

    if obs.apply_error is not None:
        put("Degraded", True, "ApplyFailed", obs.apply_error)
    elif obs.purge_error is not None:
        put("Degraded", True, PURGE_FAILED_REASON, obs.purge_error)
    elif obs.ready_replicas < obs.desired_replicas and not rolling:
        put("Degraded", True, "PodsNotReady", serving)
    elif obs.placeholder_missing is not None:
        put("Degraded", True, "PlaceholderMissing", obs.placeholder_missing)
    else:
        put("Degraded", False, "AsExpected", serving)
    return conds
