"""The availability prober of one publication: probes, the month's tally, incidents and gauges.

One loop per publication (an async kopf daemon whose passes run in a thread: a pass blocks on
the API and on probes, the wait between passes holds no thread). Every `monitoring.probe.intervalSeconds` it probes the
public path it is told to (the Service, the host, a URL, or every Ready pod directly where
Services have no endpoints), counts the result into status.availability, opens an incident after
`failuresToOpen` failures in a row and resolves it after `successesToClose` successes. The tally
is written at most every STATUS_EVERY seconds and on every open or close, so a crash of the
operator loses at most that much of the count.
"""

from __future__ import annotations

import http.client
import json
import logging
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from kubernetes import client as k8s
from pydantic import ValidationError

from difusor.controller.incidents import Incidents
from difusor.kube import API_ERRORS, list_pods
from difusor.logic.containment import contain
from difusor.logic.incidents import Evidence, Streak, advance, classify, probe_verdict, tally
from difusor.metrics import OperatorMetrics
from difusor.models import GROUP, VERSION, PrepPublicationSpec, ProbeSpec, ProbeVia, parse_time
from difusor.render.labels import ACTIVE_ANNOTATION, ATTACK_ANNOTATION, Names, selector_string

log = logging.getLogger(__name__)


@dataclass
class Watch:
    """What one publication's loop remembers between passes."""

    namespace: str
    name: str
    streak: Streak = field(default_factory=Streak)
    last_write: float = 0.0
    """time.monotonic() of the last write of status.availability."""
    attack: str | None = None
    """The open attack incident."""
    availability: Obj | None = None
    """The month's tally, ahead of status.availability between writes."""
    resumed: bool = False
    """The incidents left open by a previous run were picked up."""


Obj = dict[str, Any]
PLURAL = "preppublications"
#: Seconds between two writes of status.availability while nothing opens or closes.
STATUS_EVERY = 30.0
#: Seconds between passes while the publication cannot be read or is invalid.
DEFAULT_INTERVAL = 5.0
#: Port of nginx in a web pod and of the readers' Service.
POD_HTTP_PORT = 8080
SERVICE_PORT = 80
PROBER = "Prober"
PROMOTION = "Promotion"
ATTACK_DETECTOR = "AttackDetector"


@dataclass(frozen=True)
class ProbeResult:
    """One probe of the public path."""

    ok: bool
    error: str | None
    failing_pods: tuple[str, ...] = ()
    seconds: float = 0.0


def fetch(url: str, *, timeout: float) -> tuple[int, str | None, bytes]:
    """GET a URL: status, X-Prep-Cut and body (no redirects followed, no proxies)."""
    parts = urllib.parse.urlsplit(url)
    cls = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    conn = cls(parts.hostname or "", parts.port, timeout=timeout)
    try:
        conn.request(
            "GET",
            (parts.path or "/") + (f"?{parts.query}" if parts.query else ""),
            headers={"User-Agent": "difusor-prober", "Cache-Control": "no-cache"},
        )
        resp = conn.getresponse()
        return resp.status, resp.getheader("X-Prep-Cut"), resp.read()
    finally:
        conn.close()


def _ready(pod: Obj) -> bool:
    status = pod.get("status") or {}
    if pod["metadata"].get("deletionTimestamp") is not None or not status.get("podIP"):
        return False
    return any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in status.get("conditions") or []
    )


def _annotations(pod: Obj) -> dict[str, str]:
    found: dict[str, str] = pod["metadata"].get("annotations") or {}
    return found


