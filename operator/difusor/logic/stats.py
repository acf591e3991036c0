"""Visitor statistics from the JSON access log: per-minute figures, mergeable sketches, sessions.

One pod's agent feeds every line of its access log to a `Compactor`, which keeps one `HourStats`
per clock hour: exact counters per minute, Apache DataSketches HLL sketches of the visitors (per
minute and per hour, mergeable across pods and hours) and the pod's *segments* — for each
visitor, runs of requests with no gap longer than the session timeout. Segments are what make
sessions exact across pods: a reader's requests land on different pods, but every gap longer
than the timeout between two of the reader's requests is a gap of each pod's own segments too,
so merging all pods' segments of a visitor whose gaps are within the timeout gives exactly the
sessions of the merged request stream (see `sessionize`).
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import zlib
from array import array
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Final

import datasketches
import orjson
from crawlerdetect import CrawlerDetect

#: A session ends after 30 minutes without a request (the usual web-analytics definition).
SESSION_GAP_MS: Final = 30 * 60 * 1000
#: HLL precision per minute (relative standard error 1.04/sqrt(2^12) = 1.6 %) and per hour (0.8 %).
MINUTE_LG_K: Final = 12
HOUR_LG_K: Final = 14
_HLL_TYPE: Final = datasketches.tgt_hll_type.HLL_4
#: Statuses whose requests count as content seen by a reader (2xx, 3xx).
_SEEN_BELOW: Final = 400
#: Segments per stored chunk: each chunk compresses to well under the 1 MiB of an API object.
SEGMENTS_PER_CHUNK: Final = 24_000
_HTML_SUFFIXES: Final = (".html", ".htm")
_V4, _V6 = 1 << 56, 2 << 56


class Kind(StrEnum):
    """What a request fetched."""

    PAGE = "page"
    """An HTML page or a view (a JSON that a reader opens: a district, a municipality ...)."""
    POLL = "poll"
    """A no-store path the site re-reads on a timer (/json/main.json): the readers' heartbeat."""
    ASSET = "asset"
    """Anything else: scripts, styles, images, downloads."""


@dataclass(frozen=True, slots=True)
class Hit:
    """The fields of one access-log line that the statistics use (see render.nginx.LOG_FIELDS)."""

    ts: float
    addr: str
    path: str
    status: int
    bytes: int
    ua: str


def parse_hit(line: str | bytes) -> Hit:
    """One JSON access-log line; ValueError naming the field when it is not one."""
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"not a JSON object: {exc}") from None
    if not isinstance(obj, dict):
        raise ValueError("not a JSON object")
    try:
        return Hit(
            float(obj["ts"]),
            str(obj.get("addr", "")),
            str(obj.get("path", "")),
            int(obj["status"]),
            int(obj["bytes"]),
            str(obj.get("ua", "")),
        )
    except (KeyError, TypeError, ValueError):
        missing = next(
            (n for n in ("ts", "status", "bytes") if not isinstance(obj.get(n), int | float)),
            "ts",
        )
        raise ValueError(f"field {missing!r} missing or not a number") from None


@dataclass(frozen=True)
class PageRules:
    """Which paths are pages, views and polls (from spec.statistics and spec.cache)."""

    view_prefixes: tuple[str, ...]
    """Paths under these prefixes (or equal to one without a trailing /) are views."""
    poll_paths: tuple[str, ...]
    """no-store paths: a path equal to one, or under one that ends with /, is a poll."""

    def kind(self, path: str) -> Kind:
        """Page, poll or asset."""
        if any(path == p or (p.endswith("/") and path.startswith(p)) for p in self.poll_paths):
            return Kind.POLL
        if path.endswith("/") or path.endswith(_HTML_SUFFIXES):
            return Kind.PAGE
        if any(path.startswith(p) if p.endswith("/") else path == p for p in self.view_prefixes):
            return Kind.PAGE
        return Kind.ASSET

    @staticmethod
    def page_name(path: str) -> str:
        """The page a path shows (`/index.html` and `/` are one page)."""
        if path.endswith("/index.html"):
            return path[: -len("index.html")]
        return path


