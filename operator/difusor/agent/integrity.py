"""The background check of the served version: files re-hashed against its manifest, a few a time.

A disk that flips bits, an operator's stray edit or a half-restored backup can change a served
file without anyone noticing: nginx serves what is on disk. Each pass of the agent hashes the
next few files of the served version (at most `files_per_minute`, so the cost is bounded and
spread) and returns those whose size or SHA-256 differ from the manifest; a full round takes
files / rate minutes and then starts over.
"""

from __future__ import annotations

import hashlib
import time

from difusor.ingest.store import Store
from difusor.logic.archive import ManifestEntry

CHUNK = 1 << 20


def file_matches(store: Store, cut: str, entry: ManifestEntry) -> bool:
    """The file on disk has the manifest's size and SHA-256."""
    path = store.versions / cut / entry.path
    try:
        if path.is_symlink() or path.stat().st_size != entry.size:
            return False
        digest = hashlib.sha256()
        with path.open("rb") as stream:
            while chunk := stream.read(CHUNK):
                digest.update(chunk)
    except OSError:
        return False
    return digest.hexdigest() == entry.sha256


class IntegrityCheck:
    """Walks the served version's manifest round and round, a budget of files per pass."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.cut: str | None = None
        self.entries: list[ManifestEntry] = []
        self.position = 0
        self.credit = 0.0
        self.last = time.monotonic()

    def step(self, *, files_per_minute: int) -> tuple[str | None, list[ManifestEntry], int]:
        """Check the next files: (the served cut, the damaged entries found, files checked)."""
        now = time.monotonic()
        elapsed, self.last = now - self.last, now
        cut = self.store.active_cut()
        if cut != self.cut:
            self.cut, self.position, self.credit = cut, 0, 0.0
            try:
                self.entries = self.store.manifest(cut) if cut else []
            except (OSError, ValueError):
                self.entries = []
        if not self.entries or files_per_minute <= 0 or cut is None:
            return cut, [], 0
        self.credit = min(self.credit + files_per_minute * elapsed / 60.0, len(self.entries))
        count = int(self.credit)
        self.credit -= count
        damaged = []
        for _ in range(count):
            entry = self.entries[self.position]
            self.position = (self.position + 1) % len(self.entries)
            if not file_matches(self.store, cut, entry):
                damaged.append(entry)
        return cut, damaged, count
