"""End to end on host pods: real sftp uploads, real agents and nginx, promotion across 3 pods."""

from __future__ import annotations

import http.client
import json
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from difusor.models import parse_time

from .archives import make_zip, site_files
from .conftest import OperatorProcess, kubectl, wait_for
from .hostpods import Harness, HostPod, dump_logs, host_public_key, hostpod_publication, sftp_put

pytestmark = pytest.mark.e2e

PUB = "prep-e2e"


@dataclass
class Site:
    kubeconfig: str
    namespace: str
    harness: Harness
    client_key: Path
    known_hosts: Path
    work: Path
    host_public: str

    def publication(self) -> dict[str, Any]:
        return json.loads(
            kubectl(self.kubeconfig, "-n", self.namespace, "get", "prep", PUB, "-o", "json")
        )

    def cut(self, cut_id: str) -> dict[str, Any] | None:
        name = f"{PUB}-{cut_id.replace('_', '-')}"
        out = kubectl(
            self.kubeconfig, "-n", self.namespace, "get", "prepcut", name, "-o", "json", check=False
        )
        return json.loads(out) if out.startswith("{") else None

    def pods(self, count: int = 3) -> list[HostPod]:
        def ready() -> list[HostPod] | None:
            pods = self.harness.running()
            return pods if len(pods) == count and all(p.ready for p in pods) else None

        found: list[HostPod] = wait_for(f"{count} ready host pods", ready, timeout=120)
        return found

    def upload(self, pod: HostPod, archive: Path) -> None:
        """Put the archive on one pod with the real sftp client: temporary name, then rename."""
        # Every pod presents the same host key (the operator's Secret), whatever its address.
        self.known_hosts.write_text(
            "".join(f"[{p.ip}]:2222 {self.host_public}\n" for p in self.harness.running())
        )
        proc = sftp_put(
            archive, user=self.harness.sftp_user, ip=pod.ip, key=self.client_key,
            known_hosts=self.known_hosts, timeout=300,
        )  # fmt: skip
        assert proc.returncode == 0, f"sftp to {pod.name} failed: {proc.stderr}"


def get(pod: HostPod, path: str) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection(pod.ip, 8080, timeout=10)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def served_cut(pod: HostPod) -> str | None:
    status, headers, body = get(pod, "/json/main.json")
    if status != 200:
        return None
    assert json.loads(body)["horaCorte"] == headers["x-prep-cut"], (
        "main.json and X-Prep-Cut disagree"
    )
    return headers["x-prep-cut"]


def active_cut(site: Site) -> str | None:
    return ((site.publication().get("status") or {}).get("activeCut") or {}).get("id")


def cut_archive(site: Site, cut_id: str, *, seed: int) -> Path:
    path = site.work / f"{cut_id}_PREP_MICH.zip"
    make_zip(path, site_files(cut=cut_id, actas=300, seed=seed))
    return path


def all_serve(site: Site, cut_id: str, *, timeout: float = 120) -> None:
    """Wait until each of the 3 pods serves the cut (the failure says what each one served)."""
    last: dict[str, str | None] = {}

    def check() -> bool:
        pods = site.harness.running()
        last.clear()
        last.update({p.name: served_cut(p) for p in pods})
        return len(pods) == 3 and all(cut == cut_id for cut in last.values())

    try:
        wait_for(f"every pod serving {cut_id}", check, timeout=timeout)
    except AssertionError as exc:
        print(dump_logs(site.harness))
        raise AssertionError(f"{exc}; served: {last}") from None


@pytest.fixture(scope="module")
def site(
    operator: OperatorProcess, kubeconfig: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Site]:
    spec = {"retention": {"cuts": 5}}
    with hostpod_publication(
        kubeconfig, tmp_path_factory.mktemp("e2e"), prefix="e2e", name=PUB, spec=spec
    ) as stage:
        public = host_public_key(kubeconfig, namespace=stage.namespace, publication=PUB)
        stage.harness.listening(3)
        yield Site(
            kubeconfig, stage.namespace, stage.harness, stage.key,
            stage.work / "known_hosts", stage.work, public,
        )  # fmt: skip


