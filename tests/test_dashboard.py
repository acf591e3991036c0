"""The Grafana dashboard, linted: every query parses (promtool) and names only our metrics.

grafana/dashboard-linter is not obtainable here (not served by the Go module proxy), so its
rules that apply to a Prometheus dashboard are checked below: a datasource variable used by every
panel and target, the $namespace/$publication matchers in every query, $__rate_interval in
rates, unique ids, units, titles, and panels that do not overlap.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from difusor.metrics import AgentMetrics, OperatorMetrics
from difusor.models import PrepPublicationSpec
from difusor.render.monitoring import rule_groups

from .conftest import REPO, require_binary

pytestmark = pytest.mark.unit

DASHBOARD = REPO / "charts" / "difusor" / "files" / "dashboards" / "difusor.json"


def load() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def targets() -> list[tuple[str, dict[str, Any]]]:
    return [(p["title"], t) for p in load()["panels"] for t in p["targets"]]


def known_series() -> set[str]:
    names = set()
    for metrics in (OperatorMetrics(), AgentMetrics()):
        for family in metrics.registry.collect():
            for sample in family.samples:
                names.add(sample.name)
            suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}
            names.update(family.name + s for s in suffixes.get(family.type, [""]))
    spec = PrepPublicationSpec.model_validate(
        {"host": "a.mx", "sftp": {"authorizedKeysSecret": "k"}}
    )
    for group in rule_groups(spec, name="p", namespace="n"):
        names.update(r["record"] for r in group["rules"] if "record" in r)
    return names


def test_every_query_parses_as_promql(tmp_path: Path) -> None:
    rules = [
        {
            "record": f"dashboard:panel_{i}",
            # Grafana's variables as Prometheus would receive them.
            "expr": t["expr"]
            .replace("$__rate_interval", "1m")
            .replace("$namespace", ".*")
            .replace("$publication", ".*"),
        }
        for i, (_, t) in enumerate(targets())
    ]
    path = tmp_path / "dashboard-rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    proc = subprocess.run(
        [require_binary("promtool"), "check", "rules", str(path)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_query_names_only_metrics_that_exist_and_filters_by_the_variables() -> None:
    known = known_series()
    functions = {"histogram_quantile", "sum", "rate", "increase", "max", "by", "le"}
    for title, target in targets():
        expr = target["expr"]
        names = set(re.findall(r"\b(difusor[:_][a-z0-9_:]+)", expr))
        assert names, title
        assert names <= known, f"{title}: unknown {names - known}"
        for name in names:
            assert f'{name}{{namespace=~"$namespace",publication=~"$publication"}}' in expr, title
        if "rate(" in expr:
            assert "[$__rate_interval]" in expr or "increase(" in expr, title
        assert target["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, title
        assert not set(re.findall(r"\b([a-z_]+)\(", expr)) - functions, title


def test_the_layout_and_variables_follow_the_linter_rules() -> None:
    dashboard = load()
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name in ("namespace", "publication"):
        assert variables[name]["datasource"]["uid"] == "${datasource}"
        assert variables[name]["includeAll"]
        assert variables[name]["multi"]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for panel in dashboard["panels"]:
        assert panel["title"]
        assert panel["datasource"]["uid"] == "${datasource}"
        assert panel["fieldConfig"]["defaults"]["unit"], panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        mine = {(x, y) for x in range(grid["x"], grid["x"] + grid["w"])
                for y in range(grid["y"], grid["y"] + grid["h"])}  # fmt: skip
        assert not mine & cells, f"{panel['title']} overlaps another panel"
        cells |= mine
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
