"""The service diagram for the registration: Graphviz DOT of a publication and its children."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from difusor.models import CdnProvider, EdgeKind, PrepPublicationSpec

Obj = Mapping[str, Any]


@dataclass(frozen=True)
class PodView:
    """A web pod as deployed (from the live objects)."""

    name: str
    node: str | None
    ip: str | None
    ready: bool
    active_cut: str | None = None


@dataclass(frozen=True)
class ClaimView:
    """A pod's content volume as deployed."""

    name: str
    size: str
    storage_class: str | None
    phase: str


def _q(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _kind(objects: Sequence[Obj], kind: str) -> list[Obj]:
    return [o for o in objects if o.get("kind") == kind]


def diagram_dot(
    *,
    name: str,
    namespace: str,
    spec: PrepPublicationSpec,
    objects: Sequence[Obj],
    pods: Sequence[PodView] | None = None,
    claims: Sequence[ClaimView] | None = None,
) -> str:
    """DOT of the service: readers, CDN, edge with TLS, web pods on their nodes, volumes, SFTP.

    `objects` are the publication's children (rendered or read from the cluster); `pods` and
    `claims` are the live pods and volumes (None for a diagram from a file: the replicas are
    drawn as the StatefulSet will make them).
    """
    rate = spec.rate_limit
    lines = [
        "digraph difusor {",
        '  graph [rankdir=LR, fontname="DejaVu Sans", fontsize=11, labelloc=t, '
        f"label={_q(f'Servicio de difusión del PREP: {spec.host} ({namespace}/{name})')}];",
        '  node [fontname="DejaVu Sans", fontsize=9, shape=box, style="rounded,filled", '
        'fillcolor="#ffffff"];',
        '  edge [fontname="DejaVu Sans", fontsize=8];',
        _node("readers", "Lectores\n(Internet)", shape="ellipse", fill="#eaf2f8"),
        _node(
            "iem", "Instituto Electoral\n(paquetes PREP por SFTP)", shape="ellipse", fill="#fdebd0"
        ),
    ]
    front = "readers"
    if spec.cdn.provider is not CdnProvider.NONE:
        cdn = f"CDN: {spec.cdn.provider.value}\npurga tras cada corte"
        lines.append(_node("cdn", cdn, fill="#e8f8f5"))
        lines.append('  readers -> cdn [label="HTTPS"];')
        front = "cdn"
    tls = (
        f"TLS: Secret {spec.tls.secret_name or name + '-tls'}"
        + (f" (cert-manager {spec.tls.issuer_ref.name})" if spec.tls.issuer_ref else "")
        if spec.tls
        else "sin TLS en el borde"
    )
    edge_objs = _kind(objects, "Ingress") + _kind(objects, "HTTPRoute")
    if spec.edge.kind is EdgeKind.NONE or not edge_objs:
        edge_label = f"Borde propio (edge None)\n{tls}"
    elif spec.edge.kind is EdgeKind.GATEWAY:
        parents = ", ".join(p.name for p in spec.edge.parent_refs)
        edge_label = f"Gateway API HTTPRoute\nGateway: {parents}\nhost {spec.host}\n{tls}"
    else:
        edge_label = (
            f"Ingress (clase {spec.edge.class_name or 'predeterminada'})\nhost {spec.host}\n{tls}"
        )
    lines.append(f'  frontdoor [label={_q(edge_label)}, fillcolor="#f4ecf7"];')
    lines.append(f'  {front} -> frontdoor [label="{"HTTPS" if spec.tls else "HTTP"}"];')
    limits = (
        f"Límites por cliente en cada pod\n{rate.requests_per_second} req/s, ráfaga {rate.burst}, "
        f"{rate.connections} conexiones\n→ 429"
        + (f"\nlista de bloqueo: {len(rate.deny_list)} rangos → 403" if rate.deny_list else "")
        + (
            f"\nproxies de confianza: {', '.join(rate.trusted_proxies)}"
            if rate.trusted_proxies
            else ""
        )
    )
    lines.append(f'  limits [label={_q(limits)}, shape=note, fillcolor="#fef9e7"];')
    http = next(
        (s for s in _kind(objects, "Service") if s["metadata"]["name"] == f"{name}-http"), None
    )
    http_port = ((http or {}).get("spec", {}).get("ports") or [{}])[0].get("port", 80)
    lines.append(_node("http", f"Service {name}-http\nClusterIP, puerto {http_port}"))
    lines.append("  frontdoor -> http;")
    lines.append("  limits -> http [style=dotted, arrowhead=none];")
    sftp = next(
        (s for s in _kind(objects, "Service") if s["metadata"]["name"] == f"{name}-sftp"), None
    )
    sftp_spec = (sftp or {}).get("spec") or {}
    sftp_port = (sftp_spec.get("ports") or [{}])[0].get("port", spec.sftp.service.port)
    ranges = sftp_spec.get("loadBalancerSourceRanges") or spec.sftp.allowed_source_ranges
    ingress = ((sftp or {}).get("status") or {}).get("loadBalancer", {}).get("ingress") or []
    address = ", ".join(i.get("ip") or i.get("hostname") or "" for i in ingress)
    sftp_label = (
        f"SFTP: Service {name}-sftp\n{sftp_spec.get('type', spec.sftp.service.type.value)}, "
        f"puerto {sftp_port}"
        + (f"\ndirección {address}" if address else "")
        + f"\nrangos permitidos: {', '.join(ranges) if ranges else 'todos'}"
        + f"\nusuario {spec.sftp.user}, llaves: Secret {spec.sftp.authorized_keys_secret}"
    )
    lines.append(f'  sftp [label={_q(sftp_label)}, fillcolor="#fdf2e9"];')
    lines.append(f'  iem -> sftp [label="SSH/SFTP :{sftp_port}"];')
    claim_by_name = {c.name: c for c in claims or []}
    if pods is None:
        views = [PodView(f"{name}-web-{i}", None, None, False) for i in range(spec.replicas)]
    else:
        views = list(pods)
    by_node: dict[str, list[PodView]] = {}
    for pod in views:
        by_node.setdefault(pod.node or "(nodo por asignar)", []).append(pod)
    edges: list[str] = []
    for index, (node, members) in enumerate(sorted(by_node.items())):
        lines.append(f"  subgraph cluster_node{index} {{")
        lines.append(f'    label={_q(f"Nodo {node}")}; style="rounded,dashed"; color="#7f8c8d";')
        for pod in members:
            ident = _ident(pod.name)
            state = (
                ("listo" if pod.ready else "no listo")
                + (f", corte {pod.active_cut}" if pod.active_cut else "")
                if pods is not None
                else "réplica del StatefulSet"
            )
            label = f"Pod {pod.name}\n{pod.ip or ''}\n{state}\nnginx :8080 · agente · sftp :2222"
            fill = "#d5f5e3" if pod.ready or pods is None else "#fadbd8"
            lines.append(f'    {ident} [label={_q(label)}, fillcolor="{fill}"];')
            claim_name = f"content-{pod.name}"
            claim = claim_by_name.get(claim_name)
            size = claim.size if claim else spec.storage.size
            klass = (
                claim.storage_class if claim else spec.storage.storage_class_name
            ) or "predeterminada"
            phase = f", {claim.phase}" if claim else ""
            volume = f"PVC {claim_name}\n{size}, clase {klass}{phase}\nversions/, current, logs/"
            lines.append(
                f'    vol_{ident} [label={_q(volume)}, shape=cylinder, fillcolor="#f2f3f4"];'
            )
            edges += [
                f"  {ident} -> vol_{ident} [arrowhead=none];",
                f"  http -> {ident};",
                f"  sftp -> {ident} [style=dashed];",
            ]
        lines.append("  }")
    lines += edges
    records = (
        "API de Kubernetes\nPrepPublication, PrepCut (bitácora de cortes)\n"
        "estadísticas por pod y hora (ConfigMaps)"
    )
    lines.append(f'  api [label={_q(records)}, shape=folder, fillcolor="#ebf5fb"];')
    operator = "Operador difusor\n(promoción en dos fases, purga de CDN)"
    lines.append(_node("operator", operator, fill="#e8daef"))
    lines.append("  operator -> api [dir=both, style=dotted];")
    if spec.cdn.provider is not CdnProvider.NONE:
        lines.append('  operator -> cdn [label="purga", style=dotted];')
    first = views[0] if views else None
    if first is not None:
        lines.append(
            f'  {_ident(first.name)} -> api [label="cortes y estadísticas", style=dotted];'
        )
    lines.append("}")
    return "\n".join(lines) + "\n"


def _node(ident: str, label: str, *, shape: str = "box", fill: str = "#ffffff") -> str:
    return f'  {ident} [label={_q(label)}, shape={shape}, fillcolor="{fill}"];'


def _ident(pod: str) -> str:
    return "pod_" + pod.replace("-", "_").replace(".", "_")
