"""Attack detection over access-log records: per-minute figures, attack signals, deny-list hints."""

from __future__ import annotations

import ipaddress
import statistics
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

#: Statuses counted as rejected traffic: 429 from the per-client limits, 403 from the deny list.
TOO_MANY = 429
FORBIDDEN = 403


@dataclass(frozen=True, slots=True)
class LogRecord:
    """The fields of one access-log line that detection needs."""

    ts: float
    """Seconds since the epoch, with milliseconds (nginx $msec)."""
    addr: str
    """The real client address (after the trusted-proxy header)."""
    status: int
    """HTTP status sent."""
    path: str = ""
    """Request path."""

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> LogRecord:
        """A record from one parsed line of the JSON access log (see render.nginx.LOG_FIELDS)."""
        return cls(
            ts=float(obj["ts"]),
            addr=str(obj.get("addr", "")),
            status=int(obj["status"]),
            path=str(obj.get("path", "")),
        )


@dataclass(frozen=True, slots=True)
class Talker:
    """An address or a range, with its requests and how many of them were rejected."""

    key: str
    requests: int
    rejected: int


@dataclass(frozen=True, slots=True)
class MinuteFigures:
    """Traffic of one minute."""

    minute: int
    """Start of the minute, seconds since the epoch."""
    requests: int
    too_many: int
    """429 answers."""
    forbidden: int
    """403 answers."""
    top_addresses: tuple[Talker, ...]
    top_ranges: tuple[Talker, ...]
    """By /24 for IPv4 and /48 for IPv6 (or the prefixes asked for)."""

    @property
    def rejected(self) -> int:
        """429 and 403 answers."""
        return self.too_many + self.forbidden

    @property
    def rejected_share(self) -> float:
        """Rejected answers over all requests (0 in a quiet minute)."""
        return self.rejected / self.requests if self.requests else 0.0


@dataclass(frozen=True, slots=True)
class Thresholds:
    """When a minute's figures raise an attack signal."""

    rejected_share: float = 0.2
    """Share of rejected answers (429 + 403) from which a minute is an attack."""
    rate_factor: float = 5.0
    """Requests above this multiple of the trailing baseline are an anomaly."""
    baseline_minutes: int = 15
    """Trailing minutes whose median request count is the baseline."""
    min_baseline_minutes: int = 5
    """Fewest trailing minutes needed to judge a rate anomaly."""
    min_requests: int = 600
    """A minute with fewer requests never signals (10 per second)."""


@dataclass(frozen=True, slots=True)
class AttackSignal:
    """A minute that looks like an attack, and why."""

    minute: int
    reasons: tuple[str, ...]
    """`rejected-share` and/or `rate-anomaly`."""
    requests: int
    rejected_share: float
    baseline: float | None
    """Median requests of the trailing minutes (None when too few to judge)."""
    top_ranges: tuple[Talker, ...]


def address_range(addr: str, *, prefix_v4: int = 24, prefix_v6: int = 48) -> str | None:
    """The range (CIDR) holding an address, or None when it is not an IP address."""
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return None
    prefix = prefix_v4 if ip.version == 4 else prefix_v6
    return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False))


def _top(requests: Counter[str], rejected: Counter[str], top: int) -> tuple[Talker, ...]:
    ranked = sorted(requests.items(), key=lambda item: (-item[1], item[0]))[:top]
    return tuple(Talker(key, count, rejected[key]) for key, count in ranked)


class MinuteCounts:
    """The running counts of one minute, fed one record at a time (bounded by `max_keys`).

    An agent that follows a busy access log keeps these instead of the records: a flood of a
    million requests costs a few counters, and a flood from many addresses at most `max_keys`
    of them per minute (later newcomers are counted in the totals only).
    """

    def __init__(
        self, minute: int, *, prefix_v4: int = 24, prefix_v6: int = 48, max_keys: int = 100000
    ) -> None:
        self.minute = minute
        self.prefix_v4, self.prefix_v6, self.max_keys = prefix_v4, prefix_v6, max_keys
        self.requests = self.too_many = self.forbidden = 0
        self.addresses: Counter[str] = Counter()
        self.address_rejected: Counter[str] = Counter()
        self.ranges: Counter[str] = Counter()
        self.range_rejected: Counter[str] = Counter()

    def add(self, record: LogRecord) -> None:
        """Count one request."""
        self.requests += 1
        self.too_many += record.status == TOO_MANY
        self.forbidden += record.status == FORBIDDEN
        cidr = address_range(record.addr, prefix_v4=self.prefix_v4, prefix_v6=self.prefix_v6)
        if cidr is None:
            return
        rejected = record.status in (TOO_MANY, FORBIDDEN)
        if record.addr in self.addresses or len(self.addresses) < self.max_keys:
            self.addresses[record.addr] += 1
            self.address_rejected[record.addr] += rejected
        if cidr in self.ranges or len(self.ranges) < self.max_keys:
            self.ranges[cidr] += 1
            self.range_rejected[cidr] += rejected

    def figures(self, *, top: int = 10) -> MinuteFigures:
        """The minute's figures so far."""
        return MinuteFigures(
            minute=self.minute,
            requests=self.requests,
            too_many=self.too_many,
            forbidden=self.forbidden,
            top_addresses=_top(self.addresses, self.address_rejected, top),
            top_ranges=_top(self.ranges, self.range_rejected, top),
        )


