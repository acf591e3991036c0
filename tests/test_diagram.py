"""The service diagram: from a file like `difusor render`, drawn by Graphviz to SVG and PNG."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

from difusor.cli import main
from difusor.render.diagram import PodView, diagram_dot
from difusor.report.diagram import from_file

from .conftest import require_binary

ROOT = Path(__file__).resolve().parents[1]
FULL = ROOT / "manifests" / "examples" / "full.yaml"


@pytest.mark.unit
def test_the_diagram_shows_edge_cdn_replicas_storage_sftp_and_limits() -> None:
    ((name, dot),) = from_file(FULL.read_text())
    doc = yaml.safe_load(FULL.read_text())
    spec = doc["spec"]
    assert f"host {spec['host']}" in dot
    assert "TLS: Secret" in dot
    assert f"CDN: {spec['cdn']['provider']}" in dot
    for cidr in spec["sftp"]["allowedSourceRanges"]:
        assert cidr in dot
    assert f"puerto {spec['sftp']['service'].get('port', 22)}" in dot
    rate = spec["rateLimit"]
    assert f"{rate['requestsPerSecond']} req/s" in dot
    for i in range(spec.get("replicas", 3)):
        assert f"Pod {name}-web-{i}" in dot
        assert f"PVC content-{name}-web-{i}" in dot


@pytest.mark.unit
def test_live_pods_are_drawn_on_their_nodes_with_their_cut() -> None:
    ((name, _),) = from_file(FULL.read_text())
    from difusor.models import PrepPublicationSpec

    spec = PrepPublicationSpec.model_validate(yaml.safe_load(FULL.read_text())["spec"])
    dot = diagram_dot(
        name=name, namespace="difusor", spec=spec, objects=[],
        pods=[
            PodView(f"{name}-web-0", "node-a", "10.0.0.5", True, "20240602_2040"),
            PodView(f"{name}-web-1", "node-b", "10.0.1.5", False, None),
        ],
    )  # fmt: skip
    assert 'label="Nodo node-a"' in dot
    assert 'label="Nodo node-b"' in dot
    assert "listo, corte 20240602_2040" in dot
    assert "no listo" in dot


@pytest.mark.e2e
def test_difusor_diagram_writes_an_svg_and_a_png(tmp_path: Path) -> None:
    require_binary("dot")
    assert main(["diagram", "-f", str(FULL), "-o", str(tmp_path)]) == 0
    svg = next(tmp_path.glob("diagrama-*.svg"))
    png = next(tmp_path.glob("diagrama-*.png"))
    texts = " ".join(t.text or "" for t in ET.parse(svg).iter() if t.tag.endswith("text"))
    assert "SFTP: Service" in texts
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.unit
def test_a_file_without_a_publication_is_refused_by_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "x.yaml"
    bad.write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n")
    assert main(["diagram", "-f", str(bad), "-o", str(tmp_path)]) == 1
    assert (
        "expected apiVersion prep.difusor.io/v1alpha1 kind PrepPublication"
        in capsys.readouterr().err
    )
