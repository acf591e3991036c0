"""Copying a version between pods: a peer serves its manifest and a tar of the files asked for.

A pod that lacks a cut asks a peer that has it for the manifest, hard-links every file it already
holds with the same content (from any local version), and fetches only the rest as tar streams,
split between the peers that have the cut so that several send at once; a peer sends file data
with sendfile(2), without copying it through Python. Every fetched file is hashed while it is
written and must match the manifest, and the manifest's digest must match the one recorded on
the PrepCut when the cut was verified: a peer can make a pod fetch again, never serve something
else.
"""

from __future__ import annotations

import hashlib
import http.client
import io
import json
import os
import socket
import stat
import tarfile
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

from difusor.ingest.store import Store, fsync_dir, remove, start_writeback, syncfs, write_json
from difusor.logic.archive import META_DIR, ManifestEntry, manifest_entries, member_path
from difusor.logic.cuts import WORK_SUFFIX

CHUNK = 1 << 20
TIMEOUT = 60.0
#: A peer that does not accept within this is gone (an IP of a pod replaced since): the next
#: peer is asked. Covers two SYN retransmissions (1 s and 3 s).
CONNECT_TIMEOUT = 5.0
#: At most this many peers send parts of one version at once.
MAX_SENDERS = 3
#: Below this many bytes to fetch, one peer sends everything (a split would cost more than it saves).
SPLIT_ABOVE = 4 << 20


class PeerError(Exception):
    """A peer could not give a verified copy of a version."""


def manifest_payload(store: Store, cut: str) -> bytes:
    """What GET /v1/versions/<cut>/manifest answers: the manifest and the cut record.

    The files' bytes as they are (both are JSON the agent wrote): every other pod asks for them
    at once from the pod that received the cut, so they are not parsed and written again.
    """
    meta = store.versions / cut / META_DIR
    document = (meta / "manifest.json").read_bytes()
    record = (meta / "cut.json").read_bytes()
    return b'{"manifest": ' + document + b', "cut": ' + record + b"}"


def write_bundle(
    store: Store,
    cut: str,
    paths: Iterable[str],
    out: IO[bytes] | io.BufferedIOBase,
    *,
    sock: socket.socket | None = None,
) -> int:
    """A tar stream of the named files of a version onto `out`; returns the number of files.

    With `sock` (the socket under `out`), file data goes from the page cache to the socket by
    sendfile(2); headers and padding are written through `out`.
    """
    root = store.versions / cut
    count = 0
    for path in paths:
        clean = member_path(path)
        source = root / clean
        fd = os.open(source, os.O_RDONLY | os.O_NOFOLLOW)
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise FileNotFoundError(f"{clean} is not a file of version {cut}")
            header = tarfile.TarInfo(clean)
            header.size = info.st_size
            header.mtime = int(info.st_mtime)
            header.mode = 0o644
            out.write(header.tobuf(format=tarfile.PAX_FORMAT))
            _send_file(fd, info.st_size, out, sock)
            out.write(bytes(-info.st_size % tarfile.BLOCKSIZE))
        finally:
            os.close(fd)
        count += 1
    out.write(bytes(2 * tarfile.BLOCKSIZE))
    out.flush()
    return count


def _send_file(
    fd: int, size: int, out: IO[bytes] | io.BufferedIOBase, sock: socket.socket | None
) -> None:
    if sock is None:
        offset = 0
        while offset < size:
            data = os.pread(fd, min(CHUNK, size - offset), offset)
            if not data:
                raise FileNotFoundError("a file of the version shrank while it was sent")
            out.write(data)
            offset += len(data)
        return
    out.flush()
    # socket.sendfile loops over os.sendfile (and waits on a socket with a timeout).
    with os.fdopen(os.dup(fd), "rb") as stream:
        if sock.sendfile(stream, offset=0, count=size) != size:
            raise FileNotFoundError("a file of the version shrank while it was sent")