def minute_figures(
    records: Iterable[LogRecord], *, top: int = 10, prefix_v4: int = 24, prefix_v6: int = 48
) -> list[MinuteFigures]:
    """Per-minute figures, in time order, with quiet minutes between the first and last as zeros."""
    by_minute: dict[int, MinuteCounts] = {}
    for record in records:
        minute = int(record.ts // 60) * 60
        counts = by_minute.get(minute)
        if counts is None:
            counts = by_minute[minute] = MinuteCounts(
                minute, prefix_v4=prefix_v4, prefix_v6=prefix_v6
            )
        counts.add(record)
    if not by_minute:
        return []
    return [
        (by_minute.get(minute) or MinuteCounts(minute)).figures(top=top)
        for minute in range(min(by_minute), max(by_minute) + 60, 60)
    ]


def detect_attacks(
    figures: Sequence[MinuteFigures], *, thresholds: Thresholds | None = None
) -> list[AttackSignal]:
    """The minutes whose rejected share or request rate (against the trailing median) is high.

    The baseline is the median of the preceding `baseline_minutes` (attack minutes included), so
    a lasting step such as 20:00 on election night stops being an anomaly after a few minutes
    while its rejected share, if any, keeps signalling.
    """
    limits = thresholds or Thresholds()
    signals = []
    for index, current in enumerate(figures):
        trailing = [f.requests for f in figures[max(0, index - limits.baseline_minutes) : index]]
        baseline = (
            float(statistics.median(trailing))
            if len(trailing) >= limits.min_baseline_minutes
            else None
        )
        if current.requests < limits.min_requests:
            continue
        reasons = []
        if current.rejected_share >= limits.rejected_share:
            reasons.append("rejected-share")
        if baseline is not None and current.requests > limits.rate_factor * max(baseline, 1.0):
            reasons.append("rate-anomaly")
        if reasons:
            signals.append(
                AttackSignal(
                    minute=current.minute,
                    reasons=tuple(reasons),
                    requests=current.requests,
                    rejected_share=current.rejected_share,
                    baseline=baseline,
                    top_ranges=current.top_ranges,
                )
            )
    return signals


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _within(network: Network, other: Network) -> bool:
    if isinstance(network, ipaddress.IPv4Network) and isinstance(other, ipaddress.IPv4Network):
        return network.subnet_of(other)
    if isinstance(network, ipaddress.IPv6Network) and isinstance(other, ipaddress.IPv6Network):
        return network.subnet_of(other)
    return False


def suggest_deny_list(
    signals: Iterable[AttackSignal],
    *,
    min_share: float = 0.1,
    min_rejected_share: float = 0.5,
    protected: Sequence[str] = (),
    existing: Sequence[str] = (),
    limit: int = 32,
) -> list[str]:
    """CIDRs to add to rateLimit.denyList: the ranges that drove the attack minutes.

    A range qualifies in a signalled minute when it sent at least `min_share` of that minute's
    requests and at least `min_rejected_share` of its own requests were rejected (a busy range
    of legitimate readers behind one NAT is not rejected, so it is spared). Ranges overlapping
    `protected` (the trusted proxies and CDN: denying them denies everyone) or already covered
    by `existing` are left out. Most offending requests first, at most `limit`.
    """
    shielded = [ipaddress.ip_network(cidr, strict=False) for cidr in protected]
    covered = [ipaddress.ip_network(cidr, strict=False) for cidr in existing]
    offending: Counter[str] = Counter()
    for signal in signals:
        for talker in signal.top_ranges:
            if (
                talker.requests >= min_share * signal.requests
                and talker.rejected >= min_rejected_share * talker.requests
            ):
                offending[talker.key] += talker.requests
    suggested = []
    for cidr, _count in sorted(offending.items(), key=lambda item: (-item[1], item[0])):
        network = ipaddress.ip_network(cidr, strict=False)
        if any(network.overlaps(other) for other in shielded):
            continue
        if any(_within(network, other) for other in covered):
            continue
        suggested.append(str(network))
    return suggested[:limit]
