"""controller.refresher: the work StatefulSet events ask for, the latest ask per key once."""

from __future__ import annotations

import threading

import pytest

from difusor.controller.refresher import Refresher

from .conftest import released

pytestmark = pytest.mark.unit

WAIT = 10.0


class Work:
    """Records each call and holds it until the test lets it go."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []
        self.started = threading.Semaphore(0)
        self.done = threading.Semaphore(0)
        self.go = threading.Event()
        self.fail = False

    def __call__(self, key: str, value: int) -> None:
        self.calls.append((key, value))
        self.started.release()
        try:
            assert self.go.wait(WAIT)
            if self.fail:
                raise RuntimeError("the API server went away")
        finally:
            self.done.release()

    def finished(self, calls: int) -> None:
        released(self.done, calls)


def test_asks_while_waiting_for_a_thread_are_one_call_with_the_latest() -> None:
    work = Work()
    refresher: Refresher[str, int] = Refresher(work, threads=1)
    refresher.ask("a", 1)
    assert work.started.acquire(timeout=WAIT)  # "a" holds the only thread
    for value in (1, 2, 3):
        refresher.ask("b", value)
    work.go.set()
    work.finished(2)
    assert work.calls == [("a", 1), ("b", 3)]


def test_an_ask_while_its_key_runs_is_one_more_call_after_it() -> None:
    work = Work()
    refresher: Refresher[str, int] = Refresher(work, threads=2)
    refresher.ask("a", 1)
    assert work.started.acquire(timeout=WAIT)
    refresher.ask("a", 2)
    refresher.ask("a", 3)
    assert not work.started.acquire(timeout=0.3)  # not beside the running one
    work.go.set()
    work.finished(2)
    assert work.calls == [("a", 1), ("a", 3)]


def test_a_failed_call_is_logged_and_the_next_ask_calls_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    work = Work()
    work.fail = True
    work.go.set()
    refresher: Refresher[str, int] = Refresher(work)
    refresher.ask("a", 1)
    work.finished(1)
    work.fail = False
    refresher.ask("a", 2)
    work.finished(1)
    assert work.calls == [("a", 1), ("a", 2)]
    assert "Refreshing a failed" in caplog.text  # logged before the loop looked for more