def test_a_cut_uploaded_to_one_pod_is_served_by_every_pod(site: Site) -> None:
    pods = site.harness.running()
    assert all(served_cut(p) is None for p in pods)
    site.upload(pods[0], cut_archive(site, "20240602_2020", seed=1))
    all_serve(site, "20240602_2020")
    # The operator records the cut as active once every pod has reported it.
    pub = wait_for(
        "activeCut in status", lambda: active_cut(site) == "20240602_2020" and site.publication()
    )
    assert pub["status"]["activeCut"]["time"] == "2024-06-02T20:20:00-06:00"
    cut = wait_for(
        "the cut Promoted",
        lambda: (c := site.cut("20240602_2020")) and c["status"]["phase"] == "Promoted" and c,
    )
    assert cut["spec"]["receivedBy"] == pods[0].name
    stamps = ("receivedAt", "verifiedAt", "stagingAt", "stagedAt", "committedAt", "servingAt")
    for key in stamps:
        assert cut["status"].get(key), key
    # Each step after the last (receivedAt has the second only, verifiedAt the millisecond).
    times = [parse_time(cut["status"][k]) for k in stamps[1:]]
    assert times == sorted(times), times
    assert set(cut["status"]["pods"]) == {p.name for p in pods}
    site.pods()
    _, headers, _ = get(pods[2], "/json/main.json")
    assert headers["cache-control"] == "no-cache, no-store, must-revalidate"


def test_a_second_cut_swaps_every_pod_without_ever_mixing_cuts(site: Site) -> None:
    pods = site.pods()
    old, new = "20240602_2020", "20240602_2040"
    stop = threading.Event()
    seen: dict[str, list[str]] = {p.name: [] for p in pods}
    problems: list[str] = []

    def reader(pod: HostPod) -> None:
        deadline = time.monotonic() + 180
        while not stop.is_set() and time.monotonic() < deadline:
            for path in ("/json/main.json", "/index.html", "/json/distritos/01.json"):
                status, headers, body = get(pod, path)
                if status != 200:
                    problems.append(f"{pod.name} {path} answered {status}")
                    continue
                cut = headers["x-prep-cut"]
                if path == "/json/main.json" and json.loads(body)["horaCorte"] != cut:
                    problems.append(
                        f"{pod.name}: body of {json.loads(body)['horaCorte']} under header {cut}"
                    )
                seen[pod.name].append(cut)

    threads = [threading.Thread(target=reader, args=(p,)) for p in pods]
    for t in threads:
        t.start()
    try:
        site.upload(pods[1], cut_archive(site, new, seed=2))
        all_serve(site, new)
        time.sleep(1)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
    assert not problems, problems[:5]
    for name, cuts in seen.items():
        assert cuts, name
        assert set(cuts) <= {old, new}, name
        first_new = cuts.index(new)
        assert old not in cuts[first_new:], f"{name} served {old} again after {new}"


def test_a_hostile_archive_changes_nothing_on_any_pod(site: Site, tmp_path: Path) -> None:
    pods = site.pods()
    import zipfile

    bad = tmp_path / "20240602_2100_PREP_MICH.zip"
    with zipfile.ZipFile(bad, "w") as zf:
        zf.writestr("json/main.json", json.dumps({"horaCorte": "20240602_2100"}))
        zf.writestr("../../etc/evil", "x")
    site.upload(pods[2], bad)

    def rejected() -> dict[str, Any] | None:
        out = kubectl(site.kubeconfig, "-n", site.namespace, "get", "prepcuts", "-o", "json")
        for item in json.loads(out)["items"]:
            if (item.get("status") or {}).get("phase") == "Rejected":
                return dict(item)
        return None

    cut = wait_for("a Rejected PrepCut", rejected)
    assert cut["status"]["reason"] == "PathTraversal"
    assert (pods[2].content / "quarantine" / bad.name).exists()
    assert all(served_cut(p) == "20240602_2040" for p in pods)
    assert site.publication()["status"]["activeCut"]["id"] == "20240602_2040"
    events = kubectl(site.kubeconfig, "-n", site.namespace, "get", "events")
    assert "RejectedPathTraversal" in events


