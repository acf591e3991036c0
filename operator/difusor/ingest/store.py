"""The per-pod content store: versions/<cut>/ with manifests, `current`, quarantine and recovery.

Layout of the content volume (ROOT is /srv/prep in the pod):
    incoming/            uploads land here (the sftp container writes it)
    versions/<cut>/      one immutable directory per cut, with .prep/manifest.json and .prep/cut.json
    versions/*.partial   work in progress; removed on start (crash recovery)
    current -> versions/<cut>   what nginx serves, swapped with symlink + rename(2)
    quarantine/          rejected archives, each with ARCHIVE.reason.json

Versions are never modified once renamed into place: files unchanged from the active version are
hard links to it, so a cut costs only what changed, and a new file is always a new inode. New
files keep the time they were written, not the archive's: nginx's ETag is size and mtime, and
an archive time could give changed content the ETag of the old file (a stale 304).

Overlay packages: the archive's files replace or add to the active version's; a file
`.prep-delete` at the archive root lists, one a line, paths (files or whole folders) of the
active version to drop. Deletions apply first, then the archive's files.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import json
import os
import shutil
import threading
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import BinaryIO

from difusor.ingest.stream import Prefetch, Prepared, confirmed
from difusor.ingest.validate import (
    CHUNK,
    Member,
    Upload,
    check_name,
    check_upload,
    corrupt_as_rejected,
    declared_files,
    iter_members,
    limits_of,
    sha256_file,
)
from difusor.logic.archive import (
    DELETE_LIST,
    META_DIR,
    ManifestEntry,
    Reason,
    Rejected,
    archive_format,
    breaches_reserve,
    manifest_document,
    manifest_entries,
    member_path,
    new_bytes_estimate,
    strip,
    strip_prefix,
)
from difusor.logic.completion import final_name
from difusor.logic.cuts import WORK_SUFFIX, is_stale, versions_to_prune
from difusor.models import IngestMode, IngestSpec
from difusor.render.nginx import SWAP_COUNTER

#: Files up to this size are read whole, so an unchanged one is linked without being written.
SMALL_FILE = 1 << 20
#: Stored archives from this size on are removed by a thread of their own (Store._discard).
FREED_APART = 64 << 20

Hook = Callable[[str], None]
"""Called with the name of each step of an ingest as it completes (tests stop the process there)."""

_libc = ctypes.CDLL(None, use_errno=True)


@dataclass(frozen=True)
class Stored:
    """A cut now in versions/ (or there already from the same archive: `duplicate`)."""

    cut: str
    time: str | None
    archive: str
    archive_sha256: str
    manifest_digest: str
    files: int
    bytes: int
    duplicate: bool = False


@dataclass(frozen=True)
class Quarantined:
    """A rejected upload, moved to quarantine/ with its reason."""

    archive: str
    reason: Reason
    message: str
    sha256: str
    path: Path


class Store:
    """One pod's content volume."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.incoming = root / "incoming"
        self.versions = root / "versions"
        self.quarantine_dir = root / "quarantine"
        self.current = root / "current"

    def recover(self) -> list[str]:
        """Repairs what a crash can leave behind; returns what it did, one line each."""
        for directory in (self.incoming, self.versions, self.quarantine_dir):
            directory.mkdir(parents=True, exist_ok=True)
        done = []
        active = self.active_cut()
        for path in sorted(self.versions.iterdir()):
            if path.name.endswith(WORK_SUFFIX):
                remove(path)
                done.append(f"removed unfinished {path.name}")
            elif path.name != active and self._manifest_or_none(path.name) is None:
                remove(path)
                done.append(f"removed version {path.name} without a valid manifest")
        for path in self.root.glob(".current.*"):
            path.unlink()
            done.append(f"removed temporary link {path.name}")
        for path in (*self.quarantine_dir.glob("*.tmp"), *self.root.glob(f"{SWAP_COUNTER}.*.tmp")):
            path.unlink()
            done.append(f"removed temporary file {path.name}")
        if count_swap(self.root, create_only=True):
            done.append(f"created the swap counter {SWAP_COUNTER}")
        return done

    def active_cut(self) -> str | None:
        """The cut that `current` points to, if any."""
        try:
            return Path(os.readlink(self.current)).name
        except FileNotFoundError:
            return None

    def cuts(self) -> list[str]:
        """The complete versions, oldest first."""
        return sorted(
            p.name
            for p in self.versions.iterdir()
            if p.is_dir() and not p.name.endswith(WORK_SUFFIX) and not p.name.startswith(".")
        )

    def manifest(self, cut: str) -> list[ManifestEntry]:
        """The manifest of a version; ValueError when it is missing or does not verify."""
        document = json.loads((self.versions / cut / META_DIR / "manifest.json").read_text())
        return manifest_entries(document)

    def cut_record(self, cut: str) -> dict[str, object]:
        """The .prep/cut.json of a version."""
        record: dict[str, object] = json.loads(
            (self.versions / cut / META_DIR / "cut.json").read_text()
        )
        return record

    def process(
        self,
        archive: Path,
        *,
        ingest: IngestSpec,
        checksum: str | None = None,
        checksum_file: Path | None = None,
        pinned: str | None = None,
        now: datetime,
        hook: Hook | None = None,
        prepared: Prepared | None = None,
    ) -> Stored | Quarantined:
        """Validates and stores one complete upload, or quarantines it with the reason.

        `prepared` is what a `Prefetch` extracted while the upload arrived: used when every
        check agrees that it is what the archive holds, else removed.
        """
        companions = [checksum_file] if checksum_file is not None else []
        try:
            stored = self.ingest(
                archive,
                ingest=ingest,
                checksum=checksum,
                pinned=pinned,
                now=now,
                hook=hook,
                prepared=prepared,
            )
        except Rejected as rejected:
            return self.quarantine(archive, rejected, now=now, companions=companions)
        for path in companions:
            path.unlink(missing_ok=True)
        if hook:
            hook("cleaned")
        return stored

    def ingest(
        self,
        archive: Path,
        *,
        ingest: IngestSpec,
        checksum: str | None,
        pinned: str | None,
        now: datetime,
        hook: Hook | None = None,
        prepared: Prepared | None = None,
    ) -> Stored:
        """Validates an archive and stores it as versions/<cut>/; Rejected leaves no trace."""
        try:
            return self._ingest(
                archive,
                ingest=ingest,
                checksum=checksum,
                pinned=pinned,
                now=now,
                hook=hook,
                prepared=prepared,
            )
        finally:
            if prepared is not None:
                remove(prepared.work)

    def prefetch(
        self, path: Path, *, ingest: IngestSpec, on_rename: Callable[[], None] | None = None
    ) -> Prefetch | None:
        """Starts extracting an upload still arriving in incoming/ (None: not an archive name)."""
        fmt = archive_format(final_name(path.name))
        if fmt is None:
            return None
        active = self.active_cut()
        base = self._manifest_or_none(active) if active else None
        writer = _Writer(
            active_root=self.versions / active if active else None,
            by_content={(e.sha256, e.size): e.path for e in base or []},
            reserve=_Reserve(self.root, ingest.disk_reserve_percent),
        )
        try:
            info = path.stat()
        except FileNotFoundError:
            return None
        work = self.versions / f".prefetch-{info.st_ino}{WORK_SUFFIX}"
        remove(work)
        return Prefetch(
            path,
            format=fmt,
            limits=limits_of(ingest),
            work=work,
            write=writer.write,
            on_rename=on_rename,
        )

    def _ingest(
        self,
        archive: Path,
        *,
        ingest: IngestSpec,
        checksum: str | None,
        pinned: str | None,
        now: datetime,
        hook: Hook | None,
        prepared: Prepared | None,
    ) -> Stored:
        active = self.active_cut()
        with ThreadPoolExecutor(max_workers=1) as pool:
            hashing: Future[str] | None = None
            if prepared is None:
                cut, fmt = check_name(archive, ingest=ingest)
                if not (self.versions / cut.id).exists() and not is_stale(
                    cut.id, active=active, pinned=pinned
                ):
                    # Hashed beside the extraction (hashlib and zlib release the GIL); the
                    # checksum is judged as soon as the hash is known, before other faults.
                    hashing = pool.submit(sha256_file, archive)

            def settle() -> Upload:
                known = prepared.sha256 if prepared is not None else None
                return check_upload(
                    archive,
                    ingest=ingest,
                    checksum=checksum,
                    active=active,
                    pinned=pinned,
                    sha256=hashing.result() if hashing is not None else known,
                )

            if hashing is None:
                upload = settle()
                if (self.versions / upload.cut.id).exists():
                    return self._already_stored(upload)
            else:
                upload = Upload(archive, cut, fmt, "", archive.stat().st_size)
            return self._store(
                upload,
                ingest=ingest,
                active=active,
                now=now,
                hook=hook,
                prepared=prepared,
                settle=settle if hashing is not None else None,
            )

    def _store(
        self,
        upload: Upload,
        *,
        ingest: IngestSpec,
        active: str | None,
        now: datetime,
        hook: Hook | None,
        prepared: Prepared | None,
        settle: Callable[[], Upload] | None,
    ) -> Stored:
        final = self.versions / upload.cut.id
        work = self.versions / f"{upload.cut.id}{WORK_SUFFIX}"
        remove(work)
        if prepared is not None and not (
            prepared.limits == limits_of(ingest) and confirmed(prepared, upload)
        ):
            remove(prepared.work)
            prepared = None
        archive = upload.path
        try:
            stored = self._build(
                upload,
                work=work,
                final=final,
                ingest=ingest,
                active=active,
                now=now,
                hook=hook,
                prepared=prepared,
                settle=settle,
            )
        except OSError as exc:
            remove(work)
            if exc.errno == errno.ENOSPC:
                raise Rejected(Reason.DISK_RESERVE, f"the volume filled up: {exc}") from exc
            raise
        except Rejected:
            remove(work)
            raise
        remove(work)
        self._discard(archive)
        return stored

    def _discard(self, archive: Path) -> None:
        """Removes a stored archive; a big one leaves incoming/ at once and is freed in the
        background.

        Freeing a synced 500 MB file takes ext4 over a tenth of a second, which the cut need not
        wait for. A crash before then leaves a work file in versions/ that `recover` removes.
        """
        if archive.stat().st_size < FREED_APART:
            archive.unlink()
            return
        trash = self.versions / f".{archive.name}.stored{WORK_SUFFIX}"
        os.replace(archive, trash)
        threading.Thread(
            target=trash.unlink, kwargs={"missing_ok": True}, name="discard", daemon=True
        ).start()

    def quarantine(
        self,
        archive: Path,
        rejected: Rejected,
        *,
        now: datetime,
        companions: Iterable[Path] = (),
    ) -> Quarantined:
        """Moves a rejected archive (and its checksum file) to quarantine/ beside a reason file."""
        self.quarantine_dir.mkdir(parents=True, exist_ok=True)
        sha256 = sha256_file(archive)
        name = archive.name
        if (self.quarantine_dir / name).exists():
            name = f"{now.strftime('%Y%m%dT%H%M%S%f')}-{name}"
        dest = self.quarantine_dir / name
        reason = {
            "reason": str(rejected.reason),
            "message": rejected.message,
            "time": now.isoformat(),
            "archive": archive.name,
            "sha256": sha256,
        }
        # The reason is in place before the archive moves: a crash in between leaves the
        # archive in incoming/ to be judged again, never a quarantined archive without reason.
        write_json(self.quarantine_dir / f"{name}.reason.json", reason)
        os.replace(archive, dest)
        for path in companions:
            if path.exists():
                os.replace(path, self.quarantine_dir / f"{name}{path.name[len(archive.name) :]}")
        return Quarantined(archive.name, rejected.reason, rejected.message, sha256, dest)

    def swap_current(self, cut: str) -> None:
        """Points `current` at versions/<cut> atomically: a new symlink renamed over the old."""
        if not (self.versions / cut / META_DIR / "manifest.json").is_file():
            raise FileNotFoundError(f"version {cut} is not in the store")
        temporary = self.root / f".current.{os.getpid()}"
        temporary.unlink(missing_ok=True)
        # Relative, so the volume serves the same wherever it is mounted.
        os.symlink(f"versions/{cut}", temporary)
        os.replace(temporary, self.current)
        count_swap(self.root)
        fsync_dir(self.root)

    def prune(self, *, keep: int, protected: Iterable[str | None]) -> list[str]:
        """Removes the oldest versions beyond `keep`, never the active or a protected one."""
        keep_always = {c for c in (*protected, self.active_cut()) if c}
        doomed = versions_to_prune(self.cuts(), keep=keep, protected=keep_always)
        for cut in doomed:
            # Renamed first, so a crash mid-removal leaves a work directory, not half a version.
            trash = self.versions / f".{cut}.removing{WORK_SUFFIX}"
            os.rename(self.versions / cut, trash)
            remove(trash)
        return doomed

    def _manifest_or_none(self, cut: str) -> list[ManifestEntry] | None:
        try:
            return self.manifest(cut)
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _already_stored(self, upload: Upload) -> Stored:
        record = self.cut_record(upload.cut.id)
        if record.get("archiveSha256") != upload.sha256:
            raise Rejected(
                Reason.CONFLICT,
                f"cut {upload.cut.id} is stored already from another archive "
                f"(SHA-256 {record.get('archiveSha256')})",
            )
        upload.path.unlink()
        return Stored(
            cut=upload.cut.id,
            time=upload.cut.time.isoformat() if upload.cut.time else None,
            archive=str(record.get("archive")),
            archive_sha256=upload.sha256,
            manifest_digest=str(record.get("manifestDigest")),
            files=int(str(record.get("files"))),
            bytes=int(str(record.get("bytes"))),
            duplicate=True,
        )

    def _build(
        self,
        upload: Upload,
        *,
        work: Path,
        final: Path,
        ingest: IngestSpec,
        active: str | None,
        now: datetime,
        hook: Hook | None,
        prepared: Prepared | None,
        settle: Callable[[], Upload] | None = None,
    ) -> Stored:
        """Extracts (or takes the prepared tree), composes, records and renames a version.

        `settle` gives the upload with its SHA-256 when that is taken beside the extraction; it
        raises the checksum's rejection, which wins over any fault found in the entries.
        """
        limits = limits_of(ingest)
        base = self._manifest_or_none(active) if active else None
        reserve = _Reserve(self.root, ingest.disk_reserve_percent)
        tree = work / "tree"
        extracted: dict[str, ManifestEntry] = {}
        if prepared is not None:
            # Written while the upload arrived, each file against the reserve: the volume must
            # still hold it now that the whole cut is there.
            reserve.check(0)
            work.mkdir(parents=True)
            os.rename(prepared.tree, tree)
            extracted = prepared.extracted
            if hook:
                hook("extracting")
        else:
            declared = declared_files(upload, limits=limits)
            if declared is not None:
                reserve.check(new_bytes_estimate(declared, {e.path: e for e in base or []}))
            tree.mkdir(parents=True)
            writer = _Writer(
                active_root=self.versions / active if active else None,
                by_content={(e.sha256, e.size): e.path for e in base or []},
                reserve=reserve,
            )
            try:
                with corrupt_as_rejected(upload.path):
                    for member in iter_members(upload, limits=limits):
                        extracted[member.path] = writer.write(member, tree / member.path)
                        if hook and len(extracted) == 1:
                            hook("extracting")
            except Rejected:
                if settle is not None:
                    settle()
                raise
        if settle is not None:
            upload = settle()
        if hook:
            hook("extracted")
        prefix = strip_prefix(extracted)
        source = tree / prefix if prefix else tree
        files = {
            strip(p, prefix): ManifestEntry(strip(p, prefix), e.size, e.sha256)
            for p, e in extracted.items()
        }
        deletions = _deletions(source, files)
        overlay = ingest.mode is IngestMode.OVERLAY and base is not None and active is not None
        if overlay and base is not None and active is not None:
            root = work / "site"
            files = _overlay(
                self.versions / active, base, source, root, files=files, deletions=deletions
            )
        else:
            root = source
        if hook:
            hook("composed")
        entries = sorted(files.values(), key=lambda e: e.path)
        document = manifest_document(
            upload.cut.id,
            entries,
            source={
                "time": upload.cut.time.isoformat() if upload.cut.time else None,
                "archive": upload.path.name,
                "archiveSha256": upload.sha256,
                "mode": str(IngestMode.OVERLAY if overlay else IngestMode.SNAPSHOT),
            },
        )
        digest = str(document["digest"])
        record = {
            "id": upload.cut.id,
            "time": upload.cut.time.isoformat() if upload.cut.time else None,
            "archive": upload.path.name,
            "archiveSha256": upload.sha256,
            "manifestDigest": digest,
            "files": len(entries),
            "bytes": sum(e.size for e in entries),
            "storedAt": now.isoformat(),
        }
        meta = root / META_DIR
        meta.mkdir()
        write_json(meta / "manifest.json", document)
        write_json(meta / "cut.json", record)
        if hook:
            hook("manifest")
        syncfs(self.versions)
        if hook:
            hook("synced")
        os.rename(root, final)
        fsync_dir(self.versions)
        if hook:
            hook("renamed")
        return Stored(
            cut=upload.cut.id,
            time=str(record["time"]) if record["time"] else None,
            archive=upload.path.name,
            archive_sha256=upload.sha256,
            manifest_digest=digest,
            files=len(entries),
            bytes=int(str(record["bytes"])),
        )


