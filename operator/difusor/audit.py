"""`difusor audit`: download a site over HTTP as a reader would and check it against its manifest."""

from __future__ import annotations

import gzip
import hashlib
import http.client
import json
import re
import threading
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, urlsplit

from difusor.ingest.validate import archive_manifest, limits_of
from difusor.logic.archive import Rejected
from difusor.logic.audit import (
    Difference,
    Published,
    Served,
    compare_archive,
    compare_served,
    published,
    verdict,
)
from difusor.models import IngestSpec
from difusor.render.nginx import INTEGRITY_PATH, INTERNAL_PATH_REGEX

#: Answers that a reader would wait out and retry (rate limit, a pod leaving rotation).
RETRY_STATUSES = frozenset({429, 502, 503, 504})
#: Times one file is asked for before its last answer counts.
ATTEMPTS = 8
#: Times the whole audit starts over when the site promotes a new cut while it runs.
RESTARTS = 3
USER_AGENT = "difusor-audit/1 (+https://github.com/difusor/difusor)"


class AuditError(Exception):
    """The site could not be audited at all (no manifest, a bad one, unreachable)."""


@dataclass
class Traffic:
    """What the audit downloaded: requests, bytes on the wire (bodies) and bytes once decoded."""

    requests: int = 0
    wire_bytes: int = 0
    content_bytes: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, *, wire: int, content: int) -> None:
        """Count one response."""
        with self.lock:
            self.requests += 1
            self.wire_bytes += wire
            self.content_bytes += content


@dataclass(frozen=True)
class Report:
    """The outcome of an audit."""

    manifest: Published
    differences: list[Difference]
    verdict: str
    skipped: list[str]
    requests: int
    wire_bytes: int
    content_bytes: int
    seconds: float
    restarts: int

    @property
    def ok(self) -> bool:
        """No difference at all."""
        return not self.differences

    def figures(self) -> dict[str, object]:
        """The figures of the download, as JSON."""
        return {
            "cut": self.manifest.cut,
            "files": len(self.manifest.entries),
            "requests": self.requests,
            "wireBytes": self.wire_bytes,
            "contentBytes": self.content_bytes,
            "seconds": round(self.seconds, 3),
            "differences": len(self.differences),
            "restarts": self.restarts,
        }


class Client:
    """One keep-alive connection per thread to the site, with a reader's headers.

    A 429 or 503 holds back every thread for its Retry-After, not just the one that got it:
    the per-client limit counts them all.
    """

    def __init__(self, base: str, *, timeout: float, traffic: Traffic) -> None:
        parts = urlsplit(base)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise AuditError(f"{base} is not an http:// or https:// URL")
        self.scheme = parts.scheme
        self.netloc = parts.netloc
        self.prefix = parts.path.rstrip("/")
        self.timeout = timeout
        self.traffic = traffic
        self.local = threading.local()
        self.hold_lock = threading.Lock()
        self.hold_until = 0.0

    def _connection(self) -> http.client.HTTPConnection:
        conn: http.client.HTTPConnection | None = getattr(self.local, "conn", None)
        if conn is None:
            kind = (
                http.client.HTTPSConnection
                if self.scheme == "https"
                else http.client.HTTPConnection
            )
            conn = kind(self.netloc, timeout=self.timeout)
            self.local.conn = conn
        return conn

    def get(self, path: str) -> tuple[int, dict[str, str], bytes]:
        """GET a path of the site, retrying what a reader would wait out."""
        target = self.prefix + quote(path, safe="/~!$&'()*+,;=:@-._")
        status, headers, body = 0, dict[str, str](), b""
        for attempt in range(ATTEMPTS):
            with self.hold_lock:
                wait = self.hold_until - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            status, headers, body = self._once(target)
            if status not in RETRY_STATUSES or attempt == ATTEMPTS - 1:
                break
            pause = _retry_after(headers.get("retry-after"), attempt)
            with self.hold_lock:
                self.hold_until = max(self.hold_until, time.monotonic() + pause)
        return status, headers, body

    def _once(self, target: str) -> tuple[int, dict[str, str], bytes]:
        for fresh in (False, True):
            conn = self._connection()
            try:
                conn.request(
                    "GET",
                    target,
                    headers={"Accept-Encoding": "gzip", "User-Agent": USER_AGENT},
                )
                resp = conn.getresponse()
                raw = resp.read()
            except (http.client.HTTPException, OSError) as exc:
                conn.close()
                self.local.conn = None
                if fresh:
                    raise AuditError(f"GET {target} on {self.netloc} failed: {exc}") from exc
                continue
            headers = {k.lower(): v for k, v in resp.getheaders()}
            body = gzip.decompress(raw) if headers.get("content-encoding") == "gzip" else raw
            self.traffic.add(wire=len(raw), content=len(body))
            if headers.get("connection", "").lower() == "close":
                conn.close()
                self.local.conn = None
            return resp.status, headers, body
        raise AssertionError("unreachable")