def test_pinning_an_older_cut_rolls_every_pod_back(site: Site) -> None:
    site.pods()
    kubectl(site.kubeconfig, "-n", site.namespace, "patch", "prep", PUB, "--type=merge",
            "-p", json.dumps({"spec": {"pinnedCut": "20240602_2020"}}))  # fmt: skip
    all_serve(site, "20240602_2020")
    wait_for("activeCut in status", lambda: active_cut(site) == "20240602_2020")
    kubectl(site.kubeconfig, "-n", site.namespace, "patch", "prep", PUB, "--type=merge",
            "-p", json.dumps({"spec": {"pinnedCut": None}}))  # fmt: skip
    all_serve(site, "20240602_2040")


def test_a_pod_deleted_after_the_commit_comes_back_serving_the_active_cut(site: Site) -> None:
    pods = site.pods()
    victim = pods[0].name
    kubectl(site.kubeconfig, "-n", site.namespace, "delete", "pod", victim, "--wait=false")
    wait_for(
        "the pod to be replaced",
        lambda: any(p.name == victim and p.uid != pods[0].uid for p in site.harness.running()),
        timeout=120,
    )
    site.pods()
    assert served_cut(site.harness.pod(victim)) == "20240602_2040"


def test_a_pod_killed_while_staging_does_not_block_the_promotion(site: Site) -> None:
    pods = site.pods()
    cut_id = "20240602_2120"
    victim = pods[2]
    # Freeze the victim's agent so that it cannot stage, then kill the pod mid-staging.
    victim.procs["agent"].popen.send_signal(signal.SIGSTOP)  # type: ignore[union-attr]
    site.upload(pods[0], cut_archive(site, cut_id, seed=3))
    wait_for(
        "staging to start",
        lambda: (site.publication()["status"].get("rollout") or {}).get("targetCut") == cut_id,
    )
    kubectl(site.kubeconfig, "-n", site.namespace, "delete", "pod", victim.name, "--wait=false")
    all_serve(site, cut_id, timeout=180)
    wait_for("activeCut in status", lambda: active_cut(site) == cut_id)


def test_an_operator_killed_mid_promotion_resumes_from_status(
    site: Site, operator: OperatorProcess
) -> None:
    pods = site.pods()
    previous, cut_id = "20240602_2120", "20240602_2140"
    operator.kill()
    site.upload(pods[1], cut_archive(site, cut_id, seed=4))
    wait_for(
        "the cut Verified", lambda: (c := site.cut(cut_id)) and c["status"]["phase"] == "Verified"
    )
    # With the operator down nothing is promoted, and every pod keeps serving.
    assert all(served_cut(p) == previous for p in pods)
    # A frozen agent keeps the rollout in Staging (until the 20 s stage timeout).
    frozen = pods[2].procs["agent"].popen
    assert frozen is not None
    frozen.send_signal(signal.SIGSTOP)
    try:
        operator.start()
        rollout = lambda: site.publication()["status"].get("rollout") or {}  # noqa: E731
        wait_for(
            "staging",
            lambda: rollout().get("targetCut") == cut_id and rollout().get("phase") == "Staging",
        )
        operator.kill()
        assert all(served_cut(p) == previous for p in pods)
        operator.start()
        wait_for(
            "the commit", lambda: rollout().get("phase") in ("Committing", "Idle"), timeout=120
        )
        operator.kill()
        operator.start()
    finally:
        frozen.send_signal(signal.SIGCONT)
    all_serve(site, cut_id)
    wait_for("activeCut in status", lambda: active_cut(site) == cut_id)
    events = kubectl(
        site.kubeconfig,
        "-n",
        site.namespace,
        "get",
        "events",
        "--field-selector",
        f"involvedObject.name={PUB}",
    )
    assert "StageTimeout" in events, events
