"""What to purge from the CDN after a promotion, how to batch it, and how long to wait on a refusal.

The plan is a pure function of the manifests of the last purged cut and the new one: the paths
whose content changed (added, removed or different digest), the no-store paths and the index
pages, collapsed to a directory prefix or to everything when that is cheaper for the provider.
"Cheaper" is judged by what each provider's documentation says it limits or bills: a prefix is
used only when every file under it is stale (it then replaces many items and invalidates nothing
still valid); everything when every file is stale or when the paths exceed what the provider takes
in one purge. A provider without prefixes gets the exact paths.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from email.utils import parsedate_to_datetime

#: A cut's manifest as the planner needs it: file path (no leading slash) -> sha256.
Manifest = Mapping[str, str]


@dataclass(frozen=True)
class Caps:
    """What one provider takes, from its documentation (reference/cdn-apis.md)."""

    batch: int
    """Items in one request (URLs, prefixes or tags)."""
    prefixes: bool
    """Prefix (or trailing-wildcard) purge exists."""
    everything: bool
    """A purge-everything request exists."""
    tags: bool
    """Purge by cache tag / surrogate key exists."""
    max_paths: int | None = None
    """Most paths one purge may carry (beyond it: everything)."""
    max_prefixes: int | None = None
    """Most prefixes one purge may carry (CloudFront: 15 wildcard paths in progress)."""
    max_body_bytes: int | None = None
    """Largest request body (Akamai: 50 KB); batches are cut to fit."""


CAPS: dict[str, Caps] = {
    # 100 items a request; prefix purge exists (its request rate is the lower one).
    "cloudflare": Caps(batch=100, prefixes=True, everything=True, tags=True),
    # URL purge is one PURGE per URL; surrogate keys up to 256 a request; purge_all is hard only.
    "fastly": Caps(batch=256, prefixes=False, everything=True, tags=True),
    # objects up to a 50 KB body; the url token bucket holds 10,000; no prefix; cpcode = everything.
    "akamai": Caps(
        batch=10_000,
        prefixes=False,
        everything=True,
        tags=True,
        max_paths=10_000,
        max_body_bytes=50_000,
    ),
    # 3,000 paths or 15 wildcard paths in progress; `/*` is one billed path.
    "cloudfront": Caps(
        batch=3_000, prefixes=True, everything=True, tags=False, max_paths=3_000, max_prefixes=15
    ),
    # One PURGE per URL; BAN by regular expression for prefixes and everything.
    "varnish": Caps(batch=1, prefixes=True, everything=True, tags=False),
    # Our own signed JSON: the receiver decides; batches keep bodies small.
    "webhook": Caps(batch=1_000, prefixes=True, everything=True, tags=True),
}


@dataclass(frozen=True)
class Plan:
    """What one purge removes from the cache."""

    paths: tuple[str, ...] = ()
    """URL paths (`/json/main.json`)."""
    prefixes: tuple[str, ...] = ()
    """Directory prefixes, each ending in `/` (`/json/distritos/`)."""
    tags: tuple[str, ...] = ()
    """Cache tags / surrogate keys."""
    everything: bool = False
    """Purge the whole site."""
    why: str = ""
    """One line saying how the plan was chosen (for the Event and the status)."""
    stale: int = 0
    """Files whose content changed between the two cuts."""

    @property
    def items(self) -> int:
        """Items sent to the provider (everything counts as one)."""
        return 1 if self.everything else len(self.paths) + len(self.prefixes) + len(self.tags)


@dataclass(frozen=True)
class Configured:
    """The purge the spec asks for instead of the computed one (cdn.paths, prefixes, tags, everything)."""

    paths: tuple[str, ...] = ()
    prefixes: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    everything: bool = False

    def __bool__(self) -> bool:
        return bool(self.paths or self.prefixes or self.tags or self.everything)


def _url(path: str) -> str:
    return "/" + path.lstrip("/")


def _index_urls(path: str) -> list[str]:
    """An index page answers under its own name and under its directory's URL."""
    url = _url(path)
    if url.rsplit("/", 1)[-1] not in ("index.html", "index.htm"):
        return [url]
    return [url, url.rsplit("/", 1)[0] + "/"]


def stale_files(old: Manifest, new: Manifest) -> set[str]:
    """Files added, removed or changed between two manifests."""
    return {p for p in old.keys() | new.keys() if old.get(p) != new.get(p)}


def _directories(path: str) -> list[str]:
    parts = path.split("/")[:-1]
    return ["/".join(parts[: i + 1]) for i in range(len(parts))]


