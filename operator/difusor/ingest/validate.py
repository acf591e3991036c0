"""Validation of an uploaded archive: its name, checksum and every entry, before anything is served."""

from __future__ import annotations

import gzip
import hashlib
import stat
import tarfile
import time
import zipfile
import zlib
from collections.abc import Generator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, cast

from difusor.logic.archive import (
    DELETE_LIST,
    ArchiveFormat,
    EntryTracker,
    Limits,
    ManifestEntry,
    Reason,
    Rejected,
    archive_format,
    member_path,
    parse_quantity,
    strip,
    strip_prefix,
)
from difusor.logic.cuts import CutRef, is_stale, parse_cut
from difusor.models import IngestSpec

CHUNK = 1 << 20
#: Errors of the archive readers that mean a corrupt or truncated archive.
CORRUPT_ERRORS: tuple[type[BaseException], ...] = (
    zipfile.BadZipFile,
    tarfile.TarError,
    zlib.error,
    EOFError,
    gzip.BadGzipFile,
    UnicodeDecodeError,
)
_TAR_END = 2 * tarfile.BLOCKSIZE


@dataclass(frozen=True)
class Upload:
    """An archive whose name, format, checksum and age passed: what its entries are checked against."""

    path: Path
    cut: CutRef
    format: ArchiveFormat
    sha256: str
    size: int


@dataclass(frozen=True)
class Member:
    """A regular file of an archive; `stream` is readable until the next member is taken."""

    path: str
    size: int
    mtime: float
    stream: IO[bytes]


@dataclass(frozen=True)
class Summary:
    """What `difusor cut verify` reports about a valid archive."""

    id: str
    time: datetime | None
    files: int
    bytes: int
    sha256: str


def limits_of(ingest: IngestSpec) -> Limits:
    """The caps of a spec."""
    return Limits(
        max_bytes=parse_quantity(ingest.max_bytes),
        max_files=ingest.max_files,
        max_ratio=ingest.max_compression_ratio,
    )


def sha256_file(path: Path) -> str:
    """SHA-256 of a file, hex."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


@contextmanager
def corrupt_as_rejected(archive: Path) -> Iterator[None]:
    """Turns the readers' errors about a broken archive into a CorruptArchive rejection."""
    try:
        yield
    except CORRUPT_ERRORS as exc:
        raise Rejected(Reason.CORRUPT_ARCHIVE, f"{archive.name}: {exc}") from exc


def check_name(archive: Path, *, ingest: IngestSpec) -> tuple[CutRef, ArchiveFormat]:
    """The cut id (and time) and the format that an archive's name gives; Rejected otherwise."""
    cut = parse_cut(archive.name, pattern=ingest.cut_id_pattern, timezone=ingest.timezone)
    fmt = archive_format(archive.name)
    if fmt is None:
        raise Rejected(Reason.UNSUPPORTED_FORMAT, f"{archive.name} is not .zip, .tar or .tar.gz")
    return cut, fmt


def check_upload(
    archive: Path,
    *,
    ingest: IngestSpec,
    checksum: str | None,
    active: str | None,
    pinned: str | None,
    sha256: str | None = None,
) -> Upload:
    """The checks that need no entry: cut id, format, checksum, and not older than the active cut.

    `sha256` is the archive's digest when it is known already (taken while it arrived).
    """
    cut, fmt = check_name(archive, ingest=ingest)
    if sha256 is None:
        sha256 = sha256_file(archive)
    if checksum is not None and checksum.lower() != sha256:
        raise Rejected(
            Reason.CHECKSUM_MISMATCH, f"{archive.name} has SHA-256 {sha256}, expected {checksum}"
        )
    if is_stale(cut.id, active=active, pinned=pinned):
        raise Rejected(Reason.STALE_CUT, f"cut {cut.id} is older than the active cut {active}")
    return Upload(archive, cut, fmt, sha256, archive.stat().st_size)


def declared_files(upload: Upload, *, limits: Limits) -> list[tuple[str, int]] | None:
    """Paths (top folder stripped) and sizes a zip declares, checked; None for tars (streamed)."""
    if upload.format != "zip":
        return None
    with corrupt_as_rejected(upload.path), zipfile.ZipFile(upload.path) as archive:
        tracker = EntryTracker(limits, archive_size=upload.size)
        files = [(path, info.file_size) for info, path in _zip_entries(archive, tracker)]
    prefix = strip_prefix(path for path, _ in files)
    return [(strip(path, prefix), size) for path, size in files]


def iter_members(upload: Upload, *, limits: Limits) -> Iterator[Member]:
    """Every regular file of the archive, after checking each entry; Rejected on the first fault.

    Paths are normalised but keep any top-level folder (a tar is streamed, so whether one folder
    wraps everything is known only at the end: see `strip_prefix`).
    """
    tracker = EntryTracker(limits, archive_size=upload.size)
    with corrupt_as_rejected(upload.path):
        if upload.format == "zip":
            yield from _zip_members(upload.path, tracker)
        else:
            yield from _tar_members(upload.path, tracker, gzipped=upload.format == "tar.gz")


def verify(
    archive: Path,
    *,
    ingest: IngestSpec,
    checksum: str | None = None,
    active: str | None = None,
    pinned: str | None = None,
) -> Summary:
    """Runs every check on a local archive, reading every byte, without extracting anything."""
    upload = check_upload(archive, ingest=ingest, checksum=checksum, active=active, pinned=pinned)
    limits = limits_of(ingest)
    declared_files(upload, limits=limits)
    paths: list[str] = []
    total = 0
    with corrupt_as_rejected(archive):
        for member in iter_members(upload, limits=limits):
            while chunk := member.stream.read(CHUNK):
                total += len(chunk)
            paths.append(member.path)
    prefix = strip_prefix(paths)
    files = sum(1 for path in paths if strip(path, prefix) != DELETE_LIST)
    return Summary(upload.cut.id, upload.cut.time, files, total, upload.sha256)


