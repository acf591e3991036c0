"""kopf handlers: create, update, resume and a timer all run the same level-based reconcile."""

from __future__ import annotations

import asyncio
import functools
import logging
import os
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any, cast

import kopf
from kubernetes import client as k8s

from difusor.controller.monitor import Monitor, Watch
from difusor.controller.promotion import Promoter
from difusor.controller.reconcile import Outcome, Reconciler, Settings, nginx_resolver
from difusor.controller.refresher import Refresher
from difusor.kube import Cluster, api_client, custom_path, read
from difusor.metrics import OperatorMetrics
from difusor.models import GROUP, VERSION
from difusor.render.labels import COMPONENT_LABEL, INSTANCE_LABEL, MANAGED_BY_LABEL

log = logging.getLogger(__name__)

PLURAL = "preppublications"
INTERVAL = float(os.environ.get("DIFUSOR_RECONCILE_INTERVAL", "20"))
PROMOTION_INTERVAL = float(os.environ.get("DIFUSOR_PROMOTION_INTERVAL", "3"))
#: The labels of the pods and StatefulSets the operator follows: its own.
WEB_POD_LABELS = {MANAGED_BY_LABEL: "difusor", COMPONENT_LABEL: "web"}
WORKLOAD_LABELS = {MANAGED_BY_LABEL: "difusor"}


def watch_selectors(settings: kopf.OperatorSettings) -> None:
    """Have the API server send only difusor's pods and StatefulSets.

    A handler's `labels` are checked by kopf on its side: without a selector on the watch itself
    the operator received, decoded and kept for its per-object worker's idle seconds every pod
    and StatefulSet of the cluster, however many the other teams run, and listed them all at
    every start.
    """
    for (group, version, plural), labels in (
        (("", "v1", "pods"), WEB_POD_LABELS),
        (("apps", "v1", "statefulsets"), WORKLOAD_LABELS),
    ):
        selector = ",".join(f"{k}={v}" for k, v in labels.items())
        settings.watching.label_selectors[group, version, plural] = selector


class DiffBase(kopf.AnnotationsDiffBaseStorage):
    """kopf's diff base of a publication, without copying what it then throws away.

    kopf deep-copies the whole body on every event of a publication before dropping its status
    and its metadata but labels and annotations. A publication's status changes several times
    per promotion (its rollout, its active cut) and carries its conditions, incidents and
    managedFields: the copy was a seventh of the operator's CPU during promotions, in the event
    loop that dispatches every other watch event. The essence is kopf's own, built from the
    parts it keeps; with extra fields (status fields a handler follows) kopf builds it whole.
    """

    def build(
        self,
        *,
        body: kopf.Body,
        extra_fields: Iterable[kopf.FieldSpec] | None = None,
    ) -> kopf.BodyEssence:
        if extra_fields:
            return super().build(body=body, extra_fields=extra_fields)
        meta = body.get("metadata") or {}
        kept: dict[str, Any] = {k: v for k, v in body.items() if k not in ("metadata", "status")}
        # Labels and annotations are its essence; kopf reads the owners to name its key.
        names = ("labels", "annotations", "ownerReferences")
        kept["metadata"] = {k: meta[k] for k in names if k in meta}
        return super().build(body=kopf.Body(cast(kopf.RawBody, kept)))


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    """Build the dependencies once and keep kopf's bookkeeping under our own prefix."""
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = DiffBase(prefix=GROUP, key="last-handled-configuration")
    settings.posting.level = logging.WARNING
    settings.watching.server_timeout = 60
    settings.watching.client_timeout = 90
    settings.execution.max_workers = 8
    watch_selectors(settings)
    try:
        resolver = nginx_resolver(os.environ.get("DIFUSOR_NGINX_RESOLVER"))
    except ValueError as exc:
        raise kopf.PermanentError(str(exc)) from exc
    cluster = Cluster(api_client(os.environ.get("DIFUSOR_KUBECONFIG")))
    # `difusor operator` passes the metrics it serves; a bare `kopf run` gets a registry of its own.
    metrics = memo.get("metrics") or OperatorMetrics()
    memo.metrics = metrics
    memo.promoter = Promoter(cluster.api, metrics)
    memo.monitor = Monitor(cluster.api, metrics, pods=memo.promoter.pods.items)
    memo.reconciler = Reconciler(
        cluster,
        Settings(
            image=os.environ.get("DIFUSOR_IMAGE", Settings.image),
            nginx_image=os.environ.get("DIFUSOR_NGINX_IMAGE", Settings.nginx_image),
            nginx_resolver=resolver,
            reconcile_interval=INTERVAL,
        ),
    )
    memo.workloads = Refresher(functools.partial(_refresh_status, memo.reconciler))


def _run(body: kopf.Body, memo: kopf.Memo, *, permanent: bool, repair: bool = False) -> None:
    reconciler: Reconciler = memo.reconciler
    outcome = _pass(
        reconciler,
        body.metadata.namespace or "",
        body.metadata.name or "",
        lambda: {
            "metadata": dict(body.metadata),
            "spec": dict(body.spec),
            "status": dict(body.status),
        },
        repair=repair,
    )
    assert outcome is not None  # kopf's body is always there
    if outcome.invalid:
        if permanent:
            raise kopf.PermanentError(outcome.error)
        return
    # A change of the spec (pinnedCut, promotion settings) or a restart may start a promotion.
    _promote(memo, body.metadata.namespace, body.metadata.name)
    if outcome.error:
        raise kopf.TemporaryError(outcome.error, delay=10)