def _retry_after(value: str | None, attempt: int) -> float:
    try:
        return min(max(float(value or ""), 0.1), 10.0)
    except ValueError:
        return min(0.2 * float(1 << attempt), 5.0)


def unpublished(paths: Iterable[str]) -> list[str]:
    """Paths of a manifest that the site never serves by design (dotfiles, reserved folders)."""
    internal = re.compile(INTERNAL_PATH_REGEX)
    return [p for p in paths if internal.search("/" + p)]


def _manifest(client: Client) -> Published:
    status, _, body = client.get(INTEGRITY_PATH)
    if status != 200:
        raise AuditError(f"{INTEGRITY_PATH} answered HTTP {status}: the site publishes no manifest")
    try:
        return published(json.loads(body))
    except (ValueError, KeyError, TypeError) as exc:
        raise AuditError(f"{INTEGRITY_PATH} is not a valid manifest: {exc}") from exc


def fetch_all(client: Client, paths: list[str], *, concurrency: int) -> dict[str, Served]:
    """GET every path (relative to the site's root) over `concurrency` connections."""

    def one(path: str) -> tuple[str, Served]:
        status, headers, body = client.get("/" + path)
        served = Served(
            status, len(body), hashlib.sha256(body).hexdigest(), headers.get("x-prep-cut")
        )
        return path, served

    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        return dict(pool.map(one, paths))


def audit(
    url: str,
    *,
    archive: Path | None = None,
    concurrency: int = 4,
    timeout: float = 30.0,
) -> Report:
    """Fetch the manifest and every file it lists; compare; with the archive, compare it too."""
    traffic = Traffic()
    client = Client(url, timeout=timeout, traffic=traffic)
    restarts = 0
    started = time.monotonic()
    while True:
        manifest = _manifest(client)
        skipped = unpublished(e.path for e in manifest.entries)
        wanted = sorted({e.path for e in manifest.entries} - set(skipped))
        served = fetch_all(client, wanted, concurrency=concurrency)
        differences = compare_served(manifest, served, skipped=set(skipped))
        moved = any(s.cut != manifest.cut for s in served.values() if s.status == 200)
        if not moved or restarts >= RESTARTS or _manifest(client).cut == manifest.cut:
            break
        # The site promoted a newer cut mid-audit: audit that one whole instead.
        restarts += 1
    if archive is not None:
        try:
            sha256, files = archive_manifest(archive, limits=limits_of(IngestSpec()))
        except Rejected as rejected:
            raise AuditError(f"{archive.name} cannot be read: {rejected}") from rejected
        differences += compare_archive(
            manifest, archive_name=archive.name, archive_sha256=sha256, files=files
        )
    seconds = time.monotonic() - started
    return Report(
        manifest=manifest,
        differences=differences,
        verdict=verdict(manifest, differences, archive=archive is not None, skipped=len(skipped)),
        skipped=skipped,
        requests=traffic.requests,
        wire_bytes=traffic.wire_bytes,
        content_bytes=traffic.content_bytes,
        seconds=seconds,
        restarts=restarts,
    )