class BotFilter:
    """Crawlers and tools, by the maintained patterns of crawlerdetect (cached per user agent)."""

    def __init__(self) -> None:
        self._detect = CrawlerDetect()
        self._cache: dict[str, bool] = {}

    def is_bot(self, ua: str) -> bool:
        """True for a crawler, a tool, or no user agent at all (no browser sends none)."""
        found = self._cache.get(ua)
        if found is None:
            found = not ua.strip() or ua == "-" or bool(self._detect.isCrawler(ua))
            if len(self._cache) > 100_000:
                self._cache.clear()
            self._cache[ua] = found
        return found


def visitor_key(addr: str, ua: str, *, salt: bytes) -> int:
    """A visitor: the client address and its user agent, hashed with the publication's salt."""
    digest = hashlib.blake2b(
        addr.encode() + b"\0" + ua.encode(), digest_size=8, key=salt[:64]
    ).digest()
    return int.from_bytes(digest, "big")


def network_of(addr: str) -> int:
    """The reader's network, kept instead of the address: IPv4 /24 or IPv6 /48 (0 if unknown)."""
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return 0
    if isinstance(ip, ipaddress.IPv4Address):
        return _V4 | (int(ip) >> 8)
    if ip.ipv4_mapped is not None:
        return _V4 | (int(ip.ipv4_mapped) >> 8)
    return _V6 | (int(ip) >> 80)


def network_address(network: int) -> str | None:
    """The first address of a network from `network_of` (for a geolocation look-up)."""
    family, value = network & (3 << 56), network & ((1 << 56) - 1)
    if family == _V4:
        return str(ipaddress.IPv4Address(value << 8))
    if family == _V6:
        return str(ipaddress.IPv6Address(value << 80))
    return None


@dataclass
class MinuteCounts:
    """Exact figures of one minute (of one pod, or summed over pods)."""

    requests: int = 0
    bytes: int = 0
    page_views: int = 0
    polls: int = 0
    assets: int = 0
    bots: int = 0
    """Requests from crawlers and tools (not in page views, polls, assets nor visitors)."""
    too_many: int = 0
    """429 answers (per-client limits)."""
    status: Counter[int] = field(default_factory=Counter)
    pages: Counter[str] = field(default_factory=Counter)
    """Page views by page."""

    def add(self, other: MinuteCounts) -> None:
        """Sum another minute's figures into this one."""
        self.requests += other.requests
        self.bytes += other.bytes
        self.page_views += other.page_views
        self.polls += other.polls
        self.assets += other.assets
        self.bots += other.bots
        self.too_many += other.too_many
        self.status.update(other.status)
        self.pages.update(other.pages)

    def wire(self) -> dict[str, Any]:
        """As stored (JSON)."""
        return {
            "requests": self.requests,
            "bytes": self.bytes,
            "pageViews": self.page_views,
            "polls": self.polls,
            "assets": self.assets,
            "bots": self.bots,
            "tooMany": self.too_many,
            "status": {str(k): v for k, v in sorted(self.status.items())},
            "pages": dict(self.pages),
        }

    @classmethod
    def from_wire(cls, obj: Mapping[str, Any]) -> MinuteCounts:
        """From `wire()`."""
        return cls(
            requests=int(obj["requests"]),
            bytes=int(obj["bytes"]),
            page_views=int(obj["pageViews"]),
            polls=int(obj["polls"]),
            assets=int(obj["assets"]),
            bots=int(obj["bots"]),
            too_many=int(obj["tooMany"]),
            status=Counter({int(k): int(v) for k, v in obj["status"].items()}),
            pages=Counter({str(k): int(v) for k, v in obj["pages"].items()}),
        )


@dataclass(slots=True)
class Segment:
    """A visitor's requests on one pod within one hour with no gap over the session timeout."""

    visitor: int
    network: int
    start_ms: int
    end_ms: int
    hits: int
    pages: int


