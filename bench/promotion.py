"""Promotion latency: from an upload complete on one pod to every pod serving the cut.

Prints one JSON object. Runs its own local control plane (or the cluster of
$DIFUSOR_BENCH_KUBECONFIG), the operator, and host pods (real nginx, agent and sshd on loopback,
tests/hostpods.py). For 3 and 10 pods, each of N promotions uploads a fresh cut of about
--cut-mb with the real sftp client to one pod, then watches every pod's /json/main.json from its
own thread. Per promotion: `serving_s` = rename done -> last pod serving the cut; `skew_s` =
first pod serving -> last pod serving; `verified_s` = rename done -> PrepCut Verified on the
receiving pod (validation and storage, the baseline the promotion adds to, measured in the same
run). Reports p50 and p99; goal: serving_s under 2 s for 10 pods, skew under 0.2 s.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.common import operator_on_a_cluster  # noqa: E402
from tests.archives import make_zip, site_files  # noqa: E402
from tests.conftest import BIN, kubectl, wait_for  # noqa: E402
from tests.hostpods import Harness, HostPod, host_public_key, served_cut, sftp_put  # noqa: E402

PUB = "prep-bench"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return round(ordered[index], 3)


def package(work: Path, cut_id: str, *, megabytes: float, seed: int) -> Path:
    files = site_files(cut=cut_id, actas=200, seed=seed)
    rng = random.Random(seed)
    rows = [
        f"{i},{rng.randint(0, 300)},{rng.randint(0, 300)},{rng.randint(0, 300)},{rng.getrandbits(64):016x}\n"
        for i in range(20000)
    ]
    block = "".join(rows).encode()
    big = bytearray()
    while len(big) < megabytes * 1_000_000:
        big += block[rng.randrange(len(block) // 2) :]
    files["datos/actas_detalle.csv"] = bytes(big[: int(megabytes * 1_000_000)])
    return make_zip(work / f"{cut_id}_PREP_MICH.zip", files)


def upload(harness: Harness, pod: HostPod, archive: Path, *, key: Path, known_hosts: Path) -> None:
    proc = sftp_put(archive, user=harness.sftp_user, ip=pod.ip, key=key, known_hosts=known_hosts)
    if proc.returncode != 0:
        raise RuntimeError(f"sftp failed: {proc.stderr}")


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
) -> dict[str, float]:
    """Upload one cut to one pod; time until each pod serves it and until it is Verified."""
    running = harness.running()
    firsts: dict[str, float] = {}
    stop = threading.Event()

    def watch(pod: HostPod) -> None:
        while not stop.is_set():
            if served_cut(pod.ip) == cut_id:
                firsts[pod.name] = time.monotonic()
                return
            time.sleep(0.002)

    threads = [threading.Thread(target=watch, args=(p,), daemon=True) for p in running]
    for thread in threads:
        thread.start()
    upload(harness, receiver, archive, key=key, known_hosts=known_hosts)
    done = time.monotonic()
    verified_at: list[float] = []
    name = f"{PUB}-{cut_id.replace('_', '-')}"

    def verified() -> bool:
        out = kubectl(
            kubeconfig,
            "-n",
            namespace,
            "get",
            "prepcut",
            name,
            "-o",
            "jsonpath={.status.verifiedAt}",
            check=False,
        )
        if out.strip() and "NotFound" not in out:
            verified_at.append(time.monotonic())
            return True
        return False

    wait_for("verified", verified, timeout=300, interval=0.05)
    for thread in threads:
        thread.join(timeout=300)
    stop.set()
    if len(firsts) != len(running):
        raise RuntimeError(f"only {len(firsts)}/{len(running)} pods served {cut_id}")
    return {
        "serving_s": max(firsts.values()) - done,
        "skew_s": max(firsts.values()) - min(firsts.values()),
        "verified_s": verified_at[0] - done,
    }


def run_size(
    kubeconfig: str, *, pods: int, promotions: int, megabytes: float, work: Path
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
    results: list[dict[str, float]] = []
    try:
        wait_for(f"{pods} host pods", lambda: len(harness.running()) == pods, timeout=300)

        public = host_public_key(kubeconfig, namespace=namespace, publication=PUB)
        known_hosts = work / f"known-{pods}"
        for n in range(promotions):
            cut_id = f"20240602_{20 + n // 60:02d}{n % 60:02d}"
            archive = package(work, cut_id, megabytes=megabytes, seed=n)
            running = harness.running()
            known_hosts.write_text("".join(f"[{p.ip}]:2222 {public.strip()}\n" for p in running))
            results.append(
                promote_once(
                    harness, kubeconfig, namespace, cut_id, archive,
                    receiver=running[n % len(running)], key=key, known_hosts=known_hosts,
                )
            )  # fmt: skip
            archive.unlink()
    finally:
        harness.stop()
        kubectl(kubeconfig, "delete", "namespace", namespace, "--wait=false", check=False)
    serving = [r["serving_s"] for r in results]
    skew = [r["skew_s"] for r in results]
    verify = [r["verified_s"] for r in results]
    return {
        "pods": pods,
        "promotions": len(results),
        "cut_mb": megabytes,
        "serving_s": {
            "p50": percentile(serving, 0.5),
            "p99": percentile(serving, 0.99),
            "max": round(max(serving), 3),
        },
        "skew_s": {"p50": percentile(skew, 0.5), "p99": percentile(skew, 0.99)},
        "verified_s_baseline": {"p50": percentile(verify, 0.5), "p99": percentile(verify, 0.99)},
        "ratio_serving_to_verified_p50": round(
            statistics.median(serving) / max(statistics.median(verify), 1e-6), 2
        ),
        "meets_goal": percentile(serving, 0.99) < 2.0 and percentile(skew, 0.99) < 0.2,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="3 pods, 5 MB cuts, 10 promotions")
    parser.add_argument("--promotions", type=int, default=None)
    parser.add_argument("--cut-mb", type=float, default=None)
    args = parser.parse_args()
    promotions = args.promotions or (10 if args.quick else 12)
    megabytes = args.cut_mb or (5.0 if args.quick else 50.0)
    sizes = [3] if args.quick else [3, 10]
    began = time.monotonic()
    with operator_on_a_cluster() as bench:
        runs = [
            run_size(
                bench.kubeconfig,
                pods=n,
                promotions=promotions,
                megabytes=megabytes,
                work=bench.work,
            )
            for n in sizes
        ]
    print(json.dumps({"benchmark": "promotion", "quick": args.quick, "kubectl": str(BIN / "kubectl"),
                      "runs": runs, "elapsed_s": round(time.monotonic() - began, 1)}))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
