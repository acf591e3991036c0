"""Promotion latency: from an upload complete on one pod to every pod serving the cut.

Prints one JSON object. Runs its own local control plane (or the cluster of
$DIFUSOR_BENCH_KUBECONFIG), the operator, and host pods (real nginx, agent and sshd on loopback,
tests/hostpods.py). For 3, 10 and 30 pods (--quick: 3), each of N promotions uploads a cut of
about --cut-mb with the real sftp client to one pod, then watches every pod's /json/main.json.

The cuts are a night's sequence: the site is --files files (CSV of actas and JSON, as the
institute publishes them); each cut rewrites main.json and --changed of the other files, the
rest is byte for byte the previous cut's (what a PREP cut looks like: most actas are already
captured). The first cut of each run, where every file is new, is measured apart
(`first_cut`). Per promotion: `serving_s` = rename done -> last pod serving the cut; `skew_s` =
first pod serving -> last pod serving; `verified_s` = rename done -> PrepCut Verified on the
receiving pod (validation and storage, the baseline the promotion adds to, measured in the same
run; the PrepCut's verifiedAt, to the millisecond); `timeline_p50` = when the operator set the
cut as every pod's target, saw the first and the last other pod report the cut staged, and
committed it; `moved_mb` = bytes of the cut's new files written on the pods that fetched it
(files they already had are hard links, not fetched); `agent_rss_mb_p50` = the agents' resident memory
after the last promotion; `api_requests_per_promotion` = requests the API server answered
per promotion (its own counters, all callers), the largest kinds by verb and resource;
`cpu_s_p50` = from the rename to the last pod serving, the CPU-seconds the whole machine was busy
(/proc/stat), each kind of process's share (agents, operator, API server, etcd, controllers,
nginx, sshd, this process's harness and pollers, other) and the busy cores (saturated: 2.0);
`kernel_s_p50` = the part of each kind's share spent in the kernel;
`failed_probes` = readiness probes of the pods' started containers that failed during the run
(a pod leaves the endpoints after two in a row, as with a kubelet).
`--history N` records N earlier cuts of the night before the first
one (PrepCuts Superseded, every pod's report and a purge on each, as the operator leaves them):
the 288th cut of a night with one every five minutes is `--history 287`.
`--upload-mbps N` holds the sftp client to N MB/s, as the institute's uplink would: unpaced over
loopback, the client and its sshd take a core of the two the pods share, and the receiving
pod's validation falls behind the upload. Reports p50 and p99; goal: serving_s p99 under 1 s
for 10 pods, skew under 0.2 s, and a 30-pod run that shows how the time grows with the pods.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import socket
import statistics
import subprocess
import sys
import threading
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml
from inotify_simple import INotify, flags

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.common import operator_on_a_cluster  # noqa: E402
from tests.archives import make_zip, site_files  # noqa: E402
from tests.conftest import BIN, kubectl, wait_for  # noqa: E402
from tests.hostpods import HTTP_PORT, Harness, HostPod, host_public_key, sftp_put  # noqa: E402

from difusor.kube import MERGE_PATCH, api_client, custom_path, request  # noqa: E402
from difusor.models import API_VERSION, cut_object_name  # noqa: E402
from difusor.render.labels import PUBLICATION_LABEL  # noqa: E402
from difusor.render.nginx import SWAP_COUNTER  # noqa: E402

PUB = "prep-bench"
#: How often a pod's main.json is asked for once its store shows a swap.
POLL_S = 0.01
#: How often every pod's main.json is asked for while a promotion is timed, swap seen or not.
SLOW_POLL_S = 0.1
#: Clock ticks per second of /proc/stat and /proc/<pid>/stat.
TICKS = os.sysconf("SC_CLK_TCK")


class Poller:
    """HEAD /json/main.json on one kept-alive connection to a pod: the X-Prep-Cut it answers.

    Polling every pod every 10 ms through http.client from a thread per pod cost this process
    a fifth of the two CPUs inside the very window the bench times, taken from the agents and
    the API server it measures.
    """

    def __init__(self, ip: str) -> None:
        self.ip = ip
        self.request = f"HEAD /json/main.json HTTP/1.1\r\nHost: {ip}\r\n\r\n".encode()
        self.sock: socket.socket | None = None

    def ask(self) -> bool:
        """Send the request; False (and closed) when the pod cannot be reached."""
        try:
            if self.sock is None:
                self.sock = socket.create_connection((self.ip, HTTP_PORT), timeout=5)
            self.sock.sendall(self.request)
        except OSError:
            self.close()
            return False
        return True

    def answer(self) -> str | None:
        """The X-Prep-Cut of the answer to the request sent (None: not a 200, or no answer)."""
        head = b""
        try:
            assert self.sock is not None
            while b"\r\n\r\n" not in head:
                chunk = self.sock.recv(4096)
                if not chunk:
                    raise ConnectionResetError("closed")
                head += chunk
        except OSError:
            self.close()
            return None
        lines = head.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
        headers = {
            name.lower(): value for name, _, value in (line.partition(b": ") for line in lines[1:])
        }
        if headers.get(b"connection", b"").lower() == b"close":
            self.close()
        if lines[0].split(b" ")[1:2] != [b"200"]:
            return None
        served = headers.get(b"x-prep-cut")
        return served.decode() if served is not None else None

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def api_requests(kubeconfig: str) -> dict[str, float]:
    """The API server's request counters (apiserver_request_total), summed by verb and resource."""
    counts: dict[str, float] = {}
    for line in kubectl(kubeconfig, "get", "--raw", "/metrics").splitlines():
        if not line.startswith("apiserver_request_total{"):
            continue
        labels, _, value = line.rpartition(" ")
        fields = dict(re.findall(r'(\w+)="([^"]*)"', labels))
        key = f"{fields.get('verb', '')} {fields.get('resource', '')}"
        counts[key] = counts.get(key, 0.0) + float(value)
    return counts


