"""The agent's log rotation against a real nginx and the real API, one pass at a time."""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from difusor.agent import stats
from difusor.agent.stats import (
    CURSOR_ANNOTATION,
    LOG_NAME,
    REOPEN_GRACE_SECONDS,
    ROTATED_NAME,
    StatsShipper,
    cursor_name,
    read_hour,
)
from difusor.kube import core_path, read
from difusor.models import GROUP, VERSION

from .conftest import kubectl, wait_for
from .nginxproc import Site, make_spec, running_nginx

pytestmark = pytest.mark.e2e

PUB = "prep-rotation"
POD = "web-0"


def _publication(kubeconfig: str, namespace: str) -> None:
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "PrepPublication",
        "metadata": {"name": PUB, "namespace": namespace},
        "spec": {
            "host": "prep.example.mx",
            "sftp": {"authorizedKeysSecret": "iem-keys"},
            "statistics": {"logRotateSize": "4Ki", "shipIntervalSeconds": 1},
        },
    }
    kubectl(kubeconfig, "apply", "-f", "-", stdin=json.dumps(body))


@contextmanager
def _publication_on_nginx(kubeconfig: str, namespace: str, tmp_path: Path) -> Iterator[Any]:
    """The publication, and a real nginx serving one cut of it: (its server, its directory,
    whose logs/ the shipper reads)."""
    _publication(kubeconfig, namespace)
    site = Site(tmp_path / "content")
    site.add_version("20240602_2000")
    site.activate("20240602_2000")
    workdir = tmp_path / "nginx"
    with running_nginx(make_spec(), workdir=workdir, content=site.root) as server:
        yield server, workdir


def _shipper(api: object, namespace: str, workdir: Path, **options: Any) -> StatsShipper:
    """The agent's shipper of the nginx running in `workdir`."""
    return StatsShipper(
        api,  # type: ignore[arg-type]
        namespace=namespace,
        publication=PUB,
        pod=POD,
        log_dir=workdir / "logs",
        nginx_pid_file=workdir / "run" / "nginx.pid",
        **options,
    )


def _reopened(workdir: Path) -> bool:
    """Whether every nginx process writes to the live access log. The master creates the file
    on USR1 and tells the workers, which reopen it on their next turn: a request served before
    that is logged in the rotated file."""
    logs = workdir / "logs"
    if not (logs / LOG_NAME).exists():
        return False
    master = int((workdir / "run" / "nginx.pid").read_text())
    processes = [master]
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError, ValueError):
            if (
                entry.name.isdigit()
                and int((entry / "stat").read_text().rpartition(")")[2].split()[1]) == master
            ):
                processes.append(int(entry.name))
    rotated = str(logs / ROTATED_NAME)
    for pid in processes:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                if os.readlink(fd) == rotated:
                    return False
    return True


def _wait_reopened(workdir: Path) -> None:
    wait_for("every nginx process to reopen its access log", lambda: _reopened(workdir), timeout=30)


def _wait_removed(shipper: StatsShipper, logs: Path, what: str) -> None:
    """Take passes until the rotated log is gone."""

    def removed() -> bool:
        shipper.step()
        return not (logs / ROTATED_NAME).exists()

    wait_for(what, removed, timeout=30)


def _shipped_requests(api: object, namespace: str) -> int:
    now = int(time.time()) // 3600 * 3600
    total = 0
    for hour in (now - 3600, now, now + 3600):
        stats = read_hour(api, namespace=namespace, pod=POD, hour=hour)
        if stats is not None:
            total += sum(m.requests for m in stats.minutes.values())
    return total


