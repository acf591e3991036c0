"""The CustomResourceDefinitions, generated from the pydantic models (`make crds` writes crds/)."""

from __future__ import annotations

import copy
from typing import Any

from pydantic import BaseModel

from difusor.models import (
    GROUP,
    VERSION,
    PrepCutSpec,
    PrepCutStatus,
    PrepIncidentSpec,
    PrepIncidentStatus,
    PrepPublicationSpec,
    PrepPublicationStatus,
)

_DROP = {"title", "$defs", "discriminator"}


def structural_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The OpenAPI v3 structural schema of a model, as the API server wants it.

    pydantic's JSON Schema is turned into the subset Kubernetes accepts: `$ref`s inlined,
    `anyOf [X, null]` as `nullable`, enums and consts kept, titles dropped, and the
    `x-kubernetes-validations` (CEL) of each model carried through.
    """
    raw = model.model_json_schema(by_alias=True, mode="validation")
    defs = raw.get("$defs", {})
    schema = _convert(raw, defs)
    _object_defaults(model, schema)
    return schema


def _object_defaults(model: type[BaseModel], schema: dict[str, Any]) -> None:
    """Give nested objects built by a default factory their whole default value.

    The API server then fills in a section the user left out (and checks its CEL rules against
    real values, which an empty `{}` default would not satisfy).
    """
    props = schema.get("properties", {})
    for name, info in model.model_fields.items():
        key = info.alias or name
        prop = props.get(key)
        annotation = info.annotation
        if prop is None or not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            continue
        if info.default_factory is not None and "default" not in prop:
            value = info.default_factory()  # type: ignore[call-arg]
            if isinstance(value, BaseModel):
                prop["default"] = value.model_dump(mode="json", by_alias=True, exclude_none=True)
        _object_defaults(annotation, prop)


def _convert(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    node = copy.deepcopy(node)
    if "$ref" in node:
        target = defs[node.pop("$ref").rsplit("/", 1)[-1]]
        merged = {**target, **node}
        return _convert(merged, defs)
    if "anyOf" in node:
        choices = node.pop("anyOf")
        options = [o for o in choices if o.get("type") != "null"]
        nullable = len(options) < len(choices)
        if len(options) == 1:
            inner = _convert(options[0], defs)
            outer = {k: v for k, v in node.items() if k not in _DROP}
            if outer.get("default", "absent") is None:
                outer.pop("default")
            merged = {**inner, **{k: v for k, v in outer.items() if k != "default"}}
            if "default" in outer:
                merged["default"] = outer["default"]
            if nullable:
                merged["nullable"] = True
            return merged
        raise ValueError(f"union types are not structural: {options}")
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROP:
            continue
        if key == "properties":
            out[key] = {name: _convert(sub, defs) for name, sub in value.items()}
        elif key == "items":
            out[key] = _convert(value, defs)
        elif key == "additionalProperties":
            out[key] = _convert(value, defs) if isinstance(value, dict) else value
        elif key == "const":
            out["enum"] = [value]
        elif key == "default" and value is None:
            continue
        else:
            out[key] = value
    if out.get("additionalProperties") is False:
        # Structural schemas forbid unknown fields by pruning; `false` is not accepted.
        del out["additionalProperties"]
    if "enum" in out and "type" not in out:
        out["type"] = "string"
    return out


def _crd(
    *,
    kind: str,
    plural: str,
    short_names: list[str],
    spec: type[BaseModel],
    status: type[BaseModel],
    columns: list[dict[str, Any]],
    subresources: dict[str, Any],
    categories: list[str],
) -> dict[str, Any]:
    spec_schema = structural_schema(spec)
    status_schema = structural_schema(status)
    status_schema["x-kubernetes-preserve-unknown-fields"] = True
    spec_schema["description"] = (spec.__doc__ or "").strip()
    status_schema["description"] = (status.__doc__ or "").strip()
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{plural}.{GROUP}",
            "labels": {"app.kubernetes.io/name": "difusor"},
        },
        "spec": {
            "group": GROUP,
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": kind.lower(),
                "shortNames": short_names,
                "categories": categories,
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": spec_schema,
                                "status": status_schema,
                            },
                        }
                    },
                    "subresources": subresources,
                    "additionalPrinterColumns": columns,
                }
            ],
        },
    }


def publication_crd() -> dict[str, Any]:
    """The PrepPublication CRD."""
    return _crd(
        kind="PrepPublication",
        plural="preppublications",
        short_names=["prep"],
        spec=PrepPublicationSpec,
        status=PrepPublicationStatus,
        categories=["difusor"],
        subresources={
            "status": {},
            "scale": {
                "specReplicasPath": ".spec.replicas",
                "statusReplicasPath": ".status.replicas",
                "labelSelectorPath": ".status.selector",
            },
        },
        columns=[
            {
                "name": "Ready",
                "type": "string",
                "jsonPath": '.status.conditions[?(@.type=="Ready")].status',
            },
            {"name": "Active cut", "type": "string", "jsonPath": ".status.activeCut.id"},
            {"name": "Cut time", "type": "string", "jsonPath": ".status.activeCut.time"},
            {"name": "Replicas", "type": "integer", "jsonPath": ".status.readyReplicas"},
            {"name": "Window", "type": "string", "jsonPath": ".status.window.phase"},
            {"name": "Host", "type": "string", "jsonPath": ".spec.host", "priority": 1},
            {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
        ],
    )


def cut_crd() -> dict[str, Any]:
    """The PrepCut CRD."""
    return _crd(
        kind="PrepCut",
        plural="prepcuts",
        short_names=["cut", "cuts"],
        spec=PrepCutSpec,
        status=PrepCutStatus,
        categories=["difusor"],
        subresources={"status": {}},
        columns=[
            {"name": "Publication", "type": "string", "jsonPath": ".spec.publication"},
            {"name": "Cut", "type": "string", "jsonPath": ".spec.id"},
            {"name": "Cut time", "type": "string", "jsonPath": ".spec.time"},
            {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
            {"name": "Purge", "type": "string", "jsonPath": ".status.purge.outcome"},
            {"name": "Reason", "type": "string", "jsonPath": ".status.reason", "priority": 1},
            {
                "name": "Purge requested",
                "type": "string",
                "jsonPath": ".status.purge.requestedAt",
                "priority": 1,
            },
            {
                "name": "Purged",
                "type": "string",
                "jsonPath": ".status.purge.completedAt",
                "priority": 1,
            },
            {
                "name": "Purge id",
                "type": "string",
                "jsonPath": ".status.purge.requestId",
                "priority": 1,
            },
            {"name": "Files", "type": "integer", "jsonPath": ".spec.files", "priority": 1},
            {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
        ],
    )


def incident_crd() -> dict[str, Any]:
    """The PrepIncident CRD: one object per incident, the night's record of what went wrong."""
    return _crd(
        kind="PrepIncident",
        plural="prepincidents",
        short_names=["incident", "incidents"],
        spec=PrepIncidentSpec,
        status=PrepIncidentStatus,
        categories=["difusor"],
        subresources={"status": {}},
        columns=[
            {"name": "Publication", "type": "string", "jsonPath": ".spec.publication"},
            {"name": "Cause", "type": "string", "jsonPath": ".status.cause"},
            {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
            {"name": "Started", "type": "string", "jsonPath": ".spec.startedAt"},
            {"name": "Seconds", "type": "integer", "jsonPath": ".status.durationSeconds"},
            {
                "name": "Detected by",
                "type": "string",
                "jsonPath": ".spec.detectedBy",
                "priority": 1,
            },
            {
                "name": "Root cause",
                "type": "string",
                "jsonPath": ".status.rootCause",
                "priority": 1,
            },
        ],
    )


def all_crds() -> dict[str, dict[str, Any]]:
    """Every CRD by the file name it is written to under crds/."""
    return {
        "prep.difusor.io_preppublications.yaml": publication_crd(),
        "prep.difusor.io_prepcuts.yaml": cut_crd(),
        "prep.difusor.io_prepincidents.yaml": incident_crd(),
    }
