"""Local stand-ins for the CDN APIs: each checks the documented request shape and authentication.

A server answers like its provider when a request is well formed and correctly signed, and with
the provider's error otherwise; `script` queues failures to answer first (a 503, a 429 with
Retry-After) and `bucket` refuses with 429 beyond a request rate, as the providers' rate limits do.
Signatures are verified with the same libraries that sign (edgegrid-python, botocore), recomputed
from what arrived on the wire.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import re
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from typing import Any
from xml.etree import ElementTree

import requests
from aiohttp import web
from akamai.edgegrid.edgegrid import EdgeGridAuthHeaders
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

HOST = "prep.example.mx"
ZONE = "023e105f4ecef8ad9ca31a8372d0c353"
CF_TOKEN = "cf-token-Zm9vYmFyYmF6"
FASTLY_KEY = "fastly-key-c2VjcmV0"
AKAMAI = {
    "client_token": "akab-client-token-xxx-xxxxxxxxxxxxxxxx",
    "client_secret": "SOMESECRETxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx=",
    "access_token": "akab-access-token-xxx-xxxxxxxxxxxxxxxx",
}
AWS = {
    "aws_access_key_id": "AKIDEXAMPLE",
    "aws_secret_access_key": "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
}
HMAC_KEY = "webhook-hmac-key-1234"
CLOUDFRONT_NS = "{http://cloudfront.amazonaws.com/doc/2020-05-31/}"

SECRETS: dict[str, dict[str, str]] = {
    "cloudflare": {"apiToken": CF_TOKEN},
    "fastly": {"apiKey": FASTLY_KEY},
    "akamai": dict(AKAMAI),
    "cloudfront": dict(AWS),
    "webhook": {"hmacKey": HMAC_KEY},
    "varnish": {},
}


@dataclass
class Seen:
    """One request as it arrived."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    status: int = 0

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Fake:
    """A provider's API on loopback."""

    provider: str
    script: list[tuple[int, dict[str, str]]] = field(default_factory=list)
    bucket: tuple[int, float] | None = None
    """(requests, seconds): more than that many in the window answer 429 with Retry-After."""
    seen: list[Seen] = field(default_factory=list)
    url: str = ""
    invalidations: dict[str, tuple[bytes, str]] = field(default_factory=dict)
    _window: list[float] = field(default_factory=list)

    @property
    def accepted(self) -> list[Seen]:
        return [s for s in self.seen if 200 <= s.status < 300]

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        seen = Seen(request.method, request.path_qs, dict(request.headers), body)
        self.seen.append(seen)
        response = self._answer(request, seen)
        seen.status = response.status
        return response

    def _answer(self, request: web.Request, seen: Seen) -> web.Response:
        if self.script:
            status, headers = self.script.pop(0)
            return web.json_response({"error": "scripted"}, status=status, headers=headers)
        if self.bucket is not None:
            limit, seconds = self.bucket
            now = time.monotonic()
            self._window = [t for t in self._window if now - t < seconds]
            if len(self._window) >= limit:
                wait = max(1, int(seconds - (now - self._window[0]) + 0.999))
                return web.json_response(
                    {"error": "rate limited"}, status=429, headers={"Retry-After": str(wait)}
                )
            self._window.append(now)
        handler = getattr(self, f"_{self.provider}")
        try:
            result: web.Response = handler(request, seen)
        except Refused as exc:
            return web.json_response({"error": str(exc)}, status=exc.status)
        return result

    # Cloudflare: POST /client/v4/zones/{zone}/purge_cache, bearer token, one mode a request.
    def _cloudflare(self, request: web.Request, seen: Seen) -> web.Response:
        expect(request.method == "POST", "method must be POST")
        expect(request.path == f"/client/v4/zones/{ZONE}/purge_cache", "wrong path", 404)
        expect(request.headers.get("Authorization") == f"Bearer {CF_TOKEN}", "bad token", 403)
        body = seen.json()
        modes = set(body) & {"files", "tags", "hosts", "prefixes", "purge_everything"}
        expect(len(modes) == 1 and len(body) == 1, f"one purge mode a request, got {list(body)}")
        mode = modes.pop()
        if mode == "purge_everything":
            expect(body[mode] is True, "purge_everything must be true")
        else:
            items = body[mode]
            expect(isinstance(items, list) and 0 < len(items) <= 100, "1 to 100 items a request")
            for item in items:
                url = item["url"] if isinstance(item, dict) else item
                if mode == "files":
                    expect(url.startswith(f"https://{HOST}/"), f"file {url} is not a URL")
                if mode == "prefixes":
                    expect(url.startswith(f"{HOST}/"), f"prefix {url} must be host/path")
        ident = uuid.uuid4().hex
        return web.json_response(
            {"success": True, "errors": [], "messages": [], "result": {"id": ident}}
        )

    # Fastly: PURGE <url> (Host = the site), POST /service/{id}/purge (Surrogate-Key), purge_all.
    def _fastly(self, request: web.Request, seen: Seen) -> web.Response:
        expect(request.headers.get("Fastly-Key") == FASTLY_KEY, "bad Fastly-Key", 401)
        soft = request.headers.get("Fastly-Soft-Purge")
        expect(soft in (None, "1"), "Fastly-Soft-Purge must be 1")
        ident = f"{uuid.uuid4().int % 10**6}-{int(time.time())}-{uuid.uuid4().int % 10**5}"
        if request.method == "PURGE":
            expect(request.headers.get("Host") == HOST, "PURGE must name the site's host")
            return web.json_response({"status": "ok", "id": ident})
        expect(request.method == "POST", "method must be POST or PURGE")
        if request.path == f"/service/{ZONE}/purge_all":
            expect(soft is None, "purge_all has no soft purge")
            return web.json_response({"status": "ok"})
        expect(request.path == f"/service/{ZONE}/purge", "wrong path", 404)
        keys = request.headers.get("Surrogate-Key", "").split()
        expect(0 < len(keys) <= 256, "1 to 256 surrogate keys a request")
        return web.json_response({k: f"{ident}-{i}" for i, k in enumerate(keys)})

    # Akamai Fast Purge v3: EdgeGrid signed, /ccu/v3/{action}/{type}/{network}, body <= 50 KB.
    def _akamai(self, request: web.Request, seen: Seen) -> web.Response:
        match = re.fullmatch(
            r"/ccu/v3/(invalidate|delete)/(url|cpcode|tag)/(production|staging)", request.path
        )
        expect(request.method == "POST" and match is not None, "not a Fast Purge v3 call", 404)
        expect(len(seen.body) <= 50_000, "body over 50 KB", 413)
        verify_edgegrid(request, seen.body)
        objects = seen.json().get("objects")
        expect(isinstance(objects, list) and objects, "objects must be a non-empty list")
        assert match is not None
        if match.group(2) == "url":
            expect(all(str(o).startswith(f"https://{HOST}/") for o in objects), "urls must be URLs")
        if match.group(2) == "cpcode":
            expect(all(isinstance(o, int) for o in objects), "cpcodes must be numbers")
        return web.json_response(
            {
                "httpStatus": 201,
                "detail": "Request accepted",
                "estimatedSeconds": 5,
                "purgeId": str(uuid.uuid4()),
                "supportId": uuid.uuid4().hex,
            },
            status=201,
        )

    # CloudFront CreateInvalidation: SigV4, XML InvalidationBatch, CallerReference idempotent.
    def _cloudfront(self, request: web.Request, seen: Seen) -> web.Response:
        expect(request.method == "POST", "method must be POST")
        expect(request.path == f"/2020-05-31/distribution/{ZONE}/invalidation", "wrong path", 404)
        verify_sigv4(request, seen.body)
        root = ElementTree.fromstring(seen.body)
        expect(root.tag == f"{CLOUDFRONT_NS}InvalidationBatch", "not an InvalidationBatch")
        paths = [p.text or "" for p in root.iter(f"{CLOUDFRONT_NS}Path")]
        quantity = root.find(f"{CLOUDFRONT_NS}Paths/{CLOUDFRONT_NS}Quantity")
        expect(quantity is not None and int(quantity.text or -1) == len(paths), "bad Quantity")
        expect(0 < len(paths) <= 3000, "1 to 3,000 paths an invalidation")
        expect(sum(p.endswith("*") for p in paths) <= 15, "at most 15 wildcard paths")
        expect(all(p.startswith("/") for p in paths), "paths start with /")
        reference = root.findtext(f"{CLOUDFRONT_NS}CallerReference")
        expect(bool(reference), "CallerReference is required")
        assert reference is not None
        known = self.invalidations.get(reference)
        if known is not None and known[0] != seen.body:
            return _xml_error(409, "InvalidationBatchAlreadyExists")
        ident = known[1] if known else "I" + uuid.uuid4().hex[:13].upper()
        self.invalidations[reference] = (seen.body, ident)
        xml = (
            f'<?xml version="1.0"?><Invalidation xmlns="{CLOUDFRONT_NS[1:-1]}"><Id>{ident}</Id>'
            f"<Status>InProgress</Status></Invalidation>"
        )
        return web.Response(
            status=201,
            body=xml.encode(),
            content_type="text/xml",
            headers={"Location": f"{self.url}/2020-05-31/distribution/{ZONE}/invalidation/{ident}"},
        )

    # Webhook: HMAC-SHA256 over "<t>." + body, JSON with the plan.
    def _webhook(self, request: web.Request, seen: Seen) -> web.Response:
        expect(request.method == "POST", "method must be POST")
        header = request.headers.get("X-Difusor-Signature", "")
        parts = dict(p.split("=", 1) for p in header.split(",") if "=" in p)
        stamp = parts.get("t", "")
        mac = hmac.new(HMAC_KEY.encode(), stamp.encode() + b"." + seen.body, hashlib.sha256)
        expect(hmac.compare_digest(mac.hexdigest(), parts.get("v1", "")), "bad signature", 401)
        expect(abs(time.time() - int(stamp)) < 300, "stale signature", 401)
        body = seen.json()
        for key in ("publication", "cut", "host", "paths", "prefixes", "tags", "everything"):
            expect(key in body, f"missing {key}")
        return web.json_response({"id": uuid.uuid4().hex}, status=202)


