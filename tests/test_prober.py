"""The prober's paths: what it asks, of whom, and what counts as a failed probe."""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes import client as k8s

from difusor.controller.monitor import Monitor, Watch
from difusor.metrics import OperatorMetrics
from difusor.models import ProbeSpec

from .conftest import unreachable_api

pytestmark = pytest.mark.unit

ACTIVE, TARGET = "20240602_2020", "20240602_2040"


def publication(**status: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "prep", "namespace": "ns"},
        "spec": {"host": "prep.example.mx", "tls": {"secretName": "t"}},
        "status": {"activeCut": {"id": ACTIVE}, **status},
    }


def pod(name: str, ip: str, *, ready: bool = True) -> dict[str, Any]:
    """A pod as the API sends it (the prober reads pods as dicts)."""
    return {
        "metadata": {"name": name},
        "status": {"podIP": ip, "conditions": [{"type": "Ready", "status": str(ready)}]},
    }


class Fetcher:
    def __init__(self, answers: dict[str, tuple[int, str | None, bytes]]) -> None:
        self.answers = answers
        self.asked: list[str] = []

    def __call__(self, url: str, *, timeout: float) -> tuple[int, str | None, bytes]:
        self.asked.append(url)
        return self.answers.get(url, (200, ACTIVE, b"{}"))


def monitor(fetcher: Fetcher) -> Monitor:
    return Monitor(k8s.ApiClient(), OperatorMetrics(), fetcher=fetcher)


@pytest.mark.parametrize(
    ("via", "url"),
    [
        ("Service", "http://prep-http.ns.svc:80/json/main.json"),
        ("Host", "https://prep.example.mx/json/main.json"),
    ],
)
def test_the_service_and_the_host_are_probed_at_the_public_path(via: str, url: str) -> None:
    fetcher = Fetcher({})
    result = monitor(fetcher).probe(publication(), ProbeSpec(via=via), [])  # type: ignore[arg-type]
    assert result.ok
    assert fetcher.asked == [url]


def test_via_pods_every_ready_pod_is_probed_and_a_wrong_one_fails_the_probe() -> None:
    fetcher = Fetcher({"http://127.0.0.3:8080/json/main.json": (200, "20240602_2000", b"{}")})
    pods = [pod("w-0", "127.0.0.2"), pod("w-1", "127.0.0.3"), pod("w-2", "127.0.0.4", ready=False)]
    result = monitor(fetcher).probe(publication(), ProbeSpec(via="Pods"), pods)  # type: ignore[arg-type]
    assert not result.ok
    assert result.failing_pods == ("w-1",)
    assert "served cut 20240602_2000" in str(result.error)
    assert len(fetcher.asked) == 2
    none_ready = monitor(fetcher).probe(publication(), ProbeSpec(via="Pods"), pods[2:])  # type: ignore[arg-type]
    assert none_ready.error == "no web pod is Ready"


def test_mid_commit_the_target_cut_is_as_good_as_the_active_one() -> None:
    fetcher = Fetcher({"http://edge.test/json/main.json": (200, TARGET, b"{}")})
    probe = ProbeSpec(via="Url", url="http://edge.test")  # type: ignore[arg-type]
    committing = publication(rollout={"phase": "Committing", "targetCut": TARGET})
    assert monitor(fetcher).probe(committing, probe, []).ok
    assert not monitor(fetcher).probe(publication(), probe, []).ok


def test_an_unreachable_path_is_a_failed_probe() -> None:
    def refuse(url: str, *, timeout: float) -> tuple[int, str | None, bytes]:
        raise ConnectionRefusedError(111, "Connection refused")

    result = Monitor(k8s.ApiClient(), OperatorMetrics(), fetcher=refuse).probe(
        publication(), ProbeSpec(), []
    )
    assert not result.ok
    assert "could not reach" in str(result.error)


def test_a_pass_that_cannot_reach_the_api_server_is_logged_and_the_loop_goes_on() -> None:
    """The daemon's pass raised MaxRetryError (no OSError) when the API server did not answer
    at all, and kopf restarted the prober only after its backoff."""
    monitor = Monitor(unreachable_api(), OperatorMetrics())
    publication = {
        "metadata": {"namespace": "ns", "name": "prep"},
        "spec": {"host": "prep.example.mx", "sftp": {"authorizedKeysSecret": "k"}},
        "status": {"activeCut": {"id": "20240602_2020"}},
    }
    interval = monitor.step(Watch(namespace="ns", name="prep"), publication)
    assert interval == ProbeSpec().interval_seconds
