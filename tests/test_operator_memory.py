"""The operator caps glibc's malloc arenas before its threads start (cli.limit_malloc_arenas)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

from difusor.cli import limit_malloc_arenas

from .conftest import REPO

pytestmark = pytest.mark.unit

#: Twelve threads allocate at once (blocks below the mmap threshold, so from arenas); glibc's
#: arenas besides the main one are anonymous heaps aligned to 64 MiB: counted from /proc.
_ARENAS = """
import sys, threading
sys.path.insert(0, {operator!r})
from difusor.cli import limit_malloc_arenas
capped = limit_malloc_arenas() if sys.argv[1] == "cap" else False
barrier = threading.Barrier(12)
kept = []
def grow():
    barrier.wait()
    kept.append([bytearray(20_000) for _ in range(300)])
threads = [threading.Thread(target=grow) for _ in range(12)]
for t in threads: t.start()
for t in threads: t.join()
heaps = 0
for line in open("/proc/self/maps"):
    fields = line.split()
    start = int(fields[0].split("-")[0], 16)
    if len(fields) == 5 and start % (64 << 20) == 0:
        heaps += 1
print(capped, heaps)
"""


def _heaps(mode: str) -> tuple[str, int]:
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    out = subprocess.run(
        [sys.executable, "-c", _ARENAS.format(operator=str(REPO / "operator")), mode],
        capture_output=True, text=True, check=True, env=env,
    ).stdout.split()  # fmt: skip
    return out[0], int(out[1])


def test_the_variable_wins_over_the_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert limit_malloc_arenas() is False


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_threads_share_two_arenas_once_capped() -> None:
    capped, heaps = _heaps("cap")
    uncapped, more = _heaps("nocap")
    assert (capped, uncapped) == ("True", "False")
    assert heaps <= 1 < more, (heaps, more)
