"""One level-based reconcile of a publication: gather, decide, act; shared by every handler."""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import threading
import time
from collections.abc import Callable, Hashable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from kubernetes import client as k8s
from pydantic import ValidationError

from difusor.controller import secrets
from difusor.kube import Cluster, ObjectKey, core_path, publication_event, read
from difusor.logic.conditions import Observation, compute_conditions
from difusor.logic.window import window_status
from difusor.models import GROUP, VERSION, PrepPublicationSpec, WindowPhase
from difusor.render.children import Target, host_keys_owners, managed_kinds, render_all
from difusor.render.files import config_files
from difusor.render.labels import Names, selector_string
from difusor.render.nginx import CURRENT_RESOLVERS, CurrentResolver

log = logging.getLogger(__name__)

Obj = dict[str, Any]


@dataclass(frozen=True)
class Settings:
    """Operator-wide settings (from its environment, read once at startup)."""

    image: str = "ghcr.io/difusor/difusor:0.1.0"
    nginx_image: str = "ghcr.io/difusor/difusor-nginx:0.1.0"
    #: How nginx reads `current` (render_nginx_conf): "lua" needs the lua module in nginx_image.
    nginx_resolver: CurrentResolver = "lua"
    reconcile_interval: float = 20.0


def nginx_resolver(value: str | None) -> CurrentResolver:
    """DIFUSOR_NGINX_RESOLVER: unset or empty is the default; anything else must be a resolver."""
    if not value:
        return Settings.nginx_resolver
    for resolver in CURRENT_RESOLVERS:
        if value == resolver:
            return resolver
    raise ValueError(
        f"DIFUSOR_NGINX_RESOLVER={value!r} is not one of {', '.join(CURRENT_RESOLVERS)} "
        "(lua needs Debian's libnginx-mod-http-lua in the nginx image)"
    )


@dataclass
class Outcome:
    """What a reconcile did: the status to write (None when unchanged) and the changes made."""

    status_patch: Obj | None
    changes: list[str] = field(default_factory=list)
    error: str | None = None
    invalid: bool = False


def now_rfc3339() -> str:
    """The current time as the API server writes it."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def validation_message(exc: ValidationError) -> str:
    """A pydantic error as `spec.field.path: message` lines, the way the API server names fields."""
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"] if not str(p).startswith("function-after"))
        parts.append(f"spec.{loc}: {err['msg']}" if loc else f"spec: {err['msg']}")
    return "; ".join(parts)


class KeyedLocks:
    """One reentrant lock per key, kept while someone holds or waits for it."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[Hashable, tuple[threading.RLock, int]] = {}

    @contextlib.contextmanager
    def hold(self, key: Hashable) -> Iterator[None]:
        with self._guard:
            lock, users = self._locks.get(key) or (threading.RLock(), 0)
            self._locks[key] = (lock, users + 1)
        try:
            with lock:
                yield
        finally:
            with self._guard:
                lock, users = self._locks[key]
                if users == 1:
                    del self._locks[key]
                else:
                    self._locks[key] = (lock, users - 1)


