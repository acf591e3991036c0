"""spec.cdn: what each provider needs is refused with the field's name, and the VCL it renders."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from difusor.models import CdnSpec, PrepPublicationSpec
from difusor.render.children import Target, render_all
from difusor.render.varnish import render_vcl

pytestmark = pytest.mark.unit

BASE: dict[str, Any] = {"host": "prep.example.mx", "sftp": {"authorizedKeysSecret": "iem-keys"}}


@pytest.mark.parametrize(
    ("cdn", "field"),
    [
        ({"provider": "cloudflare", "credentialsSecret": "cf"}, "cdn.zone"),
        ({"provider": "fastly", "zone": "svc"}, "cdn.credentialsSecret"),
        ({"provider": "varnish", "purgers": ["10.0.0.0/8"]}, "cdn.endpoint"),
        ({"provider": "varnish", "endpoint": "http://cache:6081"}, "cdn.purgers"),
        ({"provider": "webhook", "credentialsSecret": "h"}, "cdn.endpoint"),
        ({"provider": "fastly", "credentialsSecret": "f", "zone": "s", "prefixes": ["/json/"]}, "cdn.prefixes"),
        ({"provider": "cloudfront", "credentialsSecret": "a", "zone": "E1", "tags": ["t"]}, "cdn.tags"),
        ({"provider": "akamai", "credentialsSecret": "a", "everything": True}, "cdn.zone"),
        ({"provider": "varnish", "endpoint": "http://c", "purgers": ["not-a-cidr"]}, "CIDR"),
    ],
)  # fmt: skip
def test_a_provider_without_what_it_needs_is_refused_naming_the_field(
    cdn: dict[str, Any], field: str
) -> None:
    with pytest.raises(ValidationError) as caught:
        CdnSpec.model_validate(cdn)
    assert field in str(caught.value)


def test_each_provider_with_what_it_needs_is_accepted() -> None:
    for cdn in (
        {"provider": "cloudflare", "credentialsSecret": "cf", "zone": "z"},
        {"provider": "fastly", "credentialsSecret": "f", "zone": "svc", "tags": ["prep"]},
        {"provider": "akamai", "credentialsSecret": "a", "zone": "12345", "everything": True},
        {"provider": "cloudfront", "credentialsSecret": "a", "zone": "E2ABC", "prefixes": ["/j/"]},
        {"provider": "varnish", "endpoint": "http://cache:6081", "purgers": ["10.0.0.0/8"]},
        {"provider": "webhook", "credentialsSecret": "h", "endpoint": "https://hooks.example/p"},
    ):
        assert CdnSpec.model_validate(cdn).provider.value == cdn["provider"]


def test_the_vcl_passes_no_store_paths_and_admits_only_the_purgers() -> None:
    spec = PrepPublicationSpec.model_validate(
        {**BASE, "cache": {"noStorePaths": ["/json/main.json", "/vivo/"]}}
    )
    vcl = render_vcl(spec, backends=[("10.1.2.3", 8080)], purgers=["10.0.0.7/32", "fd00::/8"])
    assert 'acl purgers {\n    "10.0.0.7"/32;\n    "fd00::"/8;\n}' in vcl
    assert r'if (req.url ~ {"^(/json/main\.json(\?|$)|/vivo/)"}) {' in vcl
    assert vcl.count("client.ip !~ purgers") == 2
    assert 'set req.http.host = {"prep.example.mx"};' in vcl


def test_a_varnish_publication_gets_its_vcl_in_a_config_map_in_front_of_the_http_service() -> None:
    spec = PrepPublicationSpec.model_validate(
        {**BASE, "cdn": {"provider": "varnish", "endpoint": "http://prep-cache:6081",
                         "purgers": ["10.244.0.0/16"]}}
    )  # fmt: skip
    objects = render_all(spec, Target(name="prep", namespace="difusor"))
    vcl = next(o for o in objects if o["metadata"]["name"] == "prep-varnish")["data"]["default.vcl"]
    assert '.host = "prep-http.difusor.svc";' in vcl
    assert '"10.244.0.0"/16;' in vcl
    # The operator reads the cuts' manifests from the agents' port to plan each purge.
    policy = next(o for o in objects if o["kind"] == "NetworkPolicy")
    agent_rule = next(r for r in policy["spec"]["ingress"] if r["ports"][0]["port"] == 8081)
    assert {"namespaceSelector": {}} in agent_rule["from"]
