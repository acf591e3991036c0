"""The purge adapters: what each provider is sent for a plan, signed its own way.

Cloudflare (bearer token), Fastly (Fastly-Key), Akamai Fast Purge v3 (EdgeGrid, signed by
edgegrid-python), CloudFront (SigV4, signed by botocore), Varnish (PURGE/BAN, allowed by the VCL's
ACL) and a generic webhook (HMAC-SHA256 over the timestamp and the body).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import re
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit
from xml.etree import ElementTree
from xml.sax.saxutils import escape

import aiohttp
import requests

from difusor.cdn.client import Answer, PurgeError, Tally, send
from difusor.logic.purge import CAPS, Backoff, Plan, batches

if TYPE_CHECKING:  # the signers are imported when a purge needs them (tens of MB otherwise)
    from akamai.edgegrid import EdgeGridAuth
    from botocore.credentials import Credentials

#: Requests in flight at once for providers that take one URL a request (Fastly, Varnish).
CONCURRENCY = 16
CLOUDFRONT_NS = "http://cloudfront.amazonaws.com/doc/2020-05-31/"


@dataclass(frozen=True)
class Site:
    """What the adapters need to know of the publication and the purge."""

    provider: str
    host: str
    namespace: str
    publication: str
    cut: str
    zone: str | None = None
    endpoint: str | None = None
    soft: bool = True
    network: str = "production"
    scheme: str = "https"

    @property
    def caller_reference(self) -> str:
        """Same for every attempt of the same cut: CloudFront answers a repeat with the first."""
        return f"difusor/{self.namespace}/{self.publication}/{self.cut}"

    def url(self, path: str) -> str:
        """The public URL of a path."""
        return f"{self.scheme}://{self.host}{path}"


@dataclass(frozen=True)
class Result:
    """A purge the provider acknowledged."""

    request_ids: tuple[str, ...]
    requests: int
    tries: int
    items: int


def _need(secret: Mapping[str, str], *keys: str) -> list[str]:
    missing = [k for k in keys if not secret.get(k)]
    if missing:
        raise PurgeError(f"the credentials Secret has no {', '.join(missing)}")
    return [secret[k] for k in keys]


def _json(answer: Answer) -> dict[str, object]:
    try:
        data = json.loads(answer.body or b"{}")
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _base(site: Site, default: str) -> str:
    return (site.endpoint or default).rstrip("/")


async def cloudflare(
    session: aiohttp.ClientSession,
    site: Site,
    plan: Plan,
    secret: Mapping[str, str],
    policy: Backoff,
) -> Tally:
    """POST /client/v4/zones/{zone}/purge_cache, bearer token, 100 items a request."""
    (token,) = _need(secret, "apiToken")
    url = f"{_base(site, 'https://api.cloudflare.com')}/client/v4/zones/{site.zone}/purge_cache"
    bodies: list[dict[str, object]] = []
    if plan.everything:
        bodies.append({"purge_everything": True})
    size = CAPS["cloudflare"].batch
    bodies += [{"files": b} for b in batches([site.url(p) for p in plan.paths], size=size)]
    # Prefixes are host/path with no scheme.
    bodies += [
        {"prefixes": b} for b in batches([f"{site.host}{p}" for p in plan.prefixes], size=size)
    ]
    bodies += [{"tags": b} for b in batches(list(plan.tags), size=size)]
    tally = Tally()
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    for body in bodies:
        answer = await send(
            session, "POST", url, headers=headers, body=json.dumps(body).encode(),
            tally=tally, policy=policy, what="Cloudflare purge_cache",
        )  # fmt: skip
        data = _json(answer)
        if data.get("success") is not True:
            raise PurgeError(f"Cloudflare purge_cache did not succeed: {data.get('errors')}")
        result = data.get("result")
        if isinstance(result, dict) and result.get("id"):
            tally.request_ids.append(str(result["id"]))
    return tally


async def fastly(
    session: aiohttp.ClientSession,
    site: Site,
    plan: Plan,
    secret: Mapping[str, str],
    policy: Backoff,
) -> Tally:
    """PURGE of each URL; POST /service/{id}/purge with Surrogate-Key; POST .../purge_all."""
    (key,) = _need(secret, "apiKey")
    api = _base(site, "https://api.fastly.com")
    tally = Tally()
    common = {"Fastly-Key": key, "Accept": "application/json"}
    soft = {"Fastly-Soft-Purge": "1"} if site.soft else {}

    def note(answer: Answer) -> None:
        data = _json(answer)
        ident = data.get("id") or next((v for v in data.values() if isinstance(v, str)), None)
        if ident and ident != "ok":
            tally.request_ids.append(str(ident))

    if plan.everything:
        # purge_all has no soft form.
        note(
            await send(
                session, "POST", f"{api}/service/{site.zone}/purge_all", headers=common,
                tally=tally, policy=policy, what="Fastly purge_all",
            )
        )  # fmt: skip
    for group in batches(list(plan.tags), size=CAPS["fastly"].batch):
        note(
            await send(
                session, "POST", f"{api}/service/{site.zone}/purge",
                headers={**common, **soft, "Surrogate-Key": " ".join(group)},
                tally=tally, policy=policy, what="Fastly surrogate-key purge",
            )
        )  # fmt: skip
    # URL purge goes to the URL itself (through Fastly's edge); with an endpoint, to it with the
    # public Host header.
    edge = site.endpoint.rstrip("/") if site.endpoint else f"{site.scheme}://{site.host}"
    host = {"Host": site.host} if site.endpoint else {}
    limit = asyncio.Semaphore(CONCURRENCY)

    async def one(path: str) -> None:
        async with limit:
            note(
                await send(
                    session, "PURGE", f"{edge}{path}", headers={**common, **soft, **host},
                    tally=tally, policy=policy, what=f"Fastly PURGE {path}",
                )
            )  # fmt: skip

    await asyncio.gather(*(one(p) for p in plan.paths))
    return tally


def edgegrid_headers(
    auth: EdgeGridAuth, method: str, url: str, headers: dict[str, str], body: bytes
) -> dict[str, str]:
    """The headers of a request signed by edgegrid-python (its requests hook, on a prepared copy)."""
    prepared = requests.Request(method, url, headers=headers, data=body).prepare()
    signed = auth(prepared)
    return {**headers, "Authorization": signed.headers["Authorization"]}


async def akamai(
    session: aiohttp.ClientSession,
    site: Site,
    plan: Plan,
    secret: Mapping[str, str],
    policy: Backoff,
) -> Tally:
    """POST /ccu/v3/{invalidate|delete}/{url|tag|cpcode}/{network}, EdgeGrid signed, <= 50 KB."""
    client_token, client_secret, access_token = _need(
        secret, "client_token", "client_secret", "access_token"
    )
    if site.endpoint:
        base = site.endpoint.rstrip("/")
    else:
        (host,) = _need(secret, "host")
        base = f"https://{host.removeprefix('https://').rstrip('/')}"
    from akamai.edgegrid import EdgeGridAuth

    auth = EdgeGridAuth(client_token, client_secret, access_token)
    action = "invalidate" if site.soft else "delete"
    caps = CAPS["akamai"]
    requests_: list[tuple[str, list[object]]] = []
    if plan.everything:
        if not site.zone or not site.zone.isdigit():
            raise PurgeError("purging everything on Akamai needs the CP code in cdn.zone")
        requests_.append(("cpcode", [int(site.zone)]))
    for kind, items in (("url", [site.url(p) for p in plan.paths]), ("tag", list(plan.tags))):
        for group in batches(items, size=caps.batch, max_bytes=caps.max_body_bytes):
            requests_.append((kind, list(group)))
    tally = Tally()
    for kind, objects in requests_:
        url = f"{base}/ccu/v3/{action}/{kind}/{site.network}"
        body = json.dumps({"objects": objects}).encode()
        answer = await send(
            session, "POST", url, headers={"Content-Type": "application/json"}, body=body,
            tally=tally, policy=policy, what=f"Akamai {action} {kind}",
            sign=lambda m, u, h, b: edgegrid_headers(auth, m, u, h, b),
        )  # fmt: skip
        data = _json(answer)
        if data.get("purgeId"):
            tally.request_ids.append(str(data["purgeId"]))
    return tally


def sigv4_headers(
    credentials: Credentials, method: str, url: str, headers: dict[str, str], body: bytes
) -> dict[str, str]:
    """The headers of a request signed by botocore's SigV4 signer for CloudFront (us-east-1)."""
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest

    request = AWSRequest(method=method, url=url, data=body, headers=headers)
    SigV4Auth(credentials, "cloudfront", "us-east-1").add_auth(request)
    return dict(request.headers.items())