def new_sketch(lg_k: int) -> datasketches.hll_sketch:
    """An empty HLL sketch (HLL_4: the most compact, the same estimates)."""
    return datasketches.hll_sketch(lg_k, _HLL_TYPE)


class HourStats:
    """One pod's statistics of one clock hour; what the agent ships and the report merges."""

    def __init__(self, hour: int, *, gap_ms: int = SESSION_GAP_MS) -> None:
        self.hour = hour
        self.gap_ms = gap_ms
        self.minutes: dict[int, MinuteCounts] = {}
        self.minute_sketches: dict[int, datasketches.hll_sketch] = {}
        self.sketch = new_sketch(HOUR_LG_K)
        self.closed: list[Segment] = []
        self.open: dict[int, Segment] = {}
        self.malformed = 0
        """Lines that were not access-log records (counted, never silently dropped)."""
        self.position: tuple[int, int] = (-1, -1)
        """(log generation, byte offset) of the last line counted here: replays skip up to it."""

    def minute(self, minute: int) -> MinuteCounts:
        """The counts of a minute (created empty)."""
        found = self.minutes.get(minute)
        if found is None:
            found = self.minutes[minute] = MinuteCounts()
        return found

    def add(
        self, hit: Hit, *, kind: Kind, page: str, bot: bool, visitor: int, network: int
    ) -> None:
        """Count one request."""
        minute = int(hit.ts) // 60 * 60
        counts = self.minute(minute)
        counts.requests += 1
        counts.bytes += hit.bytes
        counts.status[hit.status] += 1
        if hit.status == 429:
            counts.too_many += 1
        if bot:
            counts.bots += 1
            return
        if hit.status >= _SEEN_BELOW:
            return
        if kind is Kind.PAGE:
            counts.page_views += 1
            counts.pages[page] += 1
        elif kind is Kind.POLL:
            counts.polls += 1
        else:
            counts.assets += 1
        sketch = self.minute_sketches.get(minute)
        if sketch is None:
            sketch = self.minute_sketches[minute] = new_sketch(MINUTE_LG_K)
        sketch.update(visitor)
        self.sketch.update(visitor)
        ms = round(hit.ts * 1000)
        viewed = 1 if kind is Kind.PAGE else 0
        seg = self.open.get(visitor)
        if seg is not None and ms - seg.end_ms <= self.gap_ms:
            seg.end_ms = max(seg.end_ms, ms)
            seg.start_ms = min(seg.start_ms, ms)
            seg.hits += 1
            seg.pages += viewed
            return
        if seg is not None:
            self.closed.append(seg)
        self.open[visitor] = Segment(visitor, network, ms, ms, 1, viewed)

    def segments(self) -> list[Segment]:
        """Every segment, closed and open."""
        return [*self.closed, *self.open.values()]

    # --- storage -----------------------------------------------------------------------------

    def payload(self) -> dict[str, bytes]:
        """The hour as files: `counts.json.z` and `segments-N.bin.z` chunks (zlib)."""
        counts = {
            "hour": self.hour,
            "gapMs": self.gap_ms,
            "malformed": self.malformed,
            "position": list(self.position),
            "minutes": {str(m): c.wire() for m, c in sorted(self.minutes.items())},
            "sketch": self.sketch.serialize_compact().hex(),
            "minuteSketches": {
                str(m): s.serialize_compact().hex() for m, s in sorted(self.minute_sketches.items())
            },
        }
        out = {"counts.json.z": zlib.compress(json.dumps(counts).encode(), 6)}
        segments = self.segments()
        for index in range(0, max(len(segments), 1), SEGMENTS_PER_CHUNK):
            chunk = segments[index : index + SEGMENTS_PER_CHUNK]
            out[f"segments-{index // SEGMENTS_PER_CHUNK}.bin.z"] = _encode_segments(
                chunk, base_ms=self.hour * 1000
            )
        return out

    @classmethod
    def from_payload(cls, files: Mapping[str, bytes]) -> HourStats:
        """From `payload()` (every chunk); ValueError naming the file that is not one."""
        try:
            counts = json.loads(zlib.decompress(files["counts.json.z"]))
        except (KeyError, zlib.error, ValueError) as exc:
            raise ValueError(f"counts.json.z unreadable: {exc}") from None
        stats = cls(int(counts["hour"]), gap_ms=int(counts["gapMs"]))
        stats.malformed = int(counts["malformed"])
        gen, offset = counts["position"]
        stats.position = (int(gen), int(offset))
        stats.minutes = {int(m): MinuteCounts.from_wire(c) for m, c in counts["minutes"].items()}
        stats.sketch = datasketches.hll_sketch.deserialize(bytes.fromhex(counts["sketch"]))
        stats.minute_sketches = {
            int(m): datasketches.hll_sketch.deserialize(bytes.fromhex(s))
            for m, s in counts["minuteSketches"].items()
        }
        for name in sorted(n for n in files if n.startswith("segments-")):
            try:
                segments = _decode_segments(files[name], base_ms=stats.hour * 1000)
            except (zlib.error, ValueError) as exc:
                raise ValueError(f"{name} unreadable: {exc}") from None
            for seg in segments:
                previous = stats.open.get(seg.visitor)
                if previous is not None:
                    stats.closed.append(previous)
                stats.open[seg.visitor] = seg
        return stats


