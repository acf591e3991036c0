"""Self-healing on host pods: the prober's incidents, damaged content, a frozen agent, a flood.

Real nginx, agents and sshd on loopback (tests/hostpods.py), the operator as a process with its
metrics served, and a real Prometheus scraping both. The prober goes `via: Pods`: in this tier
Services have no endpoints (the controller manager keeps loopback pod IPs out of
EndpointSlices). Each test prints one `FIGURES {...}` line with what it measured.
"""

from __future__ import annotations

import http.client
import json
import signal
import subprocess
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from .archives import make_zip, site_files
from .conftest import OperatorProcess, kubectl, require_binary, wait_for
from .hostpods import (
    _NET,
    Harness,
    HostPod,
    host_public_key,
    hostpod_publication,
    sftp_put,
)
from .nginxproc import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

PUB = "prep-heal"
FIRST = "20240602_2020"
#: A flooder and three readers, each from its own loopback address; the flooder's /24 holds no
#: reader (the automatic deny list works by /24).
ATTACKER = f"127.{_NET}.250.1"
READERS = [f"127.{_NET}.251.{i}" for i in (1, 2, 3)]
TTL = 20


@dataclass
class Site:
    kubeconfig: str
    namespace: str
    harness: Harness
    operator: OperatorProcess
    metrics_port: int
    work: Path

    def kubectl(self, *args: str, check: bool = True) -> str:
        return kubectl(self.kubeconfig, "-n", self.namespace, *args, check=check)

    def publication(self) -> dict[str, Any]:
        return json.loads(self.kubectl("get", "prep", PUB, "-o", "json"))

    def status(self) -> dict[str, Any]:
        return dict(self.publication().get("status") or {})

    def incidents(self) -> list[dict[str, Any]]:
        """The incidents whose status is written (it follows the create by one patch)."""
        items = json.loads(self.kubectl("get", "prepincidents", "-o", "json"))["items"]
        return sorted((i for i in items if i.get("status")), key=lambda i: i["spec"]["startedAt"])

    def events(self, reason: str) -> list[dict[str, Any]]:
        items = json.loads(
            self.kubectl("get", "events", "--field-selector", f"reason={reason}", "-o", "json")
        )["items"]
        return list(items)

    def pods(self) -> list[HostPod]:
        def ready() -> list[HostPod] | None:
            pods = self.harness.running()
            return pods if len(pods) == 3 and all(p.ready for p in pods) else None

        found: list[HostPod] = wait_for("3 ready host pods", ready, timeout=180)
        return found


def get(ip: str, path: str = "/json/main.json", *, source: str | None = None) -> int:
    conn = http.client.HTTPConnection(
        ip, 8080, timeout=10, source_address=(source, 0) if source else None
    )
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


def served_cut(pod: HostPod) -> str | None:
    conn = http.client.HTTPConnection(pod.ip, 8080, timeout=5)
    try:
        conn.request("GET", "/json/main.json")
        resp = conn.getresponse()
        resp.read()
        return resp.getheader("X-Prep-Cut") if resp.status == 200 else None
    except OSError:
        return None
    finally:
        conn.close()


