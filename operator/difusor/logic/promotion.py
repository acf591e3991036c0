"""The promotion state machine: `decide(inputs, now)` says what the operator does next.

A cut goes Verified -> Staging (every serving pod fetches and verifies it) -> Committing (each pod
that staged it swaps its `current` symlink) -> Promoted (every pod that staged it serves it). With a
CDN, the rollout passes through Purging between the last swap and Promoted: the purge goes out only
once every pod serves the cut (else the CDN would cache the old one again), a failed purge is
retried with backoff and never rolls the cut back, and a newer cut is not held up by it.
Agents learn the target from the publication's status.rollout and report through annotations on
their own pod; the operator only reads those reports and writes status. Everything here is a
pure function of what the operator gathered, so every transition is a table test and a restart
of the operator in any phase resumes from status.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

#: Cut phases the machine reads or writes (the names of models.CutPhase).
VERIFIED = "Verified"
STAGING = "Staging"
COMMITTED = "Committed"
PROMOTED = "Promoted"
SUPERSEDED = "Superseded"
FAILED = "Failed"
REJECTED = "Rejected"
RECEIVED = "Received"

IDLE = "Idle"
PHASE_STAGING = "Staging"
PHASE_COMMITTING = "Committing"
PHASE_PURGING = "Purging"

#: Outcomes of a purge (the names of models.PurgeOutcome).
PURGE_PENDING = "Pending"
PURGE_SUCCEEDED = "Succeeded"
PURGE_FAILED = "Failed"
PURGE_SKIPPED = "Skipped"

_NOT_PROMOTABLE = frozenset({REJECTED, RECEIVED, FAILED})


@dataclass(frozen=True)
class PodView:
    """One web pod as the operator sees it."""

    name: str
    staged: frozenset[str] = frozenset()
    """Cuts the pod's agent reports as staged (annotation prep.difusor.io/staged)."""
    active: str | None = None
    """Cut the pod serves (annotation prep.difusor.io/active)."""
    serving: bool = True
    """The pod exists, is not being deleted and has an address: it takes part in promotions."""
    error: str | None = None
    """Why the pod could not stage a cut, "<cut>: <reason>" (annotation prep.difusor.io/stage-error)."""

    def error_for(self, cut: str) -> str | None:
        """The reason the pod gave for not staging `cut`, if it gave one."""
        prefix = f"{cut}: "
        if self.error and self.error.startswith(prefix):
            return self.error[len(prefix) :]
        return None


@dataclass(frozen=True)
class PurgeView:
    """The CDN purge of one cut (PrepCut status.purge)."""

    outcome: str | None = None
    """None (never requested), Pending, Succeeded, Failed or Skipped."""
    next_attempt_at: datetime | None = None
    """Earliest time for the next attempt after a failure."""


@dataclass(frozen=True)
class CutView:
    """One PrepCut as the operator sees it."""

    id: str
    phase: str
    time: str | None = None
    purge: PurgeView = PurgeView()


@dataclass(frozen=True)
class Rollout:
    """status.rollout of the publication."""

    target: str | None = None
    phase: str = IDLE
    started_at: datetime | None = None
    committed_at: datetime | None = None


@dataclass(frozen=True)
class Inputs:
    """Everything decide() looks at."""

    active: str | None
    rollout: Rollout
    pods: tuple[PodView, ...]
    cuts: tuple[CutView, ...]
    pinned: str | None = None
    stage_timeout: timedelta = timedelta(seconds=120)
    min_ready: int = 1
    cdn: bool = False
    """A CDN is configured: every promotion ends with a purge."""


@dataclass
class Decision:
    """What to write: the new rollout and active cut, cut phases, events; unchanged when equal."""

    rollout: Rollout
    active: str | None
    cut_phases: dict[str, str] = field(default_factory=dict)
    events: list[tuple[str, str]] = field(default_factory=list)
    """(reason, message) pairs, in the order they happened."""
    excluded: tuple[str, ...] = ()
    """Pods left out of the commit because they did not stage in time."""
    purge: str | None = None
    """Cut whose CDN purge the operator sends now."""
    purge_skipped: str | None = None
    """Cut whose pending purge a newer cut makes moot (its own purge covers the files)."""


def moved(inputs: Inputs, decision: Decision) -> bool:
    """Whether acting on the decision changes what the next decision reads: the rollout, the
    active cut, a cut's phase or a purge. Then the next step is due at once; a step that only
    waits (on pods to report, on a timeout) has nothing more to decide until something happens.
    """
    return (
        decision.rollout != inputs.rollout
        or decision.active != inputs.active
        or bool(decision.cut_phases)
        or decision.purge is not None
        or decision.purge_skipped is not None
    )


def _order_key(cut: CutView) -> tuple[str, str]:
    return (cut.time or "", cut.id)


