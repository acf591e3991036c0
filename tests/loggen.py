"""Generated access logs with known truth: readers of a PREP site spread over pods, bots, a flood.

The lines have the exact shape of the rendered nginx `prep_json` format. `truth()` computes by
brute force, from the requests themselves, what the statistics must find.
"""

from __future__ import annotations

import json
import random
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

from difusor.logic.stats import SESSION_GAP_MS, Kind, PageRules

#: 2 June 2024, 20:00 in Michoacán (UTC-6): the publication starts.
NIGHT_START = int(datetime(2024, 6, 2, 20, 0, tzinfo=timezone(timedelta(hours=-6))).timestamp())
RULES = PageRules(view_prefixes=("/json/",), poll_paths=("/json/main.json",))
#: Networks that the GeoLite2 City database of `maxminddb-geolite2` places in Mexico (Michoacán
#: first, then other states), in the United States, and a private range that it does not place.
NETWORKS = (
    "189.203.{}.{}",
    "187.190.{}.{}",
    "201.141.{}.{}",
    "200.94.{}.{}",
    "8.8.{}.{}",
    "10.9.{}.{}",
)
BROWSERS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0 Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Linux; Android 14; SM-A546E) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0 Mobile Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_4) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Safari/605.1.15",
    "Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0",
)
BOTS = (
    "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
    "Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)",
    "curl/8.5.0",
)
ASSETS = ("/assets/app.js", "/assets/app.css", "/img/logo-iem.svg")
VIEWS = tuple(f"/json/distritos/{d:02d}.json" for d in range(1, 25)) + tuple(
    f"/json/municipios/{m:03d}.json" for m in range(1, 113)
)
MX_TZ = timezone(timedelta(hours=-6))


@dataclass(frozen=True, slots=True)
class Req:
    """One request as generated (before it is a log line)."""

    ts_ms: int
    addr: str
    ua: str
    path: str
    status: int
    bytes: int
    pod: int


def line(req: Req) -> str:
    """The access-log line nginx writes for a request (render.nginx LOG_FIELDS)."""
    when = datetime.fromtimestamp(req.ts_ms / 1000, MX_TZ).isoformat(timespec="seconds")
    return (
        f'{{"ts":{req.ts_ms // 1000}.{req.ts_ms % 1000:03d},"time":"{when}",'
        f'"addr":"{req.addr}","peer":"{req.addr}","method":"GET","path":{json.dumps(req.path)},'
        f'"query":"","status":{req.status},"bytes":{req.bytes},"rt":0.001,'
        f'"ua":{json.dumps(req.ua)},"ref":"","host":"prep.example.mx","cut":"20240602_2040"}}\n'
    )


