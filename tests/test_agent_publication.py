"""The agent's copy of its publication: what the watch delivered, read again only when it may be old."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s

from difusor.agent import main
from difusor.agent.main import FRESH_FOR, Agent, AgentConfig

pytestmark = pytest.mark.unit


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def agent(tmp_path: Path) -> Agent:
    token = tmp_path / "token"
    token.write_text("t")
    config = AgentConfig(
        publication="prep", namespace="ns", pod="prep-web-0", pod_ip="127.0.0.1",
        content_dir=tmp_path / "content", address="127.0.0.1", port=0, token_file=token,
        kubeconfig=None, interval=0.5,
    )  # fmt: skip
    return Agent(config, k8s.ApiClient())


def test_the_watched_publication_is_used_until_it_may_be_old_then_read_again(
    agent: Agent, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = Clock()
    reads: list[str] = []

    def read(_api: object, method: str, path: str, **_: Any) -> dict[str, Any]:
        reads.append(f"{method} {path}")
        return {"metadata": {"name": "prep", "resourceVersion": str(len(reads))}}

    monkeypatch.setattr(main.time, "monotonic", clock)
    monkeypatch.setattr(main, "request", read)
    # Nothing seen yet: read.
    assert agent.publication()["metadata"]["resourceVersion"] == "1"
    assert reads == ["GET /apis/prep.difusor.io/v1alpha1/namespaces/ns/preppublications/prep"]
    # A watch event replaces it, and it is used as it is while it is fresh.
    agent.saw({"metadata": {"name": "prep", "resourceVersion": "watched"}})
    clock.now += FRESH_FOR - 1
    assert agent.publication()["metadata"]["resourceVersion"] == "watched"
    assert len(reads) == 1
    # Nothing for FRESH_FOR seconds (a watch that broke silently): read again.
    clock.now += 2
    assert agent.publication()["metadata"]["resourceVersion"] == "2"
    # A failed watch forgets it: the next pass reads.
    agent.saw(None)
    assert agent.publication()["metadata"]["resourceVersion"] == "3"
