"""Extraction of an upload while it still arrives, so that little is left to do at the rename.

A `Prefetch` follows one file of incoming/ as the sftp server writes it. One thread reads the
new bytes as they land (SHA-256 of the whole, CRC-32 of every 4 MiB block); another parses them
as the archive they will be (a zip's local headers front to back, a tar or tar.gz as a stream)
and hands every member to the store's writers, which hash it and write or link it into a work
directory. A zip member's compressed bytes go to the writers whole, so that several members are
inflated at once (inflating is most of the work). All of them spend their time in hashlib,
zlib-ng (the same deflate, about 1.5 times faster to inflate here than zlib, and its CRC-32 five
times) and the file system, which release the GIL, so they run beside each other and beside sshd.

When the upload is complete, `finish` reads the final file once more, two blocks at a time,
to confirm that its bytes are the ones that were parsed (a client may write out of order or
rewrite a part). The store then runs what needs the whole archive (`confirmed`: its name,
checksum and age as for any upload, the zip's central directory entry by entry against the
local headers that were parsed, the caps with the final size) and renames the prepared tree into
place. A prefetch never rejects anything: on any doubt it gives up, and the ordinary path judges
the archive from its first byte with the same rules.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import queue
import shutil
import stat
import struct
import threading
import zipfile
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, cast

from zlib_ng import zlib_ng

from difusor.ingest.validate import (
    CHUNK,
    Member,
    Upload,
    check_tar_end,
    corrupt_as_rejected,
    declared_files,
    tar_stream_members,
)
from difusor.logic.archive import (
    ArchiveFormat,
    EntryTracker,
    Limits,
    ManifestEntry,
    Rejected,
    member_path,
)

#: The final file is compared with what was parsed in blocks of this size (CRC-32 each).
BLOCK = 4 << 20
#: How often a follower looks for new bytes while the file does not grow.
POLL = 0.005
#: Archive bytes read ahead of the parser (in CHUNK pieces), and members decompressed ahead of
#: the writer: bound the memory of a prefetch.
QUEUE_CHUNKS = 16
#: Members up to this size go to the writer's thread whole; larger ones are written in line.
HANDED_OVER = 1 << 20
#: Zip members whose compressed data is at most this big are read whole as they arrive and
#: inflated, checked, hashed and written by the writers, several at once (zlib-ng and hashlib
#: release the GIL); the compressed bytes waiting for a writer are bounded by DEFERRED_BYTES.
DEFER_LIMIT = 8 << 20
DEFERRED_BYTES = 64 << 20
#: Writer threads: inflating is what an upload's extraction spends most of its time on.
WRITERS = max(2, min(4, os.cpu_count() or 1))
_LOCAL = struct.Struct("<4s2B4HL2L2H")
_LOCAL_SIG = b"PK\x03\x04"
_CENTRAL_SIGS = (b"PK\x01\x02", b"PK\x05\x06")
_ZIP_UTF8 = 0x800
_ZIP_UNSUPPORTED_FLAGS = 0x1 | 0x8 | 0x40
_ZIP64_MARK = 0xFFFFFFFF
_NO_RATIO = 1 << 62

Write = Callable[[Member, Path], ManifestEntry]
"""The store's writer: one member to a path of the tree, returning its manifest entry."""


class Abandoned(Exception):
    """The prefetch gave up; the ordinary path reads the archive at the rename."""


@dataclass(frozen=True)
class LocalEntry:
    """A zip local header as parsed, to be matched with the central directory at the end."""

    offset: int
    name: str
    flags: int
    method: int
    crc: int
    compressed: int
    size: int


@dataclass
class Prepared:
    """A finished prefetch: the archive's digest, its tree on disk and what the checks need."""

    work: Path
    format: ArchiveFormat
    limits: Limits
    sha256: str
    size: int
    extracted: dict[str, ManifestEntry]
    entries: list[tuple[str, int | None]]
    """Paths in archive order with the declared size of files (None for folders)."""
    zip_entries: list[LocalEntry] = field(default_factory=list)
    zip_end: int = 0
    """Offset of the zip's central directory: where the local entries stopped."""
    tar_end: int = 0

    @property
    def tree(self) -> Path:
        """The extracted files, as the ordinary path lays them out."""
        return self.work / "tree"


class _Recorder(EntryTracker):
    """The caps on files and bytes while the archive arrives; the ratio waits for its size."""

    def __init__(self, limits: Limits) -> None:
        super().__init__(limits, archive_size=_NO_RATIO)
        self.order: list[tuple[str, int | None]] = []

    def add_dir(self, path: str) -> None:
        super().add_dir(path)
        self.order.append((path, None))

    def add_file(self, path: str, size: int) -> None:
        super().add_file(path, size)
        self.order.append((path, size))


