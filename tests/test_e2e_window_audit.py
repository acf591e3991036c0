"""End to end on host pods: a whole publication window, then the audit of what it left online.

One publication lives through Pending (placeholder), Open (cuts) and Closed (uploads refused,
the last cut online); then `difusor audit` proves the site unaltered, and finds the one file
altered on one pod's disk.
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from difusor.audit import audit
from difusor.cli import main
from difusor.render.nginx import INTEGRITY_PATH

from .archives import make_zip, site_files
from .conftest import OperatorProcess, kubectl, wait_for
from .hostpods import Harness, HostPod, host_public_key, hostpod_publication, sftp_put

pytestmark = pytest.mark.e2e

PUB = "prep-window"
CUT = "20240602_2020"
PLACEHOLDER = "<!doctype html><title>PREP</title><p>Resultados a partir de las 20:00</p>\n"
#: Time for the pods to start and the first cut to be promoted before the window opens (host
#: pods take over a minute to come up on a busy machine).
LEAD = timedelta(seconds=180)
#: Length of the window (the real one is a day).
LENGTH = timedelta(seconds=40)


class Window:
    """The publication, its host pods, its uploader and the window's times."""

    def __init__(
        self, kubeconfig: str, namespace: str, harness: Harness, work: Path, *, start: datetime
    ) -> None:
        self.kubeconfig = kubeconfig
        self.namespace = namespace
        self.harness = harness
        self.work = work
        self.start = start
        self.end = self.start + LENGTH
        self.key = work / "uploader"
        self.archives: dict[str, Path] = {}

    def kubectl(self, *args: str, stdin: str | None = None) -> str:
        return kubectl(self.kubeconfig, "-n", self.namespace, *args, stdin=stdin)

    def publication(self) -> dict[str, Any]:
        return dict(json.loads(self.kubectl("get", "prep", PUB, "-o", "json")))

    def window_status(self) -> dict[str, Any]:
        return dict((self.publication().get("status") or {}).get("window") or {})

    def pods(self) -> list[HostPod]:
        def ready() -> list[HostPod] | None:
            pods = self.harness.running()
            return pods if len(pods) == 3 and all(p.ready for p in pods) else None

        found: list[HostPod] = wait_for("3 ready host pods", ready, timeout=180)
        return found

    def upload(self, pod: HostPod, cut: str, *, seed: int) -> Path:
        archive = make_zip(self.work / f"{cut}_PREP_MICH.zip", site_files(cut=cut, seed=seed))
        self.archives[cut] = archive
        public = host_public_key(self.kubeconfig, namespace=self.namespace, publication=PUB)
        known = self.work / "known_hosts"
        known.write_text("".join(f"[{p.ip}]:2222 {public}\n" for p in self.harness.running()))
        proc = sftp_put(
            archive, user=self.harness.sftp_user, ip=pod.ip, key=self.key, known_hosts=known,
            timeout=300,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        return archive

    def cut(self, name: str) -> dict[str, Any] | None:
        out = kubectl(
            self.kubeconfig, "-n", self.namespace, "get", "prepcut", name, "-o", "json",
            check=False,
        )  # fmt: skip
        return json.loads(out) if out.startswith("{") else None

    def events(self) -> str:
        return self.kubectl(
            "get", "events", "--field-selector", f"involvedObject.name={PUB}",
            "--sort-by=.metadata.creationTimestamp",
        )  # fmt: skip


def _get(pod: HostPod, path: str) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection(pod.ip, 8080, timeout=10)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


@pytest.fixture(scope="module")
def window(
    operator: OperatorProcess, kubeconfig: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Window]:
    start = datetime.now(UTC).replace(microsecond=0) + LEAD
    placeholder = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "prep-placeholder"},
        "data": {"index.html": PLACEHOLDER},
    }
    spec = {
        # The agents' own content check would repair the file altered below (that is
        # tests/test_e2e_healing.py); here an outside reader must see the alteration.
        "monitoring": {"integrityCheckFilesPerMinute": 0},
        "window": {
            "start": start.isoformat(),
            "end": (start + LENGTH).isoformat(),
            "placeholderConfigMap": "prep-placeholder",
        },
    }
    with hostpod_publication(
        kubeconfig, tmp_path_factory.mktemp("window"), prefix="win", name=PUB, spec=spec,
        objects=(placeholder,),
    ) as stage:  # fmt: skip
        site = Window(kubeconfig, stage.namespace, stage.harness, stage.work, start=start)
        try:
            yield site
        finally:
            print(site.events())