def _encode_segments(segments: Sequence[Segment], *, base_ms: int) -> bytes:
    visitors = array("Q", (s.visitor for s in segments))
    networks = array("Q", (s.network for s in segments))
    starts = array("I", (s.start_ms - base_ms for s in segments))
    ends = array("I", (s.end_ms - s.start_ms for s in segments))
    counts = array("I", (v for s in segments for v in (s.hits, s.pages)))
    header = array("I", [len(segments)])
    body = b"".join(a.tobytes() for a in (header, visitors, networks, starts, ends, counts))
    return zlib.compress(body, 6)


def _decode_segments(data: bytes, *, base_ms: int) -> list[Segment]:
    body = zlib.decompress(data)
    header = array("I")
    header.frombytes(body[:4])
    n = header[0]
    offset = 4
    columns: list[array[int]] = []
    for code, length in (("Q", n), ("Q", n), ("I", n), ("I", n), ("I", 2 * n)):
        column = array(code)
        size = column.itemsize * length
        column.frombytes(body[offset : offset + size])
        if len(column) != length:
            raise ValueError("truncated segments")
        offset += size
        columns.append(column)
    visitors, networks, starts, lengths, counts = columns
    return [
        Segment(
            visitors[i],
            networks[i],
            base_ms + starts[i],
            base_ms + starts[i] + lengths[i],
            counts[2 * i],
            counts[2 * i + 1],
        )
        for i in range(n)
    ]


