"""Which uploads in incoming/ are complete, from a listing: the completion rule is pure."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from difusor.logic.archive import archive_format
from difusor.models import Completion, IngestSpec

#: The checksum companion of ARCHIVE is ARCHIVE + this suffix, in sha256sum format.
CHECKSUM_SUFFIX = ".sha256"
#: Temporary names that the usual clients (OpenSSH, WinSCP, FileZilla, lftp) write to.
TEMPORARY_SUFFIXES = (".part", ".tmp", ".filepart", ".partial", ".temp", ".uploading")


@dataclass(frozen=True)
class Listed:
    """One file in incoming/: its name, size and modification time (epoch seconds)."""

    name: str
    size: int
    mtime: float


@dataclass(frozen=True)
class ReadyUpload:
    """A complete upload: the archive and its checksum companion, if one came."""

    archive: str
    checksum_file: str | None


@dataclass(frozen=True)
class Decision:
    """What to do with incoming/: start on the ready uploads, delete the expired leftovers."""

    ready: list[ReadyUpload] = field(default_factory=list)
    expired: list[str] = field(default_factory=list)


def is_temporary(name: str) -> bool:
    """Whether a name is one a client writes to before renaming to the final name."""
    return name.startswith(".") or name.lower().endswith(TEMPORARY_SUFFIXES)


def final_name(name: str) -> str:
    """The name an upload will have once complete: without the client's temporary marks."""
    stem = name.lstrip(".")
    lower = stem.lower()
    for suffix in TEMPORARY_SUFFIXES:
        if lower.endswith(suffix):
            return stem[: -len(suffix)]
    return stem


def decide(
    listing: Sequence[Listed],
    *,
    ingest: IngestSpec,
    now: float,
    previous: Mapping[str, Listed] | None = None,
) -> Decision:
    """The uploads complete under `ingest.completion` and the partial files past their TTL.

    rename: a final archive name is complete (clients rename only when done).
    checksumFile: complete once ARCHIVE.sha256 has arrived too (its content is checked later).
    quiet: complete when size and mtime were the same in the previous listing and the file has
    not changed for quietSeconds; a file seen for the first time is never complete, so a client
    that sets an old mtime on a file still growing cannot fool it.
    """
    names = {entry.name: entry for entry in listing}
    ready: list[ReadyUpload] = []
    claimed: set[str] = set()
    for entry in sorted(listing, key=lambda e: e.name):
        if is_temporary(entry.name) or archive_format(entry.name) is None:
            continue
        companion = entry.name + CHECKSUM_SUFFIX
        checksum = companion if companion in names else None
        if _complete(entry, ingest=ingest, now=now, previous=previous, checksum=checksum):
            ready.append(ReadyUpload(entry.name, checksum))
            claimed.update({entry.name, companion})
    expired = [
        entry.name
        for entry in listing
        if entry.name not in claimed and now - entry.mtime > ingest.partial_ttl_seconds
    ]
    return Decision(ready=ready, expired=sorted(expired))


def _complete(
    entry: Listed,
    *,
    ingest: IngestSpec,
    now: float,
    previous: Mapping[str, Listed] | None,
    checksum: str | None,
) -> bool:
    if ingest.completion is Completion.RENAME:
        return True
    if ingest.completion is Completion.CHECKSUM_FILE:
        return checksum is not None
    seen = (previous or {}).get(entry.name)
    return seen == entry and now - entry.mtime >= ingest.quiet_seconds