def desired_cut(inputs: Inputs) -> str | None:
    """The cut the site should serve: the pinned one, else the newest promotable one."""
    known = {c.id: c for c in inputs.cuts}
    if inputs.pinned:
        pinned = known.get(inputs.pinned)
        if pinned is not None and pinned.phase not in _NOT_PROMOTABLE:
            return pinned.id
        return inputs.active
    # Superseded cuts stay candidates: after a pinned rollback is lifted, the newest wins again.
    candidates = [c for c in inputs.cuts if c.phase not in _NOT_PROMOTABLE]
    if not candidates:
        return inputs.active
    newest = max(candidates, key=_order_key)
    active = known.get(inputs.active or "")
    if active is not None and _order_key(active) >= _order_key(newest):
        return inputs.active
    return newest.id


def decide(inputs: Inputs, now: datetime) -> Decision:
    """The next step of the promotion, from what the operator gathered."""
    rollout = inputs.rollout
    decision = Decision(rollout=rollout, active=inputs.active)
    serving = [p for p in inputs.pods if p.serving]
    want = desired_cut(inputs)
    if inputs.pinned and want != inputs.pinned:
        decision.events.append(
            (
                "PinnedCutMissing",
                f"pinned cut {inputs.pinned} is not a verified cut; keeping {inputs.active}",
            )
        )

    if rollout.phase == PHASE_COMMITTING and rollout.target:
        return _committing(inputs, decision, serving, now)

    if rollout.phase == PHASE_PURGING and rollout.target:
        if want and want != rollout.target:
            # The cut is live everywhere; the next cut's purge covers what this one would have.
            decision.cut_phases[rollout.target] = PROMOTED
            decision.purge_skipped = rollout.target
            decision.events.append(
                ("PurgeSkipped", f"purge of cut {rollout.target} left to the purge of cut {want}")
            )
            return _start(inputs, decision, want, now)
        return _purging(inputs, decision, now)

    if rollout.phase == PHASE_STAGING and rollout.target:
        if want != rollout.target:
            decision.cut_phases[rollout.target] = SUPERSEDED
            decision.events.append(
                (
                    "CutSuperseded",
                    f"cut {rollout.target} superseded by {want} before it was committed",
                )
            )
            return _start(inputs, decision, want, now)
        return _staging(inputs, decision, serving, now)

    if want and want != inputs.active:
        return _start(inputs, decision, want, now)
    if want and want == inputs.active:
        for cut in inputs.cuts:
            if cut.id == want and cut.phase != PROMOTED:
                decision.cut_phases[want] = PROMOTED
    return decision


def _start(inputs: Inputs, decision: Decision, target: str | None, now: datetime) -> Decision:
    if not target or target == inputs.active:
        decision.rollout = Rollout()
        return decision
    decision.rollout = Rollout(target=target, phase=PHASE_STAGING, started_at=now)
    decision.cut_phases[target] = STAGING
    decision.events.append(("StagingCut", f"staging cut {target} on every web pod"))
    return _staging(inputs, decision, [p for p in inputs.pods if p.serving], now)


def _staging(inputs: Inputs, decision: Decision, serving: list[PodView], now: datetime) -> Decision:
    rollout = decision.rollout
    target = rollout.target
    assert target is not None
    staged = [p for p in serving if target in p.staged or p.active == target]
    lagging = [p.name for p in serving if p not in staged]
    reasons = "".join(
        f"; {p.name}: {reason}"
        for p in serving
        if p not in staged and (reason := p.error_for(target))
    )
    started = rollout.started_at or now
    if serving and not lagging:
        return _commit(decision, target, now, excluded=())
    if now - started < inputs.stage_timeout:
        return decision
    if len(staged) >= max(1, inputs.min_ready):
        decision.events.append(
            (
                "StageTimeout",
                f"pods {', '.join(sorted(lagging))} did not stage cut {target} within "
                f"{int(inputs.stage_timeout.total_seconds())}s; committing on "
                f"{len(staged)}/{len(serving)} pods{reasons}",
            )
        )
        return _commit(decision, target, now, excluded=tuple(sorted(lagging)))
    decision.cut_phases[target] = FAILED
    decision.rollout = Rollout()
    decision.events.append(
        (
            "PromotionFailed",
            f"only {len(staged)}/{len(serving)} pods staged cut {target} within "
            f"{int(inputs.stage_timeout.total_seconds())}s (need {inputs.min_ready}); "
            f"still serving {inputs.active}{reasons}",
        )
    )
    return decision


