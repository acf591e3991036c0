"""The metrics module: every family prefixed, built without side effects, served as text."""

from __future__ import annotations

import pytest
from prometheus_client import REGISTRY

from difusor.metrics import AgentMetrics, OperatorMetrics, exposition

pytestmark = pytest.mark.unit


def test_importing_and_building_metrics_registers_nothing_globally() -> None:
    before = set(REGISTRY._names_to_collectors)
    OperatorMetrics()
    OperatorMetrics()
    AgentMetrics()
    assert set(REGISTRY._names_to_collectors) == before


@pytest.mark.parametrize("cls", [OperatorMetrics, AgentMetrics])
def test_every_family_is_prefixed_and_documented(cls: type) -> None:
    metrics = cls()
    families = list(metrics.registry.collect())
    assert families
    for family in families:
        assert family.name.startswith("difusor_"), family.name
        assert family.documentation, family.name


def test_every_metric_is_listed_in_the_readme() -> None:
    from .conftest import REPO

    readme = (REPO / "README.md").read_text()
    for metrics in (OperatorMetrics(), AgentMetrics()):
        for family in metrics.registry.collect():
            suffix = "_total" if family.type == "counter" else ""
            assert f"`{family.name}{suffix}`" in readme, family.name


def test_the_exposition_is_prometheus_text() -> None:
    metrics = AgentMetrics()
    metrics.requests.labels(status="200").inc(3)
    body, content_type = exposition(metrics.registry)
    assert content_type.startswith("text/plain")
    assert b'difusor_http_requests_total{status="200"} 3.0' in body