def _zip_entries(
    archive: zipfile.ZipFile, tracker: EntryTracker
) -> list[tuple[zipfile.ZipInfo, str]]:
    files = []
    for info in archive.infolist():
        path = member_path(info.filename)
        mode = info.external_attr >> 16 if info.create_system == 3 else 0
        _check_mode(info.filename, mode)
        if info.flag_bits & 0x1:
            raise Rejected(Reason.UNSUPPORTED_FORMAT, f"entry {info.filename!r} is encrypted")
        if info.is_dir() or stat.S_ISDIR(mode):
            tracker.add_dir(path)
        else:
            tracker.add_file(path, info.file_size)
            files.append((info, path))
    return files


def _zip_members(path: Path, tracker: EntryTracker) -> Iterator[Member]:
    with zipfile.ZipFile(path) as archive:
        for info, name in _zip_entries(archive, tracker):
            mtime = time.mktime((*info.date_time, 0, 0, -1))
            with archive.open(info) as stream:
                yield Member(name, info.file_size, mtime, stream)


def _tar_members(path: Path, tracker: EntryTracker, *, gzipped: bool) -> Iterator[Member]:
    with path.open("rb") as raw:
        end = yield from tar_stream_members(raw, tracker, gzipped=gzipped)
        if not gzipped:
            check_tar_end(raw, end, name=path.name)


def tar_stream_members(
    raw: IO[bytes], tracker: EntryTracker, *, gzipped: bool
) -> Generator[Member, None, int]:
    """The members of a tar (gzipped or not) read front to back; returns where the tar ends.

    A tar.gz is read to its end, as the gzip trailer (CRC and length) is what tells a truncated
    one apart; a plain tar's end-of-archive blocks are checked by `check_tar_end`.
    """
    source = cast(IO[bytes], gzip.GzipFile(fileobj=raw, mode="rb") if gzipped else raw)
    with tarfile.open(fileobj=source, mode="r|") as archive:
        for info in archive:
            _check_tar_type(info)
            name = member_path(info.name)
            if info.isdir():
                tracker.add_dir(name)
                continue
            tracker.add_file(name, info.size)
            stream = archive.extractfile(info)
            if stream is None:
                raise Rejected(Reason.SPECIAL_FILE, f"entry {info.name!r} has no content")
            yield Member(name, info.size, float(info.mtime), stream)
        end = archive.offset
    if gzipped:
        while source.read(CHUNK):
            pass
    return end


def check_tar_end(raw: IO[bytes], end: int, *, name: str) -> None:
    """A plain tar must close with its two zero blocks after the last member."""
    raw.seek(end)
    if raw.read(_TAR_END) != bytes(_TAR_END):
        raise Rejected(Reason.CORRUPT_ARCHIVE, f"{name} lacks the end-of-archive blocks")


def _check_tar_type(info: tarfile.TarInfo) -> None:
    if info.issym():
        raise Rejected(Reason.SYMLINK, f"entry {info.name!r} is a symlink to {info.linkname!r}")
    if info.islnk():
        raise Rejected(Reason.HARDLINK, f"entry {info.name!r} is a hard link to {info.linkname!r}")
    if not (info.isreg() or info.isdir()):
        raise Rejected(Reason.SPECIAL_FILE, f"entry {info.name!r} is a device, fifo or other")
    _check_mode(info.name, info.mode)


def _check_mode(name: str, mode: int) -> None:
    if stat.S_ISLNK(mode):
        raise Rejected(Reason.SYMLINK, f"entry {name!r} is a symlink")
    if stat.S_IFMT(mode) not in (0, stat.S_IFREG, stat.S_IFDIR):
        raise Rejected(Reason.SPECIAL_FILE, f"entry {name!r} is a device, fifo or socket")
    if mode & (stat.S_ISUID | stat.S_ISGID):
        raise Rejected(Reason.SETUID_BIT, f"entry {name!r} has the setuid or setgid bit")


def archive_manifest(archive: Path, *, limits: Limits) -> tuple[str, dict[str, ManifestEntry]]:
    """An archive's SHA-256 and its files as the ingest would store them (top folder stripped).

    The same checks as the ingest apply (Rejected on a hostile entry); `.prep-delete` is left
    out, as it is of a stored version. Any name will do: the cut id is not needed here.
    """
    fmt = archive_format(archive.name)
    if fmt is None:
        raise Rejected(Reason.UNSUPPORTED_FORMAT, f"{archive.name} is not .zip, .tar or .tar.gz")
    upload = Upload(archive, CutRef(archive.name, None), fmt, "", archive.stat().st_size)
    found: dict[str, ManifestEntry] = {}
    for member in iter_members(upload, limits=limits):
        digest = hashlib.sha256()
        size = 0
        while chunk := member.stream.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
        found[member.path] = ManifestEntry(member.path, size, digest.hexdigest())
    prefix = strip_prefix(found)
    files = {
        strip(p, prefix): ManifestEntry(strip(p, prefix), e.size, e.sha256)
        for p, e in found.items()
    }
    files.pop(DELETE_LIST, None)
    return sha256_file(archive), files
