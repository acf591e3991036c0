"""The window in a real nginx: the placeholder before the start, by nginx's own clock, then cuts."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from difusor.render.nginx import INTEGRITY_PATH, NO_STORE, READYZ_PATH

from .nginxproc import Site, make_spec, running_nginx

pytestmark = pytest.mark.e2e

CUT = "20240602_2040"
PLACEHOLDER = b"<!doctype html><title>PREP 2024</title><p>Resultados desde las 20:00</p>\n"


def _window(start: datetime) -> dict[str, str]:
    return {
        "start": start.isoformat(),
        "end": (start + timedelta(hours=24)).isoformat(),
        "placeholderConfigMap": "prep-placeholder",
    }


@pytest.fixture
def site(tmp_path: Path) -> Site:
    content = Site(tmp_path / "content")
    content.add_version(CUT)
    content.activate(CUT)
    return content


@pytest.fixture
def placeholder(tmp_path: Path) -> Path:
    directory = tmp_path / "placeholder"
    directory.mkdir()
    (directory / "index.html").write_bytes(PLACEHOLDER)
    (directory / "logo.svg").write_bytes(b"<svg xmlns='http://www.w3.org/2000/svg'/>")
    return directory


def test_before_the_start_every_path_gets_the_placeholder_with_the_sites_headers(
    tmp_path: Path, site: Site, placeholder: Path
) -> None:
    start = datetime.now(UTC) + timedelta(days=2)
    spec = make_spec(window=_window(start))
    with running_nginx(
        spec, workdir=tmp_path / "nginx", content=site.root, placeholder_dir=str(placeholder)
    ) as nginx:
        page = nginx.get("/")
        assert page.status == 200
        assert page.body == PLACEHOLDER
        assert "x-prep-cut" not in page.headers
        assert page.headers["cache-control"] == "public, max-age=30"
        assert page.headers["x-content-type-options"] == "nosniff"
        assert page.headers["content-security-policy"] == "frame-ancestors 'self'"
        assert nginx.get("/logo.svg").status == 200
        # The cut on disk (a drill, an early upload) is not shown before the start.
        main = nginx.get("/json/main.json")
        assert main.status == 404
        assert main.headers["cache-control"] == NO_STORE
        assert nginx.get(INTEGRITY_PATH).status == 404
        ready = nginx.get(READYZ_PATH)
        assert (ready.status, ready.body) == (200, b"placeholder\n")


def test_a_pod_without_a_cut_is_ready_with_the_placeholder(
    tmp_path: Path, placeholder: Path
) -> None:
    empty = Site(tmp_path / "empty")
    (empty.root / "versions").mkdir(parents=True)
    spec = make_spec(window=_window(datetime.now(UTC) + timedelta(days=2)))
    with running_nginx(
        spec, workdir=tmp_path / "nginx", content=empty.root, placeholder_dir=str(placeholder)
    ) as nginx:
        assert nginx.get(READYZ_PATH).status == 200
        assert nginx.get("/").body == PLACEHOLDER


def test_at_the_start_nginx_switches_to_the_cut_by_its_own_clock(
    tmp_path: Path, site: Site, placeholder: Path
) -> None:
    start = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=4)
    spec = make_spec(window=_window(start))
    with running_nginx(
        spec, workdir=tmp_path / "nginx", content=site.root, placeholder_dir=str(placeholder)
    ) as nginx:
        # (sent, answered, cut): nginx decides between the two, on the same clock as ours.
        seen: list[tuple[datetime, datetime, str | None]] = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            sent = datetime.now(UTC)
            cut = nginx.get("/").headers.get("x-prep-cut")
            seen.append((sent, datetime.now(UTC), cut))
            if cut == CUT:
                break
            time.sleep(0.2)
        placeholders = [sent for sent, _, cut in seen if cut is None]
        cuts = [answered for _, answered, cut in seen if cut == CUT]
        assert placeholders, "the placeholder was never served"
        assert cuts, "the cut was never served"
        assert all(sent < start for sent in placeholders)
        assert all(answered >= start for answered in cuts)
        assert nginx.get(READYZ_PATH).body == f"ready {CUT}\n".encode()


def test_after_the_start_the_window_changes_nothing_for_readers(
    tmp_path: Path, site: Site, placeholder: Path
) -> None:
    spec = make_spec(window=_window(datetime.now(UTC) - timedelta(hours=30)))
    with running_nginx(
        spec, workdir=tmp_path / "nginx", content=site.root, placeholder_dir=str(placeholder)
    ) as nginx:
        main = nginx.get("/json/main.json")
        assert (main.status, main.cut_in_body(), main.headers["x-prep-cut"]) == (200, CUT, CUT)
        assert nginx.get(INTEGRITY_PATH).status == 200
