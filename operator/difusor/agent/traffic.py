"""The pod's traffic from nginx's JSON access log: request metrics and the attack signal.

The agent follows the log like `tail -F` (through rotation: the old file is read to its end
before the new one is opened; truncation starts over) and reads at most MAX_BYTES per pass, so a
flood costs bounded work per step. Per-minute counts feed logic.attack; the signal and the ranges
it blames are reported on the pod (annotation prep.difusor.io/attack) for the operator to contain.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from difusor.logic.attack import (
    FORBIDDEN,
    TOO_MANY,
    LogRecord,
    MinuteCounts,
    Thresholds,
    detect_attacks,
    suggest_deny_list,
)
from difusor.metrics import AgentMetrics

#: Most bytes of access log read per pass (the rest waits for the next pass).
MAX_BYTES = 16 * 1024 * 1024
#: Minutes of counts kept: the detector's baseline window plus the current minute.
KEEP_MINUTES = 16
#: The previous minute still counts this many seconds into a new one (a flood that began
#: late in a minute is not forgotten the moment the minute turns).
CARRY_SECONDS = 10


class LogFollower:
    """Reads the lines appended to a file since the last call, across rotation and truncation."""

    def __init__(self, path: Path, *, from_start: bool = False) -> None:
        self.path = path
        self.file: IO[bytes] | None = None
        self.inode: int | None = None
        self.partial = b""
        self.from_start = from_start

    def _open(self, *, at_end: bool) -> None:
        try:
            handle = self.path.open("rb")
        except FileNotFoundError:
            return
        self.file = handle
        self.inode = os.fstat(handle.fileno()).st_ino
        if at_end:
            handle.seek(0, os.SEEK_END)
        self.partial = b""

    def lines(self, max_bytes: int = MAX_BYTES) -> list[bytes]:
        """Complete lines appended since the last call (at most about max_bytes of them)."""
        if self.file is None:
            self._open(at_end=not self.from_start)
            self.from_start = True
            if self.file is None:
                return []
        assert self.file is not None
        chunk = self.file.read(max_bytes)
        if not chunk:
            try:
                stat = self.path.stat()
            except FileNotFoundError:
                return []
            if stat.st_ino != self.inode:
                # Rotated, and the old file is read to its end: follow the new one from its start.
                self.file.close()
                self._open(at_end=False)
            elif stat.st_size < self.file.tell():
                self.file.seek(0)
                self.partial = b""
            return []
        data = self.partial + chunk
        *complete, self.partial = data.split(b"\n")
        return complete


@dataclass(frozen=True)
class AttackReport:
    """What this pod's traffic says now: the signal's reasons and the ranges it blames."""

    minute: int
    reasons: tuple[str, ...]
    requests: int
    rejected_share: float
    ranges: tuple[str, ...]

    def wire(self) -> dict[str, Any]:
        """The annotation's JSON."""
        return {
            "minute": self.minute,
            "reasons": list(self.reasons),
            "requests": self.requests,
            "rejectedShare": round(self.rejected_share, 4),
            "ranges": list(self.ranges),
        }


class Traffic:
    """Counts requests into the agent's metrics and per-minute figures for the detector."""

    def __init__(self, log: Path, metrics: AgentMetrics) -> None:
        self.follower = LogFollower(log)
        self.metrics = metrics
        self.minutes: dict[int, MinuteCounts] = {}
        self.prefixes = (24, 48)
        self.since: int | None = None
        """First minute watched: earlier minutes are unknown, not quiet (no baseline of zeros)."""

    def read(self, *, prefix_v4: int, prefix_v6: int) -> int:
        """Take in what nginx logged since the last pass; returns how many requests."""
        if (prefix_v4, prefix_v6) != self.prefixes:
            self.prefixes = (prefix_v4, prefix_v6)
            self.minutes.clear()
        count = 0
        for line in self.follower.lines():
            try:
                obj = json.loads(line)
                record = LogRecord.from_json(obj)
                size = int(obj.get("bytes") or 0)
            except (ValueError, KeyError, TypeError):
                continue
            count += 1
            self._count(record, size)
        return count

    def _count(self, record: LogRecord, size: int) -> None:
        metrics = self.metrics
        metrics.requests.labels(status=str(record.status)).inc()
        metrics.bytes_served.inc(size)
        if record.status == TOO_MANY:
            metrics.rate_limited.inc()
        elif record.status == FORBIDDEN:
            metrics.denied.inc()
        minute = int(record.ts // 60) * 60
        counts = self.minutes.get(minute)
        if counts is None:
            counts = self.minutes[minute] = MinuteCounts(
                minute, prefix_v4=self.prefixes[0], prefix_v6=self.prefixes[1]
            )
            for old in sorted(self.minutes)[:-KEEP_MINUTES]:
                del self.minutes[old]
        counts.add(record)

    def report(
        self,
        now: float,
        *,
        min_requests: int,
        protected: Sequence[str],
        existing: Sequence[str],
    ) -> AttackReport | None:
        """The attack this pod sees in the current minute (or the one just past), if any."""
        current = int(now // 60) * 60
        if self.since is None:
            self.since = current
        first = max(self.since, current - 60 * (KEEP_MINUTES - 1))
        figures = [
            (self.minutes.get(m) or MinuteCounts(m)).figures()
            for m in range(first, current + 60, 60)
        ]
        signals = detect_attacks(figures, thresholds=Thresholds(min_requests=min_requests))
        recent = {current} | ({current - 60} if now - current < CARRY_SECONDS else set())
        live = [s for s in signals if s.minute in recent]
        self.metrics.attack_signal.set(1 if live else 0)
        if not live:
            return None
        ranges = suggest_deny_list(live, protected=protected, existing=existing)
        worst = max(live, key=lambda s: s.requests)
        return AttackReport(
            minute=worst.minute,
            reasons=worst.reasons,
            requests=worst.requests,
            rejected_share=worst.rejected_share,
            ranges=tuple(ranges),
        )