def requests_per_promotion(
    before: dict[str, float], after: dict[str, float], promotions: int
) -> dict[str, Any]:
    """Requests the API server answered per promotion between two api_requests(), all callers
    (the control plane's own lease renewals included: a few a second), the largest by kind."""
    delta = {k: v - before.get(k, 0.0) for k, v in after.items()}
    busy = sorted(((v, k) for k, v in delta.items() if v > 0), reverse=True)
    return {
        "total": round(sum(v for v, _ in busy) / promotions, 1),
        "largest": {k: round(v / promotions, 1) for v, k in busy[:8]},
    }


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return round(ordered[index], 3)


def _rows() -> bytes:
    rng = random.Random(0)
    return "".join(
        f"{i},{rng.randint(0, 300)},{rng.randint(0, 300)},{rng.randint(0, 300)},{rng.getrandbits(64):016x}\n"
        for i in range(40000)
    ).encode()


ROWS = _rows()


def changed_in(file: int, cut: int, fraction: float) -> bool:
    """Whether cut number `cut` rewrites file number `file` (cut 0 writes them all)."""
    return cut == 0 or random.Random(f"{file}/{cut}").random() < fraction


def package(
    work: Path, cut_id: str, *, number: int, megabytes: float, files: int, changed: float
) -> Path:
    """Cut number `number` of the sequence: main.json new, `changed` of the other files new."""
    content = site_files(cut=cut_id, actas=200, seed=0)
    content["json/main.json"] = json.dumps({"horaCorte": cut_id, "corte": number}).encode()
    size = int(megabytes * 1_000_000 / files)
    for file in range(files):
        version = sum(changed_in(file, cut, changed) for cut in range(number + 1))
        start = random.Random(f"{file}/{version}").randrange(len(ROWS) - size)
        body = f"version {version}\n".encode() + ROWS[start : start + size]
        kind = "datos/actas" if file % 2 else "json/casillas"
        content[f"{kind}/{file:05d}.{'csv' if file % 2 else 'json'}"] = body
    return make_zip(work / f"{cut_id}_PREP_MICH.zip", content)


def moved_bytes(pod: HostPod, cut_id: str) -> int:
    """Bytes of the cut's files on a pod that are not hard links to another version's."""
    version = pod.content / "versions" / cut_id
    total = 0
    for path in version.rglob("*"):
        if ".prep" in path.relative_to(version).parts or not path.is_file():
            continue
        info = path.stat()
        if info.st_nlink == 1:
            total += info.st_size
    return total


