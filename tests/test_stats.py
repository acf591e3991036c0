"""Visitor statistics on generated logs with known truth: exact counts, sketch error, sessions."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import pytest

from difusor.logic.stats import (
    HOUR_LG_K,
    SEGMENTS_PER_CHUNK,
    Compactor,
    HourStats,
    Kind,
    Night,
    PageRules,
    geography,
    merge_night,
    network_address,
    network_of,
)
from difusor.report.geo import GeoLookup

from .loggen import NIGHT_START, RULES, generate, geolite2_database, per_pod, truth

pytestmark = pytest.mark.unit

SALT = b"publication-uid"


def compact(pods: list[list[str]]) -> list[tuple[str, HourStats]]:
    """Each pod's lines through its own compactor, as each pod's agent does."""
    out = []
    for index, lines in enumerate(pods):
        compactor = Compactor(RULES, salt=SALT)
        for text in lines:
            compactor.feed(text)
        out += [(f"web-{index}", stats) for stats in compactor.hours.values()]
    return out


@pytest.fixture(scope="module")
def night() -> tuple[Night, object]:
    reqs = generate(visitors=1500, pods=3, hours=2.0, seed=7)
    hours = compact(per_pod(reqs, 3))
    merged = merge_night(hours, start=NIGHT_START, end=NIGHT_START + 2 * 3600)
    return merged, truth(reqs)


def test_exact_counts_equal_the_brute_force_counts(night: tuple[Night, object]) -> None:
    merged, known = night
    totals = merged.totals
    assert totals.requests == known.requests  # type: ignore[attr-defined]
    assert totals.bytes == known.bytes  # type: ignore[attr-defined]
    assert totals.page_views == known.page_views  # type: ignore[attr-defined]
    assert totals.polls == known.polls  # type: ignore[attr-defined]
    assert totals.assets == known.assets  # type: ignore[attr-defined]
    assert totals.bots == known.bots  # type: ignore[attr-defined]
    assert totals.too_many == known.too_many  # type: ignore[attr-defined]
    assert totals.status == known.status  # type: ignore[attr-defined]
    assert totals.pages == known.pages  # type: ignore[attr-defined]
    per_minute = {m: c.requests for m, c in merged.minutes.items()}
    assert per_minute == known.per_minute_requests  # type: ignore[attr-defined]
    assert merged.pods == 3


def test_sessions_across_pods_equal_brute_force_sessionization(
    night: tuple[Night, object],
) -> None:
    merged, known = night
    ours = sorted((s.start_ms, s.end_ms, s.pages) for s in merged.sessions)
    brute = sorted((s[1], s[2], s[3]) for s in known.sessions)  # type: ignore[attr-defined]
    assert ours == brute
    assert merged.visitors_exact == known.visitors  # type: ignore[attr-defined]
    time_on_site = sum(s.seconds for s in merged.sessions)
    assert time_on_site == pytest.approx(
        sum((s[2] - s[1]) / 1000 for s in known.sessions),  # type: ignore[attr-defined]
        abs=1e-6,
    )


def test_unique_visitors_sketch_is_within_its_documented_error(
    night: tuple[Night, object],
) -> None:
    merged, known = night
    exact = known.visitors  # type: ignore[attr-defined]
    assert merged.visitors.lower <= exact <= merged.visitors.upper
    # HLL relative standard error: 1.04 / sqrt(2^lg_k); three of them bound it here.
    assert abs(merged.visitors.estimate - exact) / exact <= 3 * 1.04 / math.sqrt(2**HOUR_LG_K)


def test_hours_and_pods_merge_into_the_same_visitors_as_one_sketch() -> None:
    reqs = generate(visitors=800, pods=2, hours=3.0, seed=3)
    by_pod = merge_night(compact(per_pod(reqs, 2)), start=NIGHT_START, end=NIGHT_START + 3 * 3600)
    one = merge_night(compact(per_pod(reqs, 1)), start=NIGHT_START, end=NIGHT_START + 3 * 3600)
    # HLL unions are exact merges: the same visitors give the same sketch wherever they landed.
    assert by_pod.visitors.estimate == pytest.approx(one.visitors.estimate)
    assert [(s.start_ms, s.end_ms) for s in by_pod.sessions] == [
        (s.start_ms, s.end_ms) for s in one.sessions
    ]


def test_a_window_inside_the_night_counts_only_its_minutes() -> None:
    reqs = generate(visitors=300, pods=2, hours=2.0, seed=5)
    hours = compact(per_pod(reqs, 2))
    start = NIGHT_START + 1800
    merged = merge_night(hours, start=start, end=start + 1800)
    inside = [r for r in reqs if start * 1000 <= r.ts_ms < (start + 1800) * 1000]
    assert merged.totals.requests == len(inside)
    assert set(merged.minutes) <= set(range(start, start + 1800, 60))


def test_stored_hours_round_trip_in_chunks() -> None:
    compactor = Compactor(RULES, salt=SALT)
    n = SEGMENTS_PER_CHUNK + 500
    for i in range(n):
        compactor.feed(
            f'{{"ts":{NIGHT_START + i % 3000}.5,"addr":"10.{i // 65536}.{i // 256 % 256}.{i % 256}",'
            f'"path":"/json/main.json","status":200,"bytes":10,"ua":"Mozilla/5.0 Firefox/125.0"}}'
        )
    compactor.feed("{not json")
    (stats,) = compactor.hours.values()
    payload = stats.payload()
    assert sorted(payload) == ["counts.json.z", "segments-0.bin.z", "segments-1.bin.z"]
    back = HourStats.from_payload(payload)
    assert back.malformed == 1
    assert back.minutes == stats.minutes
    assert sorted((s.visitor, s.start_ms, s.end_ms) for s in back.segments()) == sorted(
        (s.visitor, s.start_ms, s.end_ms) for s in stats.segments()
    )
    assert back.sketch.get_estimate() == stats.sketch.get_estimate()
    with pytest.raises(ValueError, match=r"segments-1\.bin\.z"):
        HourStats.from_payload({**payload, "segments-1.bin.z": b"garbage"})


def test_a_replay_after_a_restart_counts_each_line_once() -> None:
    reqs = generate(visitors=200, pods=1, hours=1.5, seed=11)
    (lines,) = per_pod(reqs, 1)
    positions = []
    offset = 0
    for text in lines:
        offset += len(text)
        positions.append((1, offset))
    first = Compactor(RULES, salt=SALT)
    half = len(lines) // 2
    for text, pos in zip(lines[:half], positions[:half], strict=True):
        first.feed(text, pos)
    shipped = {h: s.payload() for h, s in first.hours.items()}
    # A new agent loads what was shipped and replays the whole file from its start.
    second = Compactor(
        RULES,
        salt=SALT,
        loader=lambda h: HourStats.from_payload(shipped[h]) if h in shipped else None,
    )
    for text, pos in zip(lines, positions, strict=True):
        second.feed(text, pos)
    merged = merge_night(
        [("web-0", s) for s in second.hours.values()],
        start=NIGHT_START,
        end=NIGHT_START + 2 * 3600,
    )
    assert merged.totals.requests == len(reqs)
    known = truth(reqs)
    assert sorted((s.start_ms, s.end_ms) for s in merged.sessions) == sorted(
        (s[1], s[2]) for s in known.sessions
    )


def test_pages_views_polls_and_assets_follow_the_rules() -> None:
    rules = PageRules(view_prefixes=("/json/", "/mapa"), poll_paths=("/json/main.json", "/live/"))
    assert rules.kind("/") is Kind.PAGE
    assert rules.kind("/diputaciones/index.html") is Kind.PAGE
    assert rules.kind("/json/distritos/01.json") is Kind.PAGE
    assert rules.kind("/mapa") is Kind.PAGE
    assert rules.kind("/mapa.png") is Kind.ASSET
    assert rules.kind("/json/main.json") is Kind.POLL
    assert rules.kind("/live/feed.json") is Kind.POLL
    assert rules.kind("/assets/app.js") is Kind.ASSET
    assert rules.page_name("/diputaciones/index.html") == "/diputaciones/"


def test_bots_and_rejected_requests_are_counted_apart_from_readers() -> None:
    compactor = Compactor(RULES, salt=SALT)
    bot = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"
    reader = "Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0"
    for ua, status in ((bot, 200), (reader, 429), (reader, 200), ("", 200)):
        compactor.feed(
            f'{{"ts":{NIGHT_START}.1,"addr":"1.2.3.4","path":"/","status":{status},'
            f'"bytes":5,"ua":"{ua}"}}'
        )
    (stats,) = compactor.hours.values()
    (minute,) = stats.minutes.values()
    assert (minute.requests, minute.bots, minute.too_many, minute.page_views) == (4, 2, 1, 1)
    assert minute.status == Counter({200: 3, 429: 1})
    assert len(stats.segments()) == 1


def test_networks_keep_a_24_or_a_48_and_nothing_finer() -> None:
    assert network_address(network_of("189.203.17.200")) == "189.203.17.0"
    assert network_address(network_of("::ffff:189.203.17.200")) == "189.203.17.0"
    assert network_address(network_of("2806:2f0:9021:1234::1")) == "2806:2f0:9021::"
    assert network_address(network_of("not an address")) is None


def test_geography_by_country_and_mexican_state_from_a_maxmind_database() -> None:
    lookup = GeoLookup(geolite2_database())
    assert lookup(network_of("189.203.1.1")) == ("MX", "MIC")
    assert lookup(network_of("8.8.1.1")) == ("US", None)
    assert lookup(network_of("10.9.1.1")) == ("??", None)
    reqs = generate(visitors=400, pods=2, hours=1.0, seed=2)
    merged = merge_night(compact(per_pod(reqs, 2)), start=NIGHT_START, end=NIGHT_START + 3600)
    places = geography(merged.sessions, lookup)
    # Brute force: every reader's own address through the same database.
    known: dict[tuple[str, str | None], set[str]] = {}
    for r in reqs:
        if r.ua.startswith("Mozilla/5.0 (compatible") or r.ua.startswith("curl") or r.status >= 400:
            continue
        found = lookup.reader.get(r.addr) or {}
        country = (found.get("country") or {}).get("iso_code") or "??"  # type: ignore[union-attr]
        subs = found.get("subdivisions") or []  # type: ignore[union-attr]
        state = subs[0]["iso_code"] if country == "MX" and subs else None
        known.setdefault((country, state), set()).add(f"{r.addr}|{r.ua}")
    assert {p: v for p, (v, _) in places.items()} == {p: len(v) for p, v in known.items()}
    assert next(iter(places)) == ("MX", "MIC")


def test_a_database_that_is_not_maxminddb_is_refused_with_its_name(tmp_path: Path) -> None:
    bad = tmp_path / "geo.mmdb"
    bad.write_bytes(b"not a database")
    with pytest.raises(ValueError, match=r"--geoip .*geo\.mmdb"):
        GeoLookup(bad)