def invalidation_batch(paths: list[str], caller_reference: str) -> bytes:
    """The CreateInvalidation XML body."""
    items = "".join(f"<Path>{escape(p)}</Path>" for p in paths)
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        f'<InvalidationBatch xmlns="{CLOUDFRONT_NS}">'
        f"<Paths><Quantity>{len(paths)}</Quantity><Items>{items}</Items></Paths>"
        f"<CallerReference>{escape(caller_reference)}</CallerReference>"
        "</InvalidationBatch>"
    ).encode()


def _cloudfront_busy(status: int, body: bytes) -> bool:
    return status == 400 and (
        b"TooManyInvalidationsInProgress" in body or b"<Code>Throttling</Code>" in body
    )


async def cloudfront(
    session: aiohttp.ClientSession,
    site: Site,
    plan: Plan,
    secret: Mapping[str, str],
    policy: Backoff,
) -> Tally:
    """POST /2020-05-31/distribution/{id}/invalidation, SigV4, CallerReference from the cut."""
    access, secret_key = _need(secret, "aws_access_key_id", "aws_secret_access_key")
    from botocore.credentials import Credentials

    credentials = Credentials(access, secret_key, secret.get("aws_session_token") or None)
    base = _base(site, "https://cloudfront.amazonaws.com")
    url = f"{base}/2020-05-31/distribution/{site.zone}/invalidation"
    paths = ["/*"] if plan.everything else [*plan.paths, *(f"{p}*" for p in plan.prefixes)]
    tally = Tally()
    groups = batches(paths, size=CAPS["cloudfront"].batch)
    for index, group in enumerate(groups):
        reference = site.caller_reference + (f"/{index}" if len(groups) > 1 else "")
        answer = await send(
            session, "POST", url, headers={"Content-Type": "application/xml"},
            body=invalidation_batch(group, reference), tally=tally, policy=policy,
            what="CloudFront CreateInvalidation", retryable=_cloudfront_busy,
            sign=lambda m, u, h, b: sigv4_headers(credentials, m, u, h, b),
        )  # fmt: skip
        try:
            found = ElementTree.fromstring(answer.body).find(f"{{{CLOUDFRONT_NS}}}Id")
        except ElementTree.ParseError:
            found = None
        if found is not None and found.text:
            tally.request_ids.append(found.text)
    return tally