class Compactor:
    """One pod's access log turned into `HourStats`, line by line (the agent's pure half)."""

    def __init__(
        self,
        rules: PageRules,
        *,
        salt: bytes,
        gap_ms: int = SESSION_GAP_MS,
        loader: Callable[[int], HourStats | None] | None = None,
    ) -> None:
        self.rules = rules
        self.loader = loader
        self.salt = salt
        self.gap_ms = gap_ms
        self.bots = BotFilter()
        self.hours: dict[int, HourStats] = {}
        self.dirty: set[int] = set()
        self._kinds: dict[str, tuple[Kind, str]] = {}
        self._visitors: dict[tuple[str, str], tuple[int, int]] = {}
        self._last_hour: int | None = None

    def hour(self, hour: int) -> HourStats:
        """The statistics of an hour (created empty)."""
        found = self.hours.get(hour)
        if found is None:
            found = self.loader(hour) if self.loader is not None else None
            if found is None:
                found = HourStats(hour, gap_ms=self.gap_ms)
            self.hours[hour] = found
        return found

    def feed(self, line: str | bytes, position: tuple[int, int] | None = None) -> None:
        """Count one line found at `position` (log generation, offset of its end).

        A line at or before the position an hour already counted is skipped (a replay after a
        restart counts each line once); without a position every line counts. A line that is no
        record counts as malformed in the latest hour.
        """
        try:
            hit = parse_hit(line)
        except ValueError:
            if line.strip():
                hour = self._last_hour if self._last_hour is not None else 0
                stats = self.hour(hour)
                if position is None or position > stats.position:
                    stats.malformed += 1
                    stats.position = position or stats.position
                    self.dirty.add(hour)
            return
        self.add(hit, position)

    def add(self, hit: Hit, position: tuple[int, int] | None = None) -> None:
        """Count one request (unless its hour counted this position already)."""
        hour = int(hit.ts) // 3600 * 3600
        self._last_hour = hour
        stats = self.hour(hour)
        if position is not None:
            if position <= stats.position:
                return
            stats.position = position
        kind_page = self._kinds.get(hit.path)
        if kind_page is None:
            if len(self._kinds) > 200_000:
                self._kinds.clear()
            kind_page = self._kinds[hit.path] = (
                self.rules.kind(hit.path),
                self.rules.page_name(hit.path),
            )
        key = (hit.addr, hit.ua)
        ident = self._visitors.get(key)
        if ident is None:
            if len(self._visitors) > 500_000:
                self._visitors.clear()
            ident = self._visitors[key] = (
                visitor_key(hit.addr, hit.ua, salt=self.salt),
                network_of(hit.addr),
            )
        stats.add(
            hit,
            kind=kind_page[0],
            page=kind_page[1],
            bot=self.bots.is_bot(hit.ua),
            visitor=ident[0],
            network=ident[1],
        )
        self.dirty.add(hour)

    def forget_before(self, hour: int) -> None:
        """Drop hours before this one from memory (they are shipped and no longer written)."""
        for old in [h for h in self.hours if h < hour and h not in self.dirty]:
            del self.hours[old]


# --- the night: every pod's hours merged ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Session:
    """One visit: a visitor's requests, on any pod, with no gap over the session timeout."""

    visitor: int
    network: int
    start_ms: int
    end_ms: int
    hits: int
    pages: int

    @property
    def seconds(self) -> float:
        """Time on site: from the first request to the last."""
        return (self.end_ms - self.start_ms) / 1000


def sessionize(segments: Iterable[Segment], *, gap_ms: int = SESSION_GAP_MS) -> list[Session]:
    """Sessions from every pod's segments: a visitor's segments merge while gaps <= gap_ms."""
    by_visitor: dict[int, list[Segment]] = {}
    for seg in segments:
        by_visitor.setdefault(seg.visitor, []).append(seg)
    sessions: list[Session] = []
    for visitor, segs in by_visitor.items():
        segs.sort(key=lambda s: s.start_ms)
        first = segs[0]
        start, end, hits, pages, network = (
            first.start_ms, first.end_ms, first.hits, first.pages, first.network,
        )  # fmt: skip
        for seg in segs[1:]:
            if seg.start_ms - end > gap_ms:
                sessions.append(Session(visitor, network, start, end, hits, pages))
                start, end, hits, pages, network = (
                    seg.start_ms, seg.end_ms, seg.hits, seg.pages, seg.network,
                )  # fmt: skip
            else:
                end = max(end, seg.end_ms)
                hits += seg.hits
                pages += seg.pages
        sessions.append(Session(visitor, network, start, end, hits, pages))
    sessions.sort(key=lambda s: (s.start_ms, s.visitor))
    return sessions


@dataclass(frozen=True)
class Estimate:
    """A sketch's estimate with its bounds at two standard deviations (95 %)."""

    estimate: float
    lower: float
    upper: float

    @classmethod
    def of(cls, sketch: datasketches.hll_sketch) -> Estimate:
        """The estimate of a sketch."""
        return cls(sketch.get_estimate(), sketch.get_lower_bound(2), sketch.get_upper_bound(2))


