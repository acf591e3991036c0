"""The local control plane is a real Kubernetes: scheduling, CEL, RBAC and garbage collection."""

from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path

import pytest

from .conftest import REPO, TEST_CLUSTER, kubectl, token_kubeconfig, wait_established, wait_for

pytestmark = pytest.mark.cluster


def test_a_deployments_pods_are_scheduled_on_fake_nodes_and_become_ready(
    kubeconfig: str, namespace: str
) -> None:
    nodes = json.loads(kubectl(kubeconfig, "get", "nodes", "-o", "json"))["items"]
    node_names = {n["metadata"]["name"] for n in nodes}
    assert len(node_names) >= 2
    kubectl(
        kubeconfig, "-n", namespace, "create", "deployment", "web",
        "--image=registry.invalid/never-pulled:1", "--replicas=3",
    )  # fmt: skip

    def ready_pods() -> list[dict[str, object]] | None:
        pods = json.loads(kubectl(kubeconfig, "-n", namespace, "get", "pods", "-o", "json"))[
            "items"
        ]
        ready = [
            p
            for p in pods
            if p["status"].get("phase") == "Running"
            and any(
                c["type"] == "Ready" and c["status"] == "True"
                for c in p["status"].get("conditions", [])
            )
        ]
        return ready if len(ready) == 3 else None

    pods = wait_for("3 Running and Ready pods", ready_pods, timeout=120)
    assert {p["spec"]["nodeName"] for p in pods} <= node_names  # type: ignore[index]
    rollout = kubectl(
        kubeconfig, "-n", namespace, "rollout", "status", "deployment/web", "--timeout=60s"
    )
    assert "successfully rolled out" in rollout


CEL_CRD = """
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: widgets.cel.test.difusor.io}
spec:
  group: cel.test.difusor.io
  names: {kind: Widget, plural: widgets}
  scope: Namespaced
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            properties:
              min: {type: integer}
              max: {type: integer}
            x-kubernetes-validations:
            - rule: self.min <= self.max
              message: min must not exceed max
"""


def test_a_crd_cel_rule_refuses_a_bad_object_with_the_rules_message(
    kubeconfig: str, namespace: str
) -> None:
    kubectl(kubeconfig, "apply", "-f", "-", stdin=CEL_CRD)
    wait_established(kubeconfig, ["widgets.cel.test.difusor.io"])
    good = "apiVersion: cel.test.difusor.io/v1\nkind: Widget\nmetadata: {name: ok}\nspec: {min: 1, max: 2}\n"
    bad = "apiVersion: cel.test.difusor.io/v1\nkind: Widget\nmetadata: {name: bad}\nspec: {min: 3, max: 2}\n"
    kubectl(kubeconfig, "-n", namespace, "apply", "-f", "-", stdin=good)
    out = kubectl(kubeconfig, "-n", namespace, "apply", "-f", "-", stdin=bad, check=False)
    assert "min must not exceed max" in out
    assert "spec" in out
    assert "widget.cel.test.difusor.io/bad" not in kubectl(
        kubeconfig, "-n", namespace, "get", "widgets", "-o", "name"
    )


def test_rbac_denies_a_service_account_what_no_role_grants(
    kubeconfig: str, namespace: str, tmp_path: Path
) -> None:
    kubectl(kubeconfig, "-n", namespace, "create", "serviceaccount", "reader")
    kubectl(
        kubeconfig,
        "-n",
        namespace,
        "create",
        "role",
        "cm-reader",
        "--verb=get,list",
        "--resource=configmaps",
    )
    kubectl(
        kubeconfig, "-n", namespace, "create", "rolebinding", "cm-reader",
        "--role=cm-reader", f"--serviceaccount={namespace}:reader",
    )  # fmt: skip
    kubectl(kubeconfig, "-n", namespace, "create", "secret", "generic", "s", "--from-literal=k=v")
    token = kubectl(kubeconfig, "-n", namespace, "create", "token", "reader").strip()
    as_sa = token_kubeconfig(kubeconfig, token=token, path=tmp_path / "reader.kubeconfig")

    allowed = kubectl(as_sa, "-n", namespace, "get", "configmaps", check=False)
    denied = kubectl(as_sa, "-n", namespace, "get", "secrets", check=False)
    assert "Forbidden" not in allowed
    assert "kube-root-ca.crt" in allowed
    assert "Forbidden" in denied
    assert f"system:serviceaccount:{namespace}:reader" in denied


def test_deleting_an_owner_garbage_collects_its_children(kubeconfig: str, namespace: str) -> None:
    kubectl(kubeconfig, "-n", namespace, "create", "configmap", "owner")
    uid = kubectl(
        kubeconfig, "-n", namespace, "get", "configmap", "owner", "-o", "jsonpath={.metadata.uid}"
    )
    child = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "child",
            "ownerReferences": [
                {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": uid}
            ],
        },
    }
    kubectl(kubeconfig, "-n", namespace, "apply", "-f", "-", stdin=json.dumps(child))
    assert "child" in kubectl(
        kubeconfig, "-n", namespace, "get", "configmap", "child", "-o", "name"
    )
    kubectl(kubeconfig, "-n", namespace, "delete", "configmap", "owner")

    wait_for(
        "the child ConfigMap to be garbage-collected",
        lambda: (
            "NotFound"
            in kubectl(kubeconfig, "-n", namespace, "get", "configmap", "child", check=False)
        ),
        timeout=120,
    )


def test_cluster_up_ignores_a_node_left_notready_by_a_killed_test_run(kubeconfig: str) -> None:
    """A killed run leaves its host-pod Node (NotReady for good); the next `up` must not wait
    on it: before, it timed out after 120 s and every later test of the run failed."""
    name = f"host-stale-{uuid.uuid4().hex[:6]}"
    node = {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": {"difusor.io/host-pods": name}},
    }
    kubectl(kubeconfig, "apply", "-f", "-", stdin=json.dumps(node))
    try:
        up = subprocess.run(
            ["bash", str(REPO / "hack" / "cluster.sh"), "up", TEST_CLUSTER],
            capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip
        assert up.returncode == 0, up.stderr
        assert up.stdout.strip() == kubeconfig
    finally:
        kubectl(kubeconfig, "delete", "node", name, "--wait=false", check=False)