class _Traffic:
    """Numbered requests to the nginx under test, each batch awaited in its access log."""

    def __init__(self, client: Any, logs: Path) -> None:
        self.client = client
        self.logs = logs
        self.sent = 0

    def send(self, count: int, *, lines: int) -> None:
        """`count` requests, then wait until the live access log has `lines` lines."""
        for _ in range(count):
            assert self.client.request(f"/json/main.json?n={self.sent}").status == 200
            self.sent += 1
        live = self.logs / LOG_NAME
        wait_for(
            f"{lines} requests in {LOG_NAME}",
            lambda: live.exists() and live.read_bytes().count(b"\n") == lines,
            timeout=30,
        )


def test_a_rotated_log_goes_once_shipped_though_no_request_follows_the_rotation(
    crds: str, api: object, namespace: str, tmp_path: Path
) -> None:
    """The last requests of the night fill the log past its rotation size; then nobody comes.

    nginx reopens an empty access.log; the rotated file must still be removed once read and
    shipped, and every request counted once.
    """
    with _publication_on_nginx(crds, namespace, tmp_path) as (server, workdir):
        logs = workdir / "logs"
        traffic = _Traffic(server.client("127.0.0.9"), logs)
        try:
            # About 300 bytes a line: well past 4 KiB. nginx writes its buffered lines within a
            # second (flush=1s).
            traffic.send(40, lines=40)
        finally:
            traffic.client.close()
        shipper = _shipper(api, namespace, workdir)
        assert shipper.step() == 40
        assert (logs / ROTATED_NAME).exists(), "read and shipped past 4Ki: rotated"
        _wait_reopened(workdir)
        assert (logs / LOG_NAME).stat().st_size == 0

        _wait_removed(shipper, logs, "the rotated log removed with no request after it")
        assert (logs / LOG_NAME).stat().st_size == 0
        assert server.get("/index.html").status == 200  # still logging, to the new file
        wait_for("the next request logged", lambda: (logs / LOG_NAME).stat().st_size > 0)
    shipper.step()
    assert _shipped_requests(api, namespace) == traffic.sent + 1 == 41


