"""The intake loop's one step: list incoming/, store each complete upload, drop stale partials.

With `prefetch`, every upload still arriving is followed and extracted as it grows
(ingest/stream.py), and the step that finds it complete finishes that work instead of starting.
"""

from __future__ import annotations

import logging
import os
import stat
import threading
from datetime import datetime
from pathlib import Path

from inotify_simple import INotify, flags

from difusor.ingest.store import Hook, Quarantined, Store, Stored
from difusor.ingest.stream import Prefetch
from difusor.logic.archive import Reason, Rejected, parse_checksum
from difusor.logic.completion import Listed, decide
from difusor.models import IngestSpec

log = logging.getLogger(__name__)

#: Uploads followed at once; more arriving together wait for their rename.
MAX_PREFETCHES = 4

FileKey = tuple[int, int]


def watch_incoming(incoming: Path, wake: threading.Event, stopping: threading.Event) -> None:
    """Set `wake` as soon as an upload appears in incoming/ or is renamed there (inotify).

    Otherwise the loop finds a new upload on its next pass, every half second: over a fast link
    a 50 MB upload can be complete by then, and it was not followed while it arrived. Without
    inotify (the node's limit of inotify instances reached) the passes still find every upload.
    """
    try:
        inotify = INotify()
    except OSError as exc:
        log.warning("Not watching %s (%s): uploads are found on each pass", incoming, exc)
        return
    with inotify:
        try:
            inotify.add_watch(incoming, flags.CREATE | flags.MOVED_TO)
        except OSError as exc:
            log.warning("Not watching %s (%s): uploads are found on each pass", incoming, exc)
            return
        while not stopping.is_set():
            if inotify.read(timeout=1000):
                wake.set()


def listing(incoming: Path) -> list[Listed]:
    """The regular files in incoming/ (anything else is left for the TTL rule to ignore)."""
    return list(_scan(incoming).values())


def _scan(incoming: Path) -> dict[FileKey, Listed]:
    found = {}
    with os.scandir(incoming) as entries:
        for entry in entries:
            info = entry.stat(follow_symlinks=False)
            if stat.S_ISREG(info.st_mode):
                found[(info.st_dev, info.st_ino)] = Listed(entry.name, info.st_size, info.st_mtime)
    return found


class Intake:
    """Scans incoming/ on each call; remembers the last listing for the quiet rule.

    `prefetch` follows uploads while they arrive; `wake` is set when one of them is renamed,
    so that the loop calling `run` can take it at once.
    """

    def __init__(
        self, store: Store, *, prefetch: bool = False, wake: threading.Event | None = None
    ) -> None:
        self.store = store
        self.previous: dict[str, Listed] | None = None
        self.prefetch = prefetch
        self.wake = wake
        self.following: dict[FileKey, Prefetch] = {}

    def close(self) -> None:
        """Stops following uploads (their work directories are removed)."""
        for prefetch in self.following.values():
            prefetch.cancel()
        self.following.clear()

    def run(
        self,
        *,
        ingest: IngestSpec,
        pinned: str | None,
        now: datetime,
        hook: Hook | None = None,
        refused: str | None = None,
    ) -> list[Stored | Quarantined]:
        """Stores or quarantines every upload that is complete now; removes expired partials.

        With `refused` (why no cut is taken now: the publication window closed), every complete
        upload is quarantined with that reason, without being extracted.
        """
        keyed = _scan(self.store.incoming)
        current = list(keyed.values())
        decision = decide(current, ingest=ingest, now=now.timestamp(), previous=self.previous)
        self.previous = {entry.name: entry for entry in current}
        for name in decision.expired:
            (self.store.incoming / name).unlink(missing_ok=True)
        key_of = {entry.name: key for key, entry in keyed.items()}
        if self.prefetch:
            self._follow(keyed, ingest=ingest, ready={u.archive for u in decision.ready},
                         expired=set(decision.expired))  # fmt: skip
        outcomes: list[Stored | Quarantined] = []
        for upload in decision.ready:
            archive = self.store.incoming / upload.archive
            following = self.following.pop(key_of[upload.archive], None)
            checksum_file = (
                self.store.incoming / upload.checksum_file if upload.checksum_file else None
            )
            if refused is not None:
                if following is not None:
                    following.cancel()
                outcomes.append(
                    self.store.quarantine(
                        archive,
                        Rejected(Reason.WINDOW_CLOSED, refused),
                        now=now,
                        companions=[checksum_file] if checksum_file else [],
                    )
                )
                continue
            checksum: str | None = None
            if checksum_file is not None:
                text = checksum_file.read_text(encoding="utf-8", errors="replace")
                if not text:
                    # Created but not yet written: the next scan sees it whole.
                    if following is not None:
                        self.following[key_of[upload.archive]] = following
                    continue
                checksum = parse_checksum(text, upload.archive)
                if checksum is None:
                    if following is not None:
                        following.cancel()
                    rejected = Rejected(
                        Reason.CHECKSUM_MISMATCH,
                        f"{checksum_file.name} has no SHA-256 line for {upload.archive}",
                    )
                    outcomes.append(
                        self.store.quarantine(
                            archive, rejected, now=now, companions=[checksum_file]
                        )
                    )
                    continue
            prepared = following.finish(archive) if following is not None else None
            outcomes.append(
                self.store.process(
                    archive,
                    ingest=ingest,
                    checksum=checksum,
                    checksum_file=checksum_file,
                    pinned=pinned,
                    now=now,
                    hook=hook,
                    prepared=prepared,
                )
            )
        return outcomes

    def _follow(
        self,
        keyed: dict[FileKey, Listed],
        *,
        ingest: IngestSpec,
        ready: set[str],
        expired: set[str],
    ) -> None:
        """Starts following the uploads still arriving; stops following those that went away."""
        for key in [k for k in self.following if k not in keyed or keyed[k].name in expired]:
            self.following.pop(key).cancel()
        for key, entry in keyed.items():
            if entry.name in ready or entry.name in expired:
                continue
            if key in self.following or len(self.following) >= MAX_PREFETCHES:
                continue
            try:
                prefetch = self.store.prefetch(
                    self.store.incoming / entry.name,
                    ingest=ingest,
                    on_rename=self.wake.set if self.wake is not None else None,
                )
            except OSError as exc:
                log.debug("Did not follow %s: %s", entry.name, exc)
                continue
            if prefetch is not None and prefetch.key == key:
                self.following[key] = prefetch
            elif prefetch is not None:
                prefetch.cancel()
