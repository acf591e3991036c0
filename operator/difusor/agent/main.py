"""`difusor agent`: the ingest loop, the promotion duties of one pod, and its HTTP endpoints."""

from __future__ import annotations

import hmac
import json
import logging
import os
import random
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from kubernetes import client as k8s
from kubernetes import watch as k8s_watch
from pydantic import ValidationError

from difusor.agent.containment import DenyList
from difusor.agent.integrity import IntegrityCheck
from difusor.agent.peers import (
    PeerError,
    fetch_version,
    manifest_payload,
    repair_files,
    write_bundle,
)
from difusor.agent.records import (
    Conflict,
    Records,
    Unrecorded,
    load_unrecorded,
    save_unrecorded,
)
from difusor.agent.stats import StatsShipper, run_loop
from difusor.agent.traffic import AttackReport, Traffic
from difusor.ingest.scan import Intake, watch_incoming
from difusor.ingest.store import Quarantined, Store, Stored, remove
from difusor.kube import (
    API_ERRORS,
    STRATEGIC_MERGE_PATCH,
    api_client,
    core_path,
    custom_path,
    list_pods,
    read,
    request,
    request_refused,
)
from difusor.logic.archive import ManifestEntry
from difusor.logic.cuts import parse_cut
from difusor.logic.window import uploads_refused
from difusor.metrics import AgentMetrics, exposition
from difusor.models import GROUP, VERSION, PrepPublicationSpec, WindowPhase, WindowSpec
from difusor.render.labels import (
    ACTIVE_ANNOTATION,
    ATTACK_ANNOTATION,
    STAGE_ERROR_ANNOTATION,
    STAGED_ANNOTATION,
    selector_string,
)

log = logging.getLogger("difusor.agent")

STAGING = "Staging"
COMMITTING = "Committing"
#: How long the publication last seen on the watch (or read) is used before it is read again.
#: The watch brings every change at once and the whole object at least every minute; the read
#: is the fallback for a watch that broke without saying so.
FRESH_FOR = 10.0
#: Characters of a stage error the pod's annotation carries.
MAX_ERROR = 512


@dataclass(frozen=True)
class AgentConfig:
    """Where the agent is and what it talks to (from the pod's environment)."""

    publication: str
    namespace: str
    pod: str
    pod_ip: str
    content_dir: Path
    address: str
    port: int
    token_file: Path
    kubeconfig: str | None
    interval: float
    access_log: Path | None = None
    """nginx's JSON access log (default: logs/access.log on the content volume)."""
    nginx_pid_file: Path = Path("/tmp/nginx.pid")
    """nginx's pid file, on the /tmp volume the containers share (for reloads)."""

    @classmethod
    def from_env(cls) -> AgentConfig:
        """Read the variables the pod template sets."""
        env = os.environ
        return cls(
            publication=env["DIFUSOR_PUBLICATION"],
            namespace=env["DIFUSOR_NAMESPACE"],
            pod=env["DIFUSOR_POD_NAME"],
            pod_ip=env.get("DIFUSOR_POD_IP", "127.0.0.1"),
            content_dir=Path(env.get("DIFUSOR_CONTENT_DIR", "/srv/prep")),
            address=env.get("DIFUSOR_AGENT_ADDRESS", "0.0.0.0"),
            port=int(env.get("DIFUSOR_AGENT_PORT", "8081")),
            token_file=Path(env.get("DIFUSOR_AGENT_TOKEN_FILE", "/etc/difusor/agent-token/token")),
            kubeconfig=env.get("DIFUSOR_KUBECONFIG") or None,
            interval=float(env.get("DIFUSOR_AGENT_INTERVAL", "0.5")),
            access_log=Path(env["DIFUSOR_ACCESS_LOG"]) if env.get("DIFUSOR_ACCESS_LOG") else None,
            nginx_pid_file=Path(env.get("DIFUSOR_NGINX_PID_FILE", "/tmp/nginx.pid")),
        )


