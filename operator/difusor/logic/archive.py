"""Pure checks over archive contents: entry paths, caps, reasons, manifests and the disk reserve."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

ArchiveFormat = Literal["zip", "tar", "tar.gz"]

#: Suffixes of the archives that the ingest accepts, longest first.
ARCHIVE_SUFFIXES: tuple[tuple[str, ArchiveFormat], ...] = (
    (".tar.gz", "tar.gz"),
    (".tgz", "tar.gz"),
    (".tar", "tar"),
    (".zip", "zip"),
)
#: Directory of each version that holds difusor's own files (manifest, cut record).
META_DIR = ".prep"
#: File at the root of an overlay archive listing the paths to delete, one a line.
DELETE_LIST = ".prep-delete"

_UNITS = {
    "": 1,
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "P": 10**15,
    "E": 10**18,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "Pi": 2**50,
    "Ei": 2**60,
}
_QUANTITY = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$")
_DRIVE = re.compile(r"^[A-Za-z]:")
_SHA256_LINE = re.compile(r"^([0-9a-fA-F]{64})[ \t]+\*?(.+?)\s*$")


class Reason(StrEnum):
    """Stable codes of why an upload was rejected (PrepCut status.reason, quarantine files)."""

    ABSOLUTE_PATH = "AbsolutePath"
    PATH_TRAVERSAL = "PathTraversal"
    RESERVED_PATH = "ReservedPath"
    SYMLINK = "Symlink"
    HARDLINK = "Hardlink"
    SPECIAL_FILE = "SpecialFile"
    SETUID_BIT = "SetuidBit"
    DUPLICATE_ENTRY = "DuplicateEntry"
    COMPRESSION_BOMB = "CompressionBomb"
    TOO_MANY_FILES = "TooManyFiles"
    TOO_LARGE = "TooLarge"
    CORRUPT_ARCHIVE = "CorruptArchive"
    UNSUPPORTED_FORMAT = "UnsupportedFormat"
    CHECKSUM_MISMATCH = "ChecksumMismatch"
    BAD_CUT_ID = "BadCutId"
    STALE_CUT = "StaleCut"
    CONFLICT = "Conflict"
    DISK_RESERVE = "DiskReserve"
    WINDOW_CLOSED = "WindowClosed"


class Rejected(Exception):
    """An upload that must not be served, with the stable reason code and a readable message."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class Limits:
    """Caps that one cut must stay within."""

    max_bytes: int
    max_files: int
    max_ratio: int


@dataclass(frozen=True)
class ManifestEntry:
    """One file of a version: its path relative to the version root, size and SHA-256."""

    path: str
    size: int
    sha256: str


def parse_quantity(value: str) -> int:
    """A Kubernetes quantity such as 20Gi or 500M, in bytes."""
    match = _QUANTITY.match(value)
    if not match:
        raise ValueError(f"{value!r} is not a quantity such as 20Gi")
    return int(float(match.group(1)) * _UNITS[match.group(2) or ""])


def archive_format(name: str) -> ArchiveFormat | None:
    """The format of an archive from its file name, or None when it is not one we accept."""
    lower = name.lower()
    for suffix, fmt in ARCHIVE_SUFFIXES:
        if lower.endswith(suffix) and len(lower) > len(suffix):
            return fmt
    return None


def member_path(name: str) -> str:
    """The normalised relative path of an archive entry; Rejected when it could leave the root."""
    if "\x00" in name or any(ord(c) < 0x20 for c in name):
        raise Rejected(Reason.PATH_TRAVERSAL, f"entry {name!r} has control characters")
    if name.startswith(("/", "\\")) or _DRIVE.match(name):
        raise Rejected(Reason.ABSOLUTE_PATH, f"entry {name!r} is an absolute path")
    if "\\" in name:
        # A backslash is a separator for the Windows tools that build some packages.
        raise Rejected(Reason.PATH_TRAVERSAL, f"entry {name!r} has a backslash")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise Rejected(Reason.PATH_TRAVERSAL, f"entry {name!r} has a '..' component")
    if META_DIR in parts:
        raise Rejected(Reason.RESERVED_PATH, f"entry {name!r} uses the reserved name {META_DIR}")
    return "/".join(parts)


def strip_prefix(paths: Iterable[str]) -> str | None:
    """The single top-level folder that every path lies under, if there is one, to strip."""
    top: str | None = None
    for path in paths:
        head, sep, _ = path.partition("/")
        if not sep or (top is not None and head != top):
            return None
        top = head
    return top


def strip(path: str, prefix: str | None) -> str:
    """A path with its top-level folder removed."""
    return path if prefix is None else path[len(prefix) + 1 :]


