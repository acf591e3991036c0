"""What a purge removes: computed from two cuts' manifests, collapsed when cheaper, batched."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from difusor.logic.purge import (
    CAPS,
    Backoff,
    Configured,
    attempt_delay,
    batches,
    plan_purge,
    request_delay,
    retry_after_seconds,
)

pytestmark = pytest.mark.unit

NO_STORE = ["/json/main.json"]


def site(changed: dict[str, str] | None = None, *, districts: int = 24) -> dict[str, str]:
    files = {
        "index.html": "i",
        "json/main.json": "m0",
        "css/site.css": "c",
        "js/app.js": "j",
        "resultados/index.html": "r",
        **{f"json/distritos/{d:02d}.json": f"d{d}-0" for d in range(1, districts + 1)},
        "datos/actas.csv": "a0",
    }
    files.update(changed or {})
    return files


def test_only_changed_files_the_no_store_paths_and_index_pages_are_purged() -> None:
    old = site()
    new = site({"json/main.json": "m1", "json/distritos/03.json": "x", "datos/actas.csv": "a1"})
    plan = plan_purge(old=old, new=new, no_store=NO_STORE, caps=CAPS["fastly"])
    assert plan.paths == (
        "/",
        "/datos/actas.csv",
        "/index.html",
        "/json/distritos/03.json",
        "/json/main.json",
        "/resultados/",
        "/resultados/index.html",
    )
    assert not plan.everything
    assert plan.stale == 3


def test_a_removed_or_added_file_is_purged_too() -> None:
    old = site()
    new = site({"json/nuevo.json": "n"})
    del new["js/app.js"]
    plan = plan_purge(old=old, new=new, no_store=NO_STORE, caps=CAPS["fastly"])
    assert {"/js/app.js", "/json/nuevo.json"} <= set(plan.paths)


def test_a_wholly_changed_directory_becomes_one_prefix_where_the_provider_has_prefixes() -> None:
    old = site()
    new = site({f"json/distritos/{d:02d}.json": f"d{d}-1" for d in range(1, 25)})
    cloudflare = plan_purge(old=old, new=new, no_store=NO_STORE, caps=CAPS["cloudflare"])
    assert cloudflare.prefixes == ("/json/distritos/",)
    assert not any(p.startswith("/json/distritos/") for p in cloudflare.paths)
    fastly = plan_purge(old=old, new=new, no_store=NO_STORE, caps=CAPS["fastly"])
    assert fastly.prefixes == ()
    assert sum(p.startswith("/json/distritos/") for p in fastly.paths) == 24


def test_a_partly_changed_directory_is_never_a_prefix() -> None:
    old = site()
    new = site({f"json/distritos/{d:02d}.json": f"d{d}-1" for d in range(1, 24)})
    plan = plan_purge(old=old, new=new, no_store=NO_STORE, caps=CAPS["cloudfront"])
    assert plan.prefixes == ()
    assert len([p for p in plan.paths if p.startswith("/json/distritos/")]) == 23


def test_when_every_file_changed_everything_is_one_request() -> None:
    old = site()
    new = {path: digest + "'" for path, digest in old.items()}
    plan = plan_purge(old=old, new=new, no_store=NO_STORE, caps=CAPS["akamai"])
    assert plan.everything
    assert plan.items == 1


def test_without_a_purged_cut_to_compare_with_everything_is_purged() -> None:
    plan = plan_purge(old=None, new=site(), no_store=NO_STORE, caps=CAPS["cloudflare"])
    assert plan.everything
    assert "no purged cut" in plan.why


def test_more_paths_than_cloudfront_takes_in_one_purge_become_everything() -> None:
    old = {f"actas/{i:05d}/{j}.json": "0" for i in range(400) for j in range(10)}
    new = {p: ("1" if int(p[6:11]) % 2 else "0") for p in old}
    new |= {f"actas/{i:05d}/{j}.json": "1" for i in range(0, 400, 2) for j in range(9)}
    plan = plan_purge(old=old, new=new, no_store=NO_STORE, caps=CAPS["cloudfront"])
    assert plan.everything
    assert "exceed" in plan.why


def test_cloudfront_gets_at_most_fifteen_wildcards() -> None:
    old = {f"d{i:02d}/{j}.json": "0" for i in range(20) for j in range(3)} | {"index.html": "i"}
    new = {p: ("1" if p != "index.html" else "i") for p in old}
    plan = plan_purge(old=old, new=new, no_store=NO_STORE, caps=CAPS["cloudfront"])
    assert len(plan.prefixes) == 15
    assert sum(p.startswith("/d") for p in plan.paths) == 5 * 3


def test_configured_paths_prefixes_tags_or_everything_replace_the_computed_set() -> None:
    configured = Configured(paths=("/json/main.json",), prefixes=("/json/",), tags=("prep",))
    plan = plan_purge(
        old=site(), new=site(), no_store=NO_STORE, caps=CAPS["cloudflare"], configured=configured
    )
    assert (plan.paths, plan.prefixes, plan.tags, plan.everything) == (
        ("/json/main.json",),
        ("/json/",),
        ("prep",),
        False,
    )


def test_batches_respect_the_item_cap_and_the_body_size() -> None:
    items = [f"https://prep.example.mx/json/{i:05d}.json" for i in range(2500)]
    by_count = batches(items, size=100)
    assert [len(b) for b in by_count[:2]] == [100, 100]
    assert len(by_count) == 25
    by_bytes = batches(items, size=10_000, max_bytes=50_000)
    assert all(
        len(("[" + ", ".join(f'"{i}"' for i in b) + "]").encode()) + 64 <= 50_000 for b in by_bytes
    )
    assert sum(len(b) for b in by_bytes) == 2500


def test_retry_after_is_read_as_seconds_or_as_an_http_date() -> None:
    now = datetime(2024, 6, 2, 20, 0, 0, tzinfo=UTC)
    assert retry_after_seconds("7", now) == 7
    assert retry_after_seconds("Sun, 02 Jun 2024 20:00:30 GMT", now) == 30
    assert retry_after_seconds("soon", now) is None
    assert retry_after_seconds(None, now) is None


def test_backoff_doubles_is_capped_and_yields_to_retry_after() -> None:
    policy = Backoff(base=0.5, cap=4.0)
    assert [request_delay(a, None, policy) for a in (1, 2, 3, 4, 5)] == [0.5, 1, 2, 4, 4]
    assert request_delay(1, 9.0, policy) == 9.0
    assert [attempt_delay(n, None, policy) for n in (1, 2, 9)] == [10.0, 30.0, 300.0]
    assert attempt_delay(1, 45.0, policy) == 45.0