class Agent:
    """One pod's agent. `step()` is one pass of the loop; the HTTP server runs beside it."""

    def __init__(self, config: AgentConfig, api: k8s.ApiClient) -> None:
        self.config = config
        self.api = api
        self.store = Store(config.content_dir)
        # Set by the publication's watch and by a prefetch that sees its upload renamed.
        self.wake = threading.Event()
        self.intake = Intake(self.store, prefetch=True, wake=self.wake)
        self.records = Records(api, namespace=config.namespace, pod=config.pod)
        self.token = config.token_file.read_text().strip()
        self.lock = threading.Lock()
        self.status: dict[str, Any] | None = None
        self.window: WindowSpec | None = None
        self.reported: dict[str, str | None] = {}
        # The first reason this pod could not stage a rollout's target: (cut, reason).
        self.stage_error: tuple[str, str] | None = None
        # Uploads stored or rejected and not recorded yet, with the time each was received
        # (see _record_waiting; recover() takes those an earlier run left), and the list as the
        # volume holds it (None: not written by this run yet).
        self.unrecorded: Unrecorded = []
        self.unrecorded_kept: Unrecorded | None = None
        self.fetch_failure: str | None = None
        self.last_error: str | None = None
        self.metrics = AgentMetrics()
        self.traffic = Traffic(
            config.access_log or config.content_dir / "logs" / "access.log", self.metrics
        )
        self.deny = DenyList(config.content_dir, config.nginx_pid_file)
        self.attack: AttackReport | None = None
        self.integrity = IntegrityCheck(self.store)
        self.damaged: tuple[str, dict[str, ManifestEntry]] | None = None
        self.seen: tuple[float, dict[str, Any]] | None = None

    def recover(self) -> list[str]:
        """Repair the content store after a crash, then take the uploads an earlier run could
        not record, first in line; returns what it did."""
        done = self.store.recover()
        self.unrecorded = load_unrecorded(self.store)
        done += [f"{o.archive} received at {at} is to be recorded" for o, at in self.unrecorded]
        return done

    # --- what the HTTP endpoints ask -------------------------------------------------------

    def ready(self, now: datetime) -> tuple[bool, str]:
        """Ready only while this pod serves the cut the publication says is active.

        Before the publication window opens nginx serves the placeholder, which needs no cut.
        """
        with self.lock:
            status, window = self.status, self.window
        if status is None:
            return False, "publication not read yet"
        with self.lock:
            damaged = self.damaged
        if damaged is not None:
            return False, f"{len(damaged[1])} files of cut {damaged[0]} damaged; re-fetching them"
        if window is not None and window.phase_at(now) is WindowPhase.PENDING:
            return True, f"serving the placeholder until {window.start.isoformat()}"
        current = self.store.active_cut()
        active = (status.get("activeCut") or {}).get("id")
        rollout = status.get("rollout") or {}
        acceptable = {active}
        if rollout.get("phase") == COMMITTING:
            # Mid-commit both cuts are whole versions; leaving rotation here would empty it.
            acceptable.add(rollout.get("targetCut"))
        if current is None:
            return False, "no version served yet"
        if current in acceptable:
            return True, f"serving {current}"
        return False, f"serving {current}, active cut is {active}"

    def authorized(self, header: str | None) -> bool:
        """The peer presented this publication's agent token."""
        expected = f"Bearer {self.token}"
        return header is not None and hmac.compare_digest(header.encode(), expected.encode())

    # --- the loop --------------------------------------------------------------------------

    def saw(self, publication: dict[str, Any] | None) -> None:
        """The publication as the watch (or a read) just gave it; None forgets it."""
        with self.lock:
            self.seen = None if publication is None else (time.monotonic(), publication)

    def publication(self) -> dict[str, Any]:
        """This pod's PrepPublication: as last seen if that was under FRESH_FOR ago, else read.

        Ten pods that read it every half second were twenty reads a second on the API server
        and most of the agents' own CPU between promotions.
        """
        with self.lock:
            seen = self.seen
        if seen is not None and time.monotonic() - seen[0] < FRESH_FOR:
            return seen[1]
        config = self.config
        found = request(
            self.api, "GET", custom_path(config.namespace, "preppublications", config.publication)
        )
        self.saw(found)
        return found

    def step(self, now: datetime) -> None:
        """This pod's part of the promotion, then ingest what is complete.

        The promotion goes first: a commit's swap must not wait behind an archive's validation.
        """
        publication = self.publication()
        try:
            spec = PrepPublicationSpec.model_validate(publication.get("spec") or {})
        except ValidationError as exc:
            self.last_error = f"invalid spec: {exc}"
            return
        status = publication.get("status") or {}
        with self.lock:
            self.status = status
            self.window = spec.window
        self._promote(spec, status)
        self._ingest(publication, spec, now)
        active = (status.get("activeCut") or {}).get("id")
        self.metrics.serving_active.set(
            int(active is not None and self.store.active_cut() == active)
        )
        self._watch_traffic(spec, status, now)
        self._check_content(publication, spec)

    def _ingest(
        self, publication: dict[str, Any], spec: PrepPublicationSpec, now: datetime
    ) -> None:
        refused = uploads_refused(spec.window, now)
        started = time.monotonic()
        # Uploads handled on an earlier pass whose record the API server did not take yet.
        self._record_waiting(publication, spec)
        for outcome in self.intake.run(
            ingest=spec.ingest, pinned=spec.pinned_cut, now=now, refused=refused
        ):
            self._measure(outcome, time.monotonic() - started)
            started = time.monotonic()
            if isinstance(outcome, Quarantined):
                log.warning(
                    "Quarantined %s: %s %s", outcome.archive, outcome.reason, outcome.message
                )
            self.unrecorded.append((outcome, now.strftime("%Y-%m-%dT%H:%M:%SZ")))
            self._record_waiting(publication, spec)

    def _record_waiting(self, publication: dict[str, Any], spec: PrepPublicationSpec) -> None:
        """Record the uploads stored or rejected, in the order they came. One the API server
        cannot take now (unreachable, failing, throttling) stays first in line for the next
        pass: the upload has left incoming/, and without its PrepCut a stored cut would never
        be promoted. One it refuses as it is (kube.request_refused) is logged and dropped. The line is
        kept on the volume while it is not empty, for an agent restarted before the API server
        is back."""
        try:
            while self.unrecorded:
                outcome, received_at = self.unrecorded[0]
                try:
                    if isinstance(outcome, Stored):
                        self._record_stored(publication, outcome, received_at)
                    else:
                        self.records.rejected(
                            publication,
                            outcome,
                            cut_id=_cut_id(outcome.archive, spec),
                            received_at=received_at,
                        )
                except k8s.ApiException as exc:
                    if not request_refused(exc):
                        raise
                    # Kept first, a record the API server refuses would hold every later one
                    # (and their cuts' promotions) for good.
                    log.error(
                        "Not recording %s, which the API server refuses: %s", outcome.archive, exc
                    )
                self.unrecorded.pop(0)
        finally:
            # Written only when it changed: a night without an outage writes nothing.
            if self.unrecorded != self.unrecorded_kept:
                save_unrecorded(self.store, self.unrecorded)
                self.unrecorded_kept = list(self.unrecorded)

    def _record_stored(self, publication: dict[str, Any], stored: Stored, received_at: str) -> None:
        try:
            self.records.stored(publication, stored, received_at=received_at)
        except Conflict as exc:
            log.warning("Refused %s: %s", stored.archive, exc)
            if stored.cut != self.store.active_cut():
                remove(self.store.versions / stored.cut)
            self.records.event(
                publication, reason="RejectedConflict", message=str(exc), warning=True
            )

    def _measure(self, outcome: Stored | Quarantined, seconds: float) -> None:
        metrics = self.metrics
        metrics.cuts_received.inc()
        if isinstance(outcome, Quarantined):
            metrics.cuts_rejected.labels(reason=str(outcome.reason)).inc()
            return
        if outcome.duplicate:
            return
        metrics.cuts_verified.inc()
        metrics.ingest_bytes.inc(outcome.bytes)
        metrics.ingest_seconds.observe(seconds)
        if seconds > 0:
            metrics.ingest_throughput.set(outcome.bytes / seconds)

    def _promote(self, spec: PrepPublicationSpec, status: dict[str, Any]) -> None:
        active = (status.get("activeCut") or {}).get("id")
        rollout = status.get("rollout") or {}
        phase = rollout.get("phase") or "Idle"
        target = rollout.get("targetCut") if phase in (STAGING, COMMITTING) else None
        local = set(self.store.cuts())
        for cut in (target, active):
            fresh = phase == STAGING and cut == target
            if cut and cut not in local and self._fetch(cut, rollout=rollout if fresh else None):
                local.add(cut)
        current = self.store.active_cut()
        if phase == COMMITTING and target in local and current != target:
            self.store.swap_current(target)
            log.info("Swapped current to cut %s (commit)", target)
        elif (
            active
            and active in local
            and current != active
            and not (phase == COMMITTING and current == target)
        ):
            self.store.swap_current(active)
            log.info("Swapped current to the active cut %s", active)
        current = self.store.active_cut()
        error = self.stage_error
        unstaged = error is not None and error[0] == target and target not in local
        self._report(
            staged=target if target in local else self.reported.get("staged"),
            active=current,
            error=f"{target}: {error[1]}" if error and unstaged else None,
        )
        if target is None:
            # Removing a version is some 500 unlinks: while a rollout stages or commits, they
            # took the CPU the other pods' fetches wait on, and a commit could find this pod
            # still removing. The version beyond retention goes once the rollout is over.
            self.store.prune(keep=spec.retention.cuts, protected=[active, spec.pinned_cut, current])

    def _fetch(self, cut: str, *, rollout: dict[str, Any] | None = None) -> bool:
        """Fetch a cut this pod lacks; `rollout` while it stages as the rollout's target.

        The rollout names the digest verified and the pod that received the upload, with its
        IP: every pod starts fetching from the watch event alone (ten pods reading the PrepCut
        and the receiving pod at that same instant were twenty reads on the API server, on the
        path of every promotion). Otherwise the PrepCut is read.
        """
        rollout = rollout or {}
        digest = rollout.get("manifestDigest")
        received_by = rollout.get("receivedBy")
        if not digest:
            record = self.records.get(self.config.publication, cut) or {}
            digest = (record.get("spec") or {}).get("manifestDigest")
            received_by = (record.get("spec") or {}).get("receivedBy")
        if not digest:
            # Without the digest recorded at verification a copy could not be checked.
            log.warning("Not fetching cut %s: its PrepCut has no manifest digest", cut)
            return self._not_fetched(cut, rollout, "its PrepCut has no manifest digest")
        began = time.monotonic()
        # While a new cut stages, the pod that received it is the one that has it: asked for
        # alone, it spares listing every pod (with every pod fetching at once, that grew with
        # the square of the pods). The list is read when a split would pay, and when that pod
        # cannot send the cut; a later fetch (a pod replaced) spreads over every peer.
        receiver = None
        if rollout and received_by and received_by != self.config.pod:
            address = rollout.get("receivedByIP")
            receiver = (
                f"http://{address}:{self.config.port}" if address else self._pod_url(received_by)
            )
        if receiver is not None:
            counts = self._fetch_from(
                cut,
                receiver,
                digest,
                lambda: [p for p in self._peers_with(cut, prefer=received_by) if p != receiver],
            )
            if counts is not None:
                self._fetched(cut, receiver, counts, began)
                return True
        peers = [p for p in self._peers_with(cut, prefer=received_by) if p != receiver]
        for n, peer in enumerate(peers):
            counts = self._fetch_from(cut, peer, digest, peers[n + 1 :])
            if counts is None:
                continue
            self._fetched(cut, peer, counts, began)
            return True
        if receiver is None and not peers:
            return self._not_fetched(cut, rollout, "no other pod holds it")
        return self._not_fetched(cut, rollout, f"no pod could send it; {self.fetch_failure}")

    def _not_fetched(self, cut: str, rollout: dict[str, Any], reason: str) -> bool:
        """Keep why a rollout's target could not be fetched, for the pod's report: the first
        reason for that cut (the next attempt's may name another peer, and every change of the
        annotation is a write and a step of the operator)."""
        if rollout and not (self.stage_error and self.stage_error[0] == cut):
            self.stage_error = (cut, reason)
        return False

    def _fetch_from(
        self,
        cut: str,
        peer: str,
        digest: str,
        helpers: Sequence[str] | Callable[[], Sequence[str]],
    ) -> dict[str, int] | None:
        """Fetch the cut from one peer; None (logged) when that peer could not give it."""
        try:
            return fetch_version(
                self.store,
                cut=cut,
                peer=peer,
                token=self.token,
                expected_digest=digest,
                helpers=helpers,
            )
        except (PeerError, OSError) as exc:
            log.warning("Could not fetch cut %s from %s: %s", cut, peer, exc)
            self.fetch_failure = f"from {peer}: {exc}"
            return None

    def _fetched(self, cut: str, peer: str, counts: dict[str, int], began: float) -> None:
        log.info(
            "Fetched cut %s from %s in %.2f s (%d files linked, %d fetched, %d bytes; "
            "%d ms flushing to disk)",
            cut, peer, time.monotonic() - began, counts["linked"], counts["fetched"],
            counts["bytes"], counts["sync_ms"],
        )  # fmt: skip

    def _pod_url(self, name: str) -> str | None:
        """The agent URL of another pod of this publication, or None (gone, going, no IP yet)."""
        if name == self.config.pod:
            return None
        pod = read(self.api, core_path(self.config.namespace, "pods", name))
        if pod is None or pod["metadata"].get("deletionTimestamp"):
            return None
        ip = (pod.get("status") or {}).get("podIP")
        return f"http://{ip}:{self.config.port}" if ip else None

    def _peers_with(self, cut: str, *, prefer: str | None) -> list[str]:
        """Peers that hold the cut, in random order so that fetches spread over all of them.

        The pod that received the upload comes last unless it is the only one: every other pod
        starts out fetching from it, and those that have staged since take part of its load.
        """
        pods = list_pods(self.api, self.config.namespace, selector_string(self.config.publication))
        found: list[tuple[bool, float, str]] = []
        for pod in pods:
            name = pod["metadata"]["name"]
            ip = (pod.get("status") or {}).get("podIP")
            if name == self.config.pod or not ip:
                continue
            notes = pod["metadata"].get("annotations") or {}
            has = (
                cut in (notes.get(STAGED_ANNOTATION) or "").split(",")
                or notes.get(ACTIVE_ANNOTATION) == cut
            )
            if name == prefer or has:
                url = f"http://{ip}:{self.config.port}"
                found.append((name == prefer, random.random(), url))
        return [url for _, _, url in sorted(found)]

    def _watch_traffic(
        self, spec: PrepPublicationSpec, status: dict[str, Any], now: datetime
    ) -> None:
        """Count the access log, report an attack on this pod, apply the automatic deny list."""
        auto = spec.monitoring.auto_deny
        self.traffic.read(prefix_v4=auto.prefix_length_v4, prefix_v6=auto.prefix_length_v6)
        denied = [e["cidr"] for e in (status.get("containment") or {}).get("denied") or []]
        report = self.traffic.report(
            now.timestamp(),
            min_requests=auto.min_requests_per_minute,
            protected=spec.rate_limit.trusted_proxies,
            existing=spec.rate_limit.deny_list,
        )
        if _attack_key(report) != _attack_key(self.attack):
            value = json.dumps(report.wire(), sort_keys=True) if report else None
            self._annotate({ATTACK_ANNOTATION: value})
            if report:
                log.warning(
                    "Saw an attack on %s (%s, %d requests this minute): blamed %s",
                    self.config.pod, ",".join(report.reasons), report.requests,
                    ", ".join(report.ranges) or "no single range",
                )  # fmt: skip
            self.attack = report
        self.deny.apply(denied)
        self.metrics.deny_list.set(len(denied))

    def _check_content(self, publication: dict[str, Any], spec: PrepPublicationSpec) -> None:
        """Re-hash a few served files; a damaged one takes the pod out of rotation until repaired."""
        rate = spec.monitoring.integrity_check_files_per_minute
        cut, found, checked = self.integrity.step(files_per_minute=rate)
        self.metrics.content_checked.inc(checked)
        if found and cut:
            self.metrics.content_corrupt.inc(len(found))
            with self.lock:
                known = dict(self.damaged[1]) if self.damaged and self.damaged[0] == cut else {}
                self.damaged = (cut, {**known, **{e.path: e for e in found}})
            message = (
                f"{self.config.pod}: {len(found)} served files of cut {cut} differ from its "
                f"manifest, such as {found[0].path}; the pod left rotation to re-fetch them"
            )
            log.warning(message)
            self.records.event(publication, reason="ContentCorrupt", message=message, warning=True)
        damaged = self.damaged
        if damaged is None:
            return
        cut, entries = damaged
        if cut != self.store.active_cut():
            with self.lock:
                self.damaged = None
            return
        for peer in self._peers_with(cut, prefer=None):
            try:
                count = repair_files(
                    self.store, cut=cut, peer=peer, token=self.token, entries=list(entries.values())
                )
            except (PeerError, OSError) as exc:
                log.warning("Could not repair cut %s from %s: %s", cut, peer, exc)
                continue
            self.metrics.content_repairs.inc()
            with self.lock:
                self.damaged = None
            message = (
                f"{self.config.pod}: re-fetched {count} damaged files of cut {cut} from {peer}"
            )
            log.info(message)
            self.records.event(publication, reason="ContentRepaired", message=message)
            return

    def _report(self, *, staged: str | None, active: str | None, error: str | None) -> None:
        wanted = {
            STAGED_ANNOTATION: staged,
            ACTIVE_ANNOTATION: active,
            STAGE_ERROR_ANNOTATION: error[:MAX_ERROR] if error else None,
        }
        reported = {k.rsplit("/", 1)[1]: v for k, v in wanted.items()}
        if all(self.reported.get(k) == v for k, v in reported.items()):
            return
        self._annotate(wanted)
        self.reported = reported

    def _annotate(self, annotations: dict[str, str | None]) -> None:
        """Set (or, with None, remove) annotations of this pod."""
        request(
            self.api,
            "PATCH",
            core_path(self.config.namespace, "pods", self.config.pod),
            body={"metadata": {"annotations": annotations}},
            content_type=STRATEGIC_MERGE_PATCH,
        )