async def _addresses(endpoint: str) -> list[tuple[str, str]]:
    """(base URL, Host) for every address the endpoint's name has: a headless Service lists every
    Varnish pod, and each holds its own cache."""
    parts = urlsplit(endpoint)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    seen: list[str] = []
    for info in infos:
        address = str(info[4][0])
        if address not in seen:
            seen.append(address)
    out = []
    for address in seen:
        shown = f"[{address}]" if ":" in address else address
        out.append((urlunsplit((parts.scheme, f"{shown}:{port}", "", "", "")), address))
    return out


async def varnish(
    session: aiohttp.ClientSession,
    site: Site,
    plan: Plan,
    secret: Mapping[str, str],
    policy: Backoff,
) -> Tally:
    """PURGE each path and BAN each prefix (or everything) on every Varnish the endpoint names."""
    del secret  # the VCL's ACL admits the operator by address
    assert site.endpoint
    targets = await _addresses(site.endpoint)
    tally = Tally()
    limit = asyncio.Semaphore(CONCURRENCY)
    jobs: list[tuple[str, str, dict[str, str]]] = []
    if plan.everything:
        jobs.append(("BAN", "/", {"X-Ban-Url": "^/"}))
    else:
        jobs += [("BAN", "/", {"X-Ban-Url": "^" + re.escape(p)}) for p in plan.prefixes]
        jobs += [("PURGE", p, {}) for p in plan.paths]

    async def one(base: str, method: str, path: str, extra: dict[str, str]) -> None:
        async with limit:
            answer = await send(
                session, method, f"{base}{path}", headers={"Host": site.host, **extra},
                tally=tally, policy=policy, what=f"Varnish {method} {path} on {base}",
            )  # fmt: skip
        if answer.headers.get("x-varnish"):
            tally.request_ids.append(f"{urlsplit(base).hostname}:{answer.headers['x-varnish']}")

    await asyncio.gather(*(one(b, m, p, x) for b, _ in targets for m, p, x in jobs))
    return tally


