"""The memoria técnica: HTML and PDF with its sections, tables and charts, rendered to images."""

from __future__ import annotations

import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from difusor.logic.stats import Compactor
from difusor.report.data import Evidence
from difusor.report.geo import GeoLookup
from difusor.report.memoria import build, write

from .conftest import require_binary
from .loggen import NIGHT_START, RULES, generate, geolite2_database, per_pod

pytestmark = pytest.mark.e2e

START = datetime.fromtimestamp(NIGHT_START, UTC)


def publication() -> dict[str, Any]:
    return {
        "metadata": {"name": "prep-michoacan", "namespace": "difusor", "uid": "u-1"},
        "spec": {"host": "prep.example.mx", "sftp": {"authorizedKeysSecret": "iem-keys"}},
        "status": {},
    }


def cuts(count: int) -> list[dict[str, Any]]:
    out = []
    for i in range(count):
        at = START + timedelta(minutes=20 * i + 3)
        cut_id = (START + timedelta(minutes=20 * i)).astimezone().strftime("%Y%m%d_%H%M")
        out.append(
            {
                "spec": {"id": cut_id, "time": (at - timedelta(minutes=3)).isoformat()},
                "status": {
                    "phase": "Promoted" if i < count - 1 else "Rejected",
                    "reason": None if i < count - 1 else "PathTraversal",
                    "receivedAt": at.isoformat(),
                    "verifiedAt": (at + timedelta(seconds=2)).isoformat(),
                    "servingAt": (at + timedelta(seconds=4 + 3 * i)).isoformat()
                    if i < count - 1
                    else None,
                },
            }
        )
    return out


def evidence(*, hours: float, visitors: int, incidents: list[dict[str, Any]] | None) -> Evidence:
    reqs = generate(visitors=visitors, pods=3, hours=hours, seed=9)
    stats = []
    for index, lines in enumerate(per_pod(reqs, 3)):
        compactor = Compactor(RULES, salt=b"u-1")
        for text in lines:
            compactor.feed(text)
        stats += [(f"prep-michoacan-web-{index}", s) for s in compactor.hours.values()]
    return Evidence(publication(), cuts(int(hours * 3)), incidents, stats, [])


def pdf_text(pdf: Path) -> str:
    return subprocess.run(
        [require_binary("pdftotext"), str(pdf), "-"],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip


def test_the_memoria_has_every_section_its_tables_and_charts_in_the_pdf(tmp_path: Path) -> None:
    incident = {
        "spec": {
            "publication": "prep-michoacan",
            "startedAt": (START + timedelta(minutes=50)).isoformat(),
        },
        "status": {
            "phase": "Resolved",
            "cause": "Attack",
            "rootCause": "one /24 sent 12000 requests a minute",
            "endedAt": (START + timedelta(minutes=58)).isoformat(),
            "durationSeconds": 480,
            "impact": {"deniedRanges": ["45.95.0.0/24"], "peakRequestsPerMinute": 12000},
            "actions": [{"at": START.isoformat(), "action": "Denied 45.95.0.0/24 on every pod"}],
        },
    }
    memoria = build(
        evidence(hours=2.0, visitors=900, incidents=[incident]),
        start=START,
        end=START + timedelta(hours=2),
        geo=GeoLookup(geolite2_database()),
        geo_source="GeoLite2-City",
        now=START + timedelta(days=3),
    )
    html_path, pdf = write(memoria, tmp_path)
    assert html_path.read_text().startswith("<!doctype html>")
    text = " ".join(pdf_text(pdf).split())
    for heading in (
        "1. Resumen de la jornada",
        "2. Cronología de cortes",
        "3. Disponibilidad e incidencias",
        "4. Tráfico por minuto",
        "5. Visitantes únicos y permanencia",
        "6. Páginas más consultadas",
        "7. Geolocalización de los visitantes",
        "8. Ataques detectados y contención",
        "9. Análisis y conclusiones",
    ):
        assert heading in text, heading
    for column in ("Fecha", "Hora", "Duración", "Causa raíz", "Impacto", "Mitigación"):
        assert column in text, column
    assert "Michoacán" in text
    assert "Denied 45.95.0.0/24 on every pod" in text
    assert "/json/distritos/01.json" in text
    # Conclusions come from the figures: the peak minute and the worst cut are named.
    peak = max(memoria.night.minutes.values(), key=lambda c: c.requests).requests
    assert f"{peak:,} solicitudes" in text
    assert "1 Attack" in text
    # Charts are images in the PDF; pages render to PNG.
    listing = subprocess.run(
        [require_binary("pdfimages"), "-list", str(pdf)], check=True, capture_output=True, text=True
    ).stdout.splitlines()[2:]
    images = [row for row in listing if row.split()[2] == "image"]  # not their alpha masks
    assert len(images) == memoria.charts >= 5
    subprocess.run(
        [require_binary("pdftoppm"), "-r", "60", "-png", str(pdf), str(tmp_path / "page")],
        check=True,
    )
    pages = sorted(tmp_path.glob("page-*.png"))
    assert len(pages) >= 4
    assert all(p.stat().st_size > 5000 for p in pages)
    assert memoria.tables >= 10


def test_the_memoria_says_plainly_what_it_lacked(tmp_path: Path) -> None:
    memoria = build(
        evidence(hours=1.0, visitors=200, incidents=None),
        start=START,
        end=START + timedelta(hours=1),
        now=START + timedelta(days=1),
    )
    _, pdf = write(memoria, tmp_path)
    text = " ".join(pdf_text(pdf).split())
    assert "no tiene el recurso PrepIncident" in text
    assert "No se indicó una base de datos MaxMind" in text
    assert "Lo que esta memoria no pudo medir" in text
    assert any("disponibilidad" in item for item in memoria.findings.lacking)