def agent_metric(pod: HostPod, name: str) -> float:
    conn = http.client.HTTPConnection(pod.ip, 8081, timeout=5)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    conn.close()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def upload(site: Site, pod: HostPod, cut: str, *, seed: int) -> None:
    archive = site.work / f"{cut}_PREP_MICH.zip"
    make_zip(archive, site_files(cut=cut, actas=200, seed=seed))
    public = host_public_key(site.kubeconfig, namespace=site.namespace, publication=PUB)
    known = site.work / "known_hosts"
    known.write_text("".join(f"[{p.ip}]:2222 {public}\n" for p in site.harness.running()))
    proc = sftp_put(
        archive, user=site.harness.sftp_user, ip=pod.ip, key=site.work / "uploader",
        known_hosts=known, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr


def all_serve(site: Site, cut: str, *, timeout: float = 120) -> None:
    wait_for(
        f"every pod serving {cut}",
        lambda: (
            len(site.harness.running()) == 3
            and all(served_cut(p) == cut for p in site.harness.running())
        ),
        timeout=timeout,
    )


def wait_resolved(
    site: Site, incident: dict[str, Any], after: str, *, timeout: float = 90
) -> dict[str, Any]:
    """The incident as it is once Resolved (`after` completes what is waited for)."""
    name = incident["metadata"]["name"]
    found: list[dict[str, Any]] = wait_for(
        f"the incident resolved{after}",
        lambda: [i for i in site.incidents()
                 if i["metadata"]["name"] == name and i["status"]["phase"] == "Resolved"],
        timeout=timeout, interval=0.25,
    )  # fmt: skip
    return found[0]


def figures(name: str, **values: Any) -> None:
    print(f"FIGURES {json.dumps({'test': name, **values}, sort_keys=True)}")


@pytest.fixture(scope="module")
def operator(crds: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    """The operator with its metrics on a free loopback port (self.metrics_port)."""
    port = free_port()
    proc = OperatorProcess(
        crds,
        tmp_path_factory.mktemp("operator") / "operator.log",
        args=("--metrics", f"127.0.0.1:{port}"),
    )
    proc.metrics_port = port  # type: ignore[attr-defined]
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def site(
    operator: OperatorProcess, kubeconfig: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Site]:
    spec = {
        "promotion": {"stageTimeoutSeconds": 10, "minReadyReplicas": 2},
        "rateLimit": {"requestsPerSecond": 50, "burst": 50, "connections": 100},
        "monitoring": {
            "probe": {"via": "Pods", "intervalSeconds": 1, "timeoutSeconds": 2},
            "autoDeny": {"ttlSeconds": TTL},
            "integrityCheckFilesPerMinute": 30000,
        },
    }
    with hostpod_publication(
        kubeconfig, tmp_path_factory.mktemp("heal"), prefix="heal", name=PUB, spec=spec
    ) as stage:
        harness = stage.harness
        port: int = operator.metrics_port  # type: ignore[attr-defined]
        site = Site(kubeconfig, stage.namespace, harness, operator, port, stage.work)
        pods = harness.listening(3)
        upload(site, pods[0], FIRST, seed=1)
        all_serve(site, FIRST)
        wait_for(
            "the first cut active",
            lambda: (site.status().get("activeCut") or {}).get("id") == FIRST,
        )
        yield site


def test_the_prober_counts_availability_and_records_an_outage_as_an_incident(site: Site) -> None:
    pods = site.pods()
    wait_for(
        "probes counted", lambda: (site.status().get("availability") or {}).get("probes", 0) > 3
    )
    agents = [p.procs["agent"].popen for p in pods]
    frozen_at = time.monotonic()
    for popen in agents:
        popen.send_signal(signal.SIGSTOP)  # type: ignore[union-attr]
    try:
        opened = wait_for(
            "an incident from the prober",
            lambda: [i for i in site.incidents() if i["spec"]["detectedBy"] == "Prober"],
            timeout=60,
            interval=0.25,
        )[0]
        detected = time.monotonic() - frozen_at
    finally:
        for popen in agents:
            popen.send_signal(signal.SIGCONT)  # type: ignore[union-attr]
    thawed = time.monotonic()
    assert opened["status"]["cause"] == "PodsNotReady"
    resolved = wait_resolved(site, opened, "", timeout=60)
    healed = time.monotonic() - thawed
    status = resolved["status"]
    assert status["durationSeconds"] >= 1
    assert status["impact"]["failedProbes"] >= 2
    assert status["endedAt"] >= resolved["spec"]["startedAt"]
    availability = site.status()["availability"]
    assert availability["failedProbes"] >= 2
    assert 0 < availability["ratio"] < 1
    assert site.events("IncidentOpened")
    figures(
        "prober outage", interval_s=1, failures_to_open=2, detect_s=round(detected, 1),
        heal_s=round(healed, 1), incident_s=status["durationSeconds"],
        failed_probes=status["impact"]["failedProbes"], ratio=availability["ratio"],
    )  # fmt: skip


def test_a_pod_with_a_damaged_file_leaves_rotation_and_a_peer_repairs_it(site: Site) -> None:
    pods = site.pods()
    victim = pods[1]
    path = victim.content / "versions" / FIRST / "json" / "main.json"
    original = path.read_bytes()
    damaged_at = time.monotonic()
    path.write_bytes(b"{" * len(original))  # same size: only the hash can tell
    corrupt = wait_for(
        "the damage found", lambda: [e for e in site.events("ContentCorrupt")
                                     if victim.name in e["message"]],
        timeout=60, interval=0.2,
    )  # fmt: skip
    detected = time.monotonic() - damaged_at
    wait_for(
        "the repair", lambda: [e for e in site.events("ContentRepaired") if victim.name in e["message"]],
        timeout=60, interval=0.2,
    )  # fmt: skip
    repaired = time.monotonic() - damaged_at
    wait_for("the pod Ready again", lambda: site.harness.pod(victim.name).ready, timeout=30)
    healed = time.monotonic() - damaged_at
    assert path.read_bytes() == original
    assert "left rotation" in corrupt[0]["message"]
    assert served_cut(victim) == FIRST
    assert agent_metric(victim, "difusor_content_corrupt_total") >= 1
    assert agent_metric(victim, "difusor_content_repairs_total") >= 1
    figures(
        "damaged file", files_per_minute=30000, detect_s=round(detected, 2),
        repaired_s=round(repaired, 2), ready_s=round(healed, 2),
    )  # fmt: skip


def test_an_agent_frozen_mid_rollout_ends_in_a_recorded_incident(site: Site) -> None:
    pods = site.pods()
    cut = "20240602_2040"
    frozen = pods[2]
    popen = frozen.procs["agent"].popen
    assert popen is not None
    popen.send_signal(signal.SIGSTOP)
    started = time.monotonic()
    try:
        upload(site, pods[0], cut, seed=2)
        incident = wait_for(
            "a PromotionStuck incident",
            lambda: [i for i in site.incidents() if i["spec"]["detectedBy"] == "Promotion"],
            timeout=90,
            interval=0.25,
        )[0]
        detected = time.monotonic() - started
        wait_for("the cut active", lambda: (site.status().get("activeCut") or {}).get("id") == cut)
        assert all(served_cut(p) == cut for p in pods[:2])
    finally:
        popen.send_signal(signal.SIGCONT)
    thawed = time.monotonic()
    status = incident["status"]
    assert status["cause"] == "PromotionStuck"
    assert status["impact"]["affectedPods"] == [frozen.name]
    assert frozen.name in status["actions"][0]["action"]
    resolved = wait_resolved(site, incident, " once the pod caught up")
    healed = time.monotonic() - thawed
    all_serve(site, cut)
    assert site.events("StageTimeout")
    assert resolved["status"]["durationSeconds"] > 0
    figures(
        "frozen agent", stage_timeout_s=10, detect_s=round(detected, 1),
        heal_after_thaw_s=round(healed, 1), incident_s=resolved["status"]["durationSeconds"],
    )  # fmt: skip


def test_a_pod_that_cannot_swap_at_the_commit_is_left_out_after_the_timeout(site: Site) -> None:
    """A pod that staged the cut but cannot swap to it holds the commit up to the stage
    timeout; then the cut is promoted on the others (CommitTimeout), an incident records it, and
    the pod serves the cut once it can. The commit's timeout counts from the rollout's
    committedAt, which the API server kept only once the status schema named it."""
    pods = site.pods()
    cut = "20240602_2100"
    stuck = pods[2]
    popen = stuck.procs["agent"].popen
    assert popen is not None
    # The agent makes the new `current` link as .current.<pid> and renames it into place: a
    # directory of that name makes the swap fail, and nothing else of the pod.
    blocker = stuck.content / f".current.{popen.pid}"
    blocker.mkdir()
    started = time.monotonic()
    try:
        upload(site, pods[0], cut, seed=3)
        incident = wait_for(
            "a PromotionStuck incident about the commit",
            lambda: [
                i
                for i in site.incidents()
                if i["spec"]["detectedBy"] == "Promotion"
                and f"Promoted {cut} without" in i["status"]["actions"][0]["action"]
            ],
            timeout=90,
            interval=0.25,
        )[0]
        detected = time.monotonic() - started
        wait_for("the cut active", lambda: (site.status().get("activeCut") or {}).get("id") == cut)
        assert all(served_cut(p) == cut for p in pods[:2])
        assert served_cut(stuck) != cut
        assert site.events("CommitTimeout")
    finally:
        blocker.rmdir()
    freed = time.monotonic()
    assert incident["status"]["impact"]["affectedPods"] == [stuck.name]
    wait_resolved(site, incident, " once the pod swapped")
    all_serve(site, cut)
    figures(
        "pod unable to swap", stage_timeout_s=10, detect_s=round(detected, 1),
        heal_after_unblock_s=round(time.monotonic() - freed, 1),
    )  # fmt: skip


def test_a_pod_that_cannot_stage_says_why_in_the_cut_and_in_the_event(site: Site) -> None:
    """A pod whose volume refuses to store the cut (its versions/ directory made immutable)
    cannot fetch it: the reason it gives reaches the PrepCut (status.pods.<pod>.error) and the
    StageTimeout Event, the other pods commit, and the pod catches up once it can write."""
    pods = site.pods()
    cut = "20240602_2120"
    stuck = pods[2]
    versions = stuck.content / "versions"
    subprocess.run(["chattr", "+i", str(versions)], check=True)
    try:
        upload(site, pods[0], cut, seed=4)
        wait_for("the cut active", lambda: (site.status().get("activeCut") or {}).get("id") == cut)
        assert served_cut(stuck) != cut
        reports = json.loads(site.kubectl("get", "prepcut", f"{PUB}-{cut.replace('_', '-')}",
                                          "-o", "json"))["status"]["pods"]  # fmt: skip
        assert "stagedAt" not in reports[stuck.name], reports
        error = reports[stuck.name]["error"]
        assert error.startswith("no pod could send it; from http://"), error
        assert "Operation not permitted" in error, error
        assert f"{cut}.partial" in error, error
        assert all("error" not in reports[p.name] for p in pods[:2]), reports
        timeouts = [e["message"] for e in site.events("StageTimeout") if cut in e["message"]]
        assert timeouts, "no StageTimeout Event"
        assert f"{stuck.name}: no pod could send it" in timeouts[0], timeouts
    finally:
        subprocess.run(["chattr", "-i", str(versions)], check=True)
    all_serve(site, cut)


def test_a_flood_from_one_address_is_denied_on_every_pod_and_released_after_expiry(
    site: Site,
) -> None:
    pods = site.pods()
    stop_readers, stop_flood = threading.Event(), threading.Event()
    reader_statuses: Counter[int] = Counter()
    flood_statuses: Counter[int] = Counter()
    lock = threading.Lock()

    def reader(address: str) -> None:
        i = 0
        while not stop_readers.is_set():
            pod = pods[i % 3]
            i += 1
            try:
                status = get(pod.ip, "/json/main.json", source=address)
            except OSError:
                status = 0
            with lock:
                reader_statuses[status] += 1
            time.sleep(0.1)

    def flooder() -> None:
        deadline = time.monotonic() + 150
        conn = http.client.HTTPConnection(pods[0].ip, 8080, timeout=5, source_address=(ATTACKER, 0))
        while not stop_flood.is_set() and time.monotonic() < deadline:
            try:
                conn.request("GET", "/json/main.json")
                resp = conn.getresponse()
                resp.read()
                status = resp.status
            except (OSError, http.client.HTTPException):
                conn.close()
                conn = http.client.HTTPConnection(
                    pods[0].ip, 8080, timeout=5, source_address=(ATTACKER, 0)
                )
                status = 0
            with lock:
                flood_statuses[status] += 1

    readers = [threading.Thread(target=reader, args=(a,)) for a in READERS]
    for t in readers:
        t.start()
    time.sleep(2)
    flooders = [threading.Thread(target=flooder) for _ in range(4)]
    flood_started = time.monotonic()
    for t in flooders:
        t.start()
    try:
        wait_for(
            "a pod reporting the attack",
            lambda: "prep.difusor.io/attack" in site.kubectl(
                "get", "pod", pods[0].name, "-o", "jsonpath={.metadata.annotations}"
            ),
            timeout=90, interval=0.2,
        )  # fmt: skip
        detected = time.monotonic() - flood_started
        # The flooded pod answers the flood 429 while its limit is exhausted and 403 to what
        # gets past the limit; the others answer the attacker 403 outright.
        wait_for(
            "the attacker denied on every pod",
            lambda: (
                flood_statuses[403] > 0
                and all(get(p.ip, "/index.html", source=ATTACKER) == 403 for p in pods[1:])
            ),
            timeout=180,
            interval=0.2,
        )
        denied = time.monotonic() - flood_started
        entries = site.status()["containment"]["denied"]
    finally:
        stop_flood.set()
        for t in flooders:
            t.join(timeout=30)
    flood_seconds = time.monotonic() - flood_started
    flood_stopped = time.monotonic()
    try:
        wait_for(
            "the attacker released on every pod",
            lambda: all(get(p.ip, "/index.html", source=ATTACKER) == 200 for p in pods),
            timeout=240,
            interval=0.5,
        )
        released = time.monotonic() - flood_stopped
        time.sleep(2)
    finally:
        stop_readers.set()
        for t in readers:
            t.join(timeout=30)
    assert [e["cidr"] for e in entries] == [f"127.{_NET}.250.0/24"]
    assert not (site.status().get("containment") or {}).get("denied")
    total_reads = sum(reader_statuses.values())
    assert reader_statuses == Counter({200: total_reads}), reader_statuses
    spec = site.publication()["spec"]
    assert spec["rateLimit"].get("denyList", []) == []
    incident = wait_for(
        "the attack incident resolved",
        lambda: [i for i in site.incidents()
                 if i["spec"]["detectedBy"] == "AttackDetector" and i["status"]["phase"] == "Resolved"],
        timeout=60,
    )[0]  # fmt: skip
    status = incident["status"]
    assert status["cause"] == "Attack"
    assert status["impact"]["deniedRanges"] == [f"127.{_NET}.250.0/24"]
    assert any("Denied" in a["action"] for a in status["actions"])
    assert any("Released" in a["action"] for a in status["actions"])
    reloads = {p.name: p.procs["agent"].log.read_text().count("Reloaded nginx") for p in pods}
    # One reload to deny, one to release: no reload storm.
    assert all(2 <= n <= 3 for n in reloads.values()), reloads
    flood_total = sum(flood_statuses.values())
    figures(
        "flood", flood_requests=flood_total, flood_rps=round(flood_total / flood_seconds),
        flood_statuses=dict(flood_statuses), detect_s=round(detected, 1),
        denied_everywhere_s=round(denied, 1), released_after_stop_s=round(released, 1),
        ttl_s=TTL, reader_requests=total_reads, reader_success=reader_statuses[200] / total_reads,
        reloads=reloads, peak_per_minute=status["impact"].get("peakRequestsPerMinute"),
        rejected_share=status["impact"].get("rejectedShare"),
    )  # fmt: skip


def test_a_real_prometheus_scrapes_the_operator_and_every_agent(site: Site, tmp_path: Path) -> None:
    from difusor.models import PrepPublicationSpec
    from difusor.render.monitoring import rule_groups

    pods = site.pods()
    port = free_port()
    rules = tmp_path / "rules.yaml"
    spec = PrepPublicationSpec.model_validate(site.publication()["spec"])
    rules.write_text(
        yaml.safe_dump({"groups": rule_groups(spec, name=PUB, namespace=site.namespace)})
    )
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(rules)],
        "scrape_configs": [
            {"job_name": "difusor-operator",
             "static_configs": [{"targets": [f"127.0.0.1:{site.metrics_port}"]}]},
            {"job_name": "difusor-agents",
             "static_configs": [{"targets": [f"{p.ip}:8081" for p in pods],
                                 "labels": {"namespace": site.namespace, "publication": PUB}}]},
        ],
    }  # fmt: skip
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    proc = subprocess.Popen(
        [
            require_binary("prometheus"), f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'data'}", f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL, stderr=(tmp_path / "prometheus.log").open("wb"),
    )  # fmt: skip

    def query(expr: str) -> list[dict[str, Any]]:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("GET", "/api/v1/query?query=" + urllib.parse.quote(expr))
        body = json.loads(conn.getresponse().read())
        conn.close()
        return list(body["data"]["result"])

    try:
        up = wait_for(
            "every target up", lambda: (r := query("up == 1")) and len(r) == 4 and r, timeout=60
        )
        assert {r["metric"]["job"] for r in up} == {"difusor-operator", "difusor-agents"}
        probes = wait_for(
            "the operator's probes",
            lambda: query(f'difusor_probes_total{{namespace="{site.namespace}",result="ok"}} > 0'),
        )
        assert probes[0]["metric"]["publication"] == PUB
        served = wait_for(
            "the agents' requests",
            lambda: query('sum(difusor_http_requests_total{status="200"}) > 0'),
        )
        assert float(served[0]["value"][1]) > 0
        assert wait_for(
            "the recorded error ratio", lambda: query("difusor:probe_error_ratio:rate5m")
        )
        assert query(f'difusor_pods_off_active_cut{{namespace="{site.namespace}"}}')
    finally:
        proc.terminate()
        proc.wait(timeout=30)
