"""Reconcile throughput: N publications applied until every one has all its children and a status.

Prints one JSON object. Runs its own local control plane (or the cluster of
$DIFUSOR_BENCH_KUBECONFIG) and the operator as a process. For N in 1, 10, 50 (--quick: 1, 10):
`operator_s` = one `kubectl apply` of N PrepPublications -> every publication has its
StatefulSet, Services, ConfigMap, Secrets, RBAC, PDB, NetworkPolicy and Ingress and a Ready or
Progressing condition (the statuses are watched, the children counted once at the end).
Baseline in the same run: `direct_apply_s` = the same children, rendered by `difusor render`,
applied with one `kubectl apply --server-side` (what a hand-written manifest would cost the API
server; labelled managed-by=by-hand, so that the operator, which watches its own, takes no
part). `operator_s_host_keys_existing`: the same with the publications' host-key Secrets made
beforehand, so that the operator generates no key (a 3072-bit RSA key is 0.2 s of CPU, half of
the operator's work for a new publication, once in its life). `direct_apply_keys_generated_s`:
the direct apply with the clock started before the host keys are generated, as a hand-built
site must (the same keys, on a thread per core), the baseline of what the operator does for a
new publication. Every measure runs once a round, the rounds (3; --quick: 1) one after the
other; the figures are medians, each ratio the median of the rounds' ratios. `--polled` adds
the operator timed as before the eighteenth session, its statuses polled with kubectl every
0.2 s. The operator repairs every publication at the chart's interval (20 s; the tests use 10,
with which the first of 50 new publications were repaired in full inside the timed window).
Also the operator's peak resident memory.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import statistics
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client as k8s
from kubernetes import watch as k8s_watch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.common import operator_on_a_cluster  # noqa: E402
from tests.conftest import kubectl  # noqa: E402

from difusor.controller.secrets import host_key_files, host_keys_secret  # noqa: E402
from difusor.kube import api_client  # noqa: E402
from difusor.models import GROUP, VERSION  # noqa: E402
from difusor.render.children import Target  # noqa: E402
from difusor.render.labels import MANAGED_BY_LABEL, Names  # noqa: E402
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


def chart_repair_interval() -> float:
    """The seconds between repairs that the chart installs (`reconcileInterval`)."""
    values = yaml.safe_load((REPO / "charts" / "difusor" / "values.yaml").read_text())
    return float(values["reconcileInterval"])


def has_status(publication: dict[str, Any]) -> bool:
    conditions = (publication.get("status") or {}).get("conditions") or []
    return any(c["type"] in ("Ready", "Progressing") for c in conditions)


class StatusWatch:
    """The time each publication of a namespace first has a status, from one watch.

    Started before the apply, it sees every change as the API server sends it. Asking for the
    statuses instead (a kubectl process every 0.2 s, 60 ms of CPU each, and a list of the
    publications for the API server) took CPU from the operator and the API server the bench
    times, which the direct apply it is compared with did not pay: the operator's time was 1.07
    (50 publications) to 1.4 (10) times what it is when watched (`--polled`).
    """

    def __init__(self, kubeconfig: str, namespace: str) -> None:
        self.namespace = namespace
        self.custom = k8s.CustomObjectsApi(api_client(kubeconfig))
        self.first_status: dict[str, float] = {}
        self.error: BaseException | None = None
        self.stop = threading.Event()
        listed = self._list()
        self._version = listed["metadata"]["resourceVersion"]
        self.thread = threading.Thread(target=self._run, name="status-watch", daemon=True)
        self.thread.start()

    def _list(self, **kwargs: Any) -> Any:
        return self.custom.list_namespaced_custom_object(
            GROUP, VERSION, self.namespace, "preppublications", **kwargs
        )

    def _run(self) -> None:
        try:
            while not self.stop.is_set():
                stream = k8s_watch.Watch().stream(
                    self._list, resource_version=self._version, timeout_seconds=5
                )
                for event in stream:
                    obj = event["object"]
                    self._version = obj["metadata"]["resourceVersion"]
                    if has_status(obj):
                        self.first_status.setdefault(obj["metadata"]["name"], time.monotonic())
                    if self.stop.is_set():
                        break
        except Exception as exc:  # a 410 would be a bench defect: report it
            self.error = exc

    def all_at(self, n: int, deadline: float) -> float:
        """When the n-th publication had its first status."""
        while time.monotonic() < deadline:
            if self.error is not None:
                raise RuntimeError(f"status watch failed: {self.error}") from self.error
            done = dict(self.first_status)
            if len(done) >= n:
                return max(done.values())
            time.sleep(0.05)
        raise RuntimeError(f"{n} publications did not all get a status: {len(self.first_status)}")

    def close(self) -> None:
        """The thread ends with its watch, within 5 s; the bench does not wait for it."""
        self.stop.set()


def host_key_secrets(n: int, namespace: str) -> str:
    """The host-key Secrets of pub000..pubN-1, as the operator makes them (one key set, copied:
    only the bench shares keys between publications)."""
    first = json.dumps(host_keys_secret(Target(name="pub000", namespace=namespace), []))
    return "---\n".join(
        yaml.safe_dump(json.loads(first.replace('"pub000', f'"pub{i:03d}'))) for i in range(n)
    )


def polled_status_at(kubeconfig: str, namespace: str, n: int, deadline: float) -> float:
    """When a poll (kubectl every 0.2 s) first finds all n publications with a status: how this
    bench waited until the eighteenth session, kept as an ablation (--polled)."""
    while time.monotonic() < deadline:
        out = json.loads(kubectl(kubeconfig, "-n", namespace, "get", "prep", "-o", "json"))
        if sum(1 for p in out["items"] if has_status(p)) == n:
            return time.monotonic()
        time.sleep(0.2)
    raise RuntimeError(f"{n} publications did not all get a status")


def operator_run(
    kubeconfig: str, n: int, *, keys_exist: bool = False, polled: bool = False
) -> float:
    """Seconds until N publications have every child and a status. With `keys_exist`, their
    host-key Secrets are there before (a restore, or a move to a new cluster): the operator
    then generates no key, which is half of its CPU for a new publication (3072-bit RSA).
    With `polled`, the statuses are polled for rather than watched (the ablation)."""
    namespace = f"rec-{n}-{uuid.uuid4().hex[:5]}"
    kubectl(kubeconfig, "create", "namespace", namespace)
    if keys_exist:
        kubectl(
            kubeconfig, "-n", namespace, "apply", "-f", "-", stdin=host_key_secrets(n, namespace)
        )
    want = {k: v * n for k, v in PER_PUBLICATION.items()}
    watch = None if polled else StatusWatch(kubeconfig, namespace)
    try:
        start = time.monotonic()
        kubectl(kubeconfig, "-n", namespace, "apply", "-f", "-", stdin=publications(n))
        deadline = start + 900
        if watch is None:
            done = polled_status_at(kubeconfig, namespace, n, deadline)
        else:
            done = watch.all_at(n, deadline)
    finally:
        if watch is not None:
            watch.close()
    # The status is written after the pass applied every child; the children are counted once
    # (some 650 objects at 50 publications), and only if one is missing does the time move on.
    while time.monotonic() < deadline:
        if counts(kubeconfig, namespace) == want:
            elapsed = done - start
            settle(kubeconfig, namespace)
            return elapsed
        time.sleep(0.2)
        done = time.monotonic()
    raise RuntimeError(f"{n} publications did not converge: {counts(kubeconfig, namespace)}")


def unmanaged(obj: Any) -> Any:
    """The object labelled as a hand-built site's (managed-by=by-hand): the operator watches
    the StatefulSets and web pods labelled managed-by=difusor, and spent 2.6-2.8 CPU-seconds on
    the events of the baseline's 50 StatefulSets and their pods over a run and its clean-up."""
    if isinstance(obj, dict):
        return {
            k: "by-hand" if k == MANAGED_BY_LABEL and v == "difusor" else unmanaged(v)
            for k, v in obj.items()
        }
    if isinstance(obj, list):
        return [unmanaged(v) for v in obj]
    return obj


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
    docs = [unmanaged(d) for d in yaml.safe_load_all(rendered) if d]
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