class _Arrival:
    """The bytes of a growing file, read front to back by one thread that hashes them."""

    def __init__(self, fd: int, path: Path, on_rename: Callable[[], None] | None) -> None:
        self.fd = fd
        self.path = path
        self.on_rename = on_rename
        self.final: int | None = None
        self.position = 0
        """Bytes read and hashed so far."""
        self.stop = threading.Event()
        self.nudge = threading.Event()
        self.sha256 = hashlib.sha256()
        self.crcs: list[int] = []
        self.error: BaseException | None = None
        self.queue: queue.Queue[bytes | None] = queue.Queue(maxsize=QUEUE_CHUNKS)
        self.buffer = memoryview(b"")
        self.eof = False

    def run(self) -> None:
        crc = 0
        renamed = False
        try:
            while True:
                if self.stop.is_set():
                    raise Abandoned("cancelled")
                size = os.fstat(self.fd).st_size
                final = self.final
                if size < self.position or (final is not None and size != final):
                    raise Abandoned("the file shrank or changed after it was complete")
                limit = size if final is None else final
                if self.position >= limit:
                    if final is not None:
                        break
                    if not renamed and self.on_rename and not self.path.exists():
                        # The client renamed it: done writing. Wake the intake at once.
                        renamed = True
                        self.on_rename()
                    self.nudge.wait(POLL)
                    self.nudge.clear()
                    continue
                want = min(CHUNK, limit - self.position, BLOCK - self.position % BLOCK)
                data = os.pread(self.fd, want, self.position)
                if len(data) != want:
                    raise Abandoned("the file shrank while it was read")
                self.sha256.update(data)
                crc = zlib_ng.crc32(data, crc)
                self.position += want
                if self.position % BLOCK == 0:
                    self.crcs.append(crc)
                    crc = 0
                self._put(data)
            if self.position % BLOCK:
                self.crcs.append(crc)
            self._put(b"")
        except Exception as exc:  # any failure only sends the upload down the ordinary path
            self.error = exc
            self.stop.set()
            # When the queue is full the parser sees `stop` instead.
            with contextlib.suppress(queue.Full):
                self.queue.put_nowait(None)

    def _put(self, item: bytes) -> None:
        while True:
            try:
                self.queue.put(item, timeout=0.1)
                return
            except queue.Full:
                if self.stop.is_set():
                    raise Abandoned("cancelled") from None

    def read(self, size: int = -1) -> bytes:
        """Up to `size` bytes (all that is left when negative); b"" once the file is complete."""
        if size < 0:
            parts = []
            while part := self.read(CHUNK):
                parts.append(part)
            return b"".join(parts)
        while not self.buffer:
            if self.eof:
                return b""
            try:
                item = self.queue.get(timeout=0.1)
            except queue.Empty:
                if self.stop.is_set():
                    raise Abandoned("cancelled") from None
                continue
            if item is None:
                raise Abandoned(f"reading the upload failed: {self.error}")
            if not item:
                self.eof = True
                return b""
            self.buffer = memoryview(item)
        out = bytes(self.buffer[:size])
        self.buffer = self.buffer[size:]
        return out

    def exactly(self, size: int) -> bytes:
        """`size` bytes, or Abandoned when the file ends first."""
        parts = []
        left = size
        while left:
            part = self.read(left)
            if not part:
                raise Abandoned("the archive ends inside a header")
            parts.append(part)
            left -= len(part)
        return b"".join(parts)


class _ZipData:
    """One zip member's data (stored or deflated), decompressed as it is read and checked."""

    def __init__(self, source: _Arrival | io.BytesIO, entry: LocalEntry) -> None:
        self.source = source
        self.entry = entry
        self.left = entry.compressed
        self.inflate = zlib_ng.decompressobj(-15) if entry.method == zipfile.ZIP_DEFLATED else None
        self.pending = b""
        self.out = 0
        self.crc = 0

    def read(self, size: int = -1) -> bytes:
        if size < 0:
            parts = []
            while part := self.read(CHUNK):
                parts.append(part)
            return b"".join(parts)
        data = self._more(min(size, CHUNK))
        self.out += len(data)
        if self.out > self.entry.size:
            raise Abandoned(f"{self.entry.name} inflates past its declared size")
        self.crc = zlib_ng.crc32(data, self.crc)
        return data

    def _more(self, size: int) -> bytes:
        if self.inflate is None:
            if not self.left:
                return b""
            data = self.source.read(min(size, self.left))
            if not data:
                raise Abandoned("the archive ends inside a member")
            self.left -= len(data)
            return data
        while not self.inflate.eof:
            if not self.pending:
                if not self.left:
                    raise Abandoned(f"{self.entry.name}: deflate data ends early")
                self.pending = self.source.read(min(CHUNK, self.left))
                if not self.pending:
                    raise Abandoned("the archive ends inside a member")
                self.left -= len(self.pending)
            data = self.inflate.decompress(self.pending, size)
            self.pending = self.inflate.unconsumed_tail
            if data:
                return data
        return b""

    def close(self) -> None:
        """Reads what the writer left and checks sizes and CRC against the local header."""
        while self.read(CHUNK):
            pass
        trailing = self.pending or (self.inflate.unused_data if self.inflate else b"")
        if self.left or trailing or self.out != self.entry.size or self.crc != self.entry.crc:
            raise Abandoned(f"{self.entry.name} does not match its local header")


