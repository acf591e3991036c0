"""Real Varnish with the rendered VCL in front of real nginx: caching, no-store, purge, the ACL."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from difusor.cdn.providers import Result, Site, purge
from difusor.logic.purge import CAPS, Plan, plan_purge
from difusor.render.varnish import render_vcl

from .nginxproc import Nginx, make_spec, running_nginx, version_files
from .nginxproc import Site as Content
from .varnishproc import Varnish, compile_vcl, running_varnish

pytestmark = pytest.mark.e2e

OLD, NEW = "20240602_2020", "20240602_2040"
SPEC = make_spec()
OUTSIDER = "127.0.0.77"


@dataclass
class Tier:
    content: Content
    nginx: Nginx
    varnish: Varnish


@pytest.fixture
def tier(tmp_path: Path) -> Iterator[Tier]:
    content = Content(tmp_path / "content")
    content.add_version(OLD)
    content.add_version(
        NEW, {**version_files(NEW), "css/site.css": version_files(OLD)["css/site.css"]}
    )
    content.activate(OLD)
    with (
        running_nginx(SPEC, workdir=tmp_path / "nginx", content=content.root) as nginx,
        running_varnish(
            SPEC, workdir=tmp_path / "varnish", backends=[("127.0.0.1", nginx.port)]
        ) as varnish,
    ):
        yield Tier(content, nginx, varnish)


def cut_of(varnish: Varnish, path: str, *, source: str | None = None) -> tuple[str | None, str]:
    status, headers, _ = varnish.request(path, source=source)
    assert status == 200, (path, status)
    return headers.get("x-prep-cut"), headers["x-cache"]


def manifest(cut: str) -> dict[str, str]:
    files = version_files(cut)
    if cut == NEW:
        files["css/site.css"] = version_files(OLD)["css/site.css"]
    return {p: hashlib.sha256(d).hexdigest() for p, d in files.items()}


def send(tier: Tier, plan: Plan) -> Result:
    site = Site(
        provider="varnish", host="prep.example.mx", namespace="ns", publication="prep",
        cut=NEW, endpoint=tier.varnish.endpoint,
    )  # fmt: skip
    return asyncio.run(purge(site, plan, {}))


def test_the_rendered_vcl_compiles(tmp_path: Path) -> None:
    vcl = tmp_path / "default.vcl"
    vcl.write_text(
        render_vcl(
            SPEC, backends=[("127.0.0.1", 80), ("::1", 80)], purgers=["10.0.0.0/8", "::1/128"]
        )
    )
    result = compile_vcl(vcl, tmp_path)
    assert result.returncode == 0, result.stderr


def test_varnish_caches_the_site_but_never_a_no_store_path(tier: Tier) -> None:
    assert cut_of(tier.varnish, "/index.html") == (OLD, "MISS")
    assert cut_of(tier.varnish, "/index.html") == (OLD, "HIT")
    for _ in range(3):
        assert cut_of(tier.varnish, "/json/main.json") == (OLD, "MISS")
    _, headers, _ = tier.varnish.request("/json/main.json")
    assert headers["cache-control"] == "no-cache, no-store, must-revalidate"


def test_after_a_purge_every_purged_path_shows_the_new_cut(tier: Tier) -> None:
    paths = ["/", "/index.html", "/js/app.js", "/json/avance/estado.json", "/css/site.css"]
    for path in paths:
        cut_of(tier.varnish, path)
    tier.content.activate(NEW)
    # Cached: without a purge readers would keep the old cut until max-age runs out.
    assert cut_of(tier.varnish, "/js/app.js") == (OLD, "HIT")
    plan = plan_purge(old=manifest(OLD), new=manifest(NEW), no_store=["/json/main.json"],
                      caps=CAPS["varnish"])  # fmt: skip
    assert "/css/site.css" not in plan.paths  # unchanged: stays cached
    result = send(tier, plan)
    assert result.requests == len(plan.paths) + len(plan.prefixes)
    for path in plan.paths:
        if path in paths:
            assert cut_of(tier.varnish, path)[0] == NEW, path
    assert cut_of(tier.varnish, "/css/site.css")[1] == "HIT"


def test_a_ban_of_a_prefix_and_of_everything_clears_what_is_under_it(tier: Tier) -> None:
    for path in ("/json/avance/estado.json", "/js/app.js"):
        cut_of(tier.varnish, path)
    tier.content.activate(NEW)
    send(tier, Plan(prefixes=("/json/",)))
    assert cut_of(tier.varnish, "/json/avance/estado.json") == (NEW, "MISS")
    assert cut_of(tier.varnish, "/js/app.js") == (OLD, "HIT")
    send(tier, Plan(everything=True))
    assert cut_of(tier.varnish, "/js/app.js") == (NEW, "MISS")


def test_a_purge_or_ban_from_outside_the_acl_is_refused_and_changes_nothing(tier: Tier) -> None:
    cut_of(tier.varnish, "/index.html")
    tier.content.activate(NEW)
    status, _, body = tier.varnish.request("/index.html", method="PURGE", source=OUTSIDER)
    assert status == 405, body
    status, _, _ = tier.varnish.request(
        "/", method="BAN", source=OUTSIDER, headers={"X-Ban-Url": "^/"}
    )
    assert status == 405
    assert cut_of(tier.varnish, "/index.html", source=OUTSIDER) == (OLD, "HIT")