def one_round(kubeconfig: str, n: int, *, polled: bool) -> dict[str, float]:
    """Each measure once, one after the other, in seconds."""
    times = {
        "direct": direct_run(kubeconfig, n),
        "keys_generated": direct_run(kubeconfig, n, generate_keys=True),
        "operator": operator_run(kubeconfig, n),
        "keys_existing": operator_run(kubeconfig, n, keys_exist=True),
    }
    if polled:
        times["polled"] = operator_run(kubeconfig, n, polled=True)
    return times


def summary(n: int, rounds: list[dict[str, float]]) -> dict[str, Any]:
    """Medians of the times, and of each round's ratios (a ratio from the runs of one round,
    next to each other, moves less with the machine than one of two medians)."""

    def median(key: str) -> float:
        return round(statistics.median(r[key] for r in rounds), 2)

    def ratio(num: str, den: str) -> float:
        return round(statistics.median(r[num] / max(r[den], 1e-6) for r in rounds), 2)

    result: dict[str, Any] = {
        "publications": n,
        "operator_s": median("operator"),
        "direct_apply_s": median("direct"),
        "ratio_to_direct_apply": ratio("operator", "direct"),
        "per_publication_s": round(median("operator") / n, 3),
        "operator_s_host_keys_existing": median("keys_existing"),
        "ratio_host_keys_existing": ratio("keys_existing", "direct"),
        "direct_apply_keys_generated_s": median("keys_generated"),
        "ratio_to_direct_apply_keys_generated": ratio("operator", "keys_generated"),
    }
    if "polled" in rounds[0]:
        result["operator_s_polled"] = median("polled")
        result["ratio_polled_to_watched"] = ratio("polled", "operator")
    result["rounds_s"] = [{k: round(v, 2) for k, v in r.items()} for r in rounds]
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="N = 1 and 10, one round")
    parser.add_argument("--sizes", type=int, nargs="+", help="these N instead (default 1 10 50)")
    parser.add_argument("--rounds", type=int, help="rounds of every measure (default 3)")
    parser.add_argument(
        "--repair-interval", type=float, default=chart_repair_interval(),
        help="the operator's seconds between repairs (default: the chart's)",
    )  # fmt: skip
    parser.add_argument(
        "--polled", action="store_true",
        help="also time the operator with the statuses polled by kubectl, as before",
    )  # fmt: skip
    args = parser.parse_args()
    sizes = args.sizes or ([1, 10] if args.quick else [1, 10, 50])
    rounds = args.rounds or (1 if args.quick else 3)
    results: list[dict[str, Any]] = []
    with operator_on_a_cluster(reconcile_interval=args.repair_interval) as bench:
        time.sleep(3)
        for n in sizes:
            times = [one_round(bench.kubeconfig, n, polled=args.polled) for _ in range(rounds)]
            results.append(summary(n, times))
        assert bench.operator.proc is not None
        rss = peak_rss_mb(bench.operator.proc.pid)
    print(
        json.dumps(
            {
                "benchmark": "reconcile",
                "quick": args.quick,
                "rounds": rounds,
                "repair_interval_s": args.repair_interval,
                "runs": results,
                "operator_peak_rss_mb": rss,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