def _cut_id(archive: str, spec: PrepPublicationSpec) -> str | None:
    """The cut id of an archive's name, None when its name has none."""
    try:
        return parse_cut(
            archive, pattern=spec.ingest.cut_id_pattern, timezone=spec.ingest.timezone
        ).id
    except ValueError:
        return None


def _attack_key(report: AttackReport | None) -> tuple[object, ...] | None:
    """What changes the attack annotation (not the counts, which move every pass)."""
    return None if report is None else (report.reasons, report.ranges)


class _Handler(BaseHTTPRequestHandler):
    agent: Agent
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        log.debug("http: " + format, *args)

    def _send(
        self, code: int, body: bytes, content_type: str = "text/plain; charset=utf-8"
    ) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _version(self, action: str) -> str | None:
        """The cut of /v1/versions/<cut>/<action> from an authorized peer that this pod has.

        Answers the request itself (404, 401) and returns None when it cannot be served.
        """
        parts = self.path.split("?")[0].strip("/").split("/")
        if len(parts) != 4 or parts[:2] != ["v1", "versions"] or parts[3] != action:
            self._send(404, b"not found\n")
            return None
        if not self.agent.authorized(self.headers.get("Authorization")):
            self._send(401, b"unauthorized\n")
            return None
        if parts[2] not in self.agent.store.cuts():
            self._send(404, f"no version {parts[2]}\n".encode())
            return None
        return parts[2]

    def do_GET(self) -> None:
        if self.path == "/healthz":
            self._send(200, b"ok\n")
            return
        if self.path == "/readyz":
            ok, why = self.agent.ready(datetime.now(UTC))
            self._send(200 if ok else 503, (why + "\n").encode())
            return
        if self.path == "/metrics":
            self._send(200, *exposition(self.agent.metrics.registry))
            return
        cut = self._version("manifest")
        if cut is not None:
            self._send(200, manifest_payload(self.agent.store, cut), "application/json")

    def do_POST(self) -> None:
        cut = self._version("bundle")
        if cut is None:
            return
        length = int(self.headers.get("Content-Length") or 0)
        try:
            paths = json.loads(self.rfile.read(length))["paths"]
        except (ValueError, KeyError, TypeError):
            self._send(400, b'body must be {"paths": [...]}\n')
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/x-tar")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        write_bundle(self.agent.store, cut, paths, self.wfile, sock=self.connection)


