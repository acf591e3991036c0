"""The operator's diff base of a publication: kopf's essence, without copying the status."""

from __future__ import annotations

from typing import Any

import kopf
import pytest

from difusor.controller.handlers import DiffBase
from difusor.models import GROUP

pytestmark = pytest.mark.unit


class Uncopyable:
    """A value deepcopy refuses: a diff base that copies the status fails on it."""

    def __deepcopy__(self, memo: dict[int, Any]) -> Uncopyable:
        raise AssertionError("the status was copied")


def body(status: Any) -> kopf.Body:
    raw = {
        "apiVersion": f"{GROUP}/v1alpha1",
        "kind": "PrepPublication",
        "metadata": {
            "name": "prep",
            "namespace": "n",
            "resourceVersion": "42",
            "labels": {"team": "elecciones"},
            "annotations": {
                "note": "kept",
                f"{GROUP}/last-handled-configuration": '{"spec": {}}',
                "kubectl.kubernetes.io/last-applied-configuration": "{}",
            },
            "managedFields": [{"manager": "kubectl", "fieldsV1": {"f:spec": {}}}],
        },
        "spec": {"host": "prep.example.mx", "replicas": 3, "cdn": {"paths": ["/a", "/b"]}},
        "status": status,
    }
    return kopf.Body(raw)


def test_the_essence_is_kopfs_and_the_status_is_never_copied() -> None:
    ours = DiffBase(prefix=GROUP, key="last-handled-configuration")
    kopfs = kopf.AnnotationsDiffBaseStorage(prefix=GROUP, key="last-handled-configuration")
    status = {"conditions": [{"type": "Ready"}], "rollout": {"phase": "Staging"}}
    assert ours.build(body=body(status)) == kopfs.build(body=body(status))
    essence = ours.build(body=body({"rollout": Uncopyable()}))
    assert essence == kopfs.build(body=body(status))
    # The essence is a copy: a later change of the body does not reach it.
    spec = {"host": "prep.example.mx", "cdn": {"paths": ["/a", "/b"]}}
    essence = ours.build(body=kopf.Body({"metadata": {}, "spec": spec}))
    spec["cdn"]["paths"].append("/c")
    assert essence["spec"]["cdn"]["paths"] == ["/a", "/b"]