class _Request:
    def __init__(self, base: str, token: str) -> None:
        parts = urlsplit(base)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 8081
        self.token = token

    def open(self, method: str, path: str, body: bytes | None = None) -> http.client.HTTPResponse:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=CONNECT_TIMEOUT)
        conn.connect()
        assert conn.sock is not None
        conn.sock.settimeout(TIMEOUT)
        headers = {"Authorization": f"Bearer {self.token}"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        if resp.status != 200:
            detail = resp.read(512).decode(errors="replace")
            conn.close()
            raise PeerError(
                f"{method} {path} on {self.host}:{self.port} answered {resp.status}: {detail}"
            )
        return resp


#: Manifests of local versions already read and verified, by path, with the file's identity.
_MANIFESTS: dict[str, tuple[tuple[int, int, int], list[ManifestEntry]]] = {}


def _manifest(store: Store, cut: str) -> list[ManifestEntry]:
    """A local version's manifest; read and verified again only when its file was replaced.

    The store writes a manifest once, to a new file renamed into place, and never edits one.
    """
    path, key = _manifest_file(store, cut)
    cached = _MANIFESTS.get(path)
    if cached is not None and cached[0] == key:
        return cached[1]
    entries = store.manifest(cut)
    _MANIFESTS[path] = (key, entries)
    return entries


def _remember_manifest(store: Store, cut: str, entries: list[ManifestEntry]) -> None:
    """Keep the manifest of a version just fetched, whose digest was checked on arrival: the
    next fetch's index would otherwise read and verify it again."""
    path, key = _manifest_file(store, cut)
    _MANIFESTS[path] = (key, entries)


def _manifest_file(store: Store, cut: str) -> tuple[str, tuple[int, int, int]]:
    """A local version's manifest.json and the identity its cached copy is kept under."""
    path = str(store.versions / cut / META_DIR / "manifest.json")
    info = os.stat(path)
    return path, (info.st_ino, info.st_size, info.st_mtime_ns)


def _local_index(store: Store) -> dict[tuple[str, int], str]:
    """Every file of every complete local version by content, the active version's first."""
    index: dict[tuple[str, int], str] = {}
    active = store.active_cut()
    cuts = store.cuts()
    ordered = sorted(cuts, key=lambda c: c != active)
    for cut in ordered:
        try:
            entries = _manifest(store, cut)
        except (OSError, ValueError):
            continue
        root = f"{store.versions / cut}/"
        for entry in entries:
            index.setdefault((entry.sha256, entry.size), root + entry.path)
    # Forget the manifests of versions pruned since.
    present = {str(store.versions / cut / META_DIR / "manifest.json") for cut in cuts}
    for path in [p for p in _MANIFESTS if p.startswith(f"{store.versions}/") and p not in present]:
        del _MANIFESTS[path]
    return index


def fetch_version(
    store: Store,
    *,
    cut: str,
    peer: str,
    token: str,
    expected_digest: str | None,
    helpers: Sequence[str] | Callable[[], Sequence[str]] = (),
) -> dict[str, int]:
    """Install versions/<cut>/ from a peer; returns the files linked and fetched, bytes fetched
    and the milliseconds the flush to disk took.

    The manifest comes from `peer`; the files to fetch are split by size between `peer` and up
    to MAX_SENDERS - 1 `helpers` (other peers that have the cut), which send at once. Given as a
    function, the helpers are looked up only when there is enough to fetch to split.
    """
    final = store.versions / cut
    if final.exists():
        return {"linked": 0, "fetched": 0, "bytes": 0, "sync_ms": 0}
    request = _Request(peer, token)
    with request.open("GET", f"/v1/versions/{cut}/manifest") as resp:
        payload: dict[str, Any] = json.loads(resp.read())
    document, record = payload["manifest"], payload["cut"]
    try:
        entries = manifest_entries(document)
    except (KeyError, TypeError, ValueError) as exc:
        raise PeerError(f"peer {peer} sent a bad manifest for {cut}: {exc}") from exc
    if expected_digest and document.get("digest") != expected_digest:
        raise PeerError(
            f"peer {peer} has {cut} with digest {document.get('digest')}, expected {expected_digest}"
        )
    work = store.versions / f"{cut}{WORK_SUFFIX}"
    remove(work)
    work.mkdir(parents=True)
    try:
        linked, needed = _link_known(entries, work, _local_index(store))
        total = sum(e.size for e in needed.values())
        senders = [request]
        if total > SPLIT_ABOVE:
            others = helpers() if callable(helpers) else helpers
            senders += [_Request(h, token) for h in others[: MAX_SENDERS - 1]]
        parts = [p for p in _split(needed, len(senders)) if p]
        if parts:
            with ThreadPoolExecutor(max_workers=len(parts)) as pool:
                for done in pool.map(
                    _fetch_part, senders, [cut] * len(parts), parts, [work] * len(parts)
                ):
                    del done
        meta = work / META_DIR
        meta.mkdir(exist_ok=True)
        write_json(meta / "manifest.json", document)
        write_json(meta / "cut.json", {**record, "fetchedFrom": peer})
        synced = time.monotonic()
        syncfs(store.versions)
        synced = time.monotonic() - synced
        os.rename(work, final)
        fsync_dir(store.versions)
    except BaseException:
        remove(work)
        raise
    _remember_manifest(store, cut, entries)
    return {
        "linked": linked,
        "fetched": len(entries) - linked,
        "bytes": total,
        "sync_ms": round(synced * 1000),
    }


def _split(needed: dict[str, ManifestEntry], ways: int) -> list[dict[str, ManifestEntry]]:
    """The files to fetch in `ways` parts of about the same size (largest first, to the lightest)."""
    parts: list[dict[str, ManifestEntry]] = [{} for _ in range(ways)]
    loads = [0] * ways
    for entry in sorted(needed.values(), key=lambda e: e.size, reverse=True):
        lightest = loads.index(min(loads))
        parts[lightest][entry.path] = entry
        loads[lightest] += entry.size
    return parts


def _fetch_part(request: _Request, cut: str, part: dict[str, ManifestEntry], work: Path) -> None:
    body = json.dumps({"paths": sorted(part)}).encode()
    with request.open("POST", f"/v1/versions/{cut}/bundle", body) as resp:
        _receive(resp, work, part)


def _link_known(
    entries: list[ManifestEntry], work: Path, index: dict[tuple[str, int], str]
) -> tuple[int, dict[str, ManifestEntry]]:
    needed: dict[str, ManifestEntry] = {}
    linked = 0
    made: set[str] = set()
    root = f"{work}/"
    for entry in entries:
        parent = entry.path.rpartition("/")[0]
        if parent not in made:
            os.makedirs(root + parent, exist_ok=True)
            made.add(parent)
        known = index.get((entry.sha256, entry.size))
        if known is not None:
            try:
                os.link(known, root + entry.path)
                linked += 1
                continue
            except OSError:
                pass
        needed[entry.path] = entry
    return linked, needed


def _receive(stream: IO[bytes], work: Path, needed: dict[str, ManifestEntry]) -> None:
    missing = dict(needed)
    with tarfile.open(fileobj=stream, mode="r|") as tar:
        for info in tar:
            path = member_path(info.name)
            entry = missing.pop(path, None)
            if entry is None or not info.isreg():
                raise PeerError(f"peer sent {info.name!r}, which was not asked for")
            source = tar.extractfile(info)
            assert source is not None
            target = work / path
            digest = hashlib.sha256()
            size = 0
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
            with os.fdopen(fd, "wb") as out:
                while chunk := source.read(CHUNK):
                    digest.update(chunk)
                    out.write(chunk)
                    size += len(chunk)
                out.flush()
                start_writeback(out.fileno())
            if digest.hexdigest() != entry.sha256 or size != entry.size:
                raise PeerError(f"peer sent {path} with other content than its manifest says")
            os.utime(target, (info.mtime, info.mtime))
    if missing:
        raise PeerError(f"peer did not send {len(missing)} files, such as {next(iter(missing))}")


def repair_files(
    store: Store, *, cut: str, peer: str, token: str, entries: list[ManifestEntry]
) -> int:
    """Replace files of versions/<cut> with verified copies from a peer; returns how many.

    Each copy is hashed against the manifest as it arrives, then renamed over the damaged file
    (readers see the old file or the new, never half of one). Other versions that hard-link the
    damaged inode keep it: only the served version is repaired here, the others when served.
    """
    if not entries:
        return 0
    work = store.versions / f".{cut}.repair{WORK_SUFFIX}"
    remove(work)
    needed = {entry.path: entry for entry in entries}
    for path in needed:
        (work / path).parent.mkdir(parents=True, exist_ok=True)
    try:
        body = json.dumps({"paths": sorted(needed)}).encode()
        with _Request(peer, token).open("POST", f"/v1/versions/{cut}/bundle", body) as resp:
            _receive(resp, work, needed)
        for path in needed:
            os.replace(work / path, store.versions / cut / path)
        syncfs(store.versions)
    finally:
        remove(work)
    return len(needed)
