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
from difusor.render.labels import selector_labels

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


def _pod(name: str, version: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": NS,
            "resourceVersion": version,
            "labels": {**handlers.WEB_POD_LABELS, **selector_labels(PUB)},
        },
        "status": {"podIP": "10.0.0.1", "phase": "Running"},
    }


def test_a_pod_event_is_let_go_while_its_step_runs() -> None:
    """kopf keeps an event's object until its handler returns; the handler returned only after
    the step when it took the step itself, waiting for a thread behind the reconciles."""
    promoter = Held()
    memo = kopf.Memo(promoter=promoter)

    async def deliver(version: str) -> None:
        pod = _pod(f"{PUB}-web-0", version)
        await handlers.pod_reported(
            event={"type": "MODIFIED", "object": pod},
            body=kopf.Body(pod),
            namespace=NS,
            memo=memo,
        )

    asyncio.run(asyncio.wait_for(deliver("10"), WAIT))
    assert promoter.started.acquire(timeout=WAIT)  # the step runs, held
    asyncio.run(asyncio.wait_for(deliver("11"), WAIT))  # a report while it runs
    promoter.go.set()
    promoter.settle(2)
    assert promoter.steps == [(NS, PUB), (NS, PUB)]