class Refused(Exception):
    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def expect(condition: bool, message: str, status: int = 400) -> None:
    if not condition:
        raise Refused(message, status)


def _xml_error(status: int, code: str) -> web.Response:
    body = f"<ErrorResponse><Error><Code>{code}</Code></Error></ErrorResponse>"
    return web.Response(status=status, body=body.encode(), content_type="text/xml")


def verify_edgegrid(request: web.Request, body: bytes) -> None:
    """Recompute the EdgeGrid signature with edgegrid-python from what arrived."""
    header = request.headers.get("Authorization", "")
    expect(header.startswith("EG1-HMAC-SHA256 "), "not EdgeGrid", 401)
    fields = dict(p.split("=", 1) for p in header[len("EG1-HMAC-SHA256 ") :].split(";") if "=" in p)
    expect(fields.get("client_token") == AKAMAI["client_token"], "unknown client token", 401)
    expect(fields.get("access_token") == AKAMAI["access_token"], "unknown access token", 401)
    signer = EdgeGridAuthHeaders(
        AKAMAI["client_token"], AKAMAI["client_secret"], AKAMAI["access_token"]
    )
    url = f"{request.scheme}://{request.headers['Host']}{request.path_qs}"
    again = requests.Request(request.method, url, data=body).prepare()
    expected = signer.make_auth_header(again, fields["timestamp"], fields["nonce"])
    expect(hmac.compare_digest(expected, header), "EdgeGrid signature does not verify", 401)


