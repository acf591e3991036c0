"""`difusor diagram`: the deployed service drawn with Graphviz (SVG and PNG)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

from kubernetes import client as k8s

from difusor.models import GROUP, VERSION, PrepPublicationSpec
from difusor.render.children import Target, render_all
from difusor.render.diagram import ClaimView, PodView, diagram_dot
from difusor.render.files import config_files
from difusor.render.labels import ACTIVE_ANNOTATION, selector_string
from difusor.render.preview import read_publications

Obj = dict[str, Any]


def from_file(text: str, *, namespace: str | None = None) -> list[tuple[str, str]]:
    """(name, DOT) of every PrepPublication in a YAML file, from its rendered children."""
    out = []
    for name, meta, spec in read_publications(text):
        ns = meta.get("namespace") or namespace or "default"
        target = Target(name=name, namespace=ns, files=config_files(spec, name=name))
        dot = diagram_dot(name=name, namespace=ns, spec=spec, objects=render_all(spec, target))
        out.append((name, dot))
    return out


def from_cluster(api: k8s.ApiClient, *, namespace: str, name: str) -> str:
    """DOT of a deployed publication: its Services, edge, pods on their nodes and volumes."""
    custom = k8s.CustomObjectsApi(api)
    core = k8s.CoreV1Api(api)
    try:
        publication = custom.get_namespaced_custom_object(
            GROUP, VERSION, namespace, "preppublications", name
        )
    except k8s.ApiException as exc:
        if exc.status == 404:
            raise LookupError(f"no PrepPublication {namespace}/{name}") from None
        raise
    spec = PrepPublicationSpec.model_validate(publication.get("spec") or {})
    objects: list[Obj] = []
    for svc in (f"{name}-http", f"{name}-sftp"):
        try:
            objects.append(
                {
                    "kind": "Service",
                    **api.sanitize_for_serialization(core.read_namespaced_service(svc, namespace)),
                }
            )
        except k8s.ApiException as exc:
            if exc.status != 404:
                raise
    for group, version, plural, kind in (
        ("networking.k8s.io", "v1", "ingresses", "Ingress"),
        ("gateway.networking.k8s.io", "v1", "httproutes", "HTTPRoute"),
    ):
        try:
            found = custom.get_namespaced_custom_object(group, version, namespace, plural, name)
            objects.append({"kind": kind, **found})
        except k8s.ApiException as exc:
            if exc.status != 404:
                raise
    pods = [
        PodView(
            name=p.metadata.name,
            node=p.spec.node_name,
            ip=p.status.pod_ip,
            ready=any(c.type == "Ready" and c.status == "True" for c in p.status.conditions or []),
            active_cut=(p.metadata.annotations or {}).get(ACTIVE_ANNOTATION),
        )
        for p in core.list_namespaced_pod(namespace, label_selector=selector_string(name)).items
    ]
    claims = [
        ClaimView(
            name=c.metadata.name,
            size=(c.status.capacity or c.spec.resources.requests or {}).get("storage", "?"),
            storage_class=c.spec.storage_class_name,
            phase=c.status.phase or "?",
        )
        for c in core.list_namespaced_persistent_volume_claim(namespace).items
        if c.metadata.name.startswith(f"content-{name}-web-")
    ]
    return diagram_dot(
        name=name,
        namespace=namespace,
        spec=spec,
        objects=objects,
        pods=sorted(pods, key=lambda p: p.name),
        claims=claims,
    )


def draw(dot: str, out_dir: Path, *, stem: str) -> tuple[Path, Path]:
    """`<stem>.dot`, `<stem>.svg` and `<stem>.png` from Graphviz's dot."""
    binary = shutil.which("dot")
    if binary is None:
        raise FileNotFoundError("Graphviz's dot is not installed (apt-get install graphviz)")
    out_dir.mkdir(parents=True, exist_ok=True)
    source = out_dir / f"{stem}.dot"
    source.write_text(dot)
    svg, png = out_dir / f"{stem}.svg", out_dir / f"{stem}.png"
    for fmt, path in (("svg", svg), ("png", png)):
        subprocess.run(
            [binary, f"-T{fmt}", "-Gdpi=110" if fmt == "png" else "-Gdpi=72", "-o", str(path), str(source)],
            check=True, capture_output=True, timeout=120,
        )  # fmt: skip
    return svg, png
