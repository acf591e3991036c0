"""Drives promotions: gathers pods, cuts and status, asks logic.promotion.decide, writes the result."""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

from kubernetes import client as k8s

from difusor.controller.incidents import Incidents
from difusor.controller.mirror import Mirror, without_managed_fields
from difusor.controller.purge import PodAddress, Purger, cut_purge_patch, summary
from difusor.controller.refresher import Refresher
from difusor.kube import core_path, custom_path, patch_status, publication_event, read, request
from difusor.logic.conditions import PURGE_FAILED_REASON, set_condition
from difusor.logic.promotion import (
    COMMITTED,
    PROMOTED,
    PURGE_SKIPPED,
    STAGING,
    CutView,
    Decision,
    Inputs,
    PodView,
    PurgeView,
    Rollout,
    decide,
    moved,
)
from difusor.metrics import OperatorMetrics
from difusor.models import (
    CdnProvider,
    PrepPublicationSpec,
    cut_object_name,
    parse_time,
)
from difusor.render.labels import (
    ACTIVE_ANNOTATION,
    INSTANCE_LABEL,
    PUBLICATION_LABEL,
    STAGE_ERROR_ANNOTATION,
    STAGED_ANNOTATION,
    selector_labels,
    selector_string,
)

log = logging.getLogger(__name__)

Obj = dict[str, Any]
REPEAT_AFTER = timedelta(minutes=10)
#: PrepCut versions written by the operator remembered to recognise their watch events (a
#: promotion writes about five; the events come within a second).
WRITTEN_KEPT = 256
#: Steps one call takes in a row because each moved the rollout (Verified -> Staging ->
#: Committing -> Promoted is at most three; a purge adds one): a bound, should a decision keep
#: writing the same thing.
MAX_FOLLOW_UPS = 5
#: Threads for the steps watch events ask for: steps of different publications run side by side.
STEP_THREADS = 4
#: Promotion events that mean a rollout got stuck: each opens (or adds to) an incident.
STUCK = ("StageTimeout", "CommitTimeout", "PromotionFailed", "RolloutAbandoned")
STAGING_PHASE, COMMITTING_PHASE = "Staging", "Committing"
#: Promotion events that say something went wrong (Warning Events, counted as failures).
WARNINGS = frozenset(
    {"StageTimeout", "CommitTimeout", "PromotionFailed", "RolloutAbandoned", "PinnedCutMissing"}
)