@dataclass
class Night:
    """Every pod's statistics over a window, merged."""

    start: int
    end: int
    minutes: dict[int, MinuteCounts]
    minute_visitors: dict[int, Estimate]
    hour_visitors: dict[int, Estimate]
    visitors: Estimate
    """Unique visitors over the window, from the union of the hour sketches."""
    visitors_exact: int
    """Distinct visitor keys in the segments (what the sketch estimates)."""
    sessions: list[Session]
    malformed: int
    pods: int

    @property
    def totals(self) -> MinuteCounts:
        """The window's figures summed."""
        total = MinuteCounts()
        for counts in self.minutes.values():
            total.add(counts)
        return total


def merge_night(
    hours: Iterable[tuple[str, HourStats]], *, start: int, end: int, gap_ms: int = SESSION_GAP_MS
) -> Night:
    """Merge (pod, hour) statistics whose hour starts in [start, end), minutes in [start, end)."""
    minutes: dict[int, MinuteCounts] = {}
    minute_unions: dict[int, datasketches.hll_union] = {}
    hour_unions: dict[int, datasketches.hll_union] = {}
    total = datasketches.hll_union(HOUR_LG_K)
    segments: list[Segment] = []
    malformed = 0
    pods: set[str] = set()
    for pod, stats in hours:
        if not start - 3600 < stats.hour < end:
            continue
        pods.add(pod)
        malformed += stats.malformed
        for minute, counts in stats.minutes.items():
            if start <= minute < end:
                minutes.setdefault(minute, MinuteCounts()).add(counts)
        for minute, sketch in stats.minute_sketches.items():
            if start <= minute < end:
                minute_unions.setdefault(minute, datasketches.hll_union(MINUTE_LG_K)).update(sketch)
        whole_hour = start <= stats.hour and stats.hour + 3600 <= end
        if whole_hour:
            hour_unions.setdefault(stats.hour, datasketches.hll_union(HOUR_LG_K)).update(
                stats.sketch
            )
            total.update(stats.sketch)
        else:
            # A window that cuts an hour: the minutes inside it are the exact contribution.
            partial = datasketches.hll_union(MINUTE_LG_K)
            for minute, sketch in stats.minute_sketches.items():
                if start <= minute < end:
                    partial.update(sketch)
                    total.update(sketch)
            hour_unions.setdefault(stats.hour, datasketches.hll_union(HOUR_LG_K)).update(
                partial.get_result(_HLL_TYPE)
            )
        lo, hi = start * 1000, end * 1000
        segments.extend(s for s in stats.segments() if lo <= s.start_ms < hi)
    sessions = sessionize(segments, gap_ms=gap_ms)
    return Night(
        start=start,
        end=end,
        minutes=dict(sorted(minutes.items())),
        minute_visitors={
            m: Estimate.of(u.get_result(_HLL_TYPE)) for m, u in sorted(minute_unions.items())
        },
        hour_visitors={
            h: Estimate.of(u.get_result(_HLL_TYPE)) for h, u in sorted(hour_unions.items())
        },
        visitors=Estimate.of(total.get_result(_HLL_TYPE)),
        visitors_exact=len({s.visitor for s in segments}),
        sessions=sessions,
        malformed=malformed,
        pods=len(pods),
    )


def geography(
    sessions: Iterable[Session], lookup: Callable[[int], tuple[str, str | None]]
) -> dict[tuple[str, str | None], tuple[int, int]]:
    """(country, Mexican state or None) -> (unique visitors, sessions), from each network once."""
    places: dict[int, tuple[str, str | None]] = {}
    visitors: dict[tuple[str, str | None], set[int]] = {}
    counts: Counter[tuple[str, str | None]] = Counter()
    for session in sessions:
        place = places.get(session.network)
        if place is None:
            place = places[session.network] = lookup(session.network)
        visitors.setdefault(place, set()).add(session.visitor)
        counts[place] += 1
    return {
        place: (len(visitors[place]), counts[place])
        for place in sorted(visitors, key=lambda p: (-len(visitors[p]), p[0], p[1] or ""))
    }


def percentile(values: Sequence[float], q: float) -> float:
    """The q-quantile (0..1) by nearest rank of sorted values; 0 for none."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q * (len(ordered) - 1))))
    return float(ordered[rank])