def _collapse(
    stale: set[str], every: set[str], urls: set[str], caps: Caps
) -> tuple[set[str], list[str]]:
    """Replace the URLs under wholly stale directories by the directory prefix, biggest first."""
    files_in: Counter[str] = Counter(d for p in every for d in _directories(p))
    stale_in: Counter[str] = Counter(d for p in stale for d in _directories(p))
    whole = {d for d, n in stale_in.items() if n == files_in[d] and n >= 2}
    # Only the outermost wholly stale directories: a prefix inside another one adds nothing.
    top = [d for d in whole if not any(a in whole for a in _directories(d + "/x")[:-1])]
    covered = {d: [u for u in urls if u.startswith(f"/{d}/")] for d in top}
    # A prefix that replaces a single URL saves nothing.
    ranked = sorted((d for d in top if len(covered[d]) >= 2), key=lambda d: (-len(covered[d]), d))
    if caps.max_prefixes is not None:
        ranked = ranked[: caps.max_prefixes]
    left = set(urls)
    for d in ranked:
        left.difference_update(covered[d])
    return left, sorted(f"/{d}/" for d in ranked)


def plan_purge(
    *,
    old: Manifest | None,
    new: Manifest,
    no_store: Iterable[str],
    caps: Caps,
    configured: Configured | None = None,
) -> Plan:
    """The purge after a promotion from the cut whose files the cache may hold (`old`) to `new`.

    `old` is the manifest of the last cut the CDN was purged for; None when there is none (the first
    purge, or its manifest is gone): the cache may then hold anything, and everything is purged.
    """
    if configured:
        return Plan(
            paths=tuple(sorted(set(configured.paths))),
            prefixes=tuple(sorted(set(configured.prefixes))),
            tags=tuple(sorted(set(configured.tags))),
            everything=configured.everything,
            why="the paths, prefixes, tags or everything that cdn configures",
        )
    if old is None:
        if caps.everything:
            return Plan(everything=True, why="no purged cut to compare with", stale=len(new))
        old = {}
    stale = stale_files(old, new)
    every = set(old) | set(new)
    urls = {u for p in stale for u in _index_urls(p)}
    urls.update(_url(p) for p in no_store)
    urls.update(u for p in new if _index_urls(p)[1:] for u in _index_urls(p))
    if caps.everything and every and stale == every:
        return Plan(everything=True, why=f"all {len(every)} files changed", stale=len(stale))
    prefixes: list[str] = []
    if caps.prefixes:
        urls, prefixes = _collapse(stale, every, urls, caps)
    if caps.max_paths is not None and len(urls) > caps.max_paths and caps.everything:
        return Plan(
            everything=True,
            why=f"{len(urls)} paths exceed the {caps.max_paths} one purge takes",
            stale=len(stale),
        )
    why = f"{len(stale)} changed files"
    if prefixes:
        why += f", {len(prefixes)} directories wholly changed"
    return Plan(paths=tuple(sorted(urls)), prefixes=tuple(prefixes), why=why, stale=len(stale))


def batches(items: Sequence[str], *, size: int, max_bytes: int | None = None) -> list[list[str]]:
    """Items cut into requests of at most `size` items and, when given, a JSON body under max_bytes."""
    out: list[list[str]] = []
    current: list[str] = []
    used = 0
    for item in items:
        # Each item costs its JSON form and the ", " between items; 64 bytes for the envelope.
        cost = len(json.dumps(item).encode()) + 2
        full = len(current) >= size or (
            max_bytes is not None and current and used + cost + 64 > max_bytes
        )
        if full:
            out.append(current)
            current, used = [], 0
        current.append(item)
        used += cost
    if current:
        out.append(current)
    return out


@dataclass(frozen=True)
class Backoff:
    """Retries of one purge request on 429 and 5xx."""

    attempts: int = 6
    """Tries of one request within one purge attempt."""
    base: float = 0.5
    """First wait, doubled after each failure."""
    cap: float = 30.0
    """Longest single wait."""
    budget: float = 60.0
    """Longest total wait within one purge attempt; a longer Retry-After ends the attempt."""
    between_attempts: tuple[float, ...] = field(default=(10.0, 30.0, 60.0, 120.0, 300.0))
    """Waits between failed purge attempts (the last one repeats)."""


def retry_after_seconds(value: str | None, now: datetime) -> float | None:
    """A Retry-After header (seconds or an HTTP date) as seconds from now; None when absent or bad."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, (when - now).total_seconds())


def request_delay(attempt: int, retry_after: float | None, policy: Backoff) -> float:
    """Seconds to wait before try `attempt` + 1 of a request: Retry-After when given, else doubling."""
    if retry_after is not None:
        return retry_after
    return float(min(policy.cap, policy.base * (2 ** (attempt - 1))))


def attempt_delay(attempts: int, retry_after: float | None, policy: Backoff) -> float:
    """Seconds before the next purge attempt after `attempts` failed ones."""
    table = policy.between_attempts
    wait = table[min(attempts, len(table)) - 1] if attempts > 0 else table[0]
    return max(wait, retry_after or 0.0)
