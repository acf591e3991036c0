"""Availability and incidents: probe verdicts, the month's tally, when to open and close, the cause."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

#: Probable root causes (the names of models.IncidentCause).
PODS_NOT_READY = "PodsNotReady"
PROMOTION_STUCK = "PromotionStuck"
EDGE = "Edge"
CDN = "CDN"
ATTACK = "Attack"
INGEST = "Ingest"
UNKNOWN = "Unknown"


def probe_verdict(
    *, status: int, cut_header: str | None, body: bytes, acceptable: Sequence[str]
) -> str | None:
    """Why a probe's answer is wrong (None when it is right).

    Right means: 200, X-Prep-Cut one of the acceptable cuts (the active one, and mid-commit the
    target too: pods swap one after the other), and a body that parses as JSON.
    """
    if status != 200:
        return f"answered {status}"
    if not cut_header:
        return "answered without X-Prep-Cut"
    if cut_header not in acceptable:
        return f"served cut {cut_header}, active cut is {acceptable[0] if acceptable else None}"
    try:
        json.loads(body)
    except ValueError as exc:
        return f"body is not JSON: {exc}"
    return None


def month_of(now: datetime) -> str:
    """The calendar month (UTC) an availability tally belongs to."""
    return now.strftime("%Y-%m")


def tally(
    current: Mapping[str, Any] | None, *, ok: bool, now: datetime, error: str | None
) -> dict[str, Any]:
    """status.availability after one probe (a new month starts a new tally)."""
    month = month_of(now)
    base: dict[str, Any] = dict(current or {})
    if base.get("month") != month:
        base = {"month": month, "probes": 0, "failedProbes": 0}
    probes = int(base.get("probes") or 0) + 1
    failed = int(base.get("failedProbes") or 0) + (0 if ok else 1)
    base.update(
        probes=probes,
        failedProbes=failed,
        ratio=round((probes - failed) / probes, 6),
        lastProbeAt=now.strftime("%Y-%m-%dT%H:%M:%SZ"),
    )
    if not ok:
        base["lastError"] = error
    return base


@dataclass(frozen=True)
class Streak:
    """Consecutive probe results of one publication, and the incident they opened, if any."""

    failures: int = 0
    successes: int = 0
    incident: str | None = None
    """Name of the open PrepIncident."""
    first_failure: datetime | None = None
    """When the current run of failures began (the incident's start)."""
    failed_probes: int = 0
    """Failed probes since the incident opened (or in the run that opened it)."""
    total_probes: int = 0
    """Probes since the incident opened (or in the run that opened it)."""


def advance(
    streak: Streak, *, ok: bool, now: datetime, failures_to_open: int, successes_to_close: int
) -> tuple[Streak, str | None]:
    """The streak after one probe, and "open", "close" or None: what to do with an incident."""
    if ok:
        successes = streak.successes + 1
        if streak.incident is None:
            return Streak(successes=successes), None
        updated = replace(
            streak, failures=0, successes=successes, total_probes=streak.total_probes + 1
        )
        if successes >= successes_to_close:
            return updated, "close"
        return updated, None
    updated = replace(
        streak,
        failures=streak.failures + 1,
        successes=0,
        first_failure=streak.first_failure or now,
        failed_probes=streak.failed_probes + 1,
        total_probes=streak.total_probes + 1,
    )
    if streak.incident is None and updated.failures >= failures_to_open:
        return updated, "open"
    return updated, None


@dataclass(frozen=True)
class Evidence:
    """What the operator knew when probes failed, to name a probable root cause."""

    via: str
    """Service, Host, Pods or Url."""
    error: str
    """The last probe's failure."""
    desired_pods: int
    ready_pods: int
    rollout_phase: str = "Idle"
    rollout_seconds: float = 0.0
    stage_timeout_seconds: float = 120.0
    attack: bool = False
    """Automatic deny-list entries are in force or a pod reports an attack signal."""
    cdn_degraded: bool = False
    """The publication is Degraded by a failed CDN purge."""
    cut_age_seconds: float | None = None
    cut_max_age_seconds: float = 1800.0
    not_ready_pods: tuple[str, ...] = ()


def classify(evidence: Evidence) -> tuple[str, str]:
    """The probable root cause of failing probes and the sentence that backs it."""
    e = evidence
    if e.ready_pods == 0:
        return PODS_NOT_READY, f"no web pod is Ready (0/{e.desired_pods}): {e.error}"
    if e.rollout_phase != "Idle" and e.rollout_seconds > e.stage_timeout_seconds:
        return (
            PROMOTION_STUCK,
            f"rollout in {e.rollout_phase} for {e.rollout_seconds:.0f}s "
            f"(stage timeout {e.stage_timeout_seconds:.0f}s): {e.error}",
        )
    if e.attack:
        return ATTACK, f"an attack is being contained: {e.error}"
    if "served cut" in e.error and e.rollout_phase != "Idle":
        return PROMOTION_STUCK, f"pods disagree on the cut during a rollout: {e.error}"
    if e.cdn_degraded and e.via in ("Host", "Url"):
        return CDN, f"the CDN purge failed and the public path answers wrongly: {e.error}"
    if e.ready_pods < e.desired_pods and e.via == "Pods":
        pods = ", ".join(e.not_ready_pods) or "some pods"
        return PODS_NOT_READY, f"{pods} not Ready ({e.ready_pods}/{e.desired_pods}): {e.error}"
    if e.cut_age_seconds is not None and e.cut_age_seconds > e.cut_max_age_seconds:
        return INGEST, f"the active cut is {e.cut_age_seconds / 60:.0f} min old: {e.error}"
    if e.via in ("Service", "Host", "Url"):
        return (
            EDGE,
            f"{e.ready_pods}/{e.desired_pods} pods Ready but the {e.via} path fails: {e.error}",
        )
    return UNKNOWN, e.error
