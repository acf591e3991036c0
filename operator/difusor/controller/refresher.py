"""Work that watch events ask for, done on threads of its own, the latest ask per key once."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")
#: Threads for the refreshes: publications' refreshes run side by side, one of each at a time.
THREADS = 2


class Refresher(Generic[K, V]):
    """Calls `work(key, value)` on its threads for what `ask` is given, without waiting.

    Asks for a key that is waiting for a thread replace its value: one call, with the latest.
    An ask while the key's call runs is one more call after it. kopf's handlers ask and return,
    so the events' objects are let go at once instead of waiting for one of kopf's threads
    behind the reconciles: a StatefulSet's events ask for its publication's status (it changes
    several times as its pods come up, and each of its events was a reconcile), and pods' and
    PrepCuts' events for promotion steps (Promoter.nudge).
    """

    def __init__(
        self, work: Callable[[K, V], None], *, threads: int = THREADS, name: str = "refresh"
    ) -> None:
        self._work = work
        self._lock = threading.Lock()
        self._pending: dict[K, V] = {}
        self._running: set[K] = set()
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix=name)

    def ask(self, key: K, value: V) -> None:
        with self._lock:
            outstanding = key in self._pending or key in self._running
            self._pending[key] = value
        if not outstanding:
            self._pool.submit(self._drain, key)

    def _drain(self, key: K) -> None:
        while True:
            with self._lock:
                if key not in self._pending:
                    self._running.discard(key)
                    return
                value = self._pending.pop(key)
                self._running.add(key)
            try:
                self._work(key, value)
            except Exception:
                log.exception("Refreshing %s failed", key)