def test_before_the_start_the_pods_are_ready_serving_the_placeholder(window: Window) -> None:
    pods = window.pods()
    answered = []
    for pod in pods:
        status, headers, body = _get(pod, "/")
        answered.append(datetime.now(UTC))
        assert status == 200, pod.name
        assert body.decode() == PLACEHOLDER
        assert "x-prep-cut" not in headers
        assert headers["cache-control"] == "public, max-age=30"
    assert max(answered) < window.start, "the pods came up after the start: lengthen LEAD"
    assert wait_for("phase Pending", lambda: window.window_status().get("phase") == "Pending")
    table = window.kubectl("get", "prep", PUB)
    assert "WINDOW" in table.splitlines()[0]
    assert "Pending" in table.splitlines()[1]


def test_a_cut_uploaded_before_the_start_is_shown_when_the_window_opens(window: Window) -> None:
    # Not window.pods(): on a slow machine the start may have passed, and without a cut the
    # pods are (rightly) not Ready any more.
    pods = window.harness.listening(3)
    window.upload(pods[0], CUT, seed=1)

    def all_serve() -> bool:
        return all(_get(p, "/json/main.json")[1].get("x-prep-cut") == CUT for p in pods)

    wait_for(
        f"every pod serving {CUT} once the window opened",
        all_serve,
        timeout=(window.start - datetime.now(UTC)).total_seconds() + 180,
    )
    assert datetime.now(UTC) >= window.start
    opened = wait_for(
        "phase Open", lambda: (w := window.window_status()).get("phase") == "Open" and w
    )
    assert opened["transitions"][-1]["phase"] == "Open"
    assert opened["transitions"][-1]["at"] == window.start.isoformat()
    assert "WindowOpened" in window.events()


def test_after_the_end_uploads_are_refused_and_the_last_cut_stays(window: Window) -> None:
    pods = window.pods()
    wait_for(
        "phase Closed",
        lambda: window.window_status().get("phase") == "Closed",
        timeout=(window.end - datetime.now(UTC)).total_seconds() + 120,
    )
    status = window.window_status()
    assert status["takeDownAfter"] == (window.end + timedelta(hours=24)).isoformat()
    assert [t["phase"] for t in status["transitions"]] == ["Pending", "Open", "Closed"]
    late = "20240602_2040"
    window.upload(pods[1], late, seed=2)
    cut = wait_for(
        "the late cut Rejected",
        lambda: (c := window.cut(f"{PUB}-20240602-2040")) and c.get("status") and c,
    )
    assert cut["status"]["phase"] == "Rejected"
    assert cut["status"]["reason"] == "WindowClosed"
    assert "window closed" in cut["status"]["message"]
    assert all(_get(p, "/json/main.json")[1]["x-prep-cut"] == CUT for p in pods)
    assert (pods[1].content / "quarantine" / f"{late}_PREP_MICH.zip").exists()
    events = window.events()
    assert "WindowClosed" in events
    assert "RejectedWindowClosed" in events
    assert "Closed" in window.kubectl("get", "prep", PUB).splitlines()[1]


def test_the_audit_proves_every_pod_serves_the_institutes_archive_unaltered(
    window: Window,
) -> None:
    pods = window.pods()
    archive = window.archives[CUT]
    for pod in pods:
        report = audit(pod.url(""), archive=archive)
        assert report.ok, (pod.name, [d.line() for d in report.differences])
        assert report.manifest.cut == CUT
    status, headers, body = _get(pods[0], INTEGRITY_PATH)
    assert status == 200
    assert headers["x-prep-cut"] == CUT
    assert json.loads(body)["archive"] == archive.name


def test_a_file_altered_on_one_pods_disk_fails_the_audit_of_that_pod_only(
    window: Window, capsys: pytest.CaptureFixture[str]
) -> None:
    pods = window.pods()
    archive = window.archives[CUT]
    victim = pods[2]
    target = victim.content / "versions" / CUT / "json" / "distritos" / "02.json"
    # An in-place edit of the served file, as an intruder on that node would make it.
    target.write_text('{"distrito": 2, "votos": [0]}')
    code = main(["audit", victim.url(""), "--archive", str(archive)])
    out = capsys.readouterr().out
    assert code == 1
    differences = [line for line in out.splitlines() if line.startswith("DIFFERENCE")]
    assert len(differences) == 1, out
    assert differences[0].startswith("DIFFERENCE json/distritos/02.json: served 29 bytes")
    assert "ALTERED: 1 difference(s)" in out
    for pod in pods[:2]:
        assert main(["audit", pod.url(""), "--archive", str(archive)]) == 0