def generate(
    *,
    visitors: int,
    pods: int = 3,
    start: int = NIGHT_START,
    hours: float = 2.0,
    seed: int = 0,
    bots: int = 3,
    flooders: int = 1,
    poll_seconds: float = 60.0,
    surge: bool = False,
) -> list[Req]:
    """Requests of `visitors` readers (1-3 visits each), bots and flooders, sorted by time.

    With `surge`, visits start five times as often in the first 7 hours (20:00 to 03:00, the
    plateau of an election night) as afterwards.
    """
    rng = random.Random(seed)
    span_ms = int(hours * 3600 * 1000)
    t0 = start * 1000
    plateau = min(span_ms, 7 * 3600 * 1000)
    out: list[Req] = []
    for v in range(visitors):
        net = NETWORKS[min(int(rng.expovariate(0.9)), len(NETWORKS) - 1)]
        addr = net.format(v // 250 % 250, v % 250 + 1)
        ua = BROWSERS[rng.randrange(len(BROWSERS))]
        if surge and rng.random() < 5 * plateau / (5 * plateau + span_ms - plateau):
            at = t0 + rng.randrange(plateau)
        else:
            at = t0 + rng.randrange(span_ms)
        for _visit in range(rng.choice((1, 1, 1, 2, 3))):
            if at >= t0 + span_ms:
                break
            length = int(rng.expovariate(1 / (12 * 60_000)))
            end = min(at + length, t0 + span_ms - 1)
            out.append(_req(rng, at, addr, ua, "/", 200, pods))
            for asset in ASSETS:
                out.append(_req(rng, at + rng.randrange(50, 900), addr, ua, asset, 200, pods))
            now = at
            while now <= end:
                out.append(_req(rng, now, addr, ua, "/json/main.json", 200, pods))
                if rng.random() < 0.4:
                    view = VIEWS[min(int(rng.expovariate(0.15)), len(VIEWS) - 1)]
                    status = 304 if rng.random() < 0.1 else 200
                    out.append(
                        _req(rng, now + rng.randrange(1, 5000), addr, ua, view, status, pods)
                    )
                now += int(poll_seconds * 1000 * rng.uniform(0.8, 1.2))
            at = end + int(rng.expovariate(1 / (40 * 60_000))) + rng.randrange(1000)
    for b in range(bots):
        ua = BOTS[b % len(BOTS)]
        for _ in range(200):
            path = VIEWS[rng.randrange(len(VIEWS))] if rng.random() < 0.7 else "/"
            out.append(
                _req(rng, t0 + rng.randrange(span_ms), f"66.249.66.{b + 1}", ua, path, 200, pods)
            )
    for f in range(flooders):
        at = t0 + rng.randrange(span_ms // 2)
        for i in range(3000):
            status = 200 if i % 50 == 0 else 429
            out.append(
                _req(rng, at + i * 20, f"45.95.{f}.7", BROWSERS[0], "/json/main.json", status, pods)
            )
    out = [r for r in out if r.ts_ms < t0 + span_ms]
    out.sort(key=lambda r: (r.ts_ms, r.pod))
    return out


def _req(rng: random.Random, ts: int, addr: str, ua: str, path: str, status: int, pods: int) -> Req:
    size = 0 if status in (304, 429) else 600 + rng.randrange(4000)
    return Req(ts, addr, ua, path, status, size, rng.randrange(pods))


def per_pod(reqs: Iterable[Req], pods: int) -> list[list[str]]:
    """Each pod's log lines, in time order."""
    lines: list[list[str]] = [[] for _ in range(pods)]
    for r in reqs:
        lines[r.pod % pods].append(line(r))
    return lines


@dataclass
class Truth:
    """What brute force finds in the requests."""

    requests: int
    bytes: int
    page_views: int
    polls: int
    assets: int
    bots: int
    too_many: int
    status: Counter[int]
    pages: Counter[str]
    per_minute_requests: dict[int, int]
    visitors: int
    sessions: list[tuple[str, int, int, int]]
    """(visitor, start ms, end ms, page views) sorted."""


def truth(reqs: list[Req], *, bot_uas: Iterable[str] = BOTS, gap_ms: int = SESSION_GAP_MS) -> Truth:
    """Brute force over every request of every pod."""
    bots = set(bot_uas)
    per_minute: Counter[int] = Counter()
    status: Counter[int] = Counter()
    pages: Counter[str] = Counter()
    kinds: Counter[Kind] = Counter()
    times: dict[str, list[tuple[int, int]]] = defaultdict(list)
    n_bots = too_many = total_bytes = 0
    for r in reqs:
        per_minute[r.ts_ms // 60_000 * 60] += 1
        status[r.status] += 1
        total_bytes += r.bytes
        too_many += r.status == 429
        if r.ua in bots:
            n_bots += 1
            continue
        if r.status >= 400:
            continue
        kind = RULES.kind(r.path)
        kinds[kind] += 1
        if kind is Kind.PAGE:
            pages[RULES.page_name(r.path)] += 1
        times[f"{r.addr}|{r.ua}"].append((r.ts_ms, 1 if kind is Kind.PAGE else 0))
    sessions = []
    for visitor, hits in times.items():
        hits.sort()
        start, prev, views = hits[0][0], hits[0][0], hits[0][1]
        for ts, viewed in hits[1:]:
            if ts - prev > gap_ms:
                sessions.append((visitor, start, prev, views))
                start, views = ts, 0
            prev = ts
            views += viewed
        sessions.append((visitor, start, prev, views))
    return Truth(
        requests=len(reqs),
        bytes=total_bytes,
        page_views=kinds[Kind.PAGE],
        polls=kinds[Kind.POLL],
        assets=kinds[Kind.ASSET],
        bots=n_bots,
        too_many=too_many,
        status=status,
        pages=pages,
        per_minute_requests=dict(per_minute),
        visitors=len(times),
        sessions=sorted(sessions, key=lambda s: (s[1], s[0])),
    )


def geolite2_database() -> Path:
    """The GeoLite2 City database (MaxMind DB format) that the `maxminddb-geolite2` wheel ships."""
    import _maxminddb_geolite2  # type: ignore[import-not-found]

    return Path(_maxminddb_geolite2.__file__).parent / "GeoLite2-City.mmdb"


def night_start_utc_hour() -> str:
    """The UTC hour stamp of the night's start (for object names in tests)."""
    return datetime.fromtimestamp(NIGHT_START, UTC).strftime("%Y%m%d%H")
