"""`difusor render`: a PrepPublication YAML in, the YAML stream of its children out."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import yaml
from pydantic import ValidationError

from difusor.models import API_VERSION, PrepPublicationSpec
from difusor.render.children import Target, render_all, secret_placeholders
from difusor.render.files import config_files


def _dump(obj: Any) -> str:
    return yaml.safe_dump(obj, sort_keys=False, default_flow_style=False, width=100)


def read_publications(text: str) -> list[tuple[str, dict[str, Any], PrepPublicationSpec]]:
    """(name, metadata, validated spec) of every PrepPublication in a YAML text; ValueError on
    anything else, a missing name, an invalid spec or no publication at all."""
    out = []
    for doc in (d for d in yaml.safe_load_all(text) if d):
        if doc.get("apiVersion") != API_VERSION or doc.get("kind") != "PrepPublication":
            raise ValueError(
                f"expected apiVersion {API_VERSION} kind PrepPublication, got "
                f"{doc.get('apiVersion')} {doc.get('kind')}"
            )
        meta = doc.get("metadata") or {}
        name = meta.get("name")
        if not name:
            raise ValueError("metadata.name is required")
        try:
            spec = PrepPublicationSpec.model_validate(doc.get("spec") or {})
        except ValidationError as exc:
            raise ValueError(f"{name}: invalid spec: {exc}") from exc
        out.append((name, meta, spec))
    if not out:
        raise ValueError("no PrepPublication in the input")
    return out


def render_stream(
    text: str,
    *,
    namespace: str | None = None,
    image: str | None = None,
    capabilities: list[str] | None = None,
    now: datetime | None = None,
) -> str:
    """Every child of every PrepPublication in `text`, as a YAML stream, in apply order.

    With `now`, a publication with a window gets a comment line saying its phase at that time.
    """
    out: list[str] = []
    for name, meta, spec in read_publications(text):
        defaults = Target(name=name, namespace="default")
        target = Target(
            name=name,
            namespace=meta.get("namespace") or namespace or "default",
            image=image or defaults.image,
            capabilities=frozenset(capabilities or ()),
            files=config_files(spec, name=name),
        )
        objects = [*secret_placeholders(spec, target), *render_all(spec, target)]
        dumped = [_dump(obj) for obj in objects]
        if spec.window is not None and now is not None:
            window = spec.window
            dumped[0] = (
                f"# {name}: window {window.phase_at(now)} at {now.isoformat()} (opens "
                f"{window.start.isoformat()}, closes {window.end.isoformat()}, may be taken "
                f"down after {window.take_down_after().isoformat()})\n{dumped[0]}"
            )
        out.extend(dumped)
    return "---\n" + "---\n".join(out)