class AgentServer(ThreadingHTTPServer):
    """The agent's HTTP server, with a listen backlog for every peer of a publication at once.

    socketserver listens with a backlog of 5. When a cut stages, every other pod connects to
    the pod that received it in the same few milliseconds; past the fifth unaccepted
    connection Linux drops the SYN and the client sends it again a second later, which made
    two pods of ten stage 1 s after the rest.
    """

    request_queue_size = 512


def listen(agent: Agent) -> AgentServer:
    """The agent's HTTP endpoints bound and listening, not yet serving."""
    handler = type("Handler", (_Handler,), {"agent": agent})
    return AgentServer((agent.config.address, agent.config.port), handler)


def serve(agent: Agent) -> AgentServer:
    """Start the agent's HTTP endpoints in a background thread."""
    server = listen(agent)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="agent-http", daemon=True).start()
    return server


#: What a pass of the agent may meet and live through: the API server answering an error or not
#: reachable at all, a peer, the disk.
STEP_ERRORS = (*API_ERRORS, OSError, PeerError)


def step_once(agent: Agent, now: datetime) -> None:
    """One pass of the agent's loop. A failure is logged and kept for the next pass: an agent
    that exited when the API server was unreachable for a moment came back without the
    publication it had read, not Ready, on every pod at once while nginx still had the cut."""
    try:
        agent.step(now)
        agent.last_error = None
    except STEP_ERRORS as exc:
        agent.last_error = str(exc)
        log.warning("Agent step failed: %s", exc)


