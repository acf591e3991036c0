"""Table tests of the promotion state machine: every transition of decide(inputs, now)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from difusor.logic.promotion import (
    COMMITTED,
    FAILED,
    IDLE,
    PHASE_COMMITTING,
    PHASE_PURGING,
    PHASE_STAGING,
    PROMOTED,
    PURGE_FAILED,
    PURGE_PENDING,
    PURGE_SUCCEEDED,
    REJECTED,
    STAGING,
    SUPERSEDED,
    VERIFIED,
    CutView,
    Inputs,
    PodView,
    PurgeView,
    Rollout,
    decide,
    desired_cut,
    moved,
)

pytestmark = pytest.mark.unit

T0 = datetime(2024, 6, 2, 20, 40, tzinfo=UTC)
OLD, NEW, NEWER = "20240602_2020", "20240602_2040", "20240602_2100"


def cut(id_: str, phase: str = VERIFIED) -> CutView:
    return CutView(
        id=id_, phase=phase, time=f"{id_[:4]}-{id_[4:6]}-{id_[6:8]}T{id_[9:11]}:{id_[11:]}:00-06:00"
    )


def pods(*specs: tuple[str, set[str], str | None]) -> tuple[PodView, ...]:
    return tuple(PodView(name=n, staged=frozenset(s), active=a) for n, s, a in specs)


def three(staged: set[str], active: str | None = OLD, *, staged_on: int = 3) -> tuple[PodView, ...]:
    return tuple(
        PodView(name=f"w-{i}", staged=frozenset(staged if i < staged_on else set()), active=active)
        for i in range(3)
    )


BASE = Inputs(
    active=OLD,
    rollout=Rollout(),
    pods=three(set()),
    cuts=(cut(OLD, PROMOTED), cut(NEW)),
    stage_timeout=timedelta(seconds=120),
    min_ready=2,
)


def test_a_new_verified_cut_starts_staging_on_every_pod() -> None:
    d = decide(BASE, T0)
    assert d.rollout == Rollout(target=NEW, phase=PHASE_STAGING, started_at=T0)
    assert d.cut_phases == {NEW: STAGING}
    assert d.active == OLD
    assert ("StagingCut", f"staging cut {NEW} on every web pod") in d.events


def test_nothing_happens_when_the_active_cut_is_the_newest() -> None:
    inputs = replace(BASE, cuts=(cut(OLD, PROMOTED),))
    d = decide(inputs, T0)
    assert d.rollout == Rollout()
    assert d.cut_phases == {}
    assert d.events == []


def test_rejected_cuts_are_never_promoted() -> None:
    inputs = replace(BASE, cuts=(cut(OLD, PROMOTED), cut(NEW, REJECTED)))
    assert decide(inputs, T0).rollout == Rollout()


def test_the_first_cut_of_the_night_is_promoted_with_no_active_cut() -> None:
    inputs = replace(BASE, active=None, cuts=(cut(NEW),), pods=three(set(), active=None))
    assert decide(inputs, T0).rollout.target == NEW


#: NEW staging since T0, staged on two of the three pods.
STAGING_NEW = Rollout(target=NEW, phase=PHASE_STAGING, started_at=T0)
WAITING = replace(
    BASE,
    rollout=STAGING_NEW,
    pods=three({NEW}, staged_on=2),
    cuts=(cut(OLD, PROMOTED), cut(NEW, STAGING)),
)


def test_staging_waits_while_some_pods_have_not_staged_before_the_timeout() -> None:
    d = decide(WAITING, T0 + timedelta(seconds=30))
    assert d.rollout == STAGING_NEW
    assert d.cut_phases == {}


def test_when_every_serving_pod_has_staged_the_cut_is_committed() -> None:
    staging = Rollout(target=NEW, phase=PHASE_STAGING, started_at=T0)
    inputs = replace(
        BASE, rollout=staging, pods=three({NEW}), cuts=(cut(OLD, PROMOTED), cut(NEW, STAGING))
    )
    now = T0 + timedelta(seconds=2)
    d = decide(inputs, now)
    assert d.rollout == Rollout(target=NEW, phase=PHASE_COMMITTING, started_at=T0, committed_at=now)
    assert d.cut_phases == {NEW: COMMITTED}
    assert d.excluded == ()


def test_a_step_that_moves_the_rollout_is_followed_by_another_and_one_that_waits_is_not() -> None:
    assert moved(BASE, decide(BASE, T0))  # Verified -> Staging
    assert not moved(WAITING, decide(WAITING, T0 + timedelta(seconds=1)))
    everyone = replace(WAITING, pods=three({NEW}))
    assert moved(everyone, decide(everyone, T0 + timedelta(seconds=1)))  # -> Committing
    idle = replace(BASE, cuts=(cut(OLD, PROMOTED),))
    assert not moved(idle, decide(idle, T0))
    marked = replace(BASE, cuts=(cut(OLD, VERIFIED),))  # the active cut gets Promoted: a write
    assert moved(marked, decide(marked, T0))


def test_a_pod_that_misses_the_stage_timeout_is_left_out_and_the_rest_commit() -> None:
    d = decide(WAITING, T0 + timedelta(seconds=121))
    assert d.rollout.phase == PHASE_COMMITTING
    assert d.excluded == ("w-2",)
    assert d.events[0][0] == "StageTimeout"
    assert "w-2" in d.events[0][1]
    # The reason the pod gave goes with it; one about another cut does not.
    failing = replace(WAITING.pods[2], error=f"{NEW}: no pod could send it; disk full")
    d = decide(replace(WAITING, pods=(*WAITING.pods[:2], failing)), T0 + timedelta(seconds=121))
    assert d.events[0][1].endswith("committing on 2/3 pods; w-2: no pod could send it; disk full")
    older = replace(failing, error=f"{OLD}: no pod could send it")
    d = decide(replace(WAITING, pods=(*WAITING.pods[:2], older)), T0 + timedelta(seconds=121))
    assert d.events[0][1].endswith("committing on 2/3 pods")


def test_a_promotion_below_the_minimum_fails_and_the_site_keeps_its_cut() -> None:
    inputs = replace(WAITING, pods=three({NEW}, staged_on=1))
    d = decide(inputs, T0 + timedelta(seconds=121))
    assert d.rollout == Rollout()
    assert d.active == OLD
    assert d.cut_phases == {NEW: FAILED}
    assert d.events[-1][0] == "PromotionFailed"
    # A failed cut is not retried on the next pass.
    again = decide(
        replace(inputs, rollout=d.rollout, cuts=(cut(OLD, PROMOTED), cut(NEW, FAILED))),
        T0 + timedelta(seconds=130),
    )
    assert again.rollout == Rollout()


def test_a_pod_joining_mid_staging_must_stage_too() -> None:
    staging = Rollout(target=NEW, phase=PHASE_STAGING, started_at=T0)
    joined = (*three({NEW}), PodView(name="w-3", active=None))
    inputs = replace(
        BASE, rollout=staging, pods=joined, cuts=(cut(OLD, PROMOTED), cut(NEW, STAGING))
    )
    assert decide(inputs, T0 + timedelta(seconds=5)).rollout == staging
    caught_up = (*three({NEW}), PodView(name="w-3", staged=frozenset({NEW})))
    assert (
        decide(replace(inputs, pods=caught_up), T0 + timedelta(seconds=6)).rollout.phase
        == PHASE_COMMITTING
    )


def test_a_pod_leaving_mid_staging_does_not_hold_the_promotion() -> None:
    staging = Rollout(target=NEW, phase=PHASE_STAGING, started_at=T0)
    leaving = (*three({NEW}, staged_on=2)[:2], PodView(name="w-2", serving=False))
    inputs = replace(
        BASE, rollout=staging, pods=leaving, cuts=(cut(OLD, PROMOTED), cut(NEW, STAGING))
    )
    assert decide(inputs, T0 + timedelta(seconds=5)).rollout.phase == PHASE_COMMITTING


def test_committing_waits_until_every_pod_that_staged_serves_the_cut() -> None:
    committing = Rollout(target=NEW, phase=PHASE_COMMITTING, started_at=T0, committed_at=T0)
    half = pods(("w-0", {NEW}, NEW), ("w-1", {NEW}, OLD), ("w-2", {NEW}, OLD))
    inputs = replace(
        BASE, rollout=committing, pods=half, cuts=(cut(OLD, PROMOTED), cut(NEW, COMMITTED))
    )
    d = decide(inputs, T0 + timedelta(seconds=1))
    assert d.rollout == committing
    assert d.active == OLD


def test_when_every_staged_pod_serves_the_cut_it_is_promoted() -> None:
    committing = Rollout(target=NEW, phase=PHASE_COMMITTING, started_at=T0, committed_at=T0)
    done = pods(("w-0", {NEW}, NEW), ("w-1", {NEW}, NEW), ("w-2", set(), OLD))
    inputs = replace(
        BASE, rollout=committing, pods=done, cuts=(cut(OLD, PROMOTED), cut(NEW, COMMITTED))
    )
    d = decide(inputs, T0 + timedelta(seconds=1))
    assert d.active == NEW
    assert d.rollout == Rollout()
    assert d.cut_phases == {NEW: PROMOTED, OLD: SUPERSEDED}
    assert d.events[-1] == ("Promoted", f"promoted cut {NEW} on 2/3 pods")


def test_a_newer_cut_while_staging_supersedes_the_older() -> None:
    staging = Rollout(target=NEW, phase=PHASE_STAGING, started_at=T0)
    inputs = replace(
        BASE, rollout=staging, pods=three({NEW}, staged_on=1),
        cuts=(cut(OLD, PROMOTED), cut(NEW, STAGING), cut(NEWER)),
    )  # fmt: skip
    now = T0 + timedelta(seconds=10)
    d = decide(inputs, now)
    assert d.cut_phases == {NEW: SUPERSEDED, NEWER: STAGING}
    assert d.rollout == Rollout(target=NEWER, phase=PHASE_STAGING, started_at=now)
    assert d.events[0][0] == "CutSuperseded"


def test_a_newer_cut_while_committing_waits_for_the_commit_to_finish() -> None:
    committing = Rollout(target=NEW, phase=PHASE_COMMITTING, started_at=T0, committed_at=T0)
    half = pods(("w-0", {NEW}, NEW), ("w-1", {NEW}, OLD), ("w-2", {NEW}, OLD))
    inputs = replace(
        BASE, rollout=committing, pods=half,
        cuts=(cut(OLD, PROMOTED), cut(NEW, COMMITTED), cut(NEWER)),
    )  # fmt: skip
    d = decide(inputs, T0 + timedelta(seconds=1))
    assert d.rollout == committing
    assert NEWER not in d.cut_phases


@pytest.mark.parametrize("phase", [IDLE, PHASE_STAGING, PHASE_COMMITTING])
def test_decide_resumes_from_status_alone_after_an_operator_restart(phase: str) -> None:
    # The operator keeps nothing in memory: the same status and reports give the same decision.
    rollout = (
        Rollout()
        if phase == IDLE
        else Rollout(target=NEW, phase=phase, started_at=T0, committed_at=T0)
    )
    inputs = replace(
        BASE, rollout=rollout, pods=three({NEW}, active=NEW if phase == PHASE_COMMITTING else OLD)
    )
    first = decide(inputs, T0 + timedelta(seconds=3))
    second = decide(inputs, T0 + timedelta(seconds=3))
    assert first == second
    if phase == PHASE_COMMITTING:
        assert first.active == NEW


def test_commit_restarts_staging_when_every_staged_pod_is_gone() -> None:
    committing = Rollout(target=NEW, phase=PHASE_COMMITTING, started_at=T0, committed_at=T0)
    fresh = pods(("w-0", set(), OLD), ("w-1", set(), OLD))
    inputs = replace(
        BASE, rollout=committing, pods=fresh, cuts=(cut(OLD, PROMOTED), cut(NEW, COMMITTED))
    )
    now = T0 + timedelta(seconds=9)
    d = decide(inputs, now)
    assert d.rollout == Rollout(target=NEW, phase=PHASE_STAGING, started_at=now)
    assert d.events[0][0] == "CommitRestarted"


def test_pinning_an_older_cut_rolls_back_through_the_same_path() -> None:
    inputs = replace(
        BASE,
        active=NEW,
        pods=three(set(), active=NEW),
        cuts=(cut(OLD, SUPERSEDED), cut(NEW, PROMOTED)),
        pinned=OLD,
    )
    d = decide(inputs, T0)
    assert d.rollout.target == OLD
    assert d.cut_phases == {OLD: STAGING}


def test_a_pinned_cut_holds_even_when_newer_cuts_arrive() -> None:
    inputs = replace(BASE, active=OLD, cuts=(cut(OLD, PROMOTED), cut(NEW), cut(NEWER)), pinned=OLD)
    assert desired_cut(inputs) == OLD
    assert decide(inputs, T0).rollout == Rollout()


def test_unpinning_returns_to_the_newest_cut() -> None:
    inputs = replace(BASE, active=OLD, cuts=(cut(OLD, PROMOTED), cut(NEW, SUPERSEDED)), pinned=None)
    assert desired_cut(inputs) == NEW


def test_a_pinned_cut_that_does_not_exist_keeps_the_active_one_and_says_so() -> None:
    inputs = replace(BASE, pinned="20990101_0000")
    d = decide(inputs, T0)
    assert d.rollout == Rollout()
    assert d.events[0][0] == "PinnedCutMissing"


def test_the_active_cut_is_marked_promoted_once() -> None:
    inputs = replace(BASE, cuts=(cut(OLD, COMMITTED),))
    assert decide(inputs, T0).cut_phases == {OLD: PROMOTED}
    inputs = replace(BASE, cuts=(cut(OLD, PROMOTED),))
    assert decide(inputs, T0).cut_phases == {}


def test_a_pod_that_never_swaps_is_left_out_after_the_timeout_and_the_rest_promote() -> None:
    committing = Rollout(target=NEW, phase=PHASE_COMMITTING, started_at=T0, committed_at=T0)
    frozen = pods(("w-0", {NEW}, NEW), ("w-1", {NEW}, NEW), ("w-2", {NEW}, OLD))
    inputs = replace(
        BASE, rollout=committing, pods=frozen, cuts=(cut(OLD, PROMOTED), cut(NEW, COMMITTED))
    )
    assert decide(inputs, T0 + timedelta(seconds=119)).rollout == committing
    d = decide(inputs, T0 + timedelta(seconds=120))
    assert d.active == NEW
    assert d.rollout == Rollout()
    assert d.excluded == ("w-2",)
    assert d.cut_phases == {NEW: PROMOTED, OLD: SUPERSEDED}
    assert d.events[0][0] == "CommitTimeout"
    assert "w-2" in d.events[0][1]


def test_a_commit_no_pod_finishes_is_abandoned_and_the_site_keeps_its_cut() -> None:
    committing = Rollout(target=NEW, phase=PHASE_COMMITTING, started_at=T0, committed_at=T0)
    stuck = pods(("w-0", {NEW}, OLD), ("w-1", {NEW}, OLD))
    inputs = replace(
        BASE, rollout=committing, pods=stuck, cuts=(cut(OLD, PROMOTED), cut(NEW, COMMITTED))
    )
    d = decide(inputs, T0 + timedelta(seconds=121))
    assert d.active == OLD
    assert d.rollout == Rollout()
    assert d.cut_phases == {NEW: FAILED}
    assert d.events[0][0] == "RolloutAbandoned"


# -- the CDN purge step ------------------------------------------------------------------------


def purging(purge: PurgeView, *, cuts: tuple[CutView, ...] | None = None) -> Inputs:
    return replace(
        BASE,
        active=NEW,
        cdn=True,
        rollout=Rollout(target=NEW, phase=PHASE_PURGING, started_at=T0),
        pods=three({NEW}, NEW),
        cuts=cuts or (cut(OLD, SUPERSEDED), replace(cut(NEW, COMMITTED), purge=purge)),
    )


def test_with_a_cdn_the_last_swap_starts_the_purge_before_the_cut_is_promoted() -> None:
    inputs = replace(
        BASE,
        cdn=True,
        rollout=Rollout(target=NEW, phase=PHASE_COMMITTING, started_at=T0),
        pods=three({NEW}, NEW),
        cuts=(cut(OLD, PROMOTED), cut(NEW, COMMITTED)),
    )
    d = decide(inputs, T0 + timedelta(seconds=5))
    assert d.active == NEW
    assert d.rollout.phase == PHASE_PURGING
    assert d.purge == NEW
    assert NEW not in d.cut_phases
    assert d.cut_phases[OLD] == SUPERSEDED


def test_no_purge_goes_out_while_a_pod_has_not_swapped() -> None:
    inputs = replace(
        BASE,
        cdn=True,
        rollout=Rollout(target=NEW, phase=PHASE_COMMITTING, started_at=T0),
        pods=(*three({NEW}, NEW)[:2], PodView(name="w-2", staged=frozenset({NEW}), active=OLD)),
        cuts=(cut(OLD, PROMOTED), cut(NEW, COMMITTED)),
    )
    d = decide(inputs, T0 + timedelta(seconds=5))
    assert d.purge is None
    assert d.rollout.phase == PHASE_COMMITTING


def test_an_acknowledged_purge_promotes_the_cut_and_ends_the_rollout() -> None:
    d = decide(purging(PurgeView(outcome=PURGE_SUCCEEDED)), T0)
    assert d.purge is None
    assert d.rollout.phase == IDLE
    assert d.cut_phases[NEW] == PROMOTED


def test_a_failed_purge_waits_for_its_next_attempt_and_never_rolls_back() -> None:
    later = T0 + timedelta(seconds=30)
    waiting = decide(purging(PurgeView(outcome=PURGE_FAILED, next_attempt_at=later)), T0)
    assert waiting.purge is None
    assert waiting.active == NEW
    assert waiting.rollout.phase == PHASE_PURGING
    due = decide(purging(PurgeView(outcome=PURGE_FAILED, next_attempt_at=later)), later)
    assert due.purge == NEW


def test_a_purge_pending_at_an_operator_restart_is_sent_again() -> None:
    assert decide(purging(PurgeView(outcome=PURGE_PENDING)), T0).purge == NEW


def test_a_newer_cut_does_not_wait_for_a_failing_purge() -> None:
    failing = PurgeView(outcome=PURGE_FAILED, next_attempt_at=T0 + timedelta(minutes=5))
    inputs = purging(
        failing,
        cuts=(cut(OLD, SUPERSEDED), replace(cut(NEW, COMMITTED), purge=failing), cut(NEWER)),
    )
    d = decide(inputs, T0)
    assert d.purge_skipped == NEW
    assert d.cut_phases[NEW] == PROMOTED
    assert d.rollout.target == NEWER
    assert d.rollout.phase == PHASE_STAGING


def test_a_cdn_removed_from_the_spec_mid_purge_lets_the_cut_be_promoted() -> None:
    inputs = replace(purging(PurgeView(outcome=PURGE_FAILED)), cdn=False)
    d = decide(inputs, T0)
    assert d.purge is None
    assert d.rollout.phase == IDLE
    assert d.cut_phases[NEW] == PROMOTED
