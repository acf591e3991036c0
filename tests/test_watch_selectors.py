"""The operator's watches of pods and StatefulSets carry a label selector, so the API server sends
only difusor's own (kopf checks a handler's labels on its side, after receiving every object)."""

from __future__ import annotations

from typing import Any

import kopf
import pytest

from difusor.controller.handlers import WEB_POD_LABELS, WORKLOAD_LABELS, watch_selectors
from difusor.models import GROUP, VERSION, PrepPublicationSpec
from difusor.render.children import Target, render_all

pytestmark = pytest.mark.unit

PODS = kopf.Resource("", "v1", "pods", kind="Pod", namespaced=True)
STATEFULSETS = kopf.Resource("apps", "v1", "statefulsets", kind="StatefulSet", namespaced=True)


def _selected(selector: str, labels: dict[str, str]) -> bool:
    """Equality-based label selector, as the API server evaluates `a=b,c=d`."""
    return all(labels.get(k) == v for k, v in (term.split("=", 1) for term in selector.split(",")))


def _settings() -> kopf.OperatorSettings:
    settings = kopf.OperatorSettings()
    watch_selectors(settings)
    return settings


def _rendered_workload() -> dict[str, Any]:
    spec = PrepPublicationSpec.model_validate(
        {"host": "prep.example.mx", "sftp": {"authorizedKeysSecret": "keys"}}
    )
    (workload,) = [
        o for o in render_all(spec, Target(name="p", namespace="n")) if o["kind"] == "StatefulSet"
    ]
    return workload


def test_the_pods_and_statefulsets_watches_select_difusor_s_own_and_no_other_s() -> None:
    collected = _settings().watching.label_selectors
    (pods,) = collected.collect(PODS)
    (workloads,) = collected.collect(STATEFULSETS)
    workload = _rendered_workload()
    # The web pods and the StatefulSet the operator renders are sent...
    assert _selected(pods, workload["spec"]["template"]["metadata"]["labels"])
    assert _selected(workloads, workload["metadata"]["labels"])
    # ...and another team's are not.
    assert not _selected(pods, {"app": "shop", "app.kubernetes.io/component": "web"})
    assert not _selected(workloads, {"app.kubernetes.io/managed-by": "Helm"})
    # The selector asks for what the handlers filter on, no more (a pod it left out would
    # never reach pod_reported).
    assert pods == ",".join(f"{k}={v}" for k, v in WEB_POD_LABELS.items())
    assert workloads == ",".join(f"{k}={v}" for k, v in WORKLOAD_LABELS.items())


def test_the_operator_s_own_kinds_are_watched_whole() -> None:
    collected = _settings().watching.label_selectors
    for plural in ("preppublications", "prepcuts"):
        resource = kopf.Resource(GROUP, VERSION, plural, namespaced=True)
        assert collected.collect(resource) == []