class _Reserve:
    """Refuses to write past the free space that the volume must keep."""

    def __init__(self, volume: Path, percent: int) -> None:
        self.volume = volume
        self.percent = percent

    def check(self, needed: int) -> None:
        stats = os.statvfs(self.volume)
        total = stats.f_blocks * stats.f_frsize
        free = stats.f_bavail * stats.f_frsize
        if breaches_reserve(total=total, free=free, needed=needed, reserve_percent=self.percent):
            raise Rejected(
                Reason.DISK_RESERVE,
                f"{needed} more bytes would leave less than {self.percent} % of the volume free "
                f"({free} of {total} bytes free)",
            )


class _Writer:
    """Writes archive members as new files, or hard-links them when the active version has them."""

    def __init__(
        self,
        *,
        active_root: Path | None,
        by_content: Mapping[tuple[str, int], str],
        reserve: _Reserve,
    ) -> None:
        self.active_root = active_root
        self.by_content = by_content
        self.reserve = reserve

    def write(self, member: Member, target: Path) -> ManifestEntry:
        target.parent.mkdir(parents=True, exist_ok=True)
        if member.size <= SMALL_FILE:
            data = member.stream.read()
            sha256 = hashlib.sha256(data).hexdigest()
            if not self._link(sha256, len(data), target):
                self.reserve.check(len(data))
                with _create(target) as out:
                    out.write(data)
                    out.flush()
                    start_writeback(out.fileno())
            return ManifestEntry(member.path, len(data), sha256)
        self.reserve.check(member.size)
        digest = hashlib.sha256()
        size = 0
        with _create(target) as out:
            while chunk := member.stream.read(CHUNK):
                digest.update(chunk)
                out.write(chunk)
                size += len(chunk)
            out.flush()
            start_writeback(out.fileno())
        sha256 = digest.hexdigest()
        spare = target.with_name(f".{target.name}.link")
        if self._link(sha256, size, spare):
            os.replace(spare, target)
        return ManifestEntry(member.path, size, sha256)

    def _link(self, sha256: str, size: int, target: Path) -> bool:
        known = self.by_content.get((sha256, size))
        if known is None or self.active_root is None:
            return False
        try:
            os.link(self.active_root / known, target)
        except OSError:
            # Too many links or the file went away: a copy is correct, only bigger.
            return False
        return True


