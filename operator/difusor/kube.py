"""Talking to the Kubernetes API: clients, server-side apply of children, discovery."""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

import urllib3
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.dynamic import DynamicClient
from kubernetes.dynamic.exceptions import NotFoundError, ResourceNotFoundError

from difusor.models import API_VERSION, GROUP, VERSION
from difusor.render.labels import FIELD_MANAGER, INSTANCE_LABEL, MANAGED_BY_LABEL

log = logging.getLogger(__name__)

Obj = dict[str, Any]
ObjectKey = tuple[str, str, str | None, str]
#: How long the list of served API groups is reused: an API installed later (Gateway, Traefik,
#: cert-manager) is seen within this time.
CAPABILITIES_TTL = 60.0
#: How far the API server's clock may be behind the operator's when the operator tells, on its
#: first apply of an object, whether the apply changed it.
CLOCK_SLACK = 5.0


def _key(obj: Obj) -> ObjectKey:
    meta = obj["metadata"]
    return (obj["apiVersion"], obj["kind"], meta.get("namespace"), meta["name"])


def _seconds(timestamp: str) -> float:
    """An RFC 3339 time as the API server writes it, in seconds since the epoch (0 if none)."""
    try:
        return datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0.0


def _digest(obj: Obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def api_client(kubeconfig: str | None = None) -> k8s.ApiClient:
    """A client from a kubeconfig file, $KUBECONFIG, or the pod's ServiceAccount."""
    if kubeconfig:
        return k8s_config.new_client_from_config(config_file=kubeconfig)
    try:
        k8s_config.load_incluster_config()
        return k8s.ApiClient()
    except k8s_config.ConfigException:
        return k8s_config.new_client_from_config()


class Cluster:
    """Server-side apply and discovery over one API client, safe to share between threads.

    It remembers what it applied (the object's digest, and the uid and resourceVersion of the
    API server's answer), so that an apply needs no read before it and an object applied before
    exactly as wanted now can be left alone.
    """

    def __init__(self, api: k8s.ApiClient) -> None:
        self.api = api
        self._lock = threading.Lock()
        self._dynamic: DynamicClient | None = None
        self._capabilities: tuple[float, frozenset[str]] | None = None
        self._applied: dict[ObjectKey, tuple[str, str, str]] = {}
        self._present: set[ObjectKey] = set()
        self._resources: dict[tuple[str, str], tuple[float, Any | None]] = {}
        self._started = time.time()

    @property
    def dynamic(self) -> DynamicClient:
        """The dynamic client (discovery runs once, on first use)."""
        with self._lock:
            if self._dynamic is None:
                self._dynamic = DynamicClient(self.api)
            return self._dynamic

    def resource(self, api_version: str, kind: str) -> Any | None:
        """The API resource of a kind, or None when the cluster does not serve it."""
        found = self._resources.get((api_version, kind))
        if found is not None and (found[1] is not None or time.monotonic() < found[0]):
            return found[1]
        dynamic = self.dynamic
        # A miss makes the dynamic client invalidate and refetch its discovery cache, which other
        # handler threads would read half-built: look-ups go one at a time. A kind not served is
        # asked for again after CAPABILITIES_TTL (an API installed later is found then).
        with self._lock:
            try:
                res = dynamic.resources.get(api_version=api_version, kind=kind)
            except ResourceNotFoundError:
                res = None
            self._resources[(api_version, kind)] = (time.monotonic() + CAPABILITIES_TTL, res)
            return res

    def capabilities(self) -> frozenset[str]:
        """Group versions the cluster serves (optional APIs: Gateway, Traefik, cert-manager)."""
        cached = self._capabilities
        if cached is not None and time.monotonic() - cached[0] < CAPABILITIES_TTL:
            return cached[1]
        groups = k8s.ApisApi(self.api).get_api_versions().groups or []
        found = {"v1"}
        for group in groups:
            for version in group.versions or []:
                found.add(version.group_version)
        self._capabilities = (time.monotonic(), frozenset(found))
        return self._capabilities[1]

    def applied_before(self, obj: Obj) -> bool:
        """Whether this process applied the object (in any version) and it was not deleted."""
        return _key(obj) in self._applied

    def forget(self, objs: Iterable[Obj] = (), keys: Iterable[ObjectKey] = ()) -> None:
        """Drop what this process remembers of these objects (applied, or found present): their
        owner was deleted and made again, and the garbage collector removes what it owned."""
        for key in [*map(_key, objs), *keys]:
            self._applied.pop(key, None)
            self._present.discard(key)

    def apply(self, obj: Obj, *, if_changed: bool = False) -> str:
        """Server-side apply one object; returns created, updated or unchanged.

        What changed is told from the answer, with no read before it: the uid (recreated), the
        digest of what is sent (the operator wants something else) and the time of the
        operator's managedFields entry, which moves only when the apply changed a field (a hand
        edit undone), not when a controller writes the status. The first time this process
        applies an object, it was created when that entry has the object's creation time (to
        the second), and
        updated when the entry is newer than this process (less CLOCK_SLACK). With
        `if_changed`, an object applied before exactly as it is wanted now is not sent (a hand
        edit stays until an apply without it).
        """
        key = _key(obj)
        digest = _digest(obj)
        known = self._applied.get(key)
        if if_changed and known is not None and known[0] == digest:
            return "unchanged"
        res = self.resource(obj["apiVersion"], obj["kind"])
        if res is None:
            raise LookupError(f"{obj['kind']} ({obj['apiVersion']}) is not served by this cluster")
        meta = obj["metadata"]
        # The answer is read as the dict it is: the dynamic client's server_side_apply wraps
        # every field of it (managedFields included) in objects, for the three read here.
        after = request(
            self.api,
            "PATCH",
            res.path(name=meta["name"], namespace=meta.get("namespace")),
            query=[("fieldManager", FIELD_MANAGER), ("force", "true")],
            body=obj,
            content_type="application/apply-patch+yaml",
        )["metadata"]
        applied_at = next(
            (
                str(entry.get("time") or "")
                for entry in after.get("managedFields") or []
                if entry.get("manager") == FIELD_MANAGER
            ),
            "",
        )
        uid = str(after.get("uid"))
        self._applied[key] = (digest, uid, applied_at)
        if known is None:
            applied = _seconds(applied_at)
            # Both times are taken by the API server within the create (whole seconds).
            if applied - _seconds(str(after.get("creationTimestamp") or "")) <= 1:
                return "created"
            return "updated" if applied >= self._started - CLOCK_SLACK else "unchanged"
        if known[1] != uid:
            return "created"
        if known[0] != digest or known[2] != applied_at:
            return "updated"
        return "unchanged"

    def owned(self, api_version: str, kind: str, *, namespace: str, publication: str) -> list[Obj]:
        """Objects of a kind that the operator made for a publication."""
        res = self.resource(api_version, kind)
        if res is None:
            return []
        selector = f"{INSTANCE_LABEL}={publication},{MANAGED_BY_LABEL}=difusor"
        found = request(
            self.api, "GET", res.path(namespace=namespace), query=[("labelSelector", selector)]
        )
        return list(found.get("items") or [])

    def delete(self, api_version: str, kind: str, *, name: str, namespace: str) -> bool:
        """Delete an object; False when it was already gone."""
        res = self.resource(api_version, kind)
        if res is None:
            return False
        self._applied.pop((api_version, kind, namespace, name), None)
        try:
            self.dynamic.delete(res, name=name, namespace=namespace)
        except NotFoundError:
            return False
        return True

    def read_secret(self, name: str, namespace: str) -> Obj | None:
        """A Secret as a dict, or None."""
        return read(self.api, core_path(namespace, "secrets", name))

    def create_if_absent(
        self, key: ObjectKey, build: Callable[[], Obj], *, if_unknown: bool = False
    ) -> bool:
        """Create an object unless one with its name exists (generated Secrets are kept).

        `build` makes the object only when it is to be created: generating host keys costs a
        good part of a second of CPU. With `if_unknown`, an object this process created or
        found before is not asked for.
        """
        if if_unknown and key in self._present:
            return False
        api_version, kind, namespace, name = key
        res = self.resource(api_version, kind)
        if res is None:
            raise LookupError(f"{kind} is not served by this cluster")
        try:
            self.dynamic.get(res, name=name, namespace=namespace)
        except NotFoundError:
            pass
        else:
            self._present.add(key)
            return False
        try:
            self.dynamic.create(res, body=build(), namespace=namespace)
        except k8s.ApiException as exc:
            if exc.status == 409:
                self._present.add(key)
                return False
            raise
        self._present.add(key)
        return True


def request(
    api: k8s.ApiClient,
    method: str,
    path: str,
    *,
    query: list[tuple[str, str]] | None = None,
    body: Obj | None = None,
    content_type: str = "application/json",
) -> Obj:
    """One call to the API server, answered as the dict it sends (camelCase); a failure raises
    ApiException as the typed clients do.

    The operator does without CoreV1Api and AppsV1Api: they import some 400 pydantic models
    (about 27 MB resident, a quarter of the operator) for the handful of calls it makes.
    """
    serialized = api.param_serialize(
        method,
        path,
        query_params=query or [],
        header_params={"Accept": "application/json", "Content-Type": content_type},
        body=body,
        auth_settings=["BearerToken"],
    )
    response = api.call_api(*serialized)
    response.read()
    if not 200 <= response.status <= 299:
        api.response_deserialize(response, {})
    result: Obj = json.loads(response.data)
    return result


#: What a call to the API server raises when the server answers an error (ApiException) or
#: cannot be reached at all: urllib3 gives up with MaxRetryError, a read times out, a
#: connection is reset (urllib3's HTTPError, which is no OSError).
API_ERRORS = (k8s.ApiException, urllib3.exceptions.HTTPError)


#: 4xx answers about the caller or the moment, not the request: a token being rotated (401),
#: permissions an upgrade is still granting (403), a timeout (408), throttling (429).
NOT_THE_REQUEST = (401, 403, 408, 429)


def request_refused(exc: BaseException) -> bool:
    """Whether the API server answered that it will not take this request as it is (a 4xx
    but NOT_THE_REQUEST): trying it again cannot succeed. Unreachable, overloaded or failing
    (5xx) is not a refusal."""
    if not isinstance(exc, k8s.ApiException):
        return False
    status = exc.status or 0
    return 400 <= status < 500 and status not in NOT_THE_REQUEST


MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"


def custom_path(namespace: str, plural: str, name: str = "", subresource: str = "") -> str:
    """The path of difusor's custom objects of a namespace, one of them, or its subresource."""
    path = f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{plural}"
    for part in (name, subresource):
        if part:
            path += f"/{part}"
    return path


def patch_status(api: k8s.ApiClient, namespace: str, plural: str, name: str, status: Obj) -> Obj:
    """Merge `status` into the status of one of difusor's custom objects; answers the object."""
    return request(
        api,
        "PATCH",
        custom_path(namespace, plural, name, "status"),
        body={"status": status},
        content_type=MERGE_PATCH,
    )


def core_path(namespace: str, plural: str, name: str = "") -> str:
    """The path of core/v1 objects of a namespace (pods, secrets, configmaps...), or of one."""
    path = f"/api/v1/namespaces/{namespace}/{plural}"
    return f"{path}/{name}" if name else path


def read(api: k8s.ApiClient, path: str) -> Obj | None:
    """GET one object as a dict; None when it does not exist."""
    try:
        return request(api, "GET", path)
    except k8s.ApiException as exc:
        if exc.status == 404:
            return None
        raise


def list_pods(api: k8s.ApiClient, namespace: str, selector: str) -> list[Obj]:
    """Pods as the API sends them (dicts, camelCase): building V1Pod models costs more CPU than
    everything else a promotion step does."""
    found = request(api, "GET", core_path(namespace, "pods"), query=[("labelSelector", selector)])
    items: list[Obj] = found.get("items") or []
    return items


def publication_event(
    api: k8s.ApiClient,
    *,
    metadata: Obj,
    reason: str,
    message: str,
    warning: bool = False,
    component: str,
) -> None:
    """Record a core/v1 Event on a PrepPublication (given its metadata); never raises."""
    meta = metadata
    stamp = datetime.now(UTC)
    involved = {
        "apiVersion": API_VERSION,
        "kind": "PrepPublication",
        "name": meta["name"],
        "namespace": meta["namespace"],
        "uid": meta.get("uid"),
    }
    event = {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
        "involvedObject": {k: v for k, v in involved.items() if v is not None},
        "reason": reason,
        "message": message[:1024],
        "type": "Warning" if warning else "Normal",
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
        "source": {"component": component},
        "reportingComponent": component,
        "reportingInstance": component,
    }
    try:
        request(api, "POST", core_path(meta["namespace"], "events"), body=event)
    except k8s.ApiException as exc:
        log.warning("Could not record event %s on %s: %s", reason, meta["name"], exc.reason)
