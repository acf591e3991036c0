"""What the memoria técnica reads from the API: publication, cuts, incidents, statistics."""

from __future__ import annotations

import base64
import logging
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from kubernetes import client as k8s

from difusor.logic.stats import HourStats
from difusor.models import GROUP, VERSION
from difusor.render.labels import (
    COMPONENT_LABEL,
    INSTANCE_LABEL,
    PUBLICATION_LABEL,
    STATS_COMPONENT,
    STATS_HOUR_LABEL,
    STATS_POD_LABEL,
)

log = logging.getLogger(__name__)

Obj = dict[str, Any]
INCIDENTS_PLURAL = "prepincidents"


@dataclass
class Evidence:
    """Everything the operator and the agents kept about one publication."""

    publication: Obj
    cuts: list[Obj]
    incidents: list[Obj] | None
    """None when the cluster has no PrepIncident resource (nothing recorded incidents)."""
    hours: list[tuple[str, HourStats]]
    """(pod, hour) statistics as the agents shipped them."""
    unreadable: list[str]
    """Statistics objects that could not be read (named, never silently dropped)."""


def gather(api: k8s.ApiClient, *, namespace: str, name: str) -> Evidence:
    """Read the publication's records; a missing publication raises LookupError."""
    custom = k8s.CustomObjectsApi(api)
    core = k8s.CoreV1Api(api)
    try:
        publication: Obj = custom.get_namespaced_custom_object(
            GROUP, VERSION, namespace, "preppublications", name
        )
    except k8s.ApiException as exc:
        if exc.status == 404:
            raise LookupError(f"no PrepPublication {namespace}/{name}") from None
        raise
    cuts = custom.list_namespaced_custom_object(
        GROUP, VERSION, namespace, "prepcuts", label_selector=f"{PUBLICATION_LABEL}={name}"
    )["items"]
    incidents: list[Obj] | None
    try:
        found = custom.list_namespaced_custom_object(GROUP, VERSION, namespace, INCIDENTS_PLURAL)
        incidents = [i for i in found["items"] if (i.get("spec") or {}).get("publication") == name]
    except k8s.ApiException as exc:
        if exc.status != 404:
            raise
        incidents = None
    maps = core.list_namespaced_config_map(
        namespace, label_selector=f"{INSTANCE_LABEL}={name},{COMPONENT_LABEL}={STATS_COMPONENT}"
    ).items
    parts: dict[tuple[str, str], dict[str, bytes]] = defaultdict(dict)
    for cm in maps:
        labels = cm.metadata.labels or {}
        if STATS_HOUR_LABEL not in labels:
            continue  # a cursor
        files = {k: base64.b64decode(v) for k, v in (cm.binary_data or {}).items()}
        parts[(labels[STATS_POD_LABEL], labels[STATS_HOUR_LABEL])].update(files)
    hours: list[tuple[str, HourStats]] = []
    unreadable: list[str] = []
    for (pod, stamp), files in sorted(parts.items()):
        try:
            hours.append((pod, HourStats.from_payload(files)))
        except ValueError as exc:
            unreadable.append(f"{pod} {stamp}: {exc}")
            log.warning("Could not read the statistics of %s hour %s: %s", pod, stamp, exc)
    return Evidence(publication, cuts, incidents, hours, unreadable)
