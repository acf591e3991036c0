"""The promotion step's mirror of PrepCuts and pods: the newer copy wins, deletions stick, and a
re-list drops what a watch restart did not report."""

from __future__ import annotations

import copy
import json
from typing import Any

from difusor.controller.mirror import Mirror, newer
from difusor.controller.monitor import _ready
from difusor.controller.promotion import _pod_publication, _pod_view, pod_essentials
from difusor.models import PrepPublicationSpec
from difusor.render.children import Target, render_all
from difusor.render.labels import ACTIVE_ANNOTATION

Obj = dict[str, Any]


def obj(name: str, version: int | str, group: str = "p", ns: str = "n", **extra: Any) -> Obj:
    meta = {"name": name, "namespace": ns, "resourceVersion": str(version), "labels": {"g": group}}
    return {"metadata": meta, **extra}


class Lister:
    """Answers lists as the API server would, and counts them."""

    def __init__(self) -> None:
        self.answer: Obj = {"metadata": {"resourceVersion": "1"}, "items": []}
        self.calls = 0

    def __call__(self, namespace: str, group: str) -> Obj:
        self.calls += 1
        return self.answer


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def mirror(lister: Lister, clock: Clock | None = None) -> Mirror:
    return Mirror(
        lister, lambda o: o["metadata"]["labels"].get("g"), refresh=30, clock=clock or Clock()
    )


def names(objects: list[Obj]) -> list[tuple[str, str]]:
    return sorted((o["metadata"]["name"], o["metadata"]["resourceVersion"]) for o in objects)


def test_versions_compare_as_integers() -> None:
    assert newer("10", "9")
    assert newer("100", "99")
    assert not newer("99", "100")
    assert not newer("7", "7")
    # Versions that are not integers: the copy delivered last wins.
    assert newer("abc", "12")


def test_first_read_lists_and_later_reads_do_not() -> None:
    lister = Lister()
    lister.answer = {"metadata": {"resourceVersion": "5"}, "items": [obj("a", 3), obj("b", 5)]}
    m = mirror(lister)
    assert names(m.items("n", "p")) == [("a", "3"), ("b", "5")]
    m.saw(obj("c", 6))
    assert names(m.items("n", "p")) == [("a", "3"), ("b", "5"), ("c", "6")]
    assert lister.calls == 1
    # Other groups and namespaces are apart.
    m.saw(obj("x", 7, group="q"))
    m.saw(obj("y", 8, ns="other"))
    assert names(m.items("n", "p")) == [("a", "3"), ("b", "5"), ("c", "6")]


def test_an_older_copy_never_replaces_a_newer_one() -> None:
    lister = Lister()
    m = mirror(lister)
    m.items("n", "p")
    assert m.saw(obj("a", 12, status={"phase": "Committed"}))  # the answer to our own write
    # Its watch event, and an older one delivered late: nothing new, so no step for them.
    assert not m.saw(obj("a", 12, status={"phase": "Committed"}))
    assert not m.saw(obj("a", 11, status={"phase": "Staging"}))
    (only,) = m.items("n", "p")
    assert only["status"]["phase"] == "Committed"
    assert m.saw(obj("a", 13, status={"phase": "Promoted"}))
    (only,) = m.items("n", "p")
    assert only["status"]["phase"] == "Promoted"


def test_a_deleted_object_does_not_come_back_from_an_older_copy() -> None:
    lister = Lister()
    m = mirror(lister)
    m.items("n", "p")
    m.saw(obj("a", 4))
    assert m.saw(obj("a", 9), deleted=True)
    assert m.items("n", "p") == []
    assert not m.saw(obj("a", 8))  # an event from before the deletion, delivered late
    assert not m.saw(obj("a", 9), deleted=True)  # the deletion seen twice
    assert m.items("n", "p") == []
    # A list taken before the deletion does not bring it back either.
    clock = Clock()
    lister2 = Lister()
    m2 = mirror(lister2, clock)
    m2.items("n", "p")
    m2.saw(obj("a", 9), deleted=True)
    lister2.answer = {"metadata": {"resourceVersion": "8"}, "items": [obj("a", 4)]}
    clock.now += 31
    assert m2.items("n", "p") == []
    # Created again under the same name, later: it is there.
    m2.saw(obj("a", 20))
    assert names(m2.items("n", "p")) == [("a", "20")]