def sigv4_signature(request: AWSRequest, credentials: Credentials, *, region: str, service: str,
                    timestamp: str) -> str:  # fmt: skip
    """botocore's SigV4 signature of a request at a given X-Amz-Date."""
    signer = SigV4Auth(credentials, service, region)
    request.context["timestamp"] = timestamp
    canonical = signer.canonical_request(request)
    return str(signer.signature(signer.string_to_sign(request, canonical), request))


def verify_sigv4(request: web.Request, body: bytes) -> None:
    """Recompute the SigV4 signature with botocore from the signed headers that arrived."""
    header = request.headers.get("Authorization", "")
    match = re.fullmatch(
        r"AWS4-HMAC-SHA256 Credential=([^/]+)/(\d{8})/([^/]+)/([^/]+)/aws4_request, "
        r"SignedHeaders=([a-z0-9;-]+), Signature=([0-9a-f]{64})",
        header,
    )
    expect(match is not None, "not a SigV4 Authorization", 403)
    assert match is not None
    key, day, region, service, signed, signature = match.groups()
    expect(key == AWS["aws_access_key_id"], "unknown access key", 403)
    expect((region, service) == ("us-east-1", "cloudfront"), "scope must be us-east-1/cloudfront")
    stamp = request.headers.get("X-Amz-Date", "")
    expect(stamp.startswith(day), "X-Amz-Date does not match the credential scope", 403)
    names = signed.split(";")
    expect("host" in names and "x-amz-date" in names, "host and x-amz-date must be signed", 403)
    url = f"{request.scheme}://{request.headers['Host']}{request.path_qs}"
    again = AWSRequest(
        method=request.method,
        url=url,
        data=body,
        headers={n: request.headers[n] for n in names if n != "host"},
    )
    expected = sigv4_signature(
        again,
        Credentials(AWS["aws_access_key_id"], AWS["aws_secret_access_key"]),
        region=region,
        service=service,
        timestamp=stamp,
    )
    expect(hmac.compare_digest(expected, signature), "SigV4 signature does not verify", 403)


@asynccontextmanager
async def serving(fake: Fake) -> AsyncIterator[Fake]:
    """Run a fake on 127.0.0.1 on a port the kernel picks."""
    app = web.Application(client_max_size=1 << 20)
    app.router.add_route("*", "/{tail:.*}", fake.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server = site._server
    assert server is not None
    assert server.sockets
    port = server.sockets[0].getsockname()[1]
    fake.url = f"http://127.0.0.1:{port}"
    try:
        yield fake
    finally:
        await runner.cleanup()


@contextmanager
def serving_in_thread(fake: Fake) -> Iterator[Fake]:
    """Run a fake on its own event loop in a background thread (for tests that are not async)."""
    loop = asyncio.new_event_loop()
    started = threading.Event()
    stop: asyncio.Event | None = None

    async def main() -> None:
        nonlocal stop
        stop = asyncio.Event()
        async with serving(fake):
            started.set()
            await stop.wait()

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    if not started.wait(30):
        raise RuntimeError("the fake did not start")
    try:
        yield fake
    finally:
        assert stop is not None
        loop.call_soon_threadsafe(stop.set)
        thread.join(timeout=30)
        loop.close()
