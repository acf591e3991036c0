"""The intake loop's one step: list incoming/, store each complete upload, drop stale partials."""

from __future__ import annotations

import os
import stat
from datetime import datetime
from pathlib import Path

from difusor.ingest.store import Hook, Quarantined, Store, Stored
from difusor.logic.archive import Reason, Rejected, parse_checksum
from difusor.logic.completion import Listed, decide
from difusor.models import IngestSpec


def listing(incoming: Path) -> list[Listed]:
    """The regular files in incoming/ (anything else is left for the TTL rule to ignore)."""
    found = []
    with os.scandir(incoming) as entries:
        for entry in entries:
            info = entry.stat(follow_symlinks=False)
            if stat.S_ISREG(info.st_mode):
                found.append(Listed(entry.name, info.st_size, info.st_mtime))
    return found


class Intake:
    """Scans incoming/ on each call; remembers the last listing for the quiet rule."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.previous: dict[str, Listed] | None = None

    def run(
        self,
        *,
        ingest: IngestSpec,
        pinned: str | None,
        now: datetime,
        hook: Hook | None = None,
    ) -> list[Stored | Quarantined]:
        """Stores or quarantines every upload that is complete now; removes expired partials."""
        current = listing(self.store.incoming)
        decision = decide(current, ingest=ingest, now=now.timestamp(), previous=self.previous)
        self.previous = {entry.name: entry for entry in current}
        for name in decision.expired:
            (self.store.incoming / name).unlink(missing_ok=True)
        outcomes: list[Stored | Quarantined] = []
        for upload in decision.ready:
            archive = self.store.incoming / upload.archive
            checksum_file = (
                self.store.incoming / upload.checksum_file if upload.checksum_file else None
            )
            checksum: str | None = None
            if checksum_file is not None:
                text = checksum_file.read_text(encoding="utf-8", errors="replace")
                if not text:
                    # Created but not yet written: the next scan sees it whole.
                    continue
                checksum = parse_checksum(text, upload.archive)
                if checksum is None:
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
            outcomes.append(
                self.store.process(
                    archive,
                    ingest=ingest,
                    checksum=checksum,
                    checksum_file=checksum_file,
                    pinned=pinned,
                    now=now,
                    hook=hook,
                )
            )
        return outcomes
