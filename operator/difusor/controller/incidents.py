"""PrepIncident records: opened, annotated with what was done, and resolved by the operator."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from kubernetes import client as k8s

from difusor.kube import publication_event
from difusor.metrics import OperatorMetrics
from difusor.models import API_VERSION, GROUP, VERSION, incident_object_name, parse_time
from difusor.render.labels import PUBLICATION_LABEL, common_labels, owner_reference

log = logging.getLogger(__name__)

Obj = dict[str, Any]
PLURAL = "prepincidents"


def stamp(when: datetime) -> str:
    """RFC 3339, UTC, seconds (as the API server writes times)."""
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Incidents:
    """Creates, updates and resolves the PrepIncidents of publications (one object each)."""

    def __init__(self, api: k8s.ApiClient, metrics: OperatorMetrics) -> None:
        self.api = api
        self.custom = k8s.CustomObjectsApi(api)
        self.metrics = metrics

    def open_ones(self, namespace: str, publication: str, *, detected_by: str) -> list[Obj]:
        """The incidents of a publication still Open that one detector raised, oldest first."""
        items = self.custom.list_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, label_selector=f"{PUBLICATION_LABEL}={publication}"
        ).get("items", [])
        found = [
            i
            for i in items
            if (i.get("status") or {}).get("phase", "Open") == "Open"
            and (i.get("spec") or {}).get("detectedBy") == detected_by
        ]
        return sorted(found, key=lambda i: i["spec"]["startedAt"])

    def count_open(self, namespace: str, publication: str) -> list[str]:
        """Names of every open incident of a publication."""
        items = self.custom.list_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, label_selector=f"{PUBLICATION_LABEL}={publication}"
        ).get("items", [])
        return sorted(
            i["metadata"]["name"]
            for i in items
            if (i.get("status") or {}).get("phase", "Open") == "Open"
        )

    def open(
        self,
        publication: Obj,
        *,
        started_at: datetime,
        detected_by: str,
        cause: str,
        root_cause: str,
        impact: Obj,
        actions: list[str],
        now: datetime,
    ) -> str:
        """Record a new incident (an Event says so too); returns its name."""
        meta = publication["metadata"]
        namespace, pub = meta["namespace"], meta["name"]
        name = incident_object_name(pub, started_at, detected_by)
        body = {
            "apiVersion": API_VERSION,
            "kind": "PrepIncident",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "labels": {**common_labels(pub, component="incident"), PUBLICATION_LABEL: pub},
                "ownerReferences": [owner_reference(pub, meta["uid"], controller=False)],
            },
            "spec": {
                "publication": pub,
                "startedAt": stamp(started_at),
                "detectedBy": detected_by,
            },
        }
        try:
            self.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)
        except k8s.ApiException as exc:
            if exc.status != 409:
                raise
        self._status(
            namespace,
            name,
            {
                "phase": "Open",
                "cause": cause,
                "rootCause": root_cause,
                "impact": impact,
                "actions": [{"at": stamp(now), "action": a} for a in actions],
            },
        )
        self.metrics.incidents.labels(namespace, pub, cause).inc()
        log.warning("Opened incident %s/%s (%s): %s", namespace, name, cause, root_cause)
        publication_event(
            self.api,
            metadata=meta,
            reason="IncidentOpened",
            message=f"Incident {name} opened ({cause}): {root_cause}",
            warning=True,
            component="difusor-operator",
        )
        return name

    def update(
        self, namespace: str, name: str, *, impact: Obj | None = None, action: str | None = None
    ) -> None:
        """Merge impact figures and append one action to an incident."""
        patch: Obj = {}
        if impact:
            patch["impact"] = impact
        if action:
            current = self._get(namespace, name)
            if current is None:
                return
            actions = list((current.get("status") or {}).get("actions") or [])
            actions.append({"at": stamp(datetime.now(UTC)), "action": action})
            patch["actions"] = actions
        if patch:
            self._status(namespace, name, patch)

    def close(
        self,
        publication: Obj,
        name: str,
        *,
        now: datetime,
        impact: Obj | None = None,
        action: str | None = None,
    ) -> None:
        """Resolve an incident: its end, duration and last figures (an Event says so too)."""
        meta = publication["metadata"]
        namespace = meta["namespace"]
        current = self._get(namespace, name)
        if current is None:
            return
        started = parse_time(current["spec"]["startedAt"])
        seconds = max(0, int((now - started).total_seconds()))
        patch: Obj = {"phase": "Resolved", "endedAt": stamp(now), "durationSeconds": seconds}
        if impact:
            patch["impact"] = impact
        if action:
            actions = list((current.get("status") or {}).get("actions") or [])
            actions.append({"at": stamp(now), "action": action})
            patch["actions"] = actions
        self._status(namespace, name, patch)
        log.info("Resolved incident %s/%s after %ds", namespace, name, seconds)
        publication_event(
            self.api,
            metadata=meta,
            reason="IncidentResolved",
            message=f"Incident {name} resolved after {seconds}s",
            component="difusor-operator",
        )

    def _get(self, namespace: str, name: str) -> Obj | None:
        try:
            found: Obj = self.custom.get_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, name
            )
        except k8s.ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return found

    def _status(self, namespace: str, name: str, status: Obj) -> None:
        self.custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, namespace, PLURAL, name, {"status": status}
        )