def _stamp(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _rollout_of(status: Obj) -> Rollout:
    raw = status.get("rollout") or {}
    started = raw.get("startedAt")
    committed = raw.get("committedAt")
    return Rollout(
        target=raw.get("targetCut"),
        phase=raw.get("phase") or "Idle",
        started_at=parse_time(started) if started else None,
        committed_at=parse_time(committed) if committed else None,
    )


def _rollout_status(rollout: Rollout, target: Obj | None = None, pods: tuple[Obj, ...] = ()) -> Obj:
    """The rollout as the status has it; with the target's PrepCut, where every pod fetches
    it from: the agents start staging from this one watch event, without reading anything."""
    spec = (target or {}).get("spec") or {}
    received_by = spec.get("receivedBy") if rollout.target else None
    address = next((_pod_ip(p) for p in pods if p["metadata"]["name"] == received_by), "")
    out: Obj = {
        "phase": rollout.phase,
        "targetCut": rollout.target,
        "startedAt": None,
        "committedAt": None,
        "manifestDigest": spec.get("manifestDigest") if rollout.target else None,
        "receivedBy": received_by,
        "receivedByIP": address or None,
    }
    if rollout.started_at:
        out["startedAt"] = _stamp(rollout.started_at)
    if rollout.committed_at:
        out["committedAt"] = _stamp(rollout.committed_at)
    return out


def _purge_view(raw: Obj) -> PurgeView:
    at = raw.get("nextAttemptAt")
    return PurgeView(outcome=raw.get("outcome"), next_attempt_at=parse_time(at) if at else None)


class Promoter:
    """One promotion step per call; serialised per publication across the threads that call it
    (kopf's handler threads, and the promoter's own for the steps watch events ask for).

    Calls that arrive while a step of the same publication runs (ten pods reporting at once)
    do not queue behind it one by one: they ask for one more step, taken right after it with
    everything they reported.
    """

    def __init__(
        self,
        api: k8s.ApiClient,
        metrics: OperatorMetrics | None = None,
        purger: Purger | None = None,
    ) -> None:
        self.api = api
        self.metrics = metrics or OperatorMetrics()
        self.incidents = Incidents(api, self.metrics)
        self.purger = purger or Purger(api)
        # PrepCuts and web pods as kopf's watches deliver them (handlers.cut_changed and
        # pod_reported feed these): a step reads no list, however many cuts the night has had.
        self.cuts = Mirror(self._list_cuts, _cut_publication)
        self.pods = Mirror(self._list_pods, _pod_publication, slim=pod_essentials)
        self._guard = threading.Lock()
        self._running: set[tuple[str, str]] = set()
        self._again: set[tuple[str, str]] = set()
        self._said: dict[tuple[str, ...], datetime] = {}
        # The versions of PrepCuts the operator's own writes made (see wrote), the latest kept.
        self._written: OrderedDict[tuple[str, str, str], None] = OrderedDict()
        # Pods' reports on a rollout's target, noted until the next phase writes them.
        self._reports: dict[tuple[str, str, str], Obj] = {}
        # Up to three reads per step (the mirrors list when due), and as many steps at once as
        # kopf runs handlers (settings in handlers.configure) and the promoter's own threads
        # beside them; the threads start when needed.
        self._reads = ThreadPoolExecutor(max_workers=16, thread_name_prefix="promotion-read")
        # Steps that watch events ask for (nudge) run here, not in the event's kopf handler.
        self._asked: Refresher[tuple[str, str], None] = Refresher(
            self._step_asked, threads=STEP_THREADS, name="promotion"
        )

    def _fresh(self, key: tuple[str, ...], now: datetime) -> bool:
        """False for an Event said in the last ten minutes (a standing condition is said once)."""
        said = self._said.get(key)
        if said is not None and now - said < REPEAT_AFTER:
            return False
        self._said = {k: t for k, t in self._said.items() if now - t < REPEAT_AFTER}
        self._said[key] = now
        return True

    def step(self, namespace: str, name: str, now: datetime) -> Decision | None:
        """Gather, decide and act for one publication; None when it is gone or invalid, or when
        a step of it was running (it takes one more step after, for this call)."""
        key = (namespace, name)
        with self._guard:
            if key in self._running:
                self._again.add(key)
                return None
            self._running.add(key)
        follow_ups = 0
        try:
            while True:
                decision, moving = self._one_step(namespace, name, now)
                # A step that moved the rollout decides again at once: the watch events of its
                # own writes start no step (handlers.cut_changed), so none would come otherwise.
                follow_ups = follow_ups + 1 if moving else 0
                with self._guard:
                    if key not in self._again and not (moving and follow_ups <= MAX_FOLLOW_UPS):
                        self._running.discard(key)
                        return decision
                    self._again.discard(key)
                now = datetime.now(UTC)
        except BaseException:
            with self._guard:
                self._running.discard(key)
                self._again.discard(key)
            raise

    def nudge(self, namespace: str, name: str) -> None:
        """Have a step of the publication taken soon, without waiting for it.

        Watch events of pods and PrepCuts ask for steps this way. A kopf handler that took the
        step itself waited for one of kopf's threads, and kept its event's object until then:
        when 50 publications arrive, the reconciles hold those threads for seconds, and the
        pods' events piled up behind them (the operator's peak memory). A step asked for while
        one is queued is that step; while one runs, it is one more step after it (Refresher).
        """
        self._asked.ask((namespace, name), None)

    def _step_asked(self, key: tuple[str, str], _: None) -> None:
        try:
            self.step(*key, datetime.now(UTC))
        except Exception:
            log.exception("Promotion step of %s/%s failed", *key)

    def _list_cuts(self, namespace: str, publication: str) -> Obj:
        query = [("labelSelector", f"{PUBLICATION_LABEL}={publication}")]
        return request(self.api, "GET", custom_path(namespace, "prepcuts"), query=query)

    def _list_pods(self, namespace: str, publication: str) -> Obj:
        query = [("labelSelector", selector_string(publication))]
        return request(self.api, "GET", core_path(namespace, "pods"), query=query)

    def _patch_status(self, namespace: str, plural: str, name: str, status: Obj) -> Obj:
        """Merge `status` into a publication's or a PrepCut's status; the answer goes to the
        mirror, which has it before the watch brings it."""
        answer = patch_status(self.api, namespace, plural, name, status)
        if plural == "prepcuts":
            self.cuts.saw(answer)
            with self._guard:
                self._written[_identity(answer)] = None
                while len(self._written) > WRITTEN_KEPT:
                    self._written.popitem(last=False)
        return answer

    def pod_seen(self, pod: Obj, *, deleted: bool = False) -> bool:
        """Take a pod's watch event into the mirror; whether a step has something to look at:
        the pod came or went, or changed what a step reads of it (its reports, its address, its
        deletion). A new web pod's other events (scheduled, ready) asked for a step each, and
        each step reads its publication from the API server."""
        before = self.pods.held(pod)
        if not self.pods.saw(pod, deleted=deleted):
            return False
        return deleted or before is None or _step_reads(before) != _step_reads(pod)

    def wrote(self, obj: Obj) -> bool:
        """Whether this version of a PrepCut is one the operator's own write made: its watch
        event brings nothing a step has not decided on. Any other version may, even one older
        than the mirror's copy (an agent's write just before the operator's)."""
        with self._guard:
            return _identity(obj) in self._written

    def _one_step(self, namespace: str, name: str, now: datetime) -> tuple[Decision | None, bool]:
        """The step's decision, and whether it moved the rollout (see logic.promotion.moved)."""
        # The reads go at once: a step is on the path of every promotion twice (the pods'
        # staged reports, then their swaps), and one read after the other tripled its wait.
        # The mirrors answer from memory, except when a list is due.
        pods = self._reads.submit(self.pods.items, namespace, name)
        cuts = self._reads.submit(self.cuts.items, namespace, name)
        publication = read(self.api, custom_path(namespace, "preppublications", name))
        if publication is None:
            self.cuts.forget(namespace, name)
            self.pods.forget(namespace, name)
            for key in [k for k in self._reports if k[:2] == (namespace, name)]:
                del self._reports[key]
            return None, False
        try:
            spec = PrepPublicationSpec.model_validate(publication.get("spec") or {})
        except ValueError:
            return None, False
        return self._step(publication, spec, now, pods.result(), cuts.result())

    def _step(
        self,
        publication: Obj,
        spec: PrepPublicationSpec,
        now: datetime,
        pods: list[Obj],
        cuts_raw: list[Obj],
    ) -> tuple[Decision, bool]:
        status = publication.get("status") or {}
        views = tuple(_pod_view(p) for p in pods)
        cuts = tuple(
            CutView(
                id=c["spec"]["id"],
                phase=(c.get("status") or {}).get("phase") or "Received",
                time=c["spec"].get("time"),
                purge=_purge_view((c.get("status") or {}).get("purge") or {}),
            )
            for c in cuts_raw
        )
        active = (status.get("activeCut") or {}).get("id")
        inputs = Inputs(
            active=active,
            rollout=_rollout_of(status),
            pods=views,
            cuts=cuts,
            pinned=spec.pinned_cut,
            stage_timeout=timedelta(seconds=spec.promotion.stage_timeout_seconds),
            min_ready=spec.promotion.min_ready_replicas,
            cdn=spec.cdn.provider is not CdnProvider.NONE,
        )
        decision = decide(inputs, now)
        by_id = self._act(publication, inputs, decision, cuts_raw, tuple(pods), now)
        if decision.purge:
            # Pods serving the target first: they surely hold it.
            addresses = sorted(
                (PodAddress(p["metadata"]["name"], _pod_ip(p)) for p in pods if _pod_ip(p)),
                key=lambda a: next(
                    (v.active != decision.purge for v in views if v.name == a.name), True
                ),
            )
            self._purge(publication, spec, decision.purge, by_id, addresses)
        return decision, moved(inputs, decision)

    def _act(
        self,
        publication: Obj,
        inputs: Inputs,
        decision: Decision,
        cuts_raw: list[Obj],
        pods: tuple[Obj, ...],
        now: datetime,
    ) -> dict[str, Obj]:
        """Write what the decision says; answers the cuts by id as they are after it."""
        meta = publication["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        by_id = {c["spec"]["id"]: c for c in cuts_raw}
        # Events go out before the status they explain: a crash in between repeats an Event on the
        # next pass, where the other order would lose it.
        for reason, message in decision.events:
            if not self._fresh((namespace, name, reason, message), now):
                continue
            log.info("Publication %s/%s: %s", namespace, name, message)
            publication_event(
                self.api,
                metadata=meta,
                reason=reason,
                message=message[0].upper() + message[1:],
                warning=reason in WARNINGS,
                component="difusor-operator",
            )
        patch: Obj = {}
        if decision.rollout != inputs.rollout:
            target_cut = by_id.get(decision.rollout.target or "")
            patch["rollout"] = _rollout_status(decision.rollout, target_cut, pods)
        if decision.active != inputs.active and decision.active:
            cut = by_id.get(decision.active, {})
            patch["activeCut"] = {
                "id": decision.active,
                "time": (cut.get("spec") or {}).get("time"),
                "promotedAt": _stamp(now),
            }
        if patch:
            self._patch_status(namespace, "preppublications", name, patch)
        self._observe(publication, inputs, decision, by_id, now)
        target = decision.rollout.target or inputs.rollout.target
        if target and target in by_id:
            self._note_reports(namespace, name, by_id[target], inputs.pods, now)
        # One write per PrepCut the step changes, carrying the pods' reports noted on it.
        writes: dict[str, Obj] = {}
        went_live = decision.active if decision.active != inputs.active else None
        if went_live and not (by_id.get(went_live, {}).get("status") or {}).get("servingAt"):
            writes.setdefault(went_live, {})["servingAt"] = _stamp(now)
        if decision.purge_skipped:
            writes.setdefault(decision.purge_skipped, {})["purge"] = {
                "outcome": PURGE_SKIPPED,
                "nextAttemptAt": None,
            }
        for cut_id, phase in decision.cut_phases.items():
            writes.setdefault(cut_id, {}).update(_phase_patch(by_id.get(cut_id, {}), phase, now))
        if target and decision.rollout.phase != inputs.rollout.phase:
            # Committing -> Purging: every pod's swap is recorded before the purge goes out.
            writes.setdefault(target, {})
        for cut_id, patch in writes.items():
            reports = self._reports.pop((namespace, name, cut_id), None)
            if reports:
                patch["pods"] = reports
            if patch and cut_id in by_id:
                by_id[cut_id] = self._patch_status(
                    namespace, "prepcuts", cut_object_name(name, cut_id), patch
                )
        return by_id

    def _observe(
        self,
        publication: Obj,
        inputs: Inputs,
        decision: Decision,
        by_id: dict[str, Obj],
        now: datetime,
    ) -> None:
        """Metrics of the step, and an incident when a rollout got stuck."""
        meta = publication["metadata"]
        labels = (meta["namespace"], meta["name"])
        before, after = inputs.rollout, decision.rollout
        if before.phase == STAGING_PHASE and after.phase == COMMITTING_PHASE and before.started_at:
            seconds = (now - before.started_at).total_seconds()
            self.metrics.promotion_phase.labels(*labels, "Staging").observe(seconds)
        if (
            before.phase == COMMITTING_PHASE
            and after.phase != COMMITTING_PHASE
            and before.committed_at
        ):
            seconds = (now - before.committed_at).total_seconds()
            self.metrics.promotion_phase.labels(*labels, "Committing").observe(seconds)
        if decision.active and decision.active != inputs.active:
            self.metrics.cuts_promoted.labels(*labels).inc()
            received = ((by_id.get(decision.active) or {}).get("status") or {}).get("receivedAt")
            if received:
                seconds = (now - parse_time(received)).total_seconds()
                self.metrics.upload_to_live.labels(*labels).observe(seconds)
        stuck = [(r, m) for r, m in decision.events if r in STUCK]
        for reason, _message in stuck:
            self.metrics.promotion_failures.labels(*labels, reason).inc()
        if not stuck:
            return
        reason, message = stuck[-1]
        target = before.target or after.target or ""
        actions = {
            "StageTimeout": f"Left {', '.join(decision.excluded)} out of the commit of {target}",
            "CommitTimeout": f"Promoted {target} without {', '.join(decision.excluded)}; "
            "they leave rotation until they serve it",
            "PromotionFailed": f"Marked cut {target} Failed; kept serving {inputs.active}",
            "RolloutAbandoned": f"Abandoned cut {target}; kept serving {inputs.active}",
        }
        existing = self.incidents.open_ones(*labels, detected_by="Promotion")
        if existing:
            self.incidents.update(
                labels[0], existing[-1]["metadata"]["name"], action=actions[reason]
            )
            return
        self.incidents.open(
            publication,
            started_at=before.started_at or now,
            detected_by="Promotion",
            cause="PromotionStuck",
            root_cause=message[0].upper() + message[1:],
            impact={"affectedPods": list(decision.excluded)},
            actions=[actions[reason]],
            now=now,
        )

    def _purge(
        self,
        publication: Obj,
        spec: PrepPublicationSpec,
        cut_id: str,
        by_id: dict[str, Obj],
        pods: list[PodAddress],
    ) -> None:
        """One purge attempt, recorded on the PrepCut and the publication, with an Event."""
        meta = publication["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        status = publication.get("status") or {}
        previous = (by_id.get(cut_id, {}).get("status") or {}).get("purge") or {}
        attempts = int(previous.get("attempts") or 0) + 1
        provider = spec.cdn.provider.value
        cut_name = cut_object_name(name, cut_id)
        # Recorded before the first request: a restart mid-purge finds it Pending and sends again.
        self._patch_status(
            namespace, "prepcuts", cut_name,
            {"purge": {"provider": provider, "outcome": "Pending", "attempts": attempts,
                       "message": None}},
        )  # fmt: skip
        purged_cut = (status.get("purge") or {}).get("purgedCut")
        outcome = self.purger.run(
            namespace=namespace, publication=name, spec=spec, cut=cut_id, cuts=by_id,
            purged_cut=purged_cut, pods=pods, attempts=attempts,
        )  # fmt: skip
        patch = cut_purge_patch(outcome, provider=provider, attempts=attempts)
        self._patch_status(namespace, "prepcuts", cut_name, {"purge": patch})
        message = summary(outcome, cut_id, provider)
        labels = (namespace, name)
        if outcome.ok and outcome.completed_at:
            took = (outcome.completed_at - outcome.requested_at).total_seconds()
            self.metrics.purge_seconds.labels(*labels, provider).observe(took)
            live = (by_id.get(cut_id, {}).get("status") or {}).get("servingAt")
            if live:
                # The Purging phase: from the last pod's swap to the purge acknowledged.
                since = (outcome.completed_at - parse_time(live)).total_seconds()
                self.metrics.promotion_phase.labels(*labels, "Purging").observe(since)
        elif not outcome.ok:
            self.metrics.purge_failures.labels(*labels, provider).inc()
        stamp = _stamp(datetime.now(UTC))
        generation = int(meta.get("generation") or 1)
        conditions = list(status.get("conditions") or [])
        degraded: Obj = next((c for c in conditions if c.get("type") == "Degraded"), {})
        pub_purge: Obj = {"cut": cut_id, "outcome": patch["outcome"]}
        if outcome.ok:
            pub_purge.update(purgedCut=cut_id, message=None)
            if degraded.get("reason") == PURGE_FAILED_REASON:
                conditions = set_condition(
                    conditions, type_="Degraded", status=False, reason="PurgeSucceeded",
                    message=message, generation=generation, now=stamp,
                )  # fmt: skip
            log.info("Publication %s/%s: %s", namespace, name, message)
        else:
            pub_purge["message"] = outcome.message
            conditions = set_condition(
                conditions, type_="Degraded", status=True, reason=PURGE_FAILED_REASON,
                message=f"CDN purge of cut {cut_id} failed: {outcome.message}",
                generation=generation, now=stamp,
            )  # fmt: skip
            log.warning("Publication %s/%s: %s", namespace, name, message)
        status_patch: Obj = {"purge": pub_purge}
        if conditions != list(status.get("conditions") or []):
            status_patch["conditions"] = conditions
        self._patch_status(namespace, "preppublications", name, status_patch)
        publication_event(
            self.api,
            metadata=meta,
            reason="Purged" if outcome.ok else "PurgeFailed",
            message=message[0].upper() + message[1:],
            warning=not outcome.ok,
            component="difusor-operator",
        )

    def _note_reports(
        self, namespace: str, publication: str, cut: Obj, views: tuple[PodView, ...], now: datetime
    ) -> None:
        """Note what this step sees of the pods' progress on the rollout's target: when each pod
        was first seen to hold the cut and to serve it, and the reason a pod gave for not
        staging it.

        They are written with the next change of the cut's phase or of the rollout's (the
        commit carries every pod's stagedAt, the promotion every activeAt), not as each pod
        reports: at ten pods that was a dozen more writes of the PrepCut per promotion, each
        sent back to the operator by its watch. An operator restart between two phases forgets
        the times noted, and the next step notes them again, later.
        """
        cut_id = cut["spec"]["id"]
        stored: Obj = (cut.get("status") or {}).get("pods") or {}
        pending: Obj = self._reports.setdefault((namespace, publication, cut_id), {})
        for pod in views:
            report = {**(stored.get(pod.name) or {}), **(pending.get(pod.name) or {})}
            before = dict(report)
            staged = cut_id in pod.staged or pod.active == cut_id
            if staged and not report.get("stagedAt"):
                report["stagedAt"] = _stamp(now)
            reason = pod.error_for(cut_id)
            if reason and not staged and not report.get("error"):
                report["error"] = reason
            if pod.active == cut_id and not report.get("activeAt"):
                report["activeAt"] = _stamp(now)
            if report != before:
                written = stored.get(pod.name) or {}
                pending[pod.name] = {k: v for k, v in report.items() if k not in written}


#: A cut's times, in the order of its steps, and how many of them each phase has passed.
STEP_STAMPS = ("stagingAt", "stagedAt", "committedAt", "servingAt")
PASSED = {STAGING: 1, COMMITTED: 3, PROMOTED: 4}


def _phase_patch(cut: Obj, phase: str, now: datetime) -> Obj:
    """The status fields of a PrepCut entering `phase`.

    Each time is the cut's first passage through its step, set once: a cut staged again (a
    commit restarted because its pods went, a rollback to a pinned cut) keeps the times it has,
    so they stay in order and servingAt stays when the cut first went live (the memoria's lag).
    A step reached in one decision with the ones before it (every pod held the cut already)
    stamps them all with the same instant.
    """
    stamp = _stamp(now)
    current = cut.get("status") or {}
    patch: Obj = {"phase": phase}
    for key in STEP_STAMPS[: PASSED.get(phase, 0)]:
        if not current.get(key):
            patch[key] = stamp
    return patch


def _identity(obj: Obj) -> tuple[str, str, str]:
    meta = obj.get("metadata") or {}
    return (meta.get("namespace") or "", meta.get("name") or "", meta.get("resourceVersion") or "")


def _cut_publication(cut: Obj) -> str | None:
    """The publication a PrepCut belongs to, by the label its list selects on."""
    return ((cut.get("metadata") or {}).get("labels") or {}).get(PUBLICATION_LABEL)


def _pod_publication(pod: Obj) -> str | None:
    """The publication whose web pods' selector matches this pod, if any."""
    labels = (pod.get("metadata") or {}).get("labels") or {}
    publication = labels.get(INSTANCE_LABEL)
    if not publication or any(labels.get(k) != v for k, v in selector_labels(publication).items()):
        return None
    return str(publication)


#: The fields of a pod's status that a step (_pod_view) and the prober (monitor._ready) read.
POD_STATUS_READ = ("phase", "podIP", "conditions")


def pod_essentials(pod: Obj) -> Obj:
    """A web pod as the mirror keeps it: its metadata without managedFields, and the status
    fields read. The spec and the containers' statuses were most of each pod the operator held
    (three containers' images, mounts, environment and states), read by no step."""
    status = pod.get("status") or {}
    return {
        "metadata": without_managed_fields(pod).get("metadata") or {},
        "status": {k: status[k] for k in POD_STATUS_READ if k in status},
    }


def _pod_ip(pod: Obj) -> str:
    return str((pod.get("status") or {}).get("podIP") or "")


def _step_reads(pod: Obj) -> tuple[PodView, str]:
    """What a step reads of a pod (_pod_view, and the address it names in the rollout)."""
    return _pod_view(pod), _pod_ip(pod)


def _pod_view(pod: Obj) -> PodView:
    meta = pod["metadata"]
    notes = meta.get("annotations") or {}
    return PodView(
        name=meta["name"],
        staged=frozenset(c for c in (notes.get(STAGED_ANNOTATION) or "").split(",") if c),
        active=notes.get(ACTIVE_ANNOTATION) or None,
        serving=meta.get("deletionTimestamp") is None and bool(_pod_ip(pod)),
        error=notes.get(STAGE_ERROR_ANNOTATION) or None,
    )