def _pass(
    reconciler: Reconciler,
    namespace: str,
    name: str,
    read: Callable[[], dict[str, Any] | None],
    **options: Any,
) -> Outcome | None:
    """One pass of a publication and the status it computed, under its pass lock; `read` gives
    the publication inside the lock, so that it has what the last pass wrote. None when `read`
    finds it gone."""
    with reconciler.hold(namespace, name):
        body = read()
        if body is None:
            return None
        outcome = reconciler.reconcile(body, **options)
        if outcome.status_patch:
            _patch_status(reconciler, namespace, name, outcome.status_patch)
        return outcome


def _patch_status(reconciler: Reconciler, namespace: str, name: str, patch: dict[str, Any]) -> None:
    api = k8s.CustomObjectsApi(reconciler.cluster.api)
    try:
        api.patch_namespaced_custom_object_status(
            GROUP, VERSION, namespace, PLURAL, name, {"status": patch}
        )
    except k8s.ApiException as exc:
        if exc.status != 404:
            raise


@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL)
@kopf.on.resume(GROUP, VERSION, PLURAL)
def reconcile(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """Reconcile on every change of the spec and when the operator starts."""
    _run(body, memo, permanent=True)


@kopf.timer(GROUP, VERSION, PLURAL, interval=INTERVAL, initial_delay=INTERVAL)
def repair(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """Undo hand edits and deletions of children, and refresh the status."""
    _run(body, memo, permanent=False, repair=True)


@kopf.on.event("apps", "v1", "statefulsets", labels=WORKLOAD_LABELS)
async def workload_changed(
    event: kopf.RawEvent, body: kopf.Body, memo: kopf.Memo, namespace: str | None, **_: Any
) -> None:
    """Refresh the publication's status when its web pods change (readiness, rollout)."""
    publication = body.metadata.labels.get(INSTANCE_LABEL)
    if not publication or not namespace or event.get("type") is None:
        return
    workload = dict(body) if event.get("type") != "DELETED" else None
    refresher: Refresher[tuple[str, str], dict[str, Any] | None] = memo.workloads
    refresher.ask((namespace, publication), workload)


def _refresh_status(
    reconciler: Reconciler, key: tuple[str, str], workload: dict[str, Any] | None
) -> None:
    """The status of a publication from its StatefulSet as last seen (None: read it)."""
    namespace, publication = key
    path = custom_path(namespace, PLURAL, publication)
    read_publication = functools.partial(read, reconciler.cluster.api, path)
    _pass(reconciler, namespace, publication, read_publication, workload=workload)


def _promote(memo: kopf.Memo, namespace: str | None, publication: str | None) -> None:
    if not namespace or not publication:
        return
    promoter: Promoter = memo.promoter
    promoter.step(namespace, publication, datetime.now(UTC))


@kopf.timer(GROUP, VERSION, PLURAL, interval=PROMOTION_INTERVAL)
def promotion_clock(
    name: str, namespace: str | None, status: kopf.Status, memo: kopf.Memo, **_: Any
) -> None:
    """Let time-based transitions (stage timeouts) happen while a rollout waits on a pod."""
    if ((status.get("rollout") or {}).get("phase") or "Idle") != "Idle":
        _promote(memo, namespace, name)


def _deleted(event: kopf.RawEvent) -> bool:
    return event.get("type") == "DELETED"


def _nudge(memo: kopf.Memo, namespace: str | None, publication: str | None) -> None:
    if namespace and publication:
        promoter: Promoter = memo.promoter
        promoter.nudge(namespace, publication)


# The watch events' handlers are coroutines: they note the object in the mirror and ask for a
# step, which runs on the promoter's threads (Promoter.nudge), so the event is let go at once.


@kopf.on.event("", "v1", "pods", labels=WEB_POD_LABELS)
async def pod_reported(
    event: kopf.RawEvent, body: kopf.Body, namespace: str | None, memo: kopf.Memo, **_: Any
) -> None:
    """An agent reported (staged, active) or a pod came or went: ask for the next promotion step."""
    promoter: Promoter = memo.promoter
    if promoter.pod_seen(dict(event["object"]), deleted=_deleted(event)):
        _nudge(memo, namespace, body.metadata.labels.get(INSTANCE_LABEL))


@kopf.on.event(GROUP, VERSION, "prepcuts")
async def cut_changed(
    event: kopf.RawEvent, spec: kopf.Spec, namespace: str | None, memo: kopf.Memo, **_: Any
) -> None:
    """A cut was received or verified: it may start a promotion."""
    promoter: Promoter = memo.promoter
    cut, deleted = dict(event["object"]), _deleted(event)
    promoter.cuts.saw(cut, deleted=deleted)
    # The watch event of the operator's own write brings nothing a step has not decided on and
    # starts none (the step that wrote decides again itself when it moved the rollout). About
    # half the steps of a promotion were such echoes.
    if deleted or not promoter.wrote(cut):
        _nudge(memo, namespace, spec.get("publication"))


@kopf.daemon(GROUP, VERSION, PLURAL, cancellation_timeout=10)
async def prober(
    name: str,
    namespace: str | None,
    body: kopf.Body,
    memo: kopf.Memo,
    stopped: kopf.DaemonStopped,
    **_: Any,
) -> None:
    """The availability prober of one publication (see controller/monitor.py)."""
    if not namespace:
        return
    monitor: Monitor = memo.monitor
    watch = Watch(namespace, name)
    try:
        while not stopped:
            # kopf keeps `body` current with every event of the publication: no read per pass.
            seen = {
                "metadata": dict(body.metadata),
                "spec": dict(body.spec),
                "status": dict(body.status),
            }
            interval = await asyncio.to_thread(monitor.step, watch, seen)
            await stopped.wait(interval)
    finally:
        memo.metrics.forget(namespace, name)