class Reconciler:
    """Applies a publication's children and reports its status."""

    def __init__(
        self,
        cluster: Cluster,
        settings: Settings,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cluster = cluster
        self.settings = settings
        self._clock = clock
        # One pass per publication at a time: kopf's handler, the repair timer and the status
        # refresh of a StatefulSet's events all reconcile, and a new publication's StatefulSet
        # changes while its first pass still applies the children after it.
        self._passes = KeyedLocks()
        # When each publication's last full pass began: every child sent, the owned ones
        # listed or none possible (new). A repair within an interval of one has nothing to add.
        self._full: dict[tuple[str, str], float] = {}
        # The children each publication had at its last prune: the same set needs no new one.
        self._pruned: dict[tuple[str, str], frozenset[tuple[str, str, str]]] = {}
        # The uid each publication had at its last pass. A new one under the same name (deleted
        # and applied again) starts with nothing remembered: its agent token was the old one's.
        self._uids: dict[tuple[str, str], str] = {}
        self.custom = k8s.CustomObjectsApi(cluster.api)
        # Reconciles run in several handler threads at once; window transitions are recorded
        # by one at a time, from the status as stored, so each Event is said once.
        self._window_lock = threading.Lock()

    def event(self, body: Obj, *, reason: str, message: str, warning: bool = False) -> None:
        """Record an Event on the publication."""
        publication_event(
            self.cluster.api,
            metadata=body["metadata"],
            reason=reason,
            message=message,
            warning=warning,
            component="difusor-operator",
        )

    def hold(self, namespace: str, name: str) -> contextlib.AbstractContextManager[None]:
        """The publication's pass lock (reentrant): a caller that reads the publication before
        reconciling it holds it across both, so that it reads what the last pass wrote."""
        return self._passes.hold((namespace, name))

    def reconcile(self, body: Obj, *, repair: bool = False, workload: Obj | None = None) -> Outcome:
        """Bring the children of one publication to its spec and compute its status.

        Children applied before exactly as they are wanted now are not sent again, and the
        owned children are listed for pruning only when the set wanted changed, unless
        `repair`: then every child is applied (undoing hand edits) and the owned ones listed.
        A repair less than an interval after the start of a full pass (a repair, or the first
        pass of a publication, which sends every child) is an ordinary pass: the next repair
        undoes what was edited in between, so an edit lasts under two intervals.
        A publication never reconciled before (no observedGeneration) has nothing to prune;
        one deleted and applied again under its name (another uid) is new to this process.
        A publication being deleted gets no pass: its children go with it (the host keys stay),
        and a pass would apply them again and make new host keys for a missing Secret, a
        fifth of a second of CPU each, that a namespace being deleted refuses.
        `workload` is the StatefulSet when the caller has it (a watch event): it is not read.
        Passes of one publication run one at a time.
        """
        meta = body["metadata"]
        if meta.get("deletionTimestamp"):
            return Outcome(status_patch=None)
        with self.hold(meta["namespace"], meta["name"]):
            return self._reconcile(body, repair=repair, workload=workload)

    def _reconcile(self, body: Obj, *, repair: bool, workload: Obj | None) -> Outcome:
        meta = body["metadata"]
        name, namespace = meta["name"], meta["namespace"]
        started = self._clock()
        if repair and started - self._full.get((namespace, name), -math.inf) < (
            self.settings.reconcile_interval
        ):
            repair = False
        generation = int(meta.get("generation", 1))
        status: Obj = dict(body.get("status") or {})
        conditions = list(status.get("conditions") or [])
        now = now_rfc3339()

        try:
            spec = PrepPublicationSpec.model_validate(body.get("spec") or {})
        except ValidationError as exc:
            message = validation_message(exc)
            obs = Observation(
                generation=generation, desired_replicas=0, replicas=0, ready_replicas=0,
                updated_replicas=0, workload_observed_generation=0, workload_generation=0,
                min_ready=1, invalid_spec=message,
            )  # fmt: skip
            new = {
                "conditions": compute_conditions(conditions, obs, now=now),
                "observedGeneration": generation,
            }
            patch = _diff(status, new)
            if patch:
                self.event(body, reason="InvalidSpec", message=message, warning=True)
            return Outcome(status_patch=patch, error=message, invalid=True)

        target = Target(
            name=name,
            namespace=namespace,
            uid=meta.get("uid"),
            image=self.settings.image,
            nginx_image=self.settings.nginx_image,
            capabilities=self.cluster.capabilities(),
            files=config_files(spec, name=name, nginx_resolver=self.settings.nginx_resolver),
        )
        changes: list[str] = []
        apply_error: str | None = None
        names = Names(name)
        desired = render_all(spec, target)
        # The Secrets generated once, by what the cluster client knows them as.
        generated: dict[ObjectKey, Callable[[], Obj]] = {
            ("v1", "Secret", namespace, names.host_keys): functools.partial(
                secrets.host_keys_secret, target, host_keys_owners(spec, target)
            ),
            ("v1", "Secret", namespace, names.agent_token): functools.partial(
                secrets.agent_token_secret, target
            ),
        }
        self._forget_if_new(meta, desired, generated)
        for key, build in generated.items():
            if self.cluster.create_if_absent(key, build, if_unknown=not repair):
                changes.append(f"created Secret {key[3]}")

        # Whether every child goes out (a repair, or none sent before by this process): such a
        # pass undoes any edit, as a repair does.
        sends_all = repair or not any(self.cluster.applied_before(o) for o in desired)
        for obj in desired:
            kind, child = obj["kind"], obj["metadata"]["name"]
            try:
                what = self.cluster.apply(obj, if_changed=not repair)
            except (k8s.ApiException, LookupError) as exc:
                reason = getattr(exc, "body", None) or str(exc)
                apply_error = f"could not apply {kind} {child}: {_short(reason)}"
                log.warning("Failed to apply %s %s/%s: %s", kind, namespace, child, apply_error)
                continue
            if what != "unchanged":
                changes.append(f"{what} {kind} {child}")
        wanted = frozenset((o["apiVersion"], o["kind"], o["metadata"]["name"]) for o in desired)
        if "observedGeneration" not in status and not repair and not apply_error:
            # New: children of an earlier publication of this name belong to its uid, and the
            # garbage collector removes them (the repair timer prunes anyway).
            self._pruned[(namespace, name)] = wanted
        elif repair or apply_error or self._pruned.get((namespace, name)) != wanted:
            changes.extend(self._prune(desired, namespace=namespace, publication=name))
            if not apply_error:
                self._pruned[(namespace, name)] = wanted

        if sends_all and not apply_error:
            self._full[(namespace, name)] = started
        for change in changes:
            log.info("Publication %s/%s: %s", namespace, name, change)
        if changes:
            # One Event for the pass: a new publication changes a dozen children at once.
            message = "; ".join(changes)
            self.event(body, reason="ChildChanged", message=message[0].upper() + message[1:])
        if apply_error:
            self.event(body, reason="ApplyFailed", message=apply_error, warning=True)

        sts = workload if workload is not None else self._statefulset(names.web, namespace)
        sts_status = (sts or {}).get("status") or {}
        active = (status.get("activeCut") or {}).get("id")
        rollout = status.get("rollout") or {}
        obs = Observation(
            generation=generation,
            desired_replicas=int(((sts or {}).get("spec") or {}).get("replicas", spec.replicas)),
            replicas=int(sts_status.get("replicas") or 0),
            ready_replicas=int(sts_status.get("readyReplicas") or 0),
            updated_replicas=int(sts_status.get("updatedReplicas") or 0),
            workload_observed_generation=int(sts_status.get("observedGeneration") or 0),
            workload_generation=int(((sts or {}).get("metadata") or {}).get("generation") or 1),
            min_ready=spec.promotion.min_ready_replicas,
            apply_error=apply_error,
            active_cut=active,
            rollout_target=rollout.get("targetCut")
            if rollout.get("phase") not in (None, "Idle")
            else None,
            purge_error=purge_error(status),
            placeholder_missing=self._placeholder_missing(spec, namespace),
        )
        new = {
            "conditions": compute_conditions(conditions, obs, now=now),
            "replicas": obs.replicas,
            "readyReplicas": obs.ready_replicas,
            "selector": selector_string(name),
            "observedGeneration": generation,
        }
        self._record_window(body, spec)
        return Outcome(status_patch=_diff(status, new), changes=changes, error=apply_error)

    def _record_window(self, body: Obj, spec: PrepPublicationSpec) -> None:
        """Write status.window now, with an Event for each phase entered since the last look.

        Events go out before the status that records them: a crash in between repeats an Event
        rather than losing one.
        """
        meta = body["metadata"]
        seen = (body.get("status") or {}).get("window")
        if window_status(spec.window, seen, now=datetime.now(UTC)) == (seen, []):
            return
        with self._window_lock:
            try:
                stored = self.custom.get_namespaced_custom_object(
                    GROUP, VERSION, meta["namespace"], "preppublications", meta["name"]
                )
            except k8s.ApiException as exc:
                if exc.status == 404:
                    return
                raise
            previous = (stored.get("status") or {}).get("window")
            window, events = window_status(spec.window, previous, now=datetime.now(UTC))
            for event in events:
                log.info("Publication %s/%s: %s", meta["namespace"], meta["name"], event.message)
                self.event(body, reason=event.reason, message=event.message)
            if window != previous:
                self.custom.patch_namespaced_custom_object_status(
                    GROUP, VERSION, meta["namespace"], "preppublications", meta["name"],
                    {"status": {"window": window}},
                )  # fmt: skip

    def _placeholder_missing(self, spec: PrepPublicationSpec, namespace: str) -> str | None:
        """Before the window opens: why its placeholder cannot be served, if it cannot."""
        window = spec.window
        if window is None or window.phase_at(datetime.now(UTC)) is not WindowPhase.PENDING:
            return None
        name = window.placeholder_config_map
        if read(self.cluster.api, core_path(namespace, "configmaps", name)) is None:
            return (
                f"ConfigMap {name} (spec.window.placeholderConfigMap) "
                "does not exist: until the window opens readers get 404"
            )
        return None

    def _forget_if_new(self, meta: Obj, desired: list[Obj], generated: Iterable[ObjectKey]) -> None:
        """Forget an earlier publication of this name, when this one has another uid.

        Deleted and applied again while the operator runs, a publication found its agent token
        "created before" and its children "sent before": the pods waited for a Secret the
        garbage collector had removed until a repair, and the old publication's last full pass
        made the new one's first repair an ordinary pass. (Host keys kept on delete are owned by no
        publication and stay; they are looked up again all the same.)
        """
        key = (meta["namespace"], meta["name"])
        uid = str(meta.get("uid") or "")
        if self._uids.get(key, uid) != uid:
            self.cluster.forget(desired, generated)
            self._full.pop(key, None)
            self._pruned.pop(key, None)
        self._uids[key] = uid

    def _statefulset(self, name: str, namespace: str) -> Obj | None:
        return read(self.cluster.api, f"/apis/apps/v1/namespaces/{namespace}/statefulsets/{name}")

    def _prune(self, desired: list[Obj], *, namespace: str, publication: str) -> list[str]:
        """Delete children the spec no longer asks for (say, an Ingress after a switch to Gateway)."""
        wanted = {(o["apiVersion"], o["kind"], o["metadata"]["name"]) for o in desired}
        removed = []
        for api_version, kind in managed_kinds():
            for obj in self.cluster.owned(
                api_version, kind, namespace=namespace, publication=publication
            ):
                obj_name = obj["metadata"]["name"]
                if (api_version, kind, obj_name) in wanted:
                    continue
                if self.cluster.delete(api_version, kind, name=obj_name, namespace=namespace):
                    removed.append(f"deleted {kind} {obj_name}")
        return removed


def purge_error(status: Obj) -> str | None:
    """The message of the publication's latest purge when it failed."""
    purge = status.get("purge") or {}
    if purge.get("outcome") != "Failed":
        return None
    return f"CDN purge of cut {purge.get('cut')} failed: {purge.get('message') or 'no detail'}"


def _short(text: str, limit: int = 400) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _diff(current: Obj, new: Obj) -> Obj | None:
    """The fields of `new` that differ from `current` (None when nothing changed)."""
    patch = {k: v for k, v in new.items() if current.get(k) != v}
    return patch or None
