"""Reconcile throughput: N publications applied until every one has all its children and a status.

Prints one JSON object. Runs its own local control plane (or the cluster of
$DIFUSOR_BENCH_KUBECONFIG) and the operator as a process. For N in 1, 10, 50 (--quick: 1, 10):
`operator_s` = one `kubectl apply` of N PrepPublications -> every publication has its
StatefulSet, Services, ConfigMap, Secrets, RBAC, PDB, NetworkPolicy and Ingress and a Ready or
Progressing condition. Baseline in the same run: `direct_apply_s` = the same children, rendered
by `difusor render`, applied with one `kubectl apply --server-side` (what a hand-written
manifest would cost the API server). `operator_s_host_keys_existing`: the same with the
publications' host-key Secrets made beforehand, so that the operator generates no key (a
3072-bit RSA key is 0.2 s of CPU, half of the operator's work for a new publication, once in its
life). `direct_apply_keys_generated_s`: the direct apply with the clock started before the host
keys are generated, as a hand-built site must (the same keys, on a thread per core), the
baseline of what the operator does for a new publication. Also the operator's peak resident
memory.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.common import operator_on_a_cluster  # noqa: E402
from tests.conftest import kubectl  # noqa: E402

from difusor.controller.secrets import host_key_files, host_keys_secret  # noqa: E402
from difusor.render.children import Target  # noqa: E402
from difusor.render.labels import Names  # noqa: E402
from difusor.render.preview import render_stream  # noqa: E402

KINDS = ("statefulsets", "services", "configmaps", "secrets", "serviceaccounts", "roles",
         "rolebindings", "poddisruptionbudgets", "networkpolicies", "ingresses")  # fmt: skip
#: Children of one publication, by kind (the Secrets include the two the operator generates).
PER_PUBLICATION = {"statefulsets": 1, "services": 3, "configmaps": 1, "secrets": 2, "serviceaccounts": 1,
                   "roles": 1, "rolebindings": 1, "poddisruptionbudgets": 1, "networkpolicies": 1,
                   "ingresses": 1}  # fmt: skip


def publications(n: int) -> str:
    docs = [
        {
            "apiVersion": "prep.difusor.io/v1alpha1",
            "kind": "PrepPublication",
            "metadata": {"name": f"pub{i:03d}"},
            "spec": {"host": f"pub{i}.example.mx", "sftp": {"authorizedKeysSecret": "keys"}},
        }
        for i in range(n)
    ]
    return "---\n".join(yaml.safe_dump(d) for d in docs)


def counts(kubeconfig: str, namespace: str) -> dict[str, int]:
    out = kubectl(
        kubeconfig,
        "-n",
        namespace,
        "get",
        ",".join(KINDS),
        "-l",
        "app.kubernetes.io/managed-by=difusor",
        "-o",
        "json",
    )
    found: dict[str, int] = dict.fromkeys(KINDS, 0)
    plural = {"StatefulSet": "statefulsets", "Service": "services", "ConfigMap": "configmaps", "Secret": "secrets",
              "ServiceAccount": "serviceaccounts", "Role": "roles", "RoleBinding": "rolebindings",
              "PodDisruptionBudget": "poddisruptionbudgets", "NetworkPolicy": "networkpolicies", "Ingress": "ingresses"}  # fmt: skip
    for item in json.loads(out)["items"]:
        found[plural[item["kind"]]] += 1
    return found


def with_status(kubeconfig: str, namespace: str) -> int:
    out = json.loads(kubectl(kubeconfig, "-n", namespace, "get", "prep", "-o", "json"))["items"]
    return sum(
        1
        for p in out
        if any(
            c["type"] in ("Ready", "Progressing")
            for c in (p.get("status") or {}).get("conditions") or []
        )
    )


def host_key_secrets(n: int, namespace: str) -> str:
    """The host-key Secrets of pub000..pubN-1, as the operator makes them (one key set, copied:
    only the bench shares keys between publications)."""
    first = json.dumps(host_keys_secret(Target(name="pub000", namespace=namespace), []))
    return "---\n".join(
        yaml.safe_dump(json.loads(first.replace('"pub000', f'"pub{i:03d}'))) for i in range(n)
    )


def operator_run(kubeconfig: str, n: int, *, keys_exist: bool = False) -> float:
    """Seconds until N publications have every child and a status. With `keys_exist`, their
    host-key Secrets are there before (a restore, or a move to a new cluster): the operator
    then generates no key, which is half of its CPU for a new publication (3072-bit RSA)."""
    namespace = f"rec-{n}-{uuid.uuid4().hex[:5]}"
    kubectl(kubeconfig, "create", "namespace", namespace)
    if keys_exist:
        kubectl(
            kubeconfig, "-n", namespace, "apply", "-f", "-", stdin=host_key_secrets(n, namespace)
        )
    want = {k: v * n for k, v in PER_PUBLICATION.items()}
    start = time.monotonic()
    kubectl(kubeconfig, "-n", namespace, "apply", "-f", "-", stdin=publications(n))
    deadline = start + 900
    while time.monotonic() < deadline:
        # The statuses first, and the children only once every publication has one: listing
        # every child on each poll (some 650 objects at 50 publications, the host keys among
        # them) took a good part of a core from the operator and the API server it times.
        if with_status(kubeconfig, namespace) == n and counts(kubeconfig, namespace) == want:
            elapsed = time.monotonic() - start
            settle(kubeconfig, namespace)
            return elapsed
        time.sleep(0.2)
    raise RuntimeError(f"{n} publications did not converge: {counts(kubeconfig, namespace)}")


def direct_run(kubeconfig: str, n: int, *, generate_keys: bool = False) -> float:
    """Seconds of one server-side apply of N publications' children, rendered before.

    With `generate_keys`, the clock starts before the host keys are generated, as a hand-built
    site must: the same keys (host_key_files) for each publication, on as many threads as there
    are cores, then written into its host-key Secret.
    """
    namespace = f"dir-{n}-{uuid.uuid4().hex[:5]}"
    kubectl(kubeconfig, "create", "namespace", namespace)
    rendered = render_stream(publications(n), namespace=namespace)
    # The placeholders of generated Secrets carry no data; give them some, as the operator does.
    docs = [d for d in yaml.safe_load_all(rendered) if d]
    for doc in docs:
        if doc["kind"] == "Secret":
            doc["stringData"] = {"placeholder": "x"}
    names = {Names(f"pub{i:03d}").host_keys for i in range(n)} if generate_keys else set()
    keyed = [d for d in docs if d["kind"] == "Secret" and d["metadata"]["name"] in names]
    if generate_keys and len(keyed) != n:
        raise RuntimeError(f"render gave {len(keyed)} host-key Secrets for {n} publications")
    # The YAML of the rest before the clock (650 documents at 50 publications are a second of
    # PyYAML): the baseline is the apply, not this process writing its input.
    later = {id(d) for d in keyed}
    stream = "---\n".join(yaml.safe_dump(d) for d in docs if id(d) not in later)
    start = time.monotonic()
    if keyed:
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
            made = pool.map(lambda _: host_key_files(), keyed)
            for doc, files in zip(keyed, made, strict=True):
                doc.pop("stringData")
                doc["data"] = {k: base64.b64encode(v).decode() for k, v in files.items()}
        stream += "".join("---\n" + yaml.safe_dump(d) for d in keyed)
    kubectl(kubeconfig, "apply", "--server-side", "-f", "-", stdin=stream)
    elapsed = time.monotonic() - start
    settle(kubeconfig, namespace)
    return elapsed


def settle(kubeconfig: str, namespace: str) -> None:
    """Delete a run's namespace and wait until it is gone: the garbage collection of hundreds
    of children (and the operator's work on their deletion) must not slow the next run."""
    kubectl(kubeconfig, "delete", "namespace", namespace, "--timeout=300s", check=False)
    time.sleep(2)


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="N = 1 and 10 only")
    args = parser.parse_args()
    sizes = [1, 10] if args.quick else [1, 10, 50]
    results: list[dict[str, Any]] = []
    with operator_on_a_cluster() as bench:
        time.sleep(3)
        for n in sizes:
            direct = direct_run(bench.kubeconfig, n)
            by_hand = direct_run(bench.kubeconfig, n, generate_keys=True)
            reconciled = operator_run(bench.kubeconfig, n)
            keys_existing = operator_run(bench.kubeconfig, n, keys_exist=True)
            results.append(
                {
                    "publications": n,
                    "operator_s": round(reconciled, 2),
                    "direct_apply_s": round(direct, 2),
                    "ratio_to_direct_apply": round(reconciled / max(direct, 1e-6), 2),
                    "per_publication_s": round(reconciled / n, 3),
                    "operator_s_host_keys_existing": round(keys_existing, 2),
                    "ratio_host_keys_existing": round(keys_existing / max(direct, 1e-6), 2),
                    "direct_apply_keys_generated_s": round(by_hand, 2),
                    "ratio_to_direct_apply_keys_generated": round(
                        reconciled / max(by_hand, 1e-6), 2
                    ),
                }
            )
        assert bench.operator.proc is not None
        rss = peak_rss_mb(bench.operator.proc.pid)
    print(
        json.dumps(
            {
                "benchmark": "reconcile",
                "quick": args.quick,
                "runs": results,
                "operator_peak_rss_mb": rss,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
