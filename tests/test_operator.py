"""The operator against the real API server: children, status, repair, restarts and scale."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
import yaml

from .conftest import CHILDREN, OperatorProcess, kubectl, wait_for
from .volumes import bind_pending_claims

pytestmark = pytest.mark.cluster


def publication(name: str, **spec: Any) -> str:
    body: dict[str, Any] = {"host": f"{name}.example.mx", "sftp": {"authorizedKeysSecret": "keys"}}
    body.update(spec)
    return yaml.safe_dump(
        {
            "apiVersion": "prep.difusor.io/v1alpha1",
            "kind": "PrepPublication",
            "metadata": {"name": name},
            "spec": body,
        }
    )


def get(kubeconfig: str, namespace: str, *what: str) -> dict[str, Any] | None:
    out = kubectl(kubeconfig, "-n", namespace, "get", *what, "-o", "json", check=False)
    if "NotFound" in out or not out.strip().startswith("{"):
        return None
    result: dict[str, Any] = json.loads(out[: out.rindex("}") + 1])
    return result


def condition(pub: dict[str, Any] | None, type_: str) -> dict[str, Any] | None:
    for cond in ((pub or {}).get("status") or {}).get("conditions") or []:
        if cond["type"] == type_:
            return dict(cond)
    return None


def all_children(kubeconfig: str, namespace: str, name: str) -> bool:
    return all(get(kubeconfig, namespace, kind, n.format(n=name)) for kind, n in CHILDREN)


def test_a_publication_gets_every_child_and_becomes_ready(
    operator: OperatorProcess, namespace: str
) -> None:
    kc = operator.kubeconfig
    kubectl(kc, "-n", namespace, "apply", "-f", "-", stdin=publication("alpha", replicas=2))
    wait_for("every child of alpha", lambda: all_children(kc, namespace, "alpha"))
    pub = get(kc, namespace, "prep", "alpha")
    assert pub is not None
    for kind, name in CHILDREN:
        child = get(kc, namespace, kind, name.format(n="alpha"))
        assert child is not None
        owners = child["metadata"].get("ownerReferences") or []
        # The host keys outlive the publication, as its volumes do (see the deletion test).
        uids = [] if name == "{n}-sftp-host-keys" else [pub["metadata"]["uid"]]
        assert [o["uid"] for o in owners] == uids, f"{kind} {name}"
    sts = get(kc, namespace, "statefulset", "alpha-web")
    assert sts is not None
    assert sts["spec"]["replicas"] == 2
    assert [c["name"] for c in sts["spec"]["template"]["spec"]["containers"]] == [
        "nginx",
        "agent",
        "sftp",
    ]
    keys = get(kc, namespace, "secret", "alpha-sftp-host-keys")
    assert keys is not None
    assert {"ssh_host_ed25519_key", "ssh_host_rsa_key"} <= set(keys["data"])

    wait_for(
        "content PVCs",
        lambda: (
            bind_pending_claims(kc, namespace) or get(kc, namespace, "pvc", "content-alpha-web-1")
        ),
    )

    def ready() -> dict[str, Any] | None:
        bind_pending_claims(kc, namespace)
        pub = get(kc, namespace, "prep", "alpha")
        cond = condition(pub, "Ready")
        return (
            pub
            if cond and cond["status"] == "True" and pub["status"].get("readyReplicas") == 2
            else None
        )  # type: ignore[index]

    pub = wait_for("alpha Ready with 2 ready replicas", ready, timeout=120)
    assert pub["status"]["observedGeneration"] == pub["metadata"]["generation"]
    assert condition(pub, "Degraded")["status"] == "False"  # type: ignore[index]
    assert pub["status"]["selector"] == (
        "app.kubernetes.io/name=difusor,app.kubernetes.io/instance=alpha,app.kubernetes.io/component=web"
    )
    columns = kubectl(kc, "-n", namespace, "get", "prep", "alpha")
    assert "READY" in columns
    assert "ACTIVE CUT" in columns
    assert "True" in columns.splitlines()[1]
    events = kubectl(
        kc, "-n", namespace, "get", "events", "--field-selector", "involvedObject.name=alpha"
    )
    assert "ChildChanged" in events


def test_hand_edits_and_deletions_of_children_are_repaired(
    operator: OperatorProcess, namespace: str
) -> None:
    kc = operator.kubeconfig
    kubectl(kc, "-n", namespace, "apply", "-f", "-", stdin=publication("beta"))
    wait_for("every child of beta", lambda: all_children(kc, namespace, "beta"))
    original = get(kc, namespace, "configmap", "beta-config")
    assert original is not None
    kubectl(kc, "-n", namespace, "delete", "service", "beta-http")
    kubectl(kc, "-n", namespace, "delete", "networkpolicy", "beta-web")
    kubectl(kc, "-n", namespace, "patch", "configmap", "beta-config", "--type=merge",
            "-p", json.dumps({"data": {"nginx.conf": "# tampered"}}))  # fmt: skip
    kubectl(kc, "-n", namespace, "scale", "statefulset", "beta-web", "--replicas=1")
    started = time.monotonic()

    def repaired() -> bool:
        cm = get(kc, namespace, "configmap", "beta-config")
        sts = get(kc, namespace, "statefulset", "beta-web")
        return bool(
            get(kc, namespace, "service", "beta-http")
            and get(kc, namespace, "networkpolicy", "beta-web")
            and cm
            and cm["data"]["nginx.conf"] == original["data"]["nginx.conf"]
            and sts
            and sts["spec"]["replicas"] == 3
        )

    wait_for("the hand edits to be undone", repaired, timeout=60)
    assert time.monotonic() - started < 60


def test_scaling_the_publication_scales_the_web_pods(
    operator: OperatorProcess, namespace: str
) -> None:
    kc = operator.kubeconfig
    kubectl(kc, "-n", namespace, "apply", "-f", "-", stdin=publication("gamma"))
    wait_for("gamma's StatefulSet", lambda: get(kc, namespace, "statefulset", "gamma-web"))
    kubectl(kc, "-n", namespace, "scale", "prep/gamma", "--replicas=5")
    wait_for(
        "5 replicas",
        lambda: (get(kc, namespace, "statefulset", "gamma-web") or {})["spec"]["replicas"] == 5,
    )
    role = get(kc, namespace, "role", "gamma-agent")
    assert role is not None
    patch_rule = next(
        r for r in role["rules"] if "patch" in r["verbs"] and r["resources"] == ["pods"]
    )
    assert patch_rule["resourceNames"] == [f"gamma-web-{i}" for i in range(5)]


def test_autoscaling_leaves_the_replica_count_to_the_hpa(
    operator: OperatorProcess, namespace: str
) -> None:
    kc = operator.kubeconfig
    spec = {"autoscaling": {"enabled": True, "minReplicas": 2, "maxReplicas": 6}}
    kubectl(kc, "-n", namespace, "apply", "-f", "-", stdin=publication("delta", **spec))
    wait_for("delta's HPA", lambda: get(kc, namespace, "hpa", "delta-web"))
    kubectl(kc, "-n", namespace, "scale", "statefulset", "delta-web", "--replicas=4")
    # A change of the publication reconciles at once, and a timer pass follows within 10 s:
    # a fight with the HPA would have reverted the count by then.
    kubectl(kc, "-n", namespace, "annotate", "prep", "delta", "touch=1")
    time.sleep(12)
    sts = get(kc, namespace, "statefulset", "delta-web")
    assert sts is not None
    assert sts["spec"]["replicas"] == 4


def test_an_invalid_spec_the_schema_lets_through_is_reported_not_retried(
    operator: OperatorProcess, namespace: str
) -> None:
    kc = operator.kubeconfig
    kubectl(kc, "-n", namespace, "apply", "-f", "-",
            stdin=publication("epsilon", ingest={"timezone": "Mars/Olympus_Mons"}))  # fmt: skip

    def reported() -> dict[str, Any] | None:
        cond = condition(get(kc, namespace, "prep", "epsilon"), "Ready")
        return cond if cond and cond["reason"] == "InvalidSpec" else None

    cond = wait_for("InvalidSpec on epsilon", reported)
    assert "spec.ingest.timezone" in cond["message"]
    assert get(kc, namespace, "statefulset", "epsilon-web") is None
    events = kubectl(
        kc, "-n", namespace, "get", "events", "--field-selector", "involvedObject.name=epsilon"
    )
    assert "InvalidSpec" in events


def test_an_optional_api_missing_from_the_cluster_marks_the_publication_degraded(
    operator: OperatorProcess, namespace: str
) -> None:
    kc = operator.kubeconfig
    spec = {"edge": {"kind": "Gateway", "parentRefs": [{"name": "public"}]}}
    kubectl(kc, "-n", namespace, "apply", "-f", "-", stdin=publication("zeta", **spec))

    def degraded() -> dict[str, Any] | None:
        cond = condition(get(kc, namespace, "prep", "zeta"), "Degraded")
        return cond if cond and cond["status"] == "True" else None

    cond = wait_for("zeta Degraded", degraded)
    assert cond["reason"] == "ApplyFailed"
    assert "HTTPRoute" in cond["message"]
    assert get(kc, namespace, "statefulset", "zeta-web") is not None


def test_switching_the_edge_off_prunes_the_ingress(
    operator: OperatorProcess, namespace: str
) -> None:
    kc = operator.kubeconfig
    kubectl(kc, "-n", namespace, "apply", "-f", "-", stdin=publication("eta"))
    wait_for("eta's Ingress", lambda: get(kc, namespace, "ingress", "eta"))
    kubectl(
        kc, "-n", namespace, "apply", "-f", "-", stdin=publication("eta", edge={"kind": "None"})
    )
    wait_for("eta's Ingress to be pruned", lambda: get(kc, namespace, "ingress", "eta") is None)
    assert get(kc, namespace, "service", "eta-http") is not None


def test_deleting_a_publication_removes_its_children_and_keeps_its_volumes_and_host_keys(
    operator: OperatorProcess, namespace: str
) -> None:
    kc = operator.kubeconfig
    kubectl(kc, "-n", namespace, "apply", "-f", "-", stdin=publication("theta", replicas=2))
    kubectl(kc, "-n", namespace, "apply", "-f", "-",
            stdin=publication("iota", replicas=2, storage={"retainOnDelete": False}))  # fmt: skip
    for name in ("theta", "iota"):
        wait_for(
            f"{name}'s PVCs", lambda name=name: get(kc, namespace, "pvc", f"content-{name}-web-1")
        )
    kubectl(kc, "-n", namespace, "delete", "prep", "theta", "iota", "--wait=true", "--timeout=60s")
    wait_for(
        "theta's StatefulSet gone", lambda: get(kc, namespace, "statefulset", "theta-web") is None
    )
    wait_for(
        "iota's StatefulSet gone", lambda: get(kc, namespace, "statefulset", "iota-web") is None
    )
    wait_for(
        "iota's PVCs gone",
        lambda: get(kc, namespace, "pvc", "content-iota-web-0") is None,
        timeout=120,
    )
    assert get(kc, namespace, "pvc", "content-theta-web-0") is not None
    assert get(kc, namespace, "pvc", "content-theta-web-1") is not None
    # The SFTP host keys stay with the volumes: applied again, theta is the same host to the
    # uploader. The agents' token goes with the publication; iota's host keys go with its
    # volumes.
    for secret in ("iota-agent-token", "iota-sftp-host-keys", "theta-agent-token"):
        wait_for(f"{secret} gone", lambda s=secret: get(kc, namespace, "secret", s) is None)
    assert get(kc, namespace, "secret", "theta-sftp-host-keys") is not None


def test_an_operator_killed_mid_reconcile_converges_after_restart(
    operator: OperatorProcess, namespace: str
) -> None:
    kc = operator.kubeconfig
    names = [f"kappa{i}" for i in range(5)]
    kubectl(
        kc, "-n", namespace, "apply", "-f", "-", stdin="---\n".join(publication(n) for n in names)
    )
    wait_for(
        "the first children",
        lambda: (
            get(kc, namespace, "configmap", "kappa0-config")
            or get(kc, namespace, "serviceaccount", "kappa0-agent")
        ),
        timeout=60,
        interval=0.1,
    )
    operator.kill()
    operator.start()
    for name in names:
        wait_for(
            f"every child of {name}",
            lambda name=name: all_children(kc, namespace, name),
            timeout=120,
        )
        wait_for(
            f"{name} status",
            lambda name=name: condition(get(kc, namespace, "prep", name), "Progressing"),
        )


def test_twenty_publications_in_five_namespaces_reconcile_independently(
    operator: OperatorProcess, kubeconfig: str
) -> None:
    kc = operator.kubeconfig
    namespaces = [f"many-{i}-{int(time.time()) % 100000}" for i in range(5)]
    try:
        for ns in namespaces:
            kubectl(kc, "create", "namespace", ns)
            docs = [publication(f"pub{j}") for j in range(4)]
            # One broken publication must not hold up its neighbours.
            if ns == namespaces[2]:
                docs[1] = publication("pub1", ingest={"timezone": "Nowhere/Never"})
            kubectl(kc, "-n", ns, "apply", "-f", "-", stdin="---\n".join(docs))
        for ns in namespaces:
            for j in range(4):
                if ns == namespaces[2] and j == 1:
                    continue
                wait_for(
                    f"{ns}/pub{j}", lambda ns=ns, j=j: all_children(kc, ns, f"pub{j}"), timeout=180
                )
        cond = wait_for(
            "the broken one reported",
            lambda: condition(get(kc, namespaces[2], "prep", "pub1"), "Ready"),
        )
        assert cond["reason"] == "InvalidSpec"
    finally:
        for ns in namespaces:
            kubectl(kc, "delete", "namespace", ns, "--wait=false", check=False)