def test_a_relist_drops_what_was_deleted_unseen_and_keeps_what_is_newer_than_it() -> None:
    clock = Clock()
    lister = Lister()
    lister.answer = {"metadata": {"resourceVersion": "5"}, "items": [obj("a", 3), obj("b", 5)]}
    m = mirror(lister, clock)
    m.items("n", "p")
    m.saw(obj("c", 7))
    # "b" was deleted while the watch was down; "c" changed after the next list was taken.
    lister.answer = {"metadata": {"resourceVersion": "6"}, "items": [obj("a", 3)]}
    clock.now += 29
    assert names(m.items("n", "p")) == [("a", "3"), ("b", "5"), ("c", "7")]
    assert lister.calls == 1
    clock.now += 1
    assert names(m.items("n", "p")) == [("a", "3"), ("c", "7")]
    assert lister.calls == 2


def test_a_relist_with_versions_that_do_not_compare_takes_the_list() -> None:
    clock = Clock()
    lister = Lister()
    m = mirror(lister, clock)
    m.items("n", "p")
    m.saw(obj("a", "x1"))
    lister.answer = {"metadata": {"resourceVersion": "y"}, "items": [obj("b", "y1")]}
    clock.now += 30
    assert names(m.items("n", "p")) == [("b", "y1")]


def test_forget_lists_again() -> None:
    lister = Lister()
    lister.answer = {"metadata": {"resourceVersion": "5"}, "items": [obj("a", 3)]}
    m = mirror(lister)
    m.items("n", "p")
    m.forget("n", "p")
    lister.answer = {"metadata": {"resourceVersion": "9"}, "items": []}
    assert m.items("n", "p") == []
    assert lister.calls == 2


def test_objects_without_a_group_are_ignored() -> None:
    lister = Lister()
    m = Mirror(lister, lambda o: None)
    m.saw(obj("a", 1))
    assert m.items("n", "p") == []


def test_managed_fields_are_not_kept() -> None:
    lister = Lister()
    m = mirror(lister)
    given = obj("a", 2, spec={"id": "x"})
    given["metadata"]["managedFields"] = [{"manager": "agent"}]
    m.saw(given)
    (only,) = m.items("n", "p")
    assert "managedFields" not in only["metadata"]
    assert only["spec"] == {"id": "x"}
    assert given["metadata"]["managedFields"] == [{"manager": "agent"}]


def _running_web_pod() -> Obj:
    """A web pod as the API server sends it: the rendered StatefulSet's template, with the
    statefulset controller's metadata, the kubelet's status and the agent's reports."""
    spec = PrepPublicationSpec.model_validate(
        {"host": "prep.example.mx", "sftp": {"authorizedKeysSecret": "keys"}}
    )
    (workload,) = [
        o for o in render_all(spec, Target(name="p", namespace="n", uid="u"))
        if o["kind"] == "StatefulSet"
    ]  # fmt: skip
    template = copy.deepcopy(workload["spec"]["template"])
    meta = template["metadata"]
    meta.update(name="p-web-0", namespace="n", resourceVersion="7", uid="pod-uid")
    meta["annotations"] = {**(meta.get("annotations") or {}), ACTIVE_ANNOTATION: "20240602_2000"}
    meta["managedFields"] = [{"manager": "kubelet", "fieldsV1": {"f:status": {}}}]
    containers = template["spec"]["containers"]
    return {
        "metadata": meta,
        "spec": {**template["spec"], "nodeName": "node-1"},
        "status": {
            "phase": "Running",
            "podIP": "10.0.0.7",
            "conditions": [{"type": "Ready", "status": "True"}],
            "containerStatuses": [
                {
                    "name": c["name"],
                    "image": c["image"],
                    "ready": True,
                    "restartCount": 0,
                    "state": {"running": {"startedAt": "2024-06-02T19:00:00Z"}},
                }
                for c in containers
            ],
        },
    }


def test_the_pods_mirror_keeps_what_a_step_and_the_prober_read_and_not_the_spec() -> None:
    pod = _running_web_pod()
    m = Mirror(Lister(), _pod_publication, slim=pod_essentials)
    assert m.saw(pod)
    (kept,) = m.items("n", "p")
    # What the promotion step and the prober decide on is the same from the copy kept.
    assert _pod_view(kept) == _pod_view(pod)
    assert _ready(kept)
    assert kept["metadata"]["annotations"] == pod["metadata"]["annotations"]
    pod["metadata"]["deletionTimestamp"] = "2024-06-02T20:01:00Z"
    pod["metadata"]["resourceVersion"] = "8"
    assert m.saw(pod)
    (going,) = m.items("n", "p")
    assert not _ready(going)
    assert not _pod_view(going).serving
    # The spec, the containers' statuses and managedFields are not kept: most of the pod.
    assert set(going) == {"metadata", "status"}
    assert set(going["status"]) == {"phase", "podIP", "conditions"}
    assert "managedFields" not in going["metadata"]
    assert len(json.dumps(going)) * 3 < len(json.dumps(pod))
