"""The Reconciler in this process against the real API server: when a pass sends what.

A new publication's first pass sends every child, as a repair does: a repair less than an
interval after it has nothing to add, and the edit made in between is undone by the next one.
Passes of one publication run one at a time: a StatefulSet's events refresh the status while
the first pass still applies the children after it, and both sent those children.
A publication deleted and made again under its name is a new one: what the process remembers
of the old one (its Secrets found, its children sent) does not stand for the new one's.
A publication being deleted gets no pass: no child is sent again and no host key is made.
"""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest

from difusor import kube
from difusor.controller.reconcile import Reconciler, Settings
from difusor.kube import Cluster

from .conftest import kubectl, wait_for

pytestmark = pytest.mark.cluster

INTERVAL = 10.0
TAMPERED = "# tampered"


class Clock:
    """The Reconciler's monotonic clock, moved by the test."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def clocked(api: Any) -> tuple[Clock, Reconciler]:
    """A Reconciler in this process whose clock the test moves."""
    clock = Clock()
    return clock, Reconciler(Cluster(api), Settings(reconcile_interval=INTERVAL), clock=clock)


def create_publication(kubeconfig: str, namespace: str, name: str) -> dict[str, Any]:
    doc = {
        "apiVersion": "prep.difusor.io/v1alpha1",
        "kind": "PrepPublication",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"host": f"{name}.example.mx", "sftp": {"authorizedKeysSecret": "keys"}},
    }
    out = kubectl(kubeconfig, "create", "-f", "-", "-o", "json", stdin=json.dumps(doc))
    body: dict[str, Any] = json.loads(out)
    return body


def tamper(kubeconfig: str, namespace: str, name: str) -> None:
    kubectl(kubeconfig, "-n", namespace, "patch", "configmap", f"{name}-config", "--type=merge",
            "-p", json.dumps({"data": {"nginx.conf": TAMPERED}}))  # fmt: skip


def nginx_conf(kubeconfig: str, namespace: str, name: str) -> str:
    out = kubectl(kubeconfig, "-n", namespace, "get", "configmap", f"{name}-config", "-o", "json")
    return str(json.loads(out)["data"]["nginx.conf"])


def test_a_repair_within_an_interval_of_a_full_pass_leaves_the_edit_to_the_next_one(
    crds: str, namespace: str, api: Any
) -> None:
    clock, reconciler = clocked(api)
    body = create_publication(crds, namespace, "gamma")

    reconciler.reconcile(body)
    rendered = nginx_conf(crds, namespace, "gamma")
    assert rendered != TAMPERED

    # The first pass sent every child 5 s ago: this repair is an ordinary pass.
    tamper(crds, namespace, "gamma")
    clock.now += INTERVAL / 2
    reconciler.reconcile(body, repair=True)
    assert nginx_conf(crds, namespace, "gamma") == TAMPERED

    # An interval after the first pass, the repair undoes the edit.
    clock.now += INTERVAL / 2
    reconciler.reconcile(body, repair=True)
    assert nginx_conf(crds, namespace, "gamma") == rendered

    # Repairs an interval apart (kopf's timer sleeps the interval between them) all repair.
    tamper(crds, namespace, "gamma")
    clock.now += INTERVAL
    reconciler.reconcile(body, repair=True)
    assert nginx_conf(crds, namespace, "gamma") == rendered


def test_passes_of_one_publication_run_one_at_a_time(
    crds: str, namespace: str, api: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    reconciler = Reconciler(Cluster(api), Settings(reconcile_interval=INTERVAL))
    body = create_publication(crds, namespace, "delta")
    applies: list[str] = []
    first_sent = threading.Event()
    let_go = threading.Event()
    real_request = kube.request

    def request(client: Any, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        # Every server-side apply is counted; the first one is held until the second pass
        # has been started, so that without the lock both passes would send the children.
        if kwargs.get("content_type") == "application/apply-patch+yaml":
            applies.append(path)
            if len(applies) == 1:
                first_sent.set()
                assert let_go.wait(10)
        return real_request(client, method, path, **kwargs)

    monkeypatch.setattr(kube, "request", request)
    first = threading.Thread(target=reconciler.reconcile, args=(body,))
    first.start()
    assert first_sent.wait(30)
    second = threading.Thread(target=reconciler.reconcile, args=(body,))
    second.start()
    second.join(timeout=1.0)
    assert second.is_alive(), "the second pass ran beside the first"
    let_go.set()
    first.join(timeout=60)
    second.join(timeout=60)
    assert not first.is_alive()
    assert not second.is_alive()

    # One apply per child: the second pass found each applied as it wants it.
    assert len(applies) == len(set(applies)), applies
    assert kubectl(crds, "-n", namespace, "get", "ingress", "delta", "-o", "name").strip()


def owner_uid(kubeconfig: str, namespace: str, kind: str, name: str) -> str | None:
    """The uid of the publication that owns an object; None when there is no such object."""
    out = kubectl(
        kubeconfig, "-n", namespace, "get", kind, name, "-o", "json", "--ignore-not-found"
    )
    if not out.strip():
        return None
    refs = json.loads(out)["metadata"].get("ownerReferences") or [{}]
    return str(refs[0].get("uid"))


def test_a_publication_made_again_under_its_name_gets_its_secrets_and_children_again(
    crds: str, namespace: str, api: Any
) -> None:
    clock, reconciler = clocked(api)
    first = create_publication(crds, namespace, "epsilon")
    reconciler.reconcile(first)
    owned = [("secret", "epsilon-agent-token"), ("configmap", "epsilon-config"),
             ("statefulset", "epsilon-web")]  # fmt: skip
    for kind, child in owned:
        assert owner_uid(crds, namespace, kind, child) == first["metadata"]["uid"], child
    host_keys = secret_data(crds, namespace, "epsilon-sftp-host-keys")
    assert "ssh_host_ed25519_key" in host_keys

    # Deleted: the garbage collector removes everything it owned; the host keys stay.
    kubectl(crds, "-n", namespace, "delete", "preppublication", "epsilon", "--cascade=foreground")
    wait_for(
        "the old publication's children gone",
        lambda: all(owner_uid(crds, namespace, k, c) is None for k, c in owned) or None,
        timeout=60,
    )
    assert secret_data(crds, namespace, "epsilon-sftp-host-keys") == host_keys

    # Made again a moment later, with the operator still running: its first, ordinary pass
    # creates the agent token and sends every child for the new one, and the uploader finds
    # the same host keys.
    second = create_publication(crds, namespace, "epsilon")
    assert second["metadata"]["uid"] != first["metadata"]["uid"]
    clock.now += 1
    reconciler.reconcile(second)
    for kind, child in owned:
        assert owner_uid(crds, namespace, kind, child) == second["metadata"]["uid"], child
    assert secret_data(crds, namespace, "epsilon-sftp-host-keys") == host_keys

    # Its first pass sent every child: a repair a moment later is an ordinary pass, as for
    # any new publication (the old publication's passes do not count for it).
    tamper(crds, namespace, "epsilon")
    clock.now += 1
    reconciler.reconcile(second, repair=True)
    assert nginx_conf(crds, namespace, "epsilon") == TAMPERED


def secret_exists(kubeconfig: str, namespace: str, name: str) -> bool:
    out = kubectl(kubeconfig, "-n", namespace, "get", "secret", name, "--ignore-not-found",
                  "-o", "name")  # fmt: skip
    return bool(out.strip())


def test_a_publication_being_deleted_gets_no_pass(crds: str, namespace: str, api: Any) -> None:
    clock, reconciler = clocked(api)
    doc = {
        "apiVersion": "prep.difusor.io/v1alpha1",
        "kind": "PrepPublication",
        # A finalizer holds it while being deleted, as kopf's does while it stops the prober
        # (and a namespace being deleted removes the Secrets meanwhile).
        "metadata": {
            "name": "zeta",
            "namespace": namespace,
            "finalizers": ["test.difusor.io/hold"],
        },
        "spec": {"host": "zeta.example.mx", "sftp": {"authorizedKeysSecret": "keys"}},
    }
    body = json.loads(kubectl(crds, "create", "-f", "-", "-o", "json", stdin=json.dumps(doc)))
    try:
        reconciler.reconcile(body)
        host_keys = "zeta-sftp-host-keys"
        # A repair makes the host keys again when their Secret is gone...
        kubectl(crds, "-n", namespace, "delete", "secret", host_keys)
        clock.now += 2 * INTERVAL
        assert (
            "created Secret zeta-sftp-host-keys" in reconciler.reconcile(body, repair=True).changes
        )
        assert secret_exists(crds, namespace, host_keys)

        # ...but not once the publication is being deleted, nor does it send the children.
        kubectl(crds, "-n", namespace, "delete", "secret", host_keys)
        kubectl(crds, "-n", namespace, "delete", "preppublication", "zeta", "--wait=false")
        tamper(crds, namespace, "zeta")
        deleting = json.loads(kubectl(crds, "-n", namespace, "get", "prep", "zeta", "-o", "json"))
        assert deleting["metadata"].get("deletionTimestamp")
        clock.now += 2 * INTERVAL
        outcome = reconciler.reconcile(deleting, repair=True)
        assert (outcome.changes, outcome.status_patch, outcome.error) == ([], None, None)
        assert not secret_exists(crds, namespace, host_keys)
        assert nginx_conf(crds, namespace, "zeta") == TAMPERED
    finally:
        kubectl(crds, "-n", namespace, "patch", "prep", "zeta", "--type=merge",
                "-p", json.dumps({"metadata": {"finalizers": None}}), check=False)  # fmt: skip


def secret_data(kubeconfig: str, namespace: str, name: str) -> dict[str, str]:
    out = kubectl(kubeconfig, "-n", namespace, "get", "secret", name, "-o", "json")
    secret = json.loads(out)
    assert not secret["metadata"].get("ownerReferences"), "the host keys are owned"
    return dict(secret["data"])