class EntryTracker:
    """Tracks the entries seen so far to refuse duplicates and enforce the caps as they stream."""

    def __init__(self, limits: Limits, *, archive_size: int) -> None:
        self.limits = limits
        self.archive_size = max(archive_size, 1)
        self.files: set[str] = set()
        self.dirs: set[str] = set()
        self.bytes = 0

    def add_dir(self, path: str) -> None:
        """Records a directory entry (repeating a directory is harmless)."""
        if path in self.files:
            raise Rejected(Reason.DUPLICATE_ENTRY, f"{path} is both a file and a directory")
        self._parents(path)
        self.dirs.add(path)

    def add_file(self, path: str, size: int) -> None:
        """Records a file entry of the declared size; Rejected on a duplicate or a broken cap."""
        if not path:
            raise Rejected(Reason.PATH_TRAVERSAL, "an entry names the archive root")
        if path in self.files or path in self.dirs:
            raise Rejected(Reason.DUPLICATE_ENTRY, f"{path} appears more than once")
        self._parents(path)
        self.files.add(path)
        if len(self.files) > self.limits.max_files:
            raise Rejected(
                Reason.TOO_MANY_FILES, f"more than {self.limits.max_files} files in the archive"
            )
        self.add_bytes(size)

    def add_bytes(self, size: int) -> None:
        """Counts uncompressed bytes against the size cap and the compression ratio."""
        self.bytes += size
        if self.bytes > self.limits.max_bytes:
            raise Rejected(
                Reason.TOO_LARGE, f"more than {self.limits.max_bytes} bytes once uncompressed"
            )
        if self.bytes > self.limits.max_ratio * self.archive_size:
            raise Rejected(
                Reason.COMPRESSION_BOMB,
                f"{self.bytes} bytes from a {self.archive_size}-byte archive exceeds the "
                f"ratio {self.limits.max_ratio}",
            )

    def _parents(self, path: str) -> None:
        parts = path.split("/")
        for i in range(1, len(parts)):
            parent = "/".join(parts[:i])
            if parent in self.files:
                raise Rejected(Reason.DUPLICATE_ENTRY, f"{parent} is both a file and a directory")
            self.dirs.add(parent)


def parse_checksum(text: str, archive_name: str) -> str | None:
    """The SHA-256 for archive_name in a sha256sum file, or None while no line names it whole."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in lines:
        match = _SHA256_LINE.match(line)
        if match and match.group(2).rsplit("/", 1)[-1] == archive_name:
            return match.group(1).lower()
    if len(lines) == 1 and re.fullmatch(r"[0-9a-fA-F]{64}", lines[0]):
        return lines[0].lower()
    return None


#: How json.dumps(..., ensure_ascii=False) writes a string (the C function when there is one).
_json_string = json.encoder.encode_basestring


def canonical_manifest(entries: Iterable[ManifestEntry]) -> bytes:
    """The bytes over which a manifest digest is taken: JSON lines sorted by path.

    Each line is what `json.dumps({"path", "sha256", "size"}, sort_keys=True,
    separators=(",", ":"), ensure_ascii=False)` writes, put together from its parts: a call of
    json.dumps per file built an encoder each time, a millisecond and a half per 500 files,
    taken twice on every pod that fetches a version (the manifest received, then as a local one).
    """
    return "".join(
        f'{{"path":{_json_string(e.path)},"sha256":{_json_string(e.sha256)},"size":{int(e.size)}}}\n'
        for e in sorted(entries, key=lambda e: e.path)
    ).encode()


def manifest_digest(entries: Iterable[ManifestEntry]) -> str:
    """`sha256:<hex>` over the canonical manifest: equal digests mean byte-identical versions."""
    return "sha256:" + hashlib.sha256(canonical_manifest(entries)).hexdigest()


def manifest_document(
    cut_id: str,
    entries: Sequence[ManifestEntry],
    *,
    source: Mapping[str, object] | None = None,
) -> dict[str, object]:
    """The manifest.json of a version; `source` says what it was built from (archive, SHA-256).

    The digest covers the files only; the site serves this document as the public proof of
    what it serves (/.well-known/prep-difusor/manifest.json).
    """
    ordered = sorted(entries, key=lambda e: e.path)
    return {
        "cut": cut_id,
        **(source or {}),
        "digest": manifest_digest(ordered),
        "files": [{"path": e.path, "size": e.size, "sha256": e.sha256} for e in ordered],
    }


def manifest_entries(document: Mapping[str, object]) -> list[ManifestEntry]:
    """The entries of a manifest.json; ValueError when its digest does not match its files."""
    files = document.get("files")
    if not isinstance(files, list):
        raise ValueError("manifest has no file list")
    entries = [ManifestEntry(str(f["path"]), int(f["size"]), str(f["sha256"])) for f in files]
    if manifest_digest(entries) != document.get("digest"):
        raise ValueError("manifest digest does not match its files")
    return entries


def new_bytes_estimate(
    entries: Iterable[tuple[str, int]], active: Mapping[str, ManifestEntry]
) -> int:
    """Bytes a cut will add beside the active version: files whose path and size are new."""
    return sum(
        size for path, size in entries if (known := active.get(path)) is None or known.size != size
    )


def breaches_reserve(*, total: int, free: int, needed: int, reserve_percent: int) -> bool:
    """Whether writing `needed` more bytes would leave less free space than the reserve."""
    return free - needed < total * reserve_percent / 100
