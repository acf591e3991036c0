"""Watch events ask for promotion steps without waiting for them (Promoter.nudge).

The steps here are the Promoter's own bookkeeping around a stand-in for the step's reads and
writes (`_one_step`), which blocks until the test lets it go: what is asserted is how many
steps the events give and that the events' handlers return while a step is still running.
"""

from __future__ import annotations

import asyncio
import threading
from datetime import datetime
from typing import Any

import kopf
import pytest
from kubernetes import client as k8s

from difusor.controller import handlers
from difusor.controller.promotion import STEP_THREADS, Promoter
from difusor.logic.promotion import Decision
from difusor.render.labels import STAGED_ANNOTATION, selector_labels

from .conftest import released

pytestmark = pytest.mark.unit

NS, PUB = "ns", "prep"
WAIT = 10.0


class Held(Promoter):
    """A Promoter whose step counts itself and waits for the test's word."""

    def __init__(self) -> None:
        super().__init__(k8s.ApiClient())
        self.started = threading.Semaphore(0)
        self.go = threading.Event()
        self.steps: list[tuple[str, str]] = []
        self.failing = False
        self.finished = threading.Semaphore(0)

    def _one_step(self, namespace: str, name: str, now: datetime) -> tuple[Decision | None, bool]:
        self.steps.append((namespace, name))
        self.started.release()
        assert self.go.wait(WAIT)
        if self.failing:
            raise RuntimeError("the API server went away")
        return None, False

    def _step_asked(self, key: tuple[str, str], _: None) -> None:
        try:
            super()._step_asked(key, None)
        finally:
            self.finished.release()

    def settle(self, asked: int) -> None:
        """Wait for that many asked steps to be done, and check that none is left."""
        released(self.finished, asked)
        with self._guard:
            assert (self._running, self._again) == (set(), set())


def test_nudges_while_a_step_runs_give_one_more_step_after_it() -> None:
    promoter = Held()
    promoter.nudge(NS, PUB)
    assert promoter.started.acquire(timeout=WAIT)
    for _ in range(5):  # five pods report while the first step runs
        promoter.nudge(NS, PUB)
    promoter.go.set()
    promoter.settle(2)
    assert promoter.steps == [(NS, PUB), (NS, PUB)]


def test_a_nudge_while_one_waits_for_a_thread_is_that_step() -> None:
    promoter = Held()
    others = [f"other{i}" for i in range(STEP_THREADS)]  # they hold every thread
    for name in others:
        promoter.nudge(NS, name)
    for _ in others:
        assert promoter.started.acquire(timeout=WAIT)
    for _ in range(3):
        promoter.nudge(NS, PUB)  # queued behind them: one step, however many events
    promoter.go.set()
    promoter.settle(STEP_THREADS + 1)
    assert sorted(promoter.steps) == sorted([(NS, n) for n in others] + [(NS, PUB)])


def test_a_failed_step_is_logged_and_the_next_nudge_steps_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    promoter = Held()
    promoter.failing = True
    promoter.go.set()
    promoter.nudge(NS, PUB)
    assert promoter.started.acquire(timeout=WAIT)
    promoter.settle(1)
    assert "Promotion step of ns/prep failed" in caplog.text
    promoter.failing = False
    promoter.nudge(NS, PUB)
    assert promoter.started.acquire(timeout=WAIT)
    promoter.settle(1)
    assert len(promoter.steps) == 2


def _pod(
    name: str, version: str, *, staged: str = "", ip: str = "10.0.0.1", ready: bool = True
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": NS,
            "resourceVersion": version,
            "labels": {**handlers.WEB_POD_LABELS, **selector_labels(PUB)},
            "annotations": {STAGED_ANNOTATION: staged} if staged else {},
        },
        "status": {
            "podIP": ip,
            "phase": "Running",
            "conditions": [{"type": "Ready", "status": str(ready)}],
        },
    }


def test_a_pod_event_is_let_go_while_its_step_runs() -> None:
    """kopf keeps an event's object until its handler returns; the handler returned only after
    the step when it took the step itself, waiting for a thread behind the reconciles."""
    promoter = Held()
    memo = kopf.Memo(promoter=promoter)

    async def deliver(version: str, staged: str = "") -> None:
        pod = _pod(f"{PUB}-web-0", version, staged=staged)
        await handlers.pod_reported(
            event={"type": "MODIFIED", "object": pod},
            body=kopf.Body(pod),
            namespace=NS,
            memo=memo,
        )

    asyncio.run(asyncio.wait_for(deliver("10"), WAIT))
    assert promoter.started.acquire(timeout=WAIT)  # the step runs, held
    asyncio.run(asyncio.wait_for(deliver("11", staged="20240602_2000"), WAIT))  # a report
    promoter.go.set()
    promoter.settle(2)
    assert promoter.steps == [(NS, PUB), (NS, PUB)]


def test_pod_events_ask_for_a_step_only_when_they_change_what_a_step_reads() -> None:
    """A new web pod's scheduling, start and readiness were a step each, and a step reads the
    publication from the API server: its arrival, its address, its reports and its going are
    what a step acts on."""
    promoter = Promoter(k8s.ApiClient())
    name = f"{PUB}-web-0"
    seen = [
        promoter.pod_seen(_pod(name, "1", ip="", ready=False)),  # created
        promoter.pod_seen(_pod(name, "2", ip="", ready=False)),  # scheduled
        promoter.pod_seen(_pod(name, "3", ready=False)),  # started: an address
        promoter.pod_seen(_pod(name, "4")),  # ready
        promoter.pod_seen(_pod(name, "4")),  # the same version again
        promoter.pod_seen(_pod(name, "5", staged="20240602_2000")),  # a report
        promoter.pod_seen(_pod(name, "6", staged="20240602_2000", ready=False)),
        promoter.pod_seen(_pod(name, "7", staged="20240602_2000"), deleted=True),
    ]
    assert seen == [True, False, True, False, False, True, False, True]
    assert promoter.pods.held(_pod(name, "8")) is None