class Monitor:
    """Probes publications and keeps their incidents; one `run` loop per publication."""

    def __init__(
        self,
        api: k8s.ApiClient,
        metrics: OperatorMetrics,
        *,
        fetcher: Callable[..., tuple[int, str | None, bytes]] = fetch,
        pods: Callable[[str, str], list[Obj]] | None = None,
    ) -> None:
        self.api = api
        # A publication's web pods: the promoter's mirror of them, which kopf's watch keeps
        # current, in the operator (a pass every five seconds listed them); a list otherwise.
        self.pods = pods or (lambda ns, name: list_pods(api, ns, selector_string(name)))
        self.custom = k8s.CustomObjectsApi(api)
        self.metrics = metrics
        self.incidents = Incidents(api, metrics)
        self.fetch = fetcher

    def resume(self, watch: Watch) -> None:
        """Pick up the incidents a previous run of the operator left open."""
        namespace, name = watch.namespace, watch.name
        for found in self.incidents.open_ones(namespace, name, detected_by=PROBER)[-1:]:
            watch.streak = Streak(incident=found["metadata"]["name"])
        for found in self.incidents.open_ones(namespace, name, detected_by=ATTACK_DETECTOR)[-1:]:
            watch.attack = found["metadata"]["name"]
        # Both results exist from the start (at 0): a ratio of failed to all probes needs both.
        for result in ("ok", "failed"):
            self.metrics.probes.labels(namespace, name, result)
        watch.resumed = True

    def step(self, watch: Watch, publication: Obj) -> float:
        """One pass over the publication as kopf last saw it: gauges, healing checks,
        containment and a probe; returns the seconds to the next pass.

        A publication that serves nothing yet (no active cut) costs nothing: no probe is due and
        no reader can attack it.
        """
        namespace, name = watch.namespace, watch.name
        try:
            spec = PrepPublicationSpec.model_validate(publication.get("spec") or {})
        except ValidationError:
            return DEFAULT_INTERVAL
        probe = spec.monitoring.probe
        if not _active(publication):
            return float(probe.interval_seconds)
        now = datetime.now(UTC)
        try:
            if not watch.resumed:
                self.resume(watch)
            pods = self.pods(namespace, name)
            self._gauges(publication, pods, now)
            self._heal_check(publication, pods, now)
            watch.attack = self._contain(publication, spec, pods, now, watch.attack)
            if probe.enabled:
                self._probe_once(publication, spec, pods, watch, now)
        except (*API_ERRORS, OSError) as exc:
            log.warning("Prober of %s/%s failed a pass: %s", namespace, name, exc)
        return float(probe.interval_seconds)

    # --- one probe -------------------------------------------------------------------------

    def probe(self, publication: Obj, probe: ProbeSpec, pods: list[Obj]) -> ProbeResult:
        """Probe the public path once."""
        meta, spec = publication["metadata"], publication["spec"]
        status = publication.get("status") or {}
        acceptable = [_active(publication) or ""]
        rollout = status.get("rollout") or {}
        if rollout.get("phase") == "Committing" and rollout.get("targetCut"):
            acceptable.append(rollout["targetCut"])
        started = time.monotonic()
        if probe.via is ProbeVia.PODS:
            targets = [
                (
                    p["metadata"]["name"],
                    f"http://{p['status']['podIP']}:{POD_HTTP_PORT}{probe.path}",
                )
                for p in pods
                if _ready(p)
            ]
            if not targets:
                return ProbeResult(False, "no web pod is Ready", seconds=_since(started))
        elif probe.via is ProbeVia.URL:
            targets = [("", (probe.url or "").rstrip("/") + probe.path)]
        elif probe.via is ProbeVia.HOST:
            scheme = "https" if spec.get("tls") else "http"
            targets = [("", f"{scheme}://{spec['host']}{probe.path}")]
        else:
            service = f"{Names(meta['name']).http}.{meta['namespace']}.svc"
            targets = [("", f"http://{service}:{SERVICE_PORT}{probe.path}")]
        errors: list[str] = []
        failing: list[str] = []
        for pod, url in targets:
            try:
                code, cut, body = self.fetch(url, timeout=float(probe.timeout_seconds))
                problem = probe_verdict(
                    status=code, cut_header=cut, body=body, acceptable=acceptable
                )
            except (OSError, http.client.HTTPException) as exc:
                problem = f"could not reach {url}: {exc}"
            if problem:
                errors.append(f"{pod}: {problem}" if pod else problem)
                if pod:
                    failing.append(pod)
        if errors:
            return ProbeResult(False, "; ".join(errors)[:900], tuple(failing), _since(started))
        return ProbeResult(True, None, seconds=_since(started))

    def _probe_once(
        self,
        publication: Obj,
        spec: PrepPublicationSpec,
        pods: list[Obj],
        watch: Watch,
        now: datetime,
    ) -> None:
        meta = publication["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        probe = spec.monitoring.probe
        result = self.probe(publication, probe, pods)
        self.metrics.probes.labels(namespace, name, "ok" if result.ok else "failed").inc()
        self.metrics.probe_seconds.labels(namespace, name).observe(result.seconds)
        status = publication.get("status") or {}
        # The tally lives here between writes; status holds it as of the last write (and after
        # a restart of the operator the count goes on from there).
        if watch.availability is None:
            watch.availability = dict(status.get("availability") or {})
        availability = tally(watch.availability, ok=result.ok, now=now, error=result.error)
        watch.availability = availability
        self.metrics.availability.labels(namespace, name).set(availability["ratio"])
        streak, action = advance(
            watch.streak,
            ok=result.ok,
            now=now,
            failures_to_open=probe.failures_to_open,
            successes_to_close=probe.successes_to_close,
        )
        impact: Obj = {
            "failedProbes": streak.failed_probes,
            "totalProbes": streak.total_probes,
        }
        if result.failing_pods:
            impact["affectedPods"] = sorted(result.failing_pods)
        changed = action is not None
        if action == "open":
            evidence = self._evidence(publication, spec, pods, result, now)
            cause, why = classify(evidence)
            if evidence.not_ready_pods and "affectedPods" not in impact:
                impact["affectedPods"] = list(evidence.not_ready_pods)
            incident = self.incidents.open(
                publication,
                started_at=streak.first_failure or now,
                detected_by=PROBER,
                cause=cause,
                root_cause=why,
                impact=impact,
                actions=[f"Opened after {streak.failures} failed probes via {probe.via.value}"],
                now=now,
            )
            streak = replace(streak, incident=incident)
        elif action == "close" and streak.incident:
            self.incidents.close(
                publication,
                streak.incident,
                now=now,
                impact=impact,
                action=f"Closed after {streak.successes} successful probes",
            )
            streak = Streak()
        elif streak.incident and not result.ok:
            self.incidents.update(namespace, streak.incident, impact=impact)
        watch.streak = streak
        due = time.monotonic() - watch.last_write >= STATUS_EVERY
        if changed or due or "openIncidents" not in availability:
            # Every detector's incidents: the promotion and the containment open theirs too.
            names = self.incidents.count_open(namespace, name)
            availability["openIncidents"] = names
            self.metrics.incidents_open.labels(namespace, name).set(len(names))
        if changed or due or not result.ok:
            self._write(namespace, name, {"availability": availability})
            watch.last_write = time.monotonic()

    def _evidence(
        self,
        publication: Obj,
        spec: PrepPublicationSpec,
        pods: list[Obj],
        result: ProbeResult,
        now: datetime,
    ) -> Evidence:
        status = publication.get("status") or {}
        rollout = status.get("rollout") or {}
        started = rollout.get("startedAt")
        conditions = {c.get("type"): c for c in status.get("conditions") or []}
        degraded = conditions.get("Degraded") or {}
        cut_time = (status.get("activeCut") or {}).get("time")
        monitoring = spec.monitoring
        return Evidence(
            via=spec.monitoring.probe.via.value,
            error=result.error or "",
            desired_pods=spec.replicas,
            ready_pods=sum(1 for p in pods if _ready(p)),
            rollout_phase=rollout.get("phase") or "Idle",
            rollout_seconds=(now - parse_time(started)).total_seconds() if started else 0.0,
            stage_timeout_seconds=float(spec.promotion.stage_timeout_seconds),
            attack=bool((status.get("containment") or {}).get("denied")),
            cdn_degraded=degraded.get("status") == "True"
            and "Purge" in str(degraded.get("reason")),
            cut_age_seconds=(now - parse_time(cut_time)).total_seconds() if cut_time else None,
            cut_max_age_seconds=60.0
            * (monitoring.cut_cadence_minutes + monitoring.cut_grace_minutes),
            not_ready_pods=tuple(sorted(p["metadata"]["name"] for p in pods if not _ready(p))),
        )

    # --- gauges and healing of promotion incidents -----------------------------------------

    def _gauges(self, publication: Obj, pods: list[Obj], now: datetime) -> None:
        meta = publication["metadata"]
        labels = (meta["namespace"], meta["name"])
        status = publication.get("status") or {}
        active = status.get("activeCut") or {}
        if active.get("time"):
            age = (now - parse_time(active["time"])).total_seconds()
            self.metrics.active_cut_age.labels(*labels).set(age)
        rollout = status.get("rollout") or {}
        started = rollout.get("startedAt")
        busy = (rollout.get("phase") or "Idle") != "Idle" and started
        self.metrics.rollout_age.labels(*labels).set(
            (now - parse_time(started)).total_seconds() if busy and started else 0.0
        )
        off = [
            p
            for p in pods
            if active.get("id") and _annotations(p).get(ACTIVE_ANNOTATION) != active["id"]
        ]
        self.metrics.pods_off_active_cut.labels(*labels).set(len(off))

    def _heal_check(self, publication: Obj, pods: list[Obj], now: datetime) -> None:
        """Resolve a promotion incident once every pod serves the active cut and is Ready."""
        meta = publication["metadata"]
        status = publication.get("status") or {}
        active = (status.get("activeCut") or {}).get("id")
        idle = ((status.get("rollout") or {}).get("phase") or "Idle") == "Idle"
        if not active or not idle or not pods:
            return
        healthy = all(_ready(p) and _annotations(p).get(ACTIVE_ANNOTATION) == active for p in pods)
        if not healthy:
            return
        for incident in self.incidents.open_ones(
            meta["namespace"], meta["name"], detected_by=PROMOTION
        ):
            self.incidents.close(
                publication,
                incident["metadata"]["name"],
                now=now,
                action=f"Every pod serves cut {active} again and is Ready",
            )

    # --- containment of attacks ------------------------------------------------------------

    def _contain(
        self,
        publication: Obj,
        spec: PrepPublicationSpec,
        pods: list[Obj],
        now: datetime,
        incident: str | None,
    ) -> str | None:
        """Turn the pods' attack reports into the deny list of every pod; returns the incident."""
        meta = publication["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        auto = spec.monitoring.auto_deny
        current = ((publication.get("status") or {}).get("containment") or {}).get("denied") or []
        reports: dict[str, Obj] = {}
        for pod in pods:
            raw = _annotations(pod).get(ATTACK_ANNOTATION)
            if not raw or not auto.enabled:
                continue
            try:
                reports[pod["metadata"]["name"]] = json.loads(raw)
            except ValueError:
                continue
        verdict = contain(
            current,
            reports,
            now=now,
            ttl=timedelta(seconds=auto.ttl_seconds if auto.enabled else 0),
            max_entries=auto.max_entries,
            protected=spec.rate_limit.trusted_proxies,
            spec_deny=spec.rate_limit.deny_list,
            renew_after=timedelta(seconds=min(30.0, auto.ttl_seconds / 2)),
        )
        self.metrics.denied_ranges.labels(namespace, name, "spec").set(
            len(spec.rate_limit.deny_list)
        )
        self.metrics.denied_ranges.labels(namespace, name, "automatic").set(len(verdict.denied))
        if verdict.changed:
            self._write(namespace, name, {"containment": {"denied": verdict.denied}})
        if verdict.added:
            until = verdict.denied[-1]["expiresAt"] if verdict.denied else ""
            action = f"Denied {', '.join(verdict.added)} on every pod until {until}"
            log.warning("Publication %s/%s: %s", namespace, name, action)
            impact = {
                "deniedRanges": sorted({e["cidr"] for e in verdict.denied}),
                "affectedPods": verdict.reporting_pods,
                "peakRequestsPerMinute": verdict.peak_requests,
                "rejectedShare": round(verdict.peak_rejected_share, 4),
            }
            if incident is None:
                return self.incidents.open(
                    publication,
                    started_at=now,
                    detected_by=ATTACK_DETECTOR,
                    cause="Attack",
                    root_cause="Attack detector on "
                    + "; ".join(e["reason"] for e in verdict.denied if e["cidr"] in verdict.added),
                    impact=impact,
                    actions=[action],
                    now=now,
                )
            self.incidents.update(namespace, incident, impact=impact, action=action)
        if incident and not verdict.denied and not reports:
            released = ", ".join(verdict.expired) or "every range"
            self.incidents.close(
                publication, incident, now=now, action=f"Released {released} after expiry"
            )
            return None
        return incident

    def _write(self, namespace: str, name: str, status: Obj) -> None:
        try:
            self.custom.patch_namespaced_custom_object_status(
                GROUP, VERSION, namespace, PLURAL, name, {"status": status}
            )
        except k8s.ApiException as exc:
            if exc.status != 404:
                raise


def _active(publication: Obj) -> str | None:
    cut: str | None = ((publication.get("status") or {}).get("activeCut") or {}).get("id")
    return cut


def _since(started: float) -> float:
    return time.monotonic() - started
