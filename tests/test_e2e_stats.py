"""End to end on host pods: every request counted once, whatever happens to the pods.

Real nginx, agents and sshd on small tmpfs volumes; readers are HTTP clients bound to their own
loopback addresses. The statistics are read back only from the API (never from a pod's log),
after a pod is deleted, an agent is killed before it shipped, the publication is scaled down and
every pod is restarted; the access log stays bounded while cuts keep being accepted.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from kubernetes import config as k8s_config

from difusor.cli import main
from difusor.logic.stats import Kind, PageRules, merge_night
from difusor.report.data import gather

from .archives import make_zip, site_files
from .conftest import OperatorProcess, kubectl, require_binary, wait_for
from .hostpods import (
    Harness,
    HostPod,
    dump_logs,
    host_public_key,
    hostpod_publication,
    served_cut,
    sftp_put,
)

# Setup (three host pods and a cut) and the traffic take minutes on a busy machine.
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1200)]

PUB = "prep-stats"
RULES = PageRules(view_prefixes=("/json/",), poll_paths=("/json/main.json",))
NET = int(os.environ.get("DIFUSOR_HOSTPOD_NET", "1"))
#: A long user agent makes each line about 900 bytes: the traffic outgrows the small volumes.
PADDING = "x" * 600


@dataclass
class Sent:
    """What the readers sent, with the answers they got: the truth."""

    requests: int = 0
    page_views: int = 0
    polls: int = 0
    assets: int = 0
    readers: set[tuple[str, str]] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, addr: str, ua: str, path: str, status: int) -> None:
        with self.lock:
            self.requests += 1
            if status >= 400:
                return
            kind = RULES.kind("/index.html" if path == "/" else path)
            if kind is Kind.PAGE:
                self.page_views += 1
            elif kind is Kind.POLL:
                self.polls += 1
            else:
                self.assets += 1
            self.readers.add((addr, ua))


@dataclass
class Site:
    kubeconfig: str
    namespace: str
    harness: Harness
    key: Path
    known_hosts: Path
    work: Path
    host_public: str
    started: datetime
    sent: Sent
    next_reader: int = 0

    def pods(self, count: int) -> list[HostPod]:
        def ready() -> list[HostPod] | None:
            pods = self.harness.running()
            return pods if len(pods) == count and all(p.ready for p in pods) else None

        found: list[HostPod] = wait_for(f"{count} ready host pods", ready, timeout=180)
        return found

    def upload(self, pod: HostPod, cut_id: str, seed: int) -> None:
        archive = make_zip(self.work / f"{cut_id}_PREP_MICH.zip", site_files(cut=cut_id, seed=seed))
        self.known_hosts.write_text(
            "".join(f"[{p.ip}]:2222 {self.host_public}\n" for p in self.harness.running())
        )
        proc = sftp_put(
            archive, user=self.harness.sftp_user, ip=pod.ip, key=self.key,
            known_hosts=self.known_hosts, timeout=300,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr

    def readers(self, count: int) -> list[tuple[str, str]]:
        out = []
        for _ in range(count):
            n = self.next_reader
            self.next_reader += 1
            out.append(
                (
                    f"127.{NET}.{240 + n // 250}.{n % 250 + 1}",
                    f"Mozilla/5.0 (X11; Linux x86_64) Firefox/125.0 n{n} {PADDING}",
                )
            )
        return out

    def traffic(self, pods: list[HostPod], *, readers: int, rounds: int) -> None:
        """Each reader opens the site, polls main.json and opens views, over every pod in turn."""
        paths = ["/", "/json/main.json", "/json/distritos/01.json", "/json/main.json"]
        paths += ["/json/distritos/03.json", "/datos/20240602_PREP_GUB_MICH.csv", "/nope.js"]

        def one(reader: tuple[str, str], start: int) -> None:
            addr, ua = reader
            conns = {
                p.ip: http.client.HTTPConnection(p.ip, 8080, timeout=10, source_address=(addr, 0))
                for p in pods
            }
            try:
                for r in range(rounds):
                    for i, path in enumerate(paths):
                        pod = pods[(start + r + i) % len(pods)]
                        conn = conns[pod.ip]
                        conn.request("GET", path, headers={"User-Agent": ua})
                        resp = conn.getresponse()
                        resp.read()
                        self.sent.record(addr, ua, path, resp.status)
            finally:
                for conn in conns.values():
                    conn.close()

        chosen = self.readers(readers)
        threads = [
            threading.Thread(target=lambda part=part: [one(r, n) for n, r in part])
            for part in (list(enumerate(chosen))[0::2], list(enumerate(chosen))[1::2])
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=600)


def api_totals(site: Site) -> dict[str, int]:
    api = k8s_config.new_client_from_config(config_file=site.kubeconfig)
    try:
        evidence = gather(api, namespace=site.namespace, name=PUB)
    finally:
        api.close()
    assert not evidence.unreadable, evidence.unreadable
    start = int(site.started.timestamp()) // 3600 * 3600
    night = merge_night(evidence.hours, start=start, end=start + 48 * 3600)
    totals = night.totals
    return {
        # The fixture's own checks and the operator's prober send requests without a browser's
        # user agent: they are counted as bots, apart from the readers.
        "requests": totals.requests - totals.bots,
        "page_views": totals.page_views,
        "polls": totals.polls,
        "assets": totals.assets,
        "visitors": night.visitors_exact,
        "sessions": len(night.sessions),
    }


def expected(site: Site) -> dict[str, int]:
    sent = site.sent
    return {
        "requests": sent.requests,
        "page_views": sent.page_views,
        "polls": sent.polls,
        "assets": sent.assets,
        "visitors": len(sent.readers),
        "sessions": len(sent.readers),
    }


def all_counted(site: Site, *, timeout: float = 120) -> None:
    """The API holds exactly what was sent, and still does a few ship intervals later."""
    last: dict[str, Any] = {}

    def check() -> bool:
        last.update(api_totals(site))
        return last == expected(site)

    try:
        wait_for("the API statistics to equal what was sent", check, timeout=timeout)
        time.sleep(3)  # three more ship intervals: nothing is counted twice
        assert api_totals(site) == expected(site)
    except AssertionError:
        print(dump_logs(site.harness))
        print(kubectl(site.kubeconfig, "-n", site.namespace, "get", "configmaps", "--show-labels"))
        for pod in site.harness.running():
            print(
                pod.name,
                sorted((p.name, p.stat().st_size) for p in (pod.content / "logs").iterdir()),
            )
        raise AssertionError(f"api {last} != sent {expected(site)}") from None


@pytest.fixture(scope="module")
def site(
    operator: OperatorProcess, kubeconfig: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Site]:
    spec = {
        "storage": {"size": "16Mi"},
        "retention": {"cuts": 3},
        "statistics": {"logRotateSize": "512Ki", "shipIntervalSeconds": 1},
    }
    with hostpod_publication(
        kubeconfig, tmp_path_factory.mktemp("stats"), prefix="stats", name=PUB, spec=spec,
        volume_size="16m",
    ) as stage:  # fmt: skip
        harness, namespace, work = stage.harness, stage.namespace, stage.work
        public = host_public_key(kubeconfig, namespace=namespace, publication=PUB)
        site = Site(
            kubeconfig, namespace, harness, stage.key, work / "known_hosts", work, public,
            started=datetime.now(UTC), sent=Sent(),
        )  # fmt: skip
        site.upload(harness.listening(3)[0], "20240602_2020", seed=1)
        wait_for(
            "every pod serving the first cut",
            lambda: (
                all(served_cut(p.ip) == "20240602_2020" for p in harness.running())
                and len(harness.running()) == 3
            ),
            timeout=180,
        )
        yield site


def test_every_request_on_every_pod_is_counted_once_in_the_api(site: Site) -> None:
    site.traffic(site.pods(3), readers=20, rounds=3)
    all_counted(site)


def test_deleting_a_pod_right_after_traffic_loses_none_of_its_requests(site: Site) -> None:
    pods = site.pods(3)
    site.traffic(pods, readers=10, rounds=2)
    victim = pods[0]
    kubectl(site.kubeconfig, "-n", site.namespace, "delete", "pod", victim.name, "--wait=false")
    wait_for(
        "the pod to be replaced",
        lambda: any(p.name == victim.name and p.uid != victim.uid for p in site.harness.running()),
        timeout=120,
    )
    site.pods(3)
    all_counted(site)


def test_an_agent_killed_before_it_shipped_replays_its_log_exactly_once(site: Site) -> None:
    pods = site.pods(3)
    agent = pods[1].procs["agent"].popen
    assert agent is not None
    agent.send_signal(signal.SIGSTOP)  # it reads and ships nothing from here on
    try:
        site.traffic(pods, readers=10, rounds=2)
    finally:
        pods[1].procs["agent"].kill()  # SIGKILL: no last pass; the harness starts it again
    all_counted(site)


def test_scaling_down_and_restarting_every_pod_lose_nothing(site: Site) -> None:
    site.traffic(site.pods(3), readers=10, rounds=2)
    kubectl(site.kubeconfig, "-n", site.namespace, "patch", "prep", PUB, "--type=merge",
            "-p", json.dumps({"spec": {"replicas": 2}}))  # fmt: skip
    pods = site.pods(2)
    site.traffic(pods, readers=10, rounds=2)
    before = {p.uid for p in pods}
    kubectl(site.kubeconfig, "-n", site.namespace, "delete", "pods", "--all", "--wait=false")
    wait_for(
        "every pod restarted",
        lambda: (
            len(site.harness.running()) == 2
            and not before & {p.uid for p in site.harness.running()}
        ),
        timeout=180,
    )
    site.pods(2)
    all_counted(site)


def test_logs_stay_bounded_and_cuts_keep_being_accepted_on_a_small_volume(site: Site) -> None:
    kubectl(site.kubeconfig, "-n", site.namespace, "patch", "prep", PUB, "--type=merge",
            "-p", json.dumps({"spec": {"replicas": 3}}))  # fmt: skip
    pods = site.pods(3)
    volume = 16 << 20
    peaks: dict[str, int] = {}
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            for p in site.harness.running():
                peaks[p.name] = max(peaks.get(p.name, 0), _logs_size(p))
            time.sleep(0.1)

    watcher = threading.Thread(target=watch)
    watcher.start()
    sent_before = site.sent.requests
    try:
        # About 900 bytes a line: more than each pod's 16 MiB volume, if the logs were kept.
        site.traffic(pods, readers=40, rounds=240)
        site.upload(pods[2], "20240602_2040", seed=2)
        wait_for(
            "every pod serving the new cut",
            lambda: all(served_cut(p.ip) == "20240602_2040" for p in site.harness.running()),
            timeout=180,
        )
    finally:
        stop.set()
        watcher.join()
    logged = (site.sent.requests - sent_before) * 900
    assert logged > volume * len(pods), "the traffic should outgrow the volumes"
    assert max(peaks.values()) < volume // 2, peaks
    for pod in site.harness.running():
        assert not (pod.content / "logs" / "access.log.1").exists() or _settles(pod)
    all_counted(site)


def test_the_report_and_the_diagram_read_the_live_objects(site: Site, tmp_path: Path) -> None:
    start = site.started - timedelta(minutes=1)
    end = datetime.now(UTC) + timedelta(minutes=1)
    code = main([
        "report", "--publication", f"{site.namespace}/{PUB}", "--from", start.isoformat(),
        "--to", end.isoformat(), "-o", str(tmp_path), "--kubeconfig", site.kubeconfig,
    ])  # fmt: skip
    assert code == 0
    pdf = tmp_path / f"memoria-tecnica-{PUB}.pdf"
    text = subprocess.run(
        [require_binary("pdftotext"), str(pdf), "-"], check=True, capture_output=True, text=True
    ).stdout
    # Readers' page views are exact (the total of requests also holds the prober's and the
    # fixture's own requests, counted as bots).
    assert f"{site.sent.page_views:,}" in text
    assert "20240602_2040" in text
    code = main([
        "diagram", "--publication", f"{site.namespace}/{PUB}", "-o", str(tmp_path),
        "--kubeconfig", site.kubeconfig,
    ])  # fmt: skip
    assert code == 0
    dot = (tmp_path / f"diagrama-{PUB}.dot").read_text()
    for pod in site.harness.running():
        assert f"Pod {pod.name}" in dot
        assert pod.ip in dot
    assert (tmp_path / f"diagrama-{PUB}.png").stat().st_size > 0


def _logs_size(pod: HostPod) -> int:
    total = 0
    for path in (pod.content / "logs").glob("access.log*"):
        try:
            total += path.stat().st_size
        except FileNotFoundError:
            continue
    return total


def _settles(pod: HostPod) -> bool:
    """A rotated file left at the end of the traffic goes once read and shipped."""
    rotated = pod.content / "logs" / "access.log.1"
    return bool(wait_for(f"{rotated} removed", lambda: not rotated.exists(), timeout=30))