def _commit(
    decision: Decision, target: str, now: datetime, *, excluded: tuple[str, ...]
) -> Decision:
    decision.rollout = Rollout(
        target=target,
        phase=PHASE_COMMITTING,
        started_at=decision.rollout.started_at,
        committed_at=now,
    )
    decision.excluded = excluded
    decision.cut_phases[target] = COMMITTED
    decision.events.append(("CommittingCut", f"committing cut {target}"))
    return decision


def _committing(
    inputs: Inputs, decision: Decision, serving: list[PodView], now: datetime
) -> Decision:
    target = decision.rollout.target
    assert target is not None
    # Pods that staged the target swap to it; the rest catch up from a peer afterwards.
    swapping = [p for p in serving if target in p.staged or p.active == target]
    done = [p for p in swapping if p.active == target]
    if swapping and len(done) == len(swapping):
        decision.active = target
        if inputs.active and inputs.active != target:
            previous = next((c for c in inputs.cuts if c.id == inputs.active), None)
            if previous is not None and previous.phase == PROMOTED:
                decision.cut_phases[inputs.active] = SUPERSEDED
        if inputs.cdn:
            decision.rollout = Rollout(
                target=target,
                phase=PHASE_PURGING,
                started_at=decision.rollout.started_at,
                committed_at=decision.rollout.committed_at,
            )
            decision.events.append(
                (
                    "Swapped",
                    f"cut {target} live on {len(done)}/{len(serving)} pods; purging the CDN",
                )
            )
            return _purging(inputs, decision, now)
        decision.rollout = Rollout()
        decision.cut_phases[target] = PROMOTED
        decision.events.append(
            ("Promoted", f"promoted cut {target} on {len(done)}/{len(serving)} pods")
        )
        return decision
    committed = decision.rollout.committed_at or now
    if swapping and now - committed >= inputs.stage_timeout:
        return _commit_timeout(inputs, decision, swapping, done, now)
    if not swapping:
        # Every pod that had staged the target is gone; start the target over on the pods there are.
        decision.events.append(
            ("CommitRestarted", f"no pod holds staged cut {target}; staging again")
        )
        decision.rollout = Rollout(target=target, phase=PHASE_STAGING, started_at=now)
        decision.cut_phases[target] = STAGING
    return decision


def _commit_timeout(
    inputs: Inputs,
    decision: Decision,
    swapping: list[PodView],
    done: list[PodView],
    now: datetime,
) -> Decision:
    """A commit some pods never finished (a frozen agent): promote on the rest, or abandon it."""
    target = decision.rollout.target
    assert target is not None
    lagging = tuple(sorted(p.name for p in swapping if p not in done))
    seconds = int(inputs.stage_timeout.total_seconds())
    decision.excluded = lagging
    if done:
        decision.active = target
        decision.rollout = Rollout()
        decision.cut_phases[target] = PROMOTED
        if inputs.active and inputs.active != target:
            previous = next((c for c in inputs.cuts if c.id == inputs.active), None)
            if previous is not None and previous.phase == PROMOTED:
                decision.cut_phases[inputs.active] = SUPERSEDED
        decision.events.append(
            (
                "CommitTimeout",
                f"pods {', '.join(lagging)} did not swap to cut {target} within {seconds}s; "
                f"promoted on {len(done)} pods, the rest leave rotation until they catch up",
            )
        )
        if inputs.cdn:
            # Live on every pod still in rotation: the purge is due now, as after a full commit.
            del decision.cut_phases[target]
            decision.rollout = Rollout(
                target=target,
                phase=PHASE_PURGING,
                started_at=inputs.rollout.started_at,
                committed_at=inputs.rollout.committed_at,
            )
            return _purging(inputs, decision, now)
        return decision
    decision.cut_phases[target] = FAILED
    decision.rollout = Rollout()
    decision.events.append(
        (
            "RolloutAbandoned",
            f"no pod swapped to cut {target} within {seconds}s of the commit; "
            f"abandoned it, still serving {inputs.active}",
        )
    )
    return decision


def _purging(inputs: Inputs, decision: Decision, now: datetime) -> Decision:
    target = decision.rollout.target
    assert target is not None
    cut = next((c for c in inputs.cuts if c.id == target), None)
    purge = cut.purge if cut is not None else PurgeView()
    if purge.outcome == PURGE_SUCCEEDED or not inputs.cdn:
        # Purged, or the CDN was removed from the spec meanwhile: nothing left to purge.
        decision.rollout = Rollout()
        decision.cut_phases[target] = PROMOTED
        how = "and purged the CDN" if inputs.cdn else "(no CDN to purge any more)"
        decision.events.append(("Promoted", f"promoted cut {target} {how}"))
        return decision
    if purge.outcome == PURGE_FAILED and purge.next_attempt_at and now < purge.next_attempt_at:
        return decision
    # Never requested, failed and due again, or Pending after an operator restart mid-request.
    decision.purge = target
    return decision
