"""Every child object rendered from a spec: golden files and each field reaching its child."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from typing import Any

import pytest
import yaml

from difusor.controller.secrets import host_keys_secret
from difusor.models import PrepPublicationSpec
from difusor.render.children import (
    GATEWAY,
    TRAEFIK,
    Target,
    host_keys_owners,
    render_all,
    secret_placeholders,
)
from difusor.render.preview import render_stream

from .conftest import REPO

pytestmark = pytest.mark.unit

EXAMPLES = REPO / "manifests" / "examples"
GOLDEN = REPO / "tests" / "golden" / "children"
UPDATE = os.environ.get("DIFUSOR_UPDATE_GOLDEN") == "1"
#: The clock of the golden renders: noon before the election (full.yaml's window is Pending).
GOLDEN_NOW = datetime(2024, 6, 2, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize("example", ["minimal", "full"])
def test_render_of_each_example_matches_its_golden_file(example: str) -> None:
    rendered = render_stream(
        (EXAMPLES / f"{example}.yaml").read_text(), image="difusor:test", now=GOLDEN_NOW
    )
    golden = GOLDEN / f"{example}.yaml"
    if UPDATE:
        golden.write_text(rendered)
    assert rendered == golden.read_text(), f"regenerate with DIFUSOR_UPDATE_GOLDEN=1 ({golden})"


def _spec(**overrides: Any) -> PrepPublicationSpec:
    base: dict[str, Any] = {"host": "prep.example.mx", "sftp": {"authorizedKeysSecret": "keys"}}
    base.update(overrides)
    return PrepPublicationSpec.model_validate(base)


def _by_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def _one(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = _by_kind(objects, kind)
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


TARGET = Target(name="p", namespace="ns", uid="u-1", capabilities=frozenset({GATEWAY, TRAEFIK}))


def test_every_child_is_owned_by_the_publication_and_labelled() -> None:
    for obj in render_all(_spec(), TARGET):
        meta = obj["metadata"]
        assert meta["ownerReferences"][0]["uid"] == "u-1", obj["kind"]
        assert meta["ownerReferences"][0]["controller"] is True
        assert meta["labels"]["app.kubernetes.io/managed-by"] == "difusor"
        assert meta["labels"]["app.kubernetes.io/instance"] == "p"
        assert meta["namespace"] == "ns"


def test_replicas_and_storage_reach_the_statefulset() -> None:
    spec = _spec(
        replicas=5, storage={"size": "50Gi", "storageClassName": "fast", "retainOnDelete": False}
    )
    sts = _one(render_all(spec, TARGET), "StatefulSet")
    assert sts["spec"]["replicas"] == 5
    claim = sts["spec"]["volumeClaimTemplates"][0]["spec"]
    assert claim["resources"]["requests"]["storage"] == "50Gi"
    assert claim["storageClassName"] == "fast"
    assert sts["spec"]["persistentVolumeClaimRetentionPolicy"]["whenDeleted"] == "Delete"
    assert sts["spec"]["podManagementPolicy"] == "Parallel"


def test_pvcs_are_retained_by_default() -> None:
    sts = _one(render_all(_spec(), TARGET), "StatefulSet")
    assert sts["spec"]["persistentVolumeClaimRetentionPolicy"]["whenDeleted"] == "Retain"


@pytest.mark.parametrize("retain", [True, False])
def test_the_host_keys_go_with_the_publication_only_when_the_volumes_do(retain: bool) -> None:
    spec = _spec(storage={"retainOnDelete": retain})
    owners = [] if retain else ["u-1"]
    keys, token = secret_placeholders(spec, TARGET)
    assert keys["metadata"]["name"] == "p-sftp-host-keys"
    assert [o["uid"] for o in keys["metadata"].get("ownerReferences", [])] == owners
    # The agents' token is the publication's either way.
    assert [o["uid"] for o in token["metadata"]["ownerReferences"]] == ["u-1"]
    made = host_keys_secret(TARGET, host_keys_owners(spec, TARGET))
    assert [o["uid"] for o in made["metadata"].get("ownerReferences", [])] == owners
    assert {"ssh_host_rsa_key", "ssh_host_ed25519_key.pub"} <= set(made["data"])


def test_autoscaling_leaves_replicas_to_the_hpa() -> None:
    spec = _spec(autoscaling={"enabled": True, "minReplicas": 3, "maxReplicas": 8})
    objects = render_all(spec, TARGET)
    assert "replicas" not in _one(objects, "StatefulSet")["spec"]
    hpa = _one(objects, "HorizontalPodAutoscaler")
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 8)
    patchable = [
        r
        for r in _one(objects, "Role")["rules"]
        if "patch" in r["verbs"] and r["resources"] == ["pods"]
    ]
    assert patchable[0]["resourceNames"] == [f"p-web-{i}" for i in range(8)]


def test_every_container_runs_restricted() -> None:
    pod = _one(render_all(_spec(), TARGET), "StatefulSet")["spec"]["template"]["spec"]
    assert [c["name"] for c in pod["containers"]] == ["nginx", "agent", "sftp"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    for container in pod["containers"]:
        sec = container["securityContext"]
        assert sec["allowPrivilegeEscalation"] is False
        assert sec["readOnlyRootFilesystem"] is True
        assert sec["capabilities"] == {"drop": ["ALL"]}
        assert sec["runAsNonRoot"] is True
        assert "readinessProbe" in container
        assert "livenessProbe" in container
        assert container["resources"]["requests"]


def test_sftp_service_takes_type_port_and_source_ranges() -> None:
    spec = _spec(
        sftp={
            "authorizedKeysSecret": "keys",
            "service": {"type": "LoadBalancer", "port": 2022},
            "allowedSourceRanges": ["200.1.2.0/24"],
        }
    )
    objects = render_all(spec, TARGET)
    svc = next(o for o in _by_kind(objects, "Service") if o["metadata"]["name"] == "p-sftp")
    assert svc["spec"]["type"] == "LoadBalancer"
    assert svc["spec"]["ports"][0]["port"] == 2022
    assert svc["spec"]["loadBalancerSourceRanges"] == ["200.1.2.0/24"]
    assert svc["spec"]["sessionAffinity"] == "ClientIP"
    policy = _one(objects, "NetworkPolicy")["spec"]["ingress"]
    sftp_rule = next(r for r in policy if r["ports"][0]["port"] == 2222)
    assert sftp_rule["from"] == [{"ipBlock": {"cidr": "200.1.2.0/24"}}]
    agent_rule = next(r for r in policy if r["ports"][0]["port"] == 8081)
    assert agent_rule["from"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/instance"] == "p"


def test_sftp_is_open_to_all_when_no_ranges_are_given() -> None:
    policy = _one(render_all(_spec(), TARGET), "NetworkPolicy")["spec"]["ingress"]
    sftp_rule = next(r for r in policy if r["ports"][0]["port"] == 2222)
    assert "from" not in sftp_rule


def test_ingress_nginx_gets_host_tls_and_rate_limits() -> None:
    spec = _spec(
        edge={"kind": "Ingress", "className": "nginx"},
        tls={"issuerRef": {"name": "le"}},
        rateLimit={"requestsPerSecond": 10, "burst": 25, "connections": 7},
    )
    ingress = _one(render_all(spec, TARGET), "Ingress")
    assert ingress["spec"]["ingressClassName"] == "nginx"
    assert ingress["spec"]["rules"][0]["host"] == "prep.example.mx"
    assert ingress["spec"]["tls"] == [{"hosts": ["prep.example.mx"], "secretName": "p-tls"}]
    notes = ingress["metadata"]["annotations"]
    assert notes["nginx.ingress.kubernetes.io/limit-rps"] == "10"
    assert notes["nginx.ingress.kubernetes.io/limit-burst-multiplier"] == "4"
    assert notes["nginx.ingress.kubernetes.io/limit-connections"] == "7"
    assert notes["cert-manager.io/cluster-issuer"] == "le"


def test_traefik_gets_a_middleware_only_where_traefik_exists() -> None:
    spec = _spec(
        edge={"kind": "Ingress", "className": "traefik"},
        rateLimit={"requestsPerSecond": 9, "burst": 3},
    )
    with_traefik = render_all(spec, TARGET)
    middleware = _one(with_traefik, "Middleware")
    assert middleware["spec"]["rateLimit"]["average"] == 9
    ingress = _one(with_traefik, "Ingress")
    assert ingress["metadata"]["annotations"][
        "traefik.ingress.kubernetes.io/router.middlewares"
    ] == ("ns-p-ratelimit@kubernetescrd")
    without = render_all(spec, Target(name="p", namespace="ns"))
    assert not _by_kind(without, "Middleware")


def test_gateway_edge_renders_an_httproute_and_no_ingress() -> None:
    spec = _spec(edge={"kind": "Gateway", "parentRefs": [{"name": "public", "namespace": "gw"}]})
    objects = render_all(spec, TARGET)
    assert not _by_kind(objects, "Ingress")
    route = _one(objects, "HTTPRoute")
    assert route["spec"]["parentRefs"] == [{"name": "public", "namespace": "gw"}]
    assert route["spec"]["hostnames"] == ["prep.example.mx"]
    assert route["spec"]["rules"][0]["backendRefs"] == [{"name": "p-http", "port": 80}]


def test_edge_none_renders_no_edge_object() -> None:
    objects = render_all(_spec(edge={"kind": "None"}), TARGET)
    assert not _by_kind(objects, "Ingress")
    assert not _by_kind(objects, "HTTPRoute")


def test_a_config_change_changes_the_pod_template() -> None:
    first = Target(name="p", namespace="ns", files={"nginx.conf": "a"})
    second = Target(name="p", namespace="ns", files={"nginx.conf": "b"})
    a = _one(render_all(_spec(), first), "StatefulSet")["spec"]["template"]["metadata"][
        "annotations"
    ]
    b = _one(render_all(_spec(), second), "StatefulSet")["spec"]["template"]["metadata"][
        "annotations"
    ]
    assert a != b


def test_render_refuses_a_file_that_is_not_a_publication() -> None:
    with pytest.raises(ValueError, match="PrepPublication"):
        render_stream(
            yaml.safe_dump({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}})
        )


def test_render_names_the_bad_field() -> None:
    doc = {
        "apiVersion": "prep.difusor.io/v1alpha1",
        "kind": "PrepPublication",
        "metadata": {"name": "x"},
        "spec": {"host": "Not A Host", "sftp": {"authorizedKeysSecret": "k"}},
    }
    with pytest.raises(ValueError, match="host"):
        render_stream(yaml.safe_dump(doc))


def test_scheduling_reaches_the_pod_template() -> None:
    spec = _spec(
        scheduling={
            "nodeSelector": {"pool": "election"},
            "tolerations": [
                {"key": "dedicated", "operator": "Equal", "value": "prep", "effect": "NoSchedule"}
            ],
            "priorityClassName": "election-critical",
        }
    )
    pod = _one(render_all(spec, TARGET), "StatefulSet")["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"pool": "election"}
    assert pod["tolerations"] == [
        {"key": "dedicated", "operator": "Equal", "value": "prep", "effect": "NoSchedule"}
    ]
    assert pod["priorityClassName"] == "election-critical"


@pytest.mark.parametrize(
    ("now", "phase"),
    [
        (datetime(2024, 6, 3, 1, 59, tzinfo=UTC), "Pending"),
        (datetime(2024, 6, 3, 2, 0, tzinfo=UTC), "Open"),
        (datetime(2024, 6, 4, 2, 0, tzinfo=UTC), "Closed"),
        (datetime(2024, 6, 7, 2, 0, tzinfo=UTC), "Complete"),
    ],
)
def test_render_says_the_window_phase_at_the_time_it_runs(now: datetime, phase: str) -> None:
    rendered = render_stream((EXAMPLES / "full.yaml").read_text(), now=now)
    assert rendered.splitlines()[1] == (
        f"# prep-michoacan: window {phase} at {now.isoformat()} (opens 2024-06-02T20:00:00-06:00, "
        "closes 2024-06-03T20:00:00-06:00, may be taken down after 2024-06-06T20:00:00-06:00)"
    )


def test_the_placeholder_configmap_is_mounted_into_nginx_only_with_a_window() -> None:
    window = {
        "start": "2024-06-02T20:00:00-06:00",
        "end": "2024-06-03T20:00:00-06:00",
        "placeholderConfigMap": "ph",
    }
    for spec, expected in ((_spec(), []), (_spec(window=window), ["placeholder"])):
        pod = _one(render_all(spec, TARGET), "StatefulSet")["spec"]["template"]["spec"]
        volumes = [v for v in pod["volumes"] if v["name"] == "placeholder"]
        nginx = next(c for c in pod["containers"] if c["name"] == "nginx")
        mounts = [m["name"] for m in nginx["volumeMounts"] if m["name"] == "placeholder"]
        assert mounts == expected
        if expected:
            assert volumes == [
                {"name": "placeholder", "configMap": {"name": "ph", "optional": True}}
            ]