class _Deferred(_ZipData):
    """A zip member whose compressed bytes were read whole: any writer inflates and checks it."""

    def __init__(self, raw: bytes, entry: LocalEntry) -> None:
        super().__init__(io.BytesIO(raw), entry)
        self.held = len(raw)


class Prefetch:
    """Follows one upload in incoming/ and extracts it with `write` into `work` as it arrives."""

    def __init__(
        self,
        path: Path,
        *,
        format: ArchiveFormat,  # noqa: A002 - the archive's format, as in Upload
        limits: Limits,
        work: Path,
        write: Write,
        on_rename: Callable[[], None] | None = None,
    ) -> None:
        self.format = format
        self.limits = limits
        self.work = work
        self.write = write
        self.fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        info = os.fstat(self.fd)
        self.key = (info.st_dev, info.st_ino)
        self.arrival = _Arrival(self.fd, path, on_rename)
        self.recorder = _Recorder(limits)
        self.extracted: dict[str, ManifestEntry] = {}
        self.zip_entries: list[LocalEntry] = []
        self.zip_end = 0
        self.tar_end = 0
        self.error: BaseException | None = None
        self._threads = [
            threading.Thread(target=self.arrival.run, name="prefetch-read", daemon=True),
            threading.Thread(target=self._extract, name="prefetch-extract", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def finish(self, path: Path) -> Prepared | None:
        """Waits for the end of the complete upload at `path`; None when the prefetch gave up."""
        try:
            info = os.stat(path, follow_symlinks=False)
            if (info.st_dev, info.st_ino) != self.key or not stat.S_ISREG(info.st_mode):
                raise Abandoned("another file took the name")
            self.arrival.final = info.st_size
            self.arrival.nudge.set()
            self._join()
            if self.error is not None:
                raise Abandoned(str(self.error))
            if not self._same_bytes(info.st_size):
                raise Abandoned("the file changed after its bytes were read")
        except (Abandoned, OSError):
            self.cancel()
            return None
        os.close(self.fd)
        return Prepared(
            work=self.work,
            format=self.format,
            limits=self.limits,
            sha256=self.arrival.sha256.hexdigest(),
            size=info.st_size,
            extracted=self.extracted,
            entries=self.recorder.order,
            zip_entries=self.zip_entries,
            zip_end=self.zip_end,
            tar_end=self.tar_end,
        )

    def cancel(self) -> None:
        """Stops following and removes the work directory."""
        self.arrival.stop.set()
        self.arrival.nudge.set()
        self._join()
        with contextlib.suppress(OSError):
            os.close(self.fd)
        shutil.rmtree(self.work, ignore_errors=True)

    def _join(self) -> None:
        for thread in self._threads:
            thread.join()

    def _extract(self) -> None:
        try:
            tree = self.work / "tree"
            tree.mkdir(parents=True)
            members = (
                self._zip_members()
                if self.format == "zip"
                else self._tar_members(gzipped=self.format == "tar.gz")
            )
            with ThreadPoolExecutor(max_workers=WRITERS) as pool:
                pending: deque[tuple[Future[None], int]] = deque()
                queued = 0
                for member in members:
                    target = tree / member.path
                    if isinstance(member.stream, _Deferred):
                        # Inflated, checked, hashed and written there, by several writers.
                        held = member.stream.held
                        pending.append((pool.submit(self._write_deferred, member, target), held))
                    elif member.size > HANDED_OVER:
                        for future, _ in pending:
                            future.result()
                        pending.clear()
                        queued = 0
                        self._write(member, target)
                        continue
                    else:
                        # Decompressed here, hashed and written there: the two overlap.
                        data = member.stream.read()
                        whole = Member(member.path, len(data), member.mtime, io.BytesIO(data))
                        held = len(data)
                        pending.append((pool.submit(self._write, whole, target), held))
                    queued += held
                    while len(pending) > QUEUE_CHUNKS * WRITERS or queued > DEFERRED_BYTES:
                        future, held = pending.popleft()
                        future.result()
                        queued -= held
                for future, _ in pending:
                    future.result()
            # Whatever follows the entries (a zip's central directory) is hashed too.
            while self.arrival.read(CHUNK):
                pass
        except Exception as exc:  # any failure only sends the upload down the ordinary path
            self.error = exc
            self.arrival.stop.set()

    def _write(self, member: Member, target: Path) -> None:
        self.extracted[member.path] = self.write(member, target)

    def _write_deferred(self, member: Member, target: Path) -> None:
        entry = self.write(member, target)
        cast(_Deferred, member.stream).close()
        self.extracted[member.path] = entry

    def _tar_members(self, *, gzipped: bool) -> Iterator[Member]:
        source = cast(IO[bytes], self.arrival)
        self.tar_end = yield from tar_stream_members(source, self.recorder, gzipped=gzipped)

    def _zip_members(self) -> Iterator[Member]:
        source = self.arrival
        offset = 0
        while True:
            signature = source.exactly(4)
            if signature in _CENTRAL_SIGS:
                self.zip_end = offset
                return
            if signature != _LOCAL_SIG:
                raise Abandoned("not a zip written front to back")
            fields = _LOCAL.unpack(signature + source.exactly(_LOCAL.size - 4))
            flags, method, crc, compressed, size, name_len, extra_len = (
                fields[3], fields[4], fields[7], fields[8], fields[9], fields[10], fields[11],
            )  # fmt: skip
            raw_name = source.exactly(name_len)
            source.exactly(extra_len)
            if (
                flags & _ZIP_UNSUPPORTED_FLAGS
                or method not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED)
                or _ZIP64_MARK in (compressed, size)
            ):
                # Encrypted, sizes after the data, zip64 or another method: the rename decides.
                raise Abandoned("a zip entry this reader does not stream")
            name = raw_name.decode("utf-8" if flags & _ZIP_UTF8 else "cp437")
            entry = LocalEntry(offset, name, flags, method, crc, compressed, size)
            self.zip_entries.append(entry)
            offset += _LOCAL.size + name_len + extra_len + compressed
            path = member_path(name)
            if name.endswith("/"):
                if compressed:
                    raise Abandoned(f"folder entry {name!r} has data")
                self.recorder.add_dir(path)
                continue
            self.recorder.add_file(path, size)
            if compressed <= DEFER_LIMIT:
                deferred = _Deferred(source.exactly(compressed), entry)
                yield Member(path, size, 0.0, cast(IO[bytes], deferred))
                continue
            data = _ZipData(source, entry)
            yield Member(path, size, 0.0, cast(IO[bytes], data))
            data.close()

    def _same_bytes(self, size: int) -> bool:
        """Whether the file, read again, has the CRC-32 of every block that was parsed."""
        blocks = range(0, size, BLOCK)
        if len(blocks) != len(self.arrival.crcs):
            return False

        def crc(offset: int) -> int:
            return zlib_ng.crc32(os.pread(self.fd, min(BLOCK, size - offset), offset))

        with ThreadPoolExecutor(max_workers=2) as pool:
            return list(pool.map(crc, blocks)) == self.arrival.crcs


def confirmed(prepared: Prepared, upload: Upload) -> bool:
    """Whether the ordinary path would extract exactly the prepared tree from this upload.

    Checks what needed the whole archive: the central directory of a zip (every entry's checks,
    then entry by entry the same offset, name, flags, method, CRC and sizes as the local header
    that was streamed, and nothing between the entries), the caps with the final archive size,
    and the end blocks of a plain tar. False sends the archive down the ordinary path.
    """
    if (
        prepared.format != upload.format
        or prepared.sha256 != upload.sha256
        or prepared.size != upload.size
    ):
        return False
    try:
        with corrupt_as_rejected(upload.path):
            if upload.format == "zip":
                declared_files(upload, limits=prepared.limits)
                return _zip_agrees(upload.path, prepared)
            tracker = EntryTracker(prepared.limits, archive_size=upload.size)
            for path, size in prepared.entries:
                if size is None:
                    tracker.add_dir(path)
                else:
                    tracker.add_file(path, size)
            if upload.format == "tar":
                with upload.path.open("rb") as raw:
                    check_tar_end(raw, prepared.tar_end, name=upload.path.name)
    except Rejected:
        return False
    return True


def _zip_agrees(path: Path, prepared: Prepared) -> bool:
    with zipfile.ZipFile(path) as archive:
        infos = archive.infolist()
        if archive.start_dir != prepared.zip_end or len(infos) != len(prepared.zip_entries):
            return False
        for info, local in zip(infos, prepared.zip_entries, strict=True):
            mode = info.external_attr >> 16 if info.create_system == 3 else 0
            folder = info.is_dir() or stat.S_ISDIR(mode)
            central = (info.header_offset, info.orig_filename, info.flag_bits,
                       info.compress_type, info.CRC, info.compress_size, info.file_size)  # fmt: skip
            streamed = (local.offset, local.name, local.flags, local.method, local.crc,
                        local.compressed, local.size)  # fmt: skip
            if central != streamed or folder != local.name.endswith("/"):
                return False
    return True