def agent_rss_mb(pod: HostPod) -> float | None:
    """Resident memory of a pod's agent process, in MB (None when it is not running)."""
    proc = pod.procs.get("agent")
    if proc is None or proc.popen is None or proc.popen.poll() is not None:
        return None
    for line in Path(f"/proc/{proc.popen.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return None


def upload(
    harness: Harness,
    pod: HostPod,
    archive: Path,
    *,
    key: Path,
    known_hosts: Path,
    mbps: int | None = None,
) -> None:
    proc = sftp_put(
        archive, user=harness.sftp_user, ip=pod.ip, key=key, known_hosts=known_hosts, mbps=mbps
    )
    if proc.returncode != 0:
        raise RuntimeError(f"sftp failed: {proc.stderr}")


def busy_cpu_s() -> float:
    """CPU-seconds the whole machine has been busy since boot (every core; /proc/stat)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    idle = fields[3] + fields[4]  # idle, iowait
    return (sum(fields) - idle) / TICKS


#: Which programs' CPU `cpu_by_process` tells apart (the name the kernel gives each process).
PROGRAMS = {
    "kube-apiserver": "apiserver",
    "etcd": "etcd",
    "kube-controller": "controllers",
    "kube-scheduler": "controllers",
    "kwok": "controllers",
    "nginx": "nginx",
    "sshd": "sshd",
    "sftp-server": "sshd",
}


def cpu_by_process() -> dict[int, tuple[str, int, int]]:
    """Each live process: its kind and the clock ticks it has used, in all and in the kernel
    (utime + stime, and stime, of /proc/<pid>/stat)."""
    # The agents and the operator are Python; they are told apart by their command line. This
    # process (the harness's probes and watches, the pollers) is `bench`.
    found: dict[int, tuple[str, int, int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        head, _, tail = stat.rpartition(")")
        comm, rest = head.partition("(")[2], tail.split()
        if int(entry.name) == os.getpid():
            kind = "bench"
        elif cmdline[1:3] == [b"-m", b"difusor"] and len(cmdline) > 3:
            kind = cmdline[3].decode()  # "agent", "operator"
        else:
            kind = PROGRAMS.get(comm, "other")
        found[int(entry.name)] = (kind, int(rest[11]) + int(rest[12]), int(rest[12]))
    return found


def cpu_between(
    before: dict[int, tuple[str, int, int]], after: dict[int, tuple[str, int, int]]
) -> tuple[dict[str, float], dict[str, float]]:
    """CPU-seconds each kind of process used between two `cpu_by_process` snapshots: in all,
    and in the kernel on its behalf.

    A process that ended in between is missing from `after`; what it used is in the machine's
    figure only.
    """
    used: dict[str, float] = {}
    in_kernel: dict[str, float] = {}
    for pid, (kind, ticks, system) in after.items():
        start = before.get(pid)
        if start is None or start[0] != kind:
            start = (kind, 0, 0)
        used[kind] = used.get(kind, 0.0) + (ticks - start[1]) / TICKS
        in_kernel[kind] = in_kernel.get(kind, 0.0) + (system - start[2]) / TICKS
    return used, in_kernel


def medians_by_kind(results: list[dict[str, Any]], key: str) -> dict[str, float]:
    """The p50 of each kind of process's CPU-seconds in `key` (`cpu_s`, `kernel_s`) of the
    promotions; a kind missing from a promotion used none in it."""
    kinds = sorted({kind for r in results for kind in r[key]})
    return {kind: percentile([r[key].get(kind, 0.0) for r in results], 0.5) for kind in kinds}


def _since(stamp: str | None, done: float) -> float | None:
    if not stamp:
        return None
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp() - done


def phases(record: dict[str, Any], *, receiver: str, done: float) -> dict[str, float]:
    """When each step of the promotion happened, in seconds after the rename, from the PrepCut.

    `verifiedAt` is the receiving agent's clock; the rest is what the operator saw and when
    (the same machine's clock): its step that set the cut as every pod's target (`stagingAt`),
    the first and the last other pod reporting the cut staged (the operator's view of each
    fetch done), and the commit.
    """
    status = record.get("status") or {}
    staged = [
        t
        for pod, report in (status.get("pods") or {}).items()
        if pod != receiver and (t := _since(report.get("stagedAt"), done)) is not None
    ]
    out = {
        "verified_s": _since(status.get("verifiedAt"), done),
        "staging_started_s": _since(status.get("stagingAt"), done),
        "first_peer_staged_s": min(staged, default=None),
        "last_peer_staged_s": max(staged, default=None),
        "committed_s": _since(status.get("committedAt"), done),
    }
    return {k: v for k, v in out.items() if v is not None}


def record_history(kubeconfig: str, namespace: str, *, cuts: int, pods: int) -> None:
    """PrepCuts of `cuts` earlier cuts (the day before, every five minutes), as promoted ones
    end: Superseded, with every pod's report and a purge recorded."""
    api = api_client(kubeconfig)
    for n in range(cuts):
        minutes = n * 5
        cut_id = f"20240601_{minutes // 60 % 24:02d}{minutes % 60:02d}"
        if minutes >= 24 * 60:
            cut_id = f"20240531_{minutes // 60 % 24:02d}{minutes % 60:02d}"
        name = cut_object_name(PUB, cut_id)
        body = {
            "apiVersion": API_VERSION,
            "kind": "PrepCut",
            "metadata": {"name": name, "labels": {PUBLICATION_LABEL: PUB}},
            "spec": {
                "publication": PUB,
                "id": cut_id,
                "archive": f"{cut_id}_PREP.zip",
                "archiveSha256": f"{n:064x}",
                "manifestDigest": f"sha256:{n:064x}",
                "files": 501,
                "bytes": 50_000_000,
                "receivedBy": f"{PUB}-web-0",
            },
        }
        request(api, "POST", custom_path(namespace, "prepcuts"), body=body)
        at = "2024-06-01T12:00:00.000000Z"
        status = {
            "phase": "Superseded",
            "receivedAt": at,
            "verifiedAt": at,
            "stagedAt": at,
            "committedAt": at,
            "servingAt": at,
            "pods": {f"{PUB}-web-{i}": {"stagedAt": at, "activeAt": at} for i in range(pods)},
            "purge": {"provider": "cloudflare", "outcome": "Succeeded", "attempts": 1,
                      "requestedAt": at, "completedAt": at, "requestId": f"{n:032x}",
                      "requests": 1, "items": 30, "plan": "paths"},
        }  # fmt: skip
        request(
            api,
            "PATCH",
            custom_path(namespace, "prepcuts", name, "status"),
            body={"status": status},
            content_type=MERGE_PATCH,
        )


def promote_once(
    harness: Harness,
    kubeconfig: str,
    namespace: str,
    cut_id: str,
    archive: Path,
    *,
    receiver: HostPod,
    key: Path,
    known_hosts: Path,
    mbps: int | None = None,
) -> dict[str, Any]:
    """Upload one cut to one pod; time until each pod serves it and until it is Verified."""
    running = harness.running()
    firsts: dict[str, float] = {}
    stop = threading.Event()
    # CPU-seconds (the machine's busy time, each process's) at the rename and at the last pod
    # serving: whether the two cores, not the protocol, set the pace.
    starts: dict[str, Any] = {}
    ends: dict[str, Any] = {}

    def watch() -> None:
        # One thread asks the pods (a request written to each, then each answer read): 30
        # threads waking a hundred times a second each took the CPUs from the pods they timed.
        # A pod is asked every POLL_S once its store shows a swap (inotify: `current` renamed,
        # the swap counter written), and every SLOW_POLL_S otherwise, in case an event is
        # missed: at 30 pods, asking every pod every 10 ms was a tenth of the machine's CPU in
        # the window (this process, nginx answering and logging), taken from the pods timed.
        pollers = {p.name: Poller(p.ip) for p in running}
        with INotify() as events:
            watched = {
                events.add_watch(
                    p.content, flags.MOVED_TO | flags.CLOSE_WRITE | flags.MODIFY
                ): p.name
                for p in running
            }
            swapped: set[str] = set()
            slow_at = time.monotonic()
            while pollers and not stop.is_set():
                wait_s = POLL_S if swapped & pollers.keys() else SLOW_POLL_S
                for event in events.read(timeout=int(wait_s * 1000)):
                    if event.name in ("current", SWAP_COUNTER):
                        swapped.add(watched[event.wd])
                now = time.monotonic()
                slow = now >= slow_at
                if slow:
                    slow_at = now + SLOW_POLL_S
                asked = [
                    (name, poller)
                    for name, poller in pollers.items()
                    if (slow or name in swapped) and poller.ask()
                ]
                for name, poller in asked:
                    if poller.answer() == cut_id:
                        firsts[name] = time.monotonic()
                        pollers.pop(name).close()
                        if not pollers:
                            ends.update(procs=cpu_by_process(), machine=busy_cpu_s())
        for poller in pollers.values():
            poller.close()

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    upload(harness, receiver, archive, key=key, known_hosts=known_hosts, mbps=mbps)
    done, done_wall = time.monotonic(), time.time()
    starts.update(procs=cpu_by_process(), machine=busy_cpu_s())
    name = f"{PUB}-{cut_id.replace('_', '-')}"
    thread.join(timeout=300)
    stop.set()
    if len(firsts) != len(running):
        raise RuntimeError(f"only {len(firsts)}/{len(running)} pods served {cut_id}")
    fetched = sum(moved_bytes(p, cut_id) for p in running if p.name != receiver.name)
    record = json.loads(kubectl(kubeconfig, "-n", namespace, "get", "prepcut", name, "-o", "json"))
    steps = phases(record, receiver=receiver.name, done=done_wall)
    used, in_kernel = cpu_between(starts["procs"], ends["procs"])
    return {
        **steps,
        "serving_s": max(firsts.values()) - done,
        "skew_s": max(firsts.values()) - min(firsts.values()),
        "cpu_s": {**used, "machine": ends["machine"] - starts["machine"]},
        "kernel_s": in_kernel,
        "moved_mb": fetched / 1_000_000,
        "receiver_wrote_mb": moved_bytes(receiver, cut_id) / 1_000_000,
    }


def run_size(
    kubeconfig: str,
    *,
    pods: int,
    promotions: int,
    megabytes: float,
    files: int,
    changed: float,
    work: Path,
    history: int = 0,
    mbps: int | None = None,
) -> dict[str, Any]:
    namespace = f"bench-{pods}-{uuid.uuid4().hex[:5]}"
    kubectl(kubeconfig, "create", "namespace", namespace)
    harness = Harness(kubeconfig, namespace=namespace)
    harness.start()
    key = work / f"key-{pods}"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    kubectl(
        kubeconfig,
        "-n",
        namespace,
        "create",
        "secret",
        "generic",
        "keys",
        f"--from-file=authorized_keys={key}.pub",
    )
    spec = {
        "host": "prep.example.mx",
        "replicas": pods,
        "sftp": {"authorizedKeysSecret": "keys"},
        "scheduling": {"nodeSelector": harness.node_selector},
        "retention": {"cuts": 3},
        "rateLimit": {"requestsPerSecond": 100000, "burst": 100000, "connections": 10000},
    }
    doc = {
        "apiVersion": "prep.difusor.io/v1alpha1",
        "kind": "PrepPublication",
        "metadata": {"name": PUB},
        "spec": spec,
    }
    kubectl(kubeconfig, "-n", namespace, "apply", "-f", "-", stdin=yaml.safe_dump(doc))
    results: list[dict[str, Any]] = []
    try:
        wait_for(f"{pods} host pods", lambda: len(harness.running()) == pods, timeout=300)
        record_history(kubeconfig, namespace, cuts=history, pods=pods)

        public = host_public_key(kubeconfig, namespace=namespace, publication=PUB)
        known_hosts = work / f"known-{pods}"
        counted: dict[str, float] = {}
        for n in range(promotions + 1):
            if n == 1:
                # Counted from the second cut on, as the promotions timed.
                counted = api_requests(kubeconfig)
            cut_id = f"20240602_{20 + n // 60:02d}{n % 60:02d}"
            archive = package(
                work, cut_id, number=n, megabytes=megabytes, files=files, changed=changed
            )
            running = harness.running()
            known_hosts.write_text("".join(f"[{p.ip}]:2222 {public.strip()}\n" for p in running))
            results.append(
                promote_once(
                    harness, kubeconfig, namespace, cut_id, archive,
                    receiver=running[n % len(running)], key=key, known_hosts=known_hosts,
                    mbps=mbps,
                )
            )  # fmt: skip
            archive.unlink()
        requests = requests_per_promotion(counted, api_requests(kubeconfig), promotions)
        rss = [m for p in harness.running() if (m := agent_rss_mb(p)) is not None]
        failed_probes = sum(p.failed_probes for p in harness.running())
    finally:
        harness.stop()
        kubectl(kubeconfig, "delete", "namespace", namespace, "--wait=false", check=False)
    first, results = results[0], results[1:]
    serving = [r["serving_s"] for r in results]
    skew = [r["skew_s"] for r in results]
    verify = [r["verified_s"] for r in results]
    steps = (
        "verified_s",
        "staging_started_s",
        "first_peer_staged_s",
        "last_peer_staged_s",
        "committed_s",
    )
    return {
        "pods": pods,
        "promotions": len(results),
        "cut_mb": megabytes,
        "files": files,
        "changed_fraction": changed,
        "earlier_cuts": history,
        "upload_mbps": mbps,
        "first_cut": {k: round(v, 3) for k, v in first.items() if not isinstance(v, dict)},
        "moved_mb_per_promotion": {
            "p50": percentile([r["moved_mb"] for r in results], 0.5),
            "max": round(max(r["moved_mb"] for r in results), 3),
            "whole_cut_to_every_pod": round(megabytes * (pods - 1), 1),
        },
        "serving_s": {
            "p50": percentile(serving, 0.5),
            "p99": percentile(serving, 0.99),
            "max": round(max(serving), 3),
        },
        "skew_s": {"p50": percentile(skew, 0.5), "p99": percentile(skew, 0.99)},
        "serving_s_each": [round(s, 3) for s in serving],
        # From the rename to the last pod serving: the machine's busy CPU-seconds (all its
        # processes), each kind of process's share, and the busy cores (the first over serving_s).
        "cpu_s_p50": {
            **medians_by_kind(results, "cpu_s"),
            "busy_cores": percentile(
                [r["cpu_s"]["machine"] / r["serving_s"] for r in results], 0.5
            ),
        },
        # The part of each kind's CPU-seconds spent in the kernel on its behalf (system calls,
        # page cache, TCP over loopback).
        "kernel_s_p50": medians_by_kind(results, "kernel_s"),
        # Medians, in seconds after the rename, of when each step happened (see phases()).
        "timeline_p50": {
            k: percentile([r[k] for r in results if k in r], 0.5)
            for k in steps
            if any(k in r for r in results)
        },
        "verified_s_baseline": {"p50": percentile(verify, 0.5), "p99": percentile(verify, 0.99)},
        "ratio_serving_to_verified_p50": round(
            statistics.median(serving) / max(statistics.median(verify), 1e-6), 2
        ),
        "agent_rss_mb_p50": round(statistics.median(rss), 1) if rss else None,
        "failed_probes": failed_probes,
        "api_requests_per_promotion": requests,
        "meets_goal": percentile(serving, 0.99) < 1.0 and percentile(skew, 0.99) < 0.2,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="3 pods, 5 MB cuts, 10 promotions")
    parser.add_argument("--promotions", type=int, default=None)
    parser.add_argument("--cut-mb", type=float, default=None)
    parser.add_argument(
        "--files", type=int, default=500, help="files of the site besides main.json"
    )
    parser.add_argument("--changed", type=float, default=0.05, help="fraction rewritten each cut")
    parser.add_argument("--pods", type=int, nargs="*", default=None, help="pod counts to run")
    parser.add_argument(
        "--history", type=int, default=0, help="earlier cuts recorded before the first"
    )
    parser.add_argument(
        "--upload-mbps",
        type=int,
        default=None,
        help="hold the sftp client to this many MB/s (an uplink; default: as fast as loopback)",
    )
    args = parser.parse_args()
    promotions = args.promotions or (10 if args.quick else 12)
    megabytes = args.cut_mb or (5.0 if args.quick else 50.0)
    sizes = args.pods or ([3] if args.quick else [3, 10, 30])
    began = time.monotonic()
    load = os.getloadavg()[0]
    with operator_on_a_cluster() as bench:
        runs = [
            run_size(
                bench.kubeconfig,
                pods=n,
                promotions=promotions,
                megabytes=megabytes,
                files=args.files,
                changed=args.changed,
                work=bench.work,
                history=args.history,
                mbps=args.upload_mbps,
            )
            for n in sizes
        ]
    print(json.dumps({"benchmark": "promotion", "quick": args.quick, "kubectl": str(BIN / "kubectl"),
                      "cpus": os.cpu_count(), "load_average_at_start": round(load, 2),
                      "runs": runs, "elapsed_s": round(time.monotonic() - began, 1)}))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