def webhook_signature(key: str, timestamp: str, body: bytes) -> str:
    """X-Difusor-Signature: `t=<unix time>,v1=<hex HMAC-SHA256 of "<t>." + body>`."""
    mac = hmac.new(key.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


async def webhook(
    session: aiohttp.ClientSession,
    site: Site,
    plan: Plan,
    secret: Mapping[str, str],
    policy: Backoff,
) -> Tally:
    """POST JSON {publication, cut, host, paths, prefixes, tags, everything} signed with HMAC."""
    (key,) = _need(secret, "hmacKey")
    assert site.endpoint
    groups = batches(list(plan.paths), size=CAPS["webhook"].batch) or [[]]
    tally = Tally()
    for index, group in enumerate(groups):
        first = index == 0
        body = json.dumps(
            {
                "namespace": site.namespace,
                "publication": site.publication,
                "cut": site.cut,
                "host": site.host,
                "batch": index + 1,
                "batches": len(groups),
                "paths": group,
                "prefixes": list(plan.prefixes) if first else [],
                "tags": list(plan.tags) if first else [],
                "everything": plan.everything and first,
            }
        ).encode()

        def sign(method: str, url: str, headers: dict[str, str], payload: bytes) -> dict[str, str]:
            del method, url
            stamp = str(int(time.time()))
            return {**headers, "X-Difusor-Signature": webhook_signature(key, stamp, payload)}

        answer = await send(
            session, "POST", site.endpoint, headers={"Content-Type": "application/json"},
            body=body, sign=sign, tally=tally, policy=policy, what="webhook",
        )  # fmt: skip
        ident = _json(answer).get("id") or answer.headers.get("x-request-id")
        if ident:
            tally.request_ids.append(str(ident))
    return tally


ADAPTERS = {
    "cloudflare": cloudflare,
    "fastly": fastly,
    "akamai": akamai,
    "cloudfront": cloudfront,
    "varnish": varnish,
    "webhook": webhook,
}


async def purge(
    site: Site,
    plan: Plan,
    secret: Mapping[str, str],
    *,
    policy: Backoff | None = None,
    session: aiohttp.ClientSession | None = None,
) -> Result:
    """Send a plan to the site's provider; PurgeError when it is not acknowledged."""
    adapter = ADAPTERS.get(site.provider)
    if adapter is None:
        raise PurgeError(f"no purge adapter for provider {site.provider!r}")
    policy = policy or Backoff()
    own = session is None
    session = session or aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
    try:
        tally = await adapter(session, site, plan, secret, policy)
    finally:
        if own:
            await session.close()
    return Result(
        request_ids=tuple(tally.request_ids),
        requests=tally.requests,
        tries=tally.tries,
        items=plan.items,
    )