def test_a_log_that_grows_while_it_is_shipped_is_rotated_all_the_same(
    crds: str, api: object, namespace: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under steady traffic nginx appends between the shipper's read and its rotation check.

    The log must be rotated all the same (it used to wait for a pause in the traffic, and grew
    past half of a small volume meanwhile), and every request still counted once.
    """
    with _publication_on_nginx(crds, namespace, tmp_path) as (server, workdir):
        logs = workdir / "logs"
        traffic = _Traffic(server.client("127.0.0.9"), logs)
        traffic.send(40, lines=40)
        shipper = _shipper(api, namespace, workdir)
        ship = shipper._ship

        def ship_while_requests_arrive() -> None:
            ship()
            traffic.send(5, lines=traffic.sent + 5)

        monkeypatch.setattr(shipper, "_ship", ship_while_requests_arrive)
        assert shipper.step() == 40
        assert (logs / ROTATED_NAME).exists(), "past 4Ki with lines still unread: rotated"
        monkeypatch.undo()

        _wait_removed(shipper, logs, "the rotated log read to its end and removed")
        traffic.client.close()
    shipper.step()
    assert _shipped_requests(api, namespace) == traffic.sent == 45


def test_the_pass_that_removes_the_rotated_log_rotates_the_live_one_when_it_is_due(
    crds: str, api: object, namespace: str, tmp_path: Path
) -> None:
    """Under steady traffic the live log is past its size again by the time the rotated one
    may go: waiting for the next pass to rotate it let it grow one more interval each time."""
    with _publication_on_nginx(crds, namespace, tmp_path) as (server, workdir):
        logs = workdir / "logs"
        traffic = _Traffic(server.client("127.0.0.9"), logs)
        traffic.send(40, lines=40)
        shipper = _shipper(api, namespace, workdir)
        assert shipper.pause() == shipper.interval
        assert shipper.step() == 40
        first = (logs / ROTATED_NAME).stat().st_ino
        # The next pass comes when the grace ends, not a whole interval later.
        shipper.interval = 10.0
        assert shipper.pause() <= REOPEN_GRACE_SECONDS + 0.1
        _wait_reopened(workdir)
        traffic.send(40, lines=40)  # past 4Ki again
        time.sleep(REOPEN_GRACE_SECONDS + 0.2)
        assert shipper.step() == 40
        # One pass: the first rotated file read and removed, the live one rotated in its place.
        assert (logs / ROTATED_NAME).stat().st_ino != first
        assert (logs / ROTATED_NAME).read_bytes().count(b"\n") == 40

        _wait_removed(shipper, logs, "the second rotated log removed")
        traffic.client.close()
    shipper.step()
    assert _shipped_requests(api, namespace) == traffic.sent == 80


def test_the_shipper_takes_the_publication_from_the_agent_s_copy(
    crds: str, api: object, namespace: str, tmp_path: Path
) -> None:
    """The agent's watched copy of the publication, not a read on every pass of every pod."""
    with _publication_on_nginx(crds, namespace, tmp_path) as (server, workdir):
        stored = json.loads(
            kubectl(crds, "-n", namespace, "get", "preppublication", PUB, "-o", "json")
        )
        # What the agent's watch delivered, here with a ship interval the API server's copy lacks.
        stored["spec"]["statistics"]["shipIntervalSeconds"] = 7
        reads: list[int] = []

        def copy() -> dict[str, Any]:
            reads.append(1)
            return stored

        shipper = _shipper(api, namespace, workdir, read_publication=copy)
        assert server.get("/json/main.json").status == 200
        shipper.step()
        shipper.step()
        assert (len(reads), shipper.interval) == (2, 7.0)
        reading = _shipper(api, namespace, workdir)
        reading.step()
        assert reading.interval == 1.0  # without the agent's copy: read from the API server


def test_the_cursor_is_written_when_the_live_log_changes_not_on_every_pass(
    crds: str, api: object, namespace: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cursor tells a restarted agent which generation each log file is. Written on every
    pass, it was one write to the API server per pod every shipIntervalSeconds all night."""

    def cursor() -> tuple[str, dict[str, int]] | None:
        cm = read(api, core_path(namespace, "configmaps", cursor_name(POD)))  # type: ignore[arg-type]
        if cm is None:
            return None
        notes = cm["metadata"]["annotations"]
        return cm["metadata"]["resourceVersion"], json.loads(notes[CURSOR_ANNOTATION])

    with _publication_on_nginx(crds, namespace, tmp_path) as (server, workdir):
        logs = workdir / "logs"
        traffic = _Traffic(server.client("127.0.0.9"), logs)
        traffic.send(2, lines=2)
        shipper = _shipper(api, namespace, workdir)
        assert shipper.step() == 2
        first = cursor()
        assert first is not None
        version, named = first
        # Lines shipped, the live log the same: the hour's object moves, the cursor does not.
        traffic.send(2, lines=4)
        assert shipper.step() == 2
        assert _shipped_requests(api, namespace) == 4
        assert cursor() == first

        # Past 4Ki: rotated; the pass that takes up the reopened log writes the new generation.
        traffic.send(40, lines=44)
        assert shipper.step() == 40
        _wait_reopened(workdir)
        traffic.send(1, lines=1)
        shipper.step()
        moved = cursor()
        assert moved is not None
        assert moved[0] != version
        assert moved[1]["generation"] == named["generation"] + 1
        assert moved[1]["inode"] != named["inode"]

        # Deleted by hand, it comes back once the refresh is due.
        kubectl(crds, "-n", namespace, "delete", "configmap", cursor_name(POD))
        traffic.send(1, lines=2)
        shipper.step()
        assert cursor() is None
        monkeypatch.setattr(stats, "CURSOR_REFRESH_SECONDS", 0.0)
        shipper.step()
        back = cursor()
        assert back is not None
        assert back[1] == moved[1]
        traffic.client.close()
    shipper.step()
    assert _shipped_requests(api, namespace) == traffic.sent == 46