def _create(path: Path) -> BinaryIO:
    """A new file: O_EXCL, so an existing (possibly hard-linked, served) inode is never written."""
    return os.fdopen(
        os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644), "wb"
    )


def _deletions(source: Path, files: dict[str, ManifestEntry]) -> list[str]:
    """The paths listed in the archive's .prep-delete, which is then taken out of the version."""
    if DELETE_LIST not in files:
        return []
    listing = source / DELETE_LIST
    lines = listing.read_text(encoding="utf-8").splitlines()
    listing.unlink()
    del files[DELETE_LIST]
    return [
        member_path(line.strip()) for line in lines if line.strip() and not line.startswith("#")
    ]


def _overlay(
    active_root: Path,
    base: list[ManifestEntry],
    source: Path,
    root: Path,
    *,
    files: dict[str, ManifestEntry],
    deletions: list[str],
) -> dict[str, ManifestEntry]:
    """Builds root from the active version's files (linked) under the archive's; their manifest."""
    added_dirs = {"/".join(p.split("/")[:i]) for p in files for i in range(1, p.count("/") + 1)}
    merged: dict[str, ManifestEntry] = {}
    for entry in base:
        parents = ["/".join(entry.path.split("/")[:i]) for i in range(1, entry.path.count("/") + 1)]
        dropped = any(entry.path == d or entry.path.startswith(d + "/") for d in deletions)
        if (
            dropped
            or entry.path in files
            or entry.path in added_dirs
            or any(p in files for p in parents)
        ):
            continue
        target = root / entry.path
        target.parent.mkdir(parents=True, exist_ok=True)
        os.link(active_root / entry.path, target)
        merged[entry.path] = entry
    for path, entry in files.items():
        target = root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        os.rename(source / path, target)
        merged[path] = entry
    return merged