def run(config: AgentConfig) -> int:
    """Recover the store, serve the endpoints, and loop until SIGTERM."""
    agent = Agent(config, api_client(config.kubeconfig))
    for line in agent.recover():
        log.info("Recovered the content store: %s", line)
    server = serve(agent)
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    signal.signal(signal.SIGINT, lambda *_: stopping.set())
    log.info(
        "Agent of %s/%s on pod %s serving on %s:%d",
        config.namespace, config.publication, config.pod, config.address, config.port,
    )  # fmt: skip
    wake = agent.wake
    threading.Thread(
        target=watch_publication, args=(agent, wake, stopping), name="agent-watch", daemon=True
    ).start()
    threading.Thread(
        target=watch_incoming,
        args=(agent.store.incoming, wake, stopping),
        name="agent-incoming",
        daemon=True,
    ).start()
    shipper = StatsShipper(
        agent.api,
        namespace=config.namespace,
        publication=config.publication,
        pod=config.pod,
        log_dir=(config.access_log or config.content_dir / "logs" / "access.log").parent,
        nginx_pid_file=config.nginx_pid_file,
        # The agent's copy, kept by its watch: not a read of the publication on every pass of
        # every pod (at 30 pods, a tenth of the API server's requests during a promotion).
        read_publication=agent.publication,
    )
    stats = threading.Thread(
        target=run_loop, args=(shipper,), kwargs={"stopping": stopping}, name="agent-stats"
    )
    stats.start()
    while not stopping.is_set():
        wake.clear()
        step_once(agent, datetime.now(UTC))
        # A change of the publication (a new target, a commit) wakes every agent at once, which
        # keeps the pods' swaps close together; an upload followed while it arrives wakes it at
        # its rename; the interval is the fallback (and starts following new uploads).
        wake.wait(config.interval)
    stats.join(timeout=20)
    agent.intake.close()
    server.shutdown()
    return 0


def watch_publication(agent: Agent, wake: threading.Event, stopping: threading.Event) -> None:
    """Keep `agent` up to date with this pod's publication and set `wake` on every change.

    A watch, reopened when it ends: the API server ends it every minute and the reopened one
    starts with the whole object, so the agent's copy is never older than that while it runs.
    A watch that fails makes the agent read the publication again.
    """
    config = agent.config
    custom = k8s.CustomObjectsApi(agent.api)
    while not stopping.is_set():
        try:
            stream = k8s_watch.Watch().stream(
                custom.list_namespaced_custom_object,
                GROUP, VERSION, config.namespace, "preppublications",
                field_selector=f"metadata.name={config.publication}",
                timeout_seconds=60,
                _request_timeout=(10, 90),
            )  # fmt: skip
            for event in stream:
                kind, obj = event.get("type"), event.get("object")
                agent.saw(obj if kind in ("ADDED", "MODIFIED") and isinstance(obj, dict) else None)
                wake.set()
                if stopping.is_set():
                    return
        except (*API_ERRORS, OSError, ValueError) as exc:
            log.debug("Publication watch ended: %s", exc)
            agent.saw(None)
            stopping.wait(1.0)
