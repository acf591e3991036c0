"""What the cluster benchmarks share: a control plane with the CRDs and the operator running."""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import REPO, TEST_RECONCILE_INTERVAL, OperatorProcess, install_crds

BENCH_CLUSTER = "difusor-bench"


@dataclass(frozen=True)
class Bench:
    """A cluster with difusor's CRDs, the operator running against it, and a scratch directory."""

    kubeconfig: str
    operator: OperatorProcess
    work: Path


@contextmanager
def operator_on_a_cluster(
    *, reconcile_interval: float = TEST_RECONCILE_INTERVAL
) -> Iterator[Bench]:
    """$DIFUSOR_BENCH_KUBECONFIG, or a local control plane started here and stopped afterwards.

    `reconcile_interval`: the operator's seconds between repairs (the tests' unless said).
    """
    given = os.environ.get("DIFUSOR_BENCH_KUBECONFIG")
    script = str(REPO / "hack" / "cluster.sh")
    if given:
        kubeconfig = given
    else:
        # No Endpoints controllers: the host pods' loopback IPs make every update of theirs
        # fail and be retried on each pod change (at 30 pods, 40 requests a promotion).
        kubeconfig = subprocess.run(
            ["bash", script, "up", BENCH_CLUSTER],
            capture_output=True,
            text=True,
            check=True,
            timeout=900,
            env={**os.environ, "DIFUSOR_ENDPOINTS": "off"},
        ).stdout.strip()
    work = Path(tempfile.mkdtemp(prefix="difusor-bench-"))
    operator = OperatorProcess(
        kubeconfig, work / "operator.log", reconcile_interval=reconcile_interval
    )
    try:
        install_crds(kubeconfig)
        operator.start()
        yield Bench(kubeconfig, operator, work)
    finally:
        operator.stop()
        if not given:
            subprocess.run(
                ["bash", script, "down", BENCH_CLUSTER], capture_output=True, check=False
            )