def write_json(path: Path, document: Mapping[str, object]) -> None:
    """Write a JSON file whole or not at all (a temporary file renamed over it)."""
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(document, indent=1, ensure_ascii=False) + "\n")
    os.replace(temporary, path)


def remove(path: Path) -> None:
    """Remove a file, link or directory tree if it exists."""
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path)


def count_swap(root: Path, *, create_only: bool = False) -> bool:
    """Bumps the swap counter beside `current` after a rename; True if it had to be created.

    nginx keeps the file mapped and reads `current` again when the count moves, so the count is
    written in place and never truncated (a mapped file shorter than its 4 bytes is SIGBUS). A
    missing or short file is replaced whole by rename, a new inode that nginx maps within a
    second (until then it reads `current` on every request). `create_only` leaves a good one
    as it is.
    """
    path = root / SWAP_COUNTER
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        fd = -1
    if fd >= 0:
        try:
            raw = os.pread(fd, 4, 0)
            if len(raw) == 4:
                if not create_only:
                    count = (int.from_bytes(raw, "little") + 1) & 0xFFFFFFFF
                    os.pwrite(fd, count.to_bytes(4, "little"), 0)
                return False
        finally:
            os.close(fd)
    temporary = root / f"{SWAP_COUNTER}.{os.getpid()}.tmp"
    temporary.write_bytes((1).to_bytes(4, "little"))
    os.replace(temporary, path)
    return True


def fsync_dir(path: Path) -> None:
    """Make a rename in this directory durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_SYNC_FILE_RANGE_WRITE = 2


def start_writeback(fd: int) -> None:
    """Starts writing a file's dirty pages to disk without waiting, so that the syncfs at the
    end of an ingest finds little left to flush (sync_file_range(2); a hint: errors are ignored
    and the syncfs still decides)."""
    _libc.sync_file_range(fd, ctypes.c_int64(0), ctypes.c_int64(0), _SYNC_FILE_RANGE_WRITE)


def syncfs(path: Path) -> None:
    """Flushes the whole volume once: an fsync per file would cost a journal commit per file."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if _libc.syncfs(fd) != 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code), str(path))
    finally:
        os.close(fd)
