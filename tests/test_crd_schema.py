"""The CRDs: generated from the models, and every rule refusing a bad CR with the field's name."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
import yaml

from difusor.controller.promotion import _rollout_status
from difusor.logic.promotion import PHASE_COMMITTING, Rollout
from difusor.render.crds import all_crds

from .conftest import REPO, kubectl


@pytest.mark.unit
def test_crds_directory_is_what_the_models_generate() -> None:
    for name, crd in all_crds().items():
        on_disk = yaml.safe_load((REPO / "crds" / name).read_text())
        assert on_disk == crd, f"crds/{name} is stale: run `make crds`"


def _publication(spec: dict[str, Any], name: str = "p") -> str:
    base: dict[str, Any] = {"host": "prep.example.mx", "sftp": {"authorizedKeysSecret": "keys"}}
    base.update(spec)
    return yaml.safe_dump(
        {
            "apiVersion": "prep.difusor.io/v1alpha1",
            "kind": "PrepPublication",
            "metadata": {"name": name},
            "spec": base,
        }
    )


def _window(**overrides: Any) -> dict[str, Any]:
    window: dict[str, Any] = {
        "start": "2024-06-02T20:00:00-06:00",
        "end": "2024-06-03T20:00:00-06:00",
        "placeholderConfigMap": "prep-placeholder",
    }
    window.update(overrides)
    return {k: v for k, v in window.items() if v is not None}


BAD = [
    ("host", {"host": "Not_A_Host"}, "spec.host"),
    ("single replica", {"replicas": 1}, "allowSingleReplica"),
    ("zero replicas", {"replicas": 0, "allowSingleReplica": True}, "spec.replicas"),
    ("tls without secret or issuer", {"tls": {}}, "tls needs secretName or issuerRef"),
    ("gateway without parents", {"edge": {"kind": "Gateway"}}, "spec.edge.parentRefs"),
    ("edge kind", {"edge": {"kind": "LoadBalancer"}}, "spec.edge.kind"),
    ("cdn without credentials", {"cdn": {"provider": "cloudflare"}}, "cdn.credentialsSecret"),
    ("cdn provider", {"cdn": {"provider": "akamaii"}}, "spec.cdn.provider"),
    ("cdn without zone", {"cdn": {"provider": "cloudfront", "credentialsSecret": "aws"}}, "cdn.zone"),
    ("varnish without purgers", {"cdn": {"provider": "varnish", "endpoint": "http://c:6081"}},
     "cdn.purgers"),
    ("fastly prefixes", {"cdn": {"provider": "fastly", "credentialsSecret": "f", "zone": "s",
                                 "prefixes": ["/json/"]}}, "cdn.prefixes"),
    ("cdn endpoint", {"cdn": {"provider": "webhook", "credentialsSecret": "h", "endpoint": "ftp://x"}},
     "spec.cdn.endpoint"),
    ("trusted proxy", {"rateLimit": {"trustedProxies": ["10.0.0.0/33"]}}, "spec.rateLimit.trustedProxies[0]"),
    ("deny list", {"rateLimit": {"denyList": ["nope"]}}, "spec.rateLimit.denyList[0]"),
    ("source range", {"sftp": {"authorizedKeysSecret": "k", "allowedSourceRanges": ["1.2.3"]}},
     "spec.sftp.allowedSourceRanges[0]"),
    ("storage size", {"storage": {"size": "lots"}}, "spec.storage.size"),
    ("pinned cut", {"pinnedCut": "../etc"}, "spec.pinnedCut"),
    ("autoscaling bounds", {"autoscaling": {"enabled": True, "minReplicas": 9, "maxReplicas": 3}},
     "autoscaling.minReplicas must not exceed"),
    ("no-store path", {"cache": {"noStorePaths": ["json/main.json"]}}, "spec.cache.noStorePaths[0]"),
    ("max age", {"cache": {"maxAgeSeconds": -1}}, "spec.cache.maxAgeSeconds"),
    ("sftp port", {"sftp": {"authorizedKeysSecret": "k", "service": {"port": 70000}}}, "spec.sftp.service.port"),
    ("sftp service type", {"sftp": {"authorizedKeysSecret": "k", "service": {"type": "External"}}},
     "spec.sftp.service.type"),
    ("missing keys secret", {"sftp": {}}, "spec.sftp.authorizedKeysSecret"),
    ("completion", {"ingest": {"completion": "whenever"}}, "spec.ingest.completion"),
    ("rate", {"rateLimit": {"requestsPerSecond": 0}}, "spec.rateLimit.requestsPerSecond"),
    ("retention", {"retention": {"cuts": 1}}, "spec.retention.cuts"),
    ("embedding origin", {"embedding": {"allowedOrigins": ["javascript:alert(1)"]}},
     "spec.embedding.allowedOrigins[0]"),
    ("unknown field", {"replicaz": 3}, "replicaz"),
    ("window end before start", {"window": _window(end="2024-06-02T19:59:00-06:00")},
     "window.end must be after window.start"),
    ("window end at start", {"window": _window(end="2024-06-02T20:00:00-06:00")},
     "spec.window.end"),
    ("keep online under a day", {"window": _window(keepOnline="23h59m")},
     "keepOnline must be at least 24h"),
    ("keep online not a duration", {"window": _window(keepOnline="1d")}, "spec.window.keepOnline"),
    ("window start not a time", {"window": _window(start="June 2nd")}, "spec.window.start"),
    ("window without placeholder", {"window": _window(placeholderConfigMap=None)},
     "spec.window.placeholderConfigMap"),
]  # fmt: skip


@pytest.mark.cluster
@pytest.mark.parametrize(("case", "spec", "expected"), BAD, ids=[b[0] for b in BAD])
def test_the_api_server_refuses_a_bad_publication_naming_the_field(
    crds: str, namespace: str, case: str, spec: dict[str, Any], expected: str
) -> None:
    out = kubectl(
        crds, "-n", namespace, "apply", "--dry-run=server", "-f", "-",
        stdin=_publication(spec), check=False,
    )  # fmt: skip
    assert "created (server dry run)" not in out, f"{case}: accepted"
    assert expected in out, f"{case}: {out}"


GOOD = [
    ("minimal", {}),
    ("single replica allowed", {"replicas": 1, "allowSingleReplica": True}),
    ("gateway", {"edge": {"kind": "Gateway", "parentRefs": [{"name": "gw"}]}}),
    ("ipv6 proxy", {"rateLimit": {"trustedProxies": ["2001:db8::/32", "10.0.0.0/8"]}}),
    (
        "varnish needs no credentials",
        {"cdn": {"provider": "varnish", "endpoint": "http://varnish", "purgers": ["10.0.0.0/8"]}},
    ),
    ("tls by issuer", {"tls": {"issuerRef": {"name": "le"}}}),
    (
        "cloudfront with prefixes",
        {
            "cdn": {
                "provider": "cloudfront",
                "credentialsSecret": "aws",
                "zone": "E2QWRUHEXAMPLE",
                "prefixes": ["/json/"],
                "soft": False,
            }
        },
    ),
    ("window of a day kept online three", {"window": _window(keepOnline="72h")}),
    ("window kept online exactly a day", {"window": _window(keepOnline="24h")}),
]


@pytest.mark.cluster
@pytest.mark.parametrize(("case", "spec"), GOOD, ids=[g[0] for g in GOOD])
def test_the_api_server_accepts_a_good_publication(
    crds: str, namespace: str, case: str, spec: dict[str, Any]
) -> None:
    out = kubectl(
        crds, "-n", namespace, "apply", "--dry-run=server", "-f", "-", stdin=_publication(spec)
    )
    assert "created (server dry run)" in out, case


@pytest.mark.cluster
def test_defaults_are_filled_in_by_the_api_server(crds: str, namespace: str) -> None:
    kubectl(crds, "-n", namespace, "apply", "-f", "-", stdin=_publication({}))
    stored = yaml.safe_load(kubectl(crds, "-n", namespace, "get", "prep", "p", "-o", "yaml"))[
        "spec"
    ]
    assert stored["replicas"] == 3
    assert stored["storage"]["size"] == "20Gi"
    assert stored["cache"]["noStorePaths"] == ["/json/main.json"]
    assert stored["ingest"]["cutIdPattern"] == r"(?P<id>\d{8}_\d{4})"
    assert stored["rateLimit"]["requestsPerSecond"] == 20
    assert "window" not in stored


@pytest.mark.cluster
def test_a_window_keeps_the_site_online_a_day_unless_told_more(crds: str, namespace: str) -> None:
    kubectl(crds, "-n", namespace, "apply", "-f", "-", stdin=_publication({"window": _window()}))
    stored = yaml.safe_load(kubectl(crds, "-n", namespace, "get", "prep", "p", "-o", "yaml"))
    assert stored["spec"]["window"]["keepOnline"] == "24h"


@pytest.mark.cluster
@pytest.mark.parametrize("example", ["minimal.yaml", "full.yaml"])
def test_the_examples_are_accepted(crds: str, example: str) -> None:
    kubectl(crds, "create", "namespace", "difusor", check=False)
    out = kubectl(
        crds, "apply", "--dry-run=server", "-f", str(REPO / "manifests" / "examples" / example)
    )
    assert "(server dry run)" in out


@pytest.mark.cluster
def test_a_cut_with_a_bad_id_is_refused(crds: str, namespace: str) -> None:
    cut = {
        "apiVersion": "prep.difusor.io/v1alpha1",
        "kind": "PrepCut",
        "metadata": {"name": "p-bad"},
        "spec": {"publication": "p", "id": "../20240602_2040"},
    }
    out = kubectl(
        crds,
        "-n",
        namespace,
        "apply",
        "--dry-run=server",
        "-f",
        "-",
        stdin=yaml.safe_dump(cut),
        check=False,
    )
    assert "spec.id" in out


@pytest.mark.cluster
def test_the_api_server_keeps_every_field_of_the_rollout_the_operator_writes(
    crds: str, namespace: str
) -> None:
    """The status schema prunes what it does not name: a rollout field missing from it is lost
    on the first write, and with it what the operator decides from it (the commit's timeout
    counts from committedAt)."""
    kubectl(crds, "-n", namespace, "apply", "-f", "-", stdin=_publication({}))
    at = datetime(2024, 6, 2, 20, 21, 5, 250000, tzinfo=UTC)
    target = {"spec": {"manifestDigest": "sha256:" + "a" * 64, "receivedBy": "p-web-1"}}
    pod = {"metadata": {"name": "p-web-1"}, "status": {"podIP": "10.244.0.7"}}
    rollout = _rollout_status(
        Rollout(target="20240602_2020", phase=PHASE_COMMITTING, started_at=at, committed_at=at),
        target,
        (pod,),
    )
    assert all(rollout.values()), rollout
    kubectl(
        crds, "-n", namespace, "patch", "prep", "p", "--subresource=status", "--type=merge",
        "-p", json.dumps({"status": {"rollout": rollout}}),
    )  # fmt: skip
    stored = yaml.safe_load(kubectl(crds, "-n", namespace, "get", "prep", "p", "-o", "yaml"))
    assert stored["status"]["rollout"] == rollout
