"""The purge adapters against local servers that check each provider's request shape and auth."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from importlib import resources
from typing import Any

import pytest
import requests
from akamai.edgegrid import EdgeGridAuth
from akamai.edgegrid.edgegrid import EdgeGridAuthHeaders
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from difusor.cdn.client import PurgeError
from difusor.cdn.providers import Result, Site, edgegrid_headers, purge
from difusor.logic.purge import Backoff, Plan

from .cdnservers import AWS, HOST, SECRETS, ZONE, Fake, serving, sigv4_signature

pytestmark = pytest.mark.unit

CLOUDS = ["cloudflare", "fastly", "akamai", "cloudfront", "webhook"]
CUT = "20240602_2040"
PLAN = Plan(
    paths=("/", "/index.html", "/json/main.json", "/json/distritos/01.json"),
    prefixes=(),
    why="test",
)
FAST = Backoff(attempts=6, base=0.05, cap=1.0, budget=20.0)


def site(provider: str, fake: Fake, **extra: Any) -> Site:
    return Site(
        provider=provider, host=HOST, namespace="difusor", publication="prep", cut=CUT,
        zone="12345" if provider == "akamai" else ZONE, endpoint=fake.url, **extra,
    )  # fmt: skip


def run(fake: Fake, plan: Plan = PLAN, *, secret: dict[str, str] | None = None,
        policy: Backoff = FAST, **extra: Any) -> Result:  # fmt: skip
    async def go() -> Result:
        async with serving(fake):
            return await purge(
                site(fake.provider, fake, **extra), plan,
                SECRETS[fake.provider] if secret is None else secret, policy=policy,
            )  # fmt: skip

    return asyncio.run(go())


# -- the published signing test vectors, through the libraries the adapters sign with ---------


def test_edgegrid_signing_matches_every_published_test_case() -> None:
    folder = resources.files("akamai.edgegrid") / "test"
    data = json.loads((folder / "testdata.json").read_text())
    cases = json.loads((folder / "testcases.json").read_text())
    signer = EdgeGridAuthHeaders(
        data["client_token"], data["client_secret"], data["access_token"],
        headers_to_sign=data["headers_to_sign"], max_body=data["max_body"],
    )  # fmt: skip
    checked = 0
    for case in cases:
        if "failsWithMessage" in case:
            continue
        req = case["request"]
        headers = {k: v for h in req.get("headers", []) for k, v in h.items()}
        prepared = requests.Request(
            req["method"], data["base_url"].rstrip("/") + req["path"], headers=headers,
            data=req.get("data", ""),
        ).prepare()  # fmt: skip
        got = signer.make_auth_header(prepared, data["timestamp"], data["nonce"])
        assert got == case["expectedAuthorization"], case["testName"]
        checked += 1
    assert checked >= 12


def test_the_akamai_adapter_signs_with_edgegrid_python_as_the_server_recomputes() -> None:
    auth = EdgeGridAuth("ct", "cs", "at")
    headers = edgegrid_headers(auth, "POST", "https://h.example/ccu/v3/x", {}, b'{"objects":[]}')
    fields = dict(p.split("=", 1) for p in headers["Authorization"][16:].split(";"))
    again = requests.Request("POST", "https://h.example/ccu/v3/x", data=b'{"objects":[]}')
    expected = EdgeGridAuthHeaders("ct", "cs", "at").make_auth_header(
        again.prepare(), fields["timestamp"], fields["nonce"]
    )
    assert headers["Authorization"] == expected


@pytest.mark.parametrize(
    ("method", "url", "signature"),
    [
        # aws-sig-v4-test-suite: get-vanilla, get-vanilla-query-order-key-case, post-vanilla.
        ("GET", "https://example.amazonaws.com/", "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"),
        ("GET", "https://example.amazonaws.com/?Param2=value2&Param1=value1", "b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500"),
        ("POST", "https://example.amazonaws.com/", "5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b"),
    ],
)  # fmt: skip
def test_botocore_sigv4_matches_the_published_test_suite(
    monkeypatch: pytest.MonkeyPatch, method: str, url: str, signature: str
) -> None:
    credentials = Credentials(AWS["aws_access_key_id"], AWS["aws_secret_access_key"])
    # The signer the adapter uses, at the suite's instant.
    monkeypatch.setattr(
        "botocore.auth.get_current_datetime", lambda: dt.datetime(2015, 8, 30, 12, 36, 0)
    )
    request = AWSRequest(method=method, url=url)
    SigV4Auth(credentials, "service", "us-east-1").add_auth(request)
    assert request.headers["X-Amz-Date"] == "20150830T123600Z"
    assert request.headers["Authorization"] == (
        "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, "
        f"SignedHeaders=host;x-amz-date, Signature={signature}"
    )
    # And the server's verifier, from the headers alone.
    again = AWSRequest(method=method, url=url, headers={"X-Amz-Date": "20150830T123600Z"})
    got = sigv4_signature(
        again, credentials, region="us-east-1", service="service", timestamp="20150830T123600Z"
    )
    assert got == signature


# -- live requests ---------------------------------------------------------------------------


@pytest.mark.parametrize("provider", CLOUDS)
def test_each_adapter_purges_one_cut_as_its_provider_documents(provider: str) -> None:
    fake = Fake(provider)
    result = run(fake)
    assert fake.seen
    assert all(s.status in (200, 201, 202) for s in fake.seen), [
        (s.status, s.path) for s in fake.seen
    ]
    assert result.requests == len(fake.seen)
    assert result.request_ids
    assert result.items == 4


def test_cloudflare_gets_full_urls_a_hundred_at_a_time_and_prefixes_as_host_path() -> None:
    fake = Fake("cloudflare")
    paths = tuple(f"/json/actas/{i:04d}.json" for i in range(250))
    run(fake, Plan(paths=paths, prefixes=("/datos/",)))
    bodies = [s.json() for s in fake.seen]
    assert [len(b.get("files", [])) for b in bodies] == [100, 100, 50, 0]
    assert bodies[0]["files"][0] == f"https://{HOST}/json/actas/0000.json"
    assert bodies[3] == {"prefixes": [f"{HOST}/datos/"]}


def test_fastly_soft_purges_each_url_and_purge_all_is_hard() -> None:
    fake = Fake("fastly")
    run(fake)
    assert {s.method for s in fake.seen} == {"PURGE"}
    assert all(s.headers.get("Fastly-Soft-Purge") == "1" for s in fake.seen)
    assert sorted(s.path for s in fake.seen) == sorted(PLAN.paths)
    everything = Fake("fastly")
    run(everything, Plan(everything=True, tags=("cut",)))
    by_path = {s.path: s for s in everything.seen}
    assert "Fastly-Soft-Purge" not in by_path[f"/service/{ZONE}/purge_all"].headers
    assert by_path[f"/service/{ZONE}/purge"].headers["Surrogate-Key"] == "cut"


def test_akamai_invalidates_urls_and_deletes_when_soft_is_off() -> None:
    fake = Fake("akamai")
    run(fake)
    assert fake.seen[0].path == "/ccu/v3/invalidate/url/production"
    assert fake.seen[0].json()["objects"][2] == f"https://{HOST}/json/main.json"
    hard = Fake("akamai")
    run(hard, Plan(everything=True), soft=False, network="staging")
    assert hard.seen[0].path == "/ccu/v3/delete/cpcode/staging"
    assert hard.seen[0].json() == {"objects": [12345]}


def test_akamai_batches_stay_under_the_50_kb_body_limit() -> None:
    fake = Fake("akamai")
    paths = tuple(f"/json/secciones/{i:05d}/resultados-detallados.json" for i in range(2000))
    result = run(fake, Plan(paths=paths))
    assert len(fake.seen) >= 2
    assert all(len(s.body) <= 50_000 for s in fake.seen)
    assert sum(len(s.json()["objects"]) for s in fake.seen) == 2000
    assert result.requests == len(fake.seen)


def test_cloudfront_repeats_of_a_cut_reuse_its_caller_reference_and_invalidation() -> None:
    fake = Fake("cloudfront")
    plan = Plan(paths=("/json/main.json",), prefixes=("/json/distritos/",))

    async def twice() -> tuple[Result, Result]:
        async with serving(fake):
            first = await purge(site("cloudfront", fake), plan, SECRETS["cloudfront"], policy=FAST)
            again = await purge(site("cloudfront", fake), plan, SECRETS["cloudfront"], policy=FAST)
            return first, again

    first, again = asyncio.run(twice())
    assert first.request_ids == again.request_ids
    assert list(fake.invalidations) == [f"difusor/difusor/prep/{CUT}"]
    assert b"<Path>/json/distritos/*</Path>" in fake.seen[0].body


def test_varnish_and_webhook_need_no_secret_beyond_their_own() -> None:
    fake = Fake("webhook")
    run(fake, Plan(paths=("/a",), prefixes=("/b/",), tags=("t",)))
    body = fake.seen[0].json()
    assert body["paths"] == ["/a"]
    assert body["prefixes"] == ["/b/"]
    assert body["cut"] == CUT


# -- refusals, bursts and failures -----------------------------------------------------------


@pytest.mark.parametrize("provider", CLOUDS)
def test_a_server_that_fails_twice_is_retried_until_it_accepts(provider: str) -> None:
    fake = Fake(provider, script=[(503, {}), (502, {})])
    result = run(fake)
    assert [s.status for s in fake.seen[:2]] == [503, 502]
    assert result.tries == result.requests + 2


@pytest.mark.parametrize("provider", CLOUDS)
def test_a_429_burst_is_waited_out_honouring_retry_after(provider: str) -> None:
    # Three requests a second: a plan of many items needs several windows.
    fake = Fake(provider, bucket=(3, 1.0))
    paths = tuple(f"/json/distritos/{i:02d}.json" for i in range(12))
    plan = Plan(paths=paths)
    small = {"cloudflare": 1, "fastly": 12, "akamai": 1, "cloudfront": 1, "webhook": 1}
    if small[provider] == 1:
        # Providers that batch send one request for 12 paths: ask for a burst of whole purges.
        async def burst() -> list[Result]:
            async with serving(fake):
                return list(
                    await asyncio.gather(
                        *(
                            purge(site(provider, fake), plan, SECRETS[provider], policy=FAST)
                            for _ in range(7)
                        )
                    )
                )

        results = asyncio.run(burst())
        accepted = sum(r.requests for r in results)
    else:
        accepted = run(fake, plan).requests
    refused = [s for s in fake.seen if s.status == 429]
    assert refused, "the bucket never refused: the test did not burst"
    assert all(s.status in (200, 201, 202, 429) for s in fake.seen)
    assert accepted == len(fake.accepted)


def test_a_retry_after_beyond_the_budget_ends_the_attempt_with_that_wait() -> None:
    fake = Fake("cloudflare", script=[(429, {"Retry-After": "120"})])
    with pytest.raises(PurgeError) as caught:
        run(fake, policy=Backoff(budget=5.0))
    assert caught.value.retry_after == 120
    assert len(fake.seen) == 1


def test_cloudfront_too_many_invalidations_in_progress_is_retried() -> None:
    fake = Fake("cloudfront")

    async def go() -> Result:
        async with serving(fake):
            original = fake._answer
            calls = {"n": 0}

            def busy_once(request: Any, seen: Any) -> Any:
                calls["n"] += 1
                if calls["n"] == 1:
                    from .cdnservers import _xml_error

                    return _xml_error(400, "TooManyInvalidationsInProgress")
                return original(request, seen)

            fake._answer = busy_once  # type: ignore[method-assign]
            return await purge(site("cloudfront", fake), PLAN, SECRETS["cloudfront"], policy=FAST)

    result = asyncio.run(go())
    assert result.tries == 2
    assert result.requests == 1


@pytest.mark.parametrize("provider", ["cloudflare", "fastly", "akamai", "cloudfront", "webhook"])
def test_a_wrong_credential_is_refused_and_the_error_never_shows_a_secret(provider: str) -> None:
    fake = Fake(provider)
    wrong = {k: v[:-3] + "zzz" for k, v in SECRETS[provider].items()}
    with pytest.raises(PurgeError) as caught:
        run(fake, secret=wrong)
    message = str(caught.value)
    assert any(str(code) in message for code in (401, 403))
    for value in [*wrong.values(), *SECRETS[provider].values()]:
        assert value not in message


def test_a_missing_credential_key_names_the_key() -> None:
    with pytest.raises(PurgeError, match="apiToken"):
        run(Fake("cloudflare"), secret={})
