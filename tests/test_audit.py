"""`difusor audit`: the comparisons, and a real nginx serving a real store, altered or not."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from difusor.audit import audit
from difusor.cli import main
from difusor.ingest.store import Store, Stored
from difusor.logic.archive import ManifestEntry, manifest_document
from difusor.logic.audit import Published, Served, compare_archive, compare_served, published
from difusor.models import IngestSpec
from difusor.render.nginx import INTEGRITY_PATH

from .archives import make_tar, make_zip, realistic_site, site_files
from .nginxproc import Nginx, make_spec, running_nginx

CUT = "20240602_2040"
A = ManifestEntry("index.html", 5, "a" * 64)
B = ManifestEntry("json/main.json", 7, "b" * 64)


def manifest(*entries: ManifestEntry, mode: str = "snapshot") -> Published:
    return published(
        manifest_document(
            CUT,
            list(entries),
            source={"archive": f"{CUT}_PREP.zip", "archiveSha256": "c" * 64, "mode": mode},
        )
    )


@pytest.mark.unit
def test_a_site_serving_its_manifest_exactly_has_no_difference() -> None:
    served = {e.path: Served(200, e.size, e.sha256, CUT) for e in (A, B)}
    assert compare_served(manifest(A, B), served) == []


@pytest.mark.unit
def test_every_kind_of_served_difference_is_one_line_naming_the_file() -> None:
    served = {
        "index.html": Served(200, 6, "d" * 64, CUT),
        "json/main.json": Served(404, 0, "", CUT),
    }
    lines = [d.line() for d in compare_served(manifest(A, B), served)]
    assert lines == [
        f"index.html: served 6 bytes with SHA-256 {'d' * 64}; the manifest says 5 bytes "
        f"with SHA-256 {'a' * 64}",
        "json/main.json: answered HTTP 404",
    ]
    other_cut = {e.path: Served(200, e.size, e.sha256, "20240602_2100") for e in (A, B)}
    assert {d.what for d in compare_served(manifest(A, B), other_cut)} == {
        f"served from cut 20240602_2100, not {CUT}"
    }


@pytest.mark.unit
def test_a_manifest_whose_digest_does_not_match_its_files_is_refused() -> None:
    document = manifest_document(CUT, [A, B])
    document["files"] = [{"path": "index.html", "size": 5, "sha256": "e" * 64}]
    with pytest.raises(ValueError, match="digest"):
        published(document)


@pytest.mark.unit
def test_the_manifest_is_compared_with_the_archive_file_by_file() -> None:
    changed = ManifestEntry("index.html", 5, "f" * 64)
    extra = ManifestEntry("extra.txt", 1, "0" * 64)
    found = compare_archive(
        manifest(A, B),
        archive_name="x.zip",
        archive_sha256="9" * 64,
        files={"index.html": changed, "extra.txt": extra},
    )
    assert [d.path for d in found] == ["x.zip", "extra.txt", "index.html", "json/main.json"]
    assert found[-1].what == "in the site's manifest but not in the archive"


@pytest.mark.unit
def test_an_overlay_manifest_may_carry_files_the_archive_lacks() -> None:
    found = compare_archive(
        manifest(A, B, mode="overlay"),
        archive_name="x.zip",
        archive_sha256="c" * 64,
        files={"json/main.json": B},
    )
    assert found == []


# --- a real nginx serving a real store --------------------------------------------------------


@pytest.fixture
def stored(tmp_path: Path) -> tuple[Store, Path, Stored]:
    store = Store(tmp_path / "content")
    store.recover()
    archive = make_zip(tmp_path / f"{CUT}_PREP_MICH.zip", site_files(cut=CUT, actas=400))
    upload = store.incoming / archive.name
    upload.write_bytes(archive.read_bytes())
    outcome = store.process(upload, ingest=IngestSpec(), now=datetime.now(UTC))
    assert isinstance(outcome, Stored)
    store.swap_current(CUT)
    return store, archive, outcome


@pytest.fixture
def nginx(tmp_path: Path, stored: tuple[Store, Path, Stored]) -> Iterator[Nginx]:
    with running_nginx(make_spec(), workdir=tmp_path / "nginx", content=stored[0].root) as server:
        yield server


@pytest.mark.e2e
def test_the_site_publishes_the_manifest_and_archive_digest_of_the_cut_it_serves(
    nginx: Nginx, stored: tuple[Store, Path, Stored]
) -> None:
    _, _, outcome = stored
    response = nginx.get(INTEGRITY_PATH)
    assert response.status == 200
    assert response.headers["x-prep-cut"] == CUT
    assert response.headers["cache-control"] == "public, max-age=30"
    assert response.headers["content-type"] == "application/json; charset=utf-8"
    document = json.loads(response.body)
    assert document["archiveSha256"] == outcome.archive_sha256
    assert document["archive"] == f"{CUT}_PREP_MICH.zip"
    assert document["digest"] == outcome.manifest_digest
    assert len(document["files"]) == outcome.files
    # The rest of the metadata directory stays private.
    assert nginx.get("/.prep/manifest.json").status == 404
    assert nginx.get("/.well-known/prep-difusor/cut.json").status == 404


@pytest.mark.e2e
def test_an_unaltered_site_passes_the_audit_against_the_institutes_archive(
    nginx: Nginx, stored: tuple[Store, Path, Stored]
) -> None:
    _, archive, outcome = stored
    report = audit(f"http://{nginx.host}:{nginx.port}", archive=archive)
    assert report.differences == []
    assert report.ok
    assert report.verdict.startswith("UNALTERED")
    # One request for the manifest and one per file, nothing retried.
    assert report.requests == outcome.files + 1


@pytest.mark.e2e
def test_a_file_altered_on_disk_fails_the_audit_with_one_line_naming_it(
    nginx: Nginx, stored: tuple[Store, Path, Stored], capsys: pytest.CaptureFixture[str]
) -> None:
    store, archive, _ = stored
    target = store.versions / CUT / "json" / "distritos" / "03.json"
    target.write_text('{"distrito": 3, "votos": [1, 2, 3]}')
    code = main(["audit", f"http://{nginx.host}:{nginx.port}", "--archive", str(archive)])
    out = capsys.readouterr().out
    assert code == 1
    differences = [line for line in out.splitlines() if line.startswith("DIFFERENCE")]
    assert len(differences) == 1
    assert differences[0].startswith("DIFFERENCE json/distritos/03.json: served 35 bytes")
    assert "ALTERED: 1 difference(s)" in out


@pytest.mark.e2e
def test_another_archive_than_the_one_served_fails_the_audit(
    tmp_path: Path, nginx: Nginx, stored: tuple[Store, Path, Stored]
) -> None:
    files = site_files(cut=CUT, actas=400)
    files["json/main.json"] = b'{"horaCorte": "otro"}'
    other = make_tar(tmp_path / f"{CUT}_PREP_MICH.tar.gz", files, wrap="sitio")
    report = audit(f"http://{nginx.host}:{nginx.port}", archive=other)
    assert [d.path for d in report.differences] == [other.name, "json/main.json"]
    assert not report.ok


@pytest.mark.e2e
def test_a_cut_promoted_while_the_audit_runs_is_audited_whole_instead(
    tmp_path: Path, stored: tuple[Store, Path, Stored]
) -> None:
    store, _, _ = stored
    newer = "20240602_2100"
    upload = make_zip(
        store.incoming / f"{newer}_PREP_MICH.zip", realistic_site(cut=newer, scale=0.05)
    )
    assert isinstance(store.process(upload, ingest=IngestSpec(), now=datetime.now(UTC)), Stored)
    spec = make_spec()
    with running_nginx(spec, workdir=tmp_path / "nginx", content=store.root) as nginx:
        swap = threading.Timer(0.05, store.swap_current, args=(newer,))
        swap.start()
        try:
            report = audit(f"http://{nginx.host}:{nginx.port}", concurrency=1)
        finally:
            swap.join()
    assert report.ok, [d.line() for d in report.differences[:3]]
    # Whether the swap fell before or during the audit, the verdict is about one whole cut.
    assert report.manifest.cut in (CUT, newer)
    assert report.manifest.cut == newer or report.restarts == 0
