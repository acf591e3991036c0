"""Shared fixtures: real programs on loopback and the real local control plane."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
IN_CI = os.environ.get("CI", "").lower() == "true"


def require_binary(name: str) -> str:
    """Path of a program the test needs: fails under CI when it is missing, skips elsewhere."""
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if found:
        return found
    message = f"{name} is not installed (run `make deps`)"
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


CACHE = Path(os.environ.get("DIFUSOR_CACHE", str(Path.home() / ".cache" / "difusor")))
BIN = CACHE / "bin"
TEST_CLUSTER = os.environ.get("DIFUSOR_TEST_CLUSTER", "difusor-test")


def kubectl_path() -> str:
    """The pinned kubectl from the cache (falls back to one on PATH for kind users)."""
    pinned = BIN / "kubectl"
    if pinned.exists():
        return str(pinned)
    return require_binary("kubectl")


@pytest.fixture(scope="session")
def kubeconfig() -> Iterator[str]:
    """A kubeconfig for a real control plane: $DIFUSOR_TEST_KUBECONFIG, or the local one started here."""
    given = os.environ.get("DIFUSOR_TEST_KUBECONFIG")
    if given:
        yield given
        return
    if not (BIN / "kube-apiserver").exists() or not (BIN / "kwokctl").exists():
        message = f"control-plane binaries missing in {BIN} (run `make k8s-bins`)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    was_running = (
        subprocess.run(
            [kubectl_path(), "--kubeconfig", _cluster_kubeconfig(), "get", "--raw", "/readyz"],
            capture_output=True,
            check=False,
        ).returncode
        == 0
    )
    path = subprocess.run(
        ["bash", str(REPO / "hack" / "cluster.sh"), "up", TEST_CLUSTER],
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    ).stdout.strip()
    try:
        yield path
    finally:
        if not was_running and not os.environ.get("DIFUSOR_KEEP_CLUSTER"):
            subprocess.run(
                ["bash", str(REPO / "hack" / "cluster.sh"), "down", TEST_CLUSTER],
                capture_output=True,
                check=False,
                timeout=120,
            )


def _cluster_kubeconfig() -> str:
    return subprocess.run(
        ["bash", str(REPO / "hack" / "cluster.sh"), "kubeconfig", TEST_CLUSTER],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


def kubectl(kubeconfig: str, *args: str, check: bool = True, stdin: str | None = None) -> str:
    """Run the pinned kubectl against the test cluster; returns stdout."""
    proc = subprocess.run(
        [kubectl_path(), "--kubeconfig", kubeconfig, *args],
        capture_output=True,
        text=True,
        input=stdin,
        check=False,
        timeout=120,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc.stdout if check else proc.stdout + proc.stderr


@pytest.fixture(scope="session")
def crds(kubeconfig: str) -> str:
    """The difusor CRDs installed (from crds/) and Established."""
    install_crds(kubeconfig)
    return kubeconfig


def install_crds(kubeconfig: str) -> None:
    """Applies crds/ and waits until every one of them is Established."""
    kubectl(kubeconfig, "apply", "--server-side", "--force-conflicts", "-f", str(REPO / "crds"))
    wait_established(
        kubeconfig,
        [
            yaml.safe_load(path.read_text())["metadata"]["name"]
            for path in sorted((REPO / "crds").glob("*.yaml"))
        ],
    )


def wait_established(kubeconfig: str, names: list[str]) -> None:
    """Waits until every CRD named is Established.

    Polled rather than `kubectl wait`: on a CRD created a moment ago, before the API server has
    written its status, `kubectl wait --for=condition` fails at once (".status.conditions accessor
    error") instead of waiting.
    """
    established = "jsonpath={.status.conditions[?(@.type=='Established')].status}"
    wait_for(
        f"{', '.join(names)} Established",
        lambda: all(
            kubectl(kubeconfig, "get", f"crd/{name}", "-o", established) == "True" for name in names
        ),
        timeout=60,
    )


@pytest.fixture
def namespace(kubeconfig: str) -> Iterator[str]:
    """A fresh namespace, deleted after the test."""
    name = f"t-{uuid.uuid4().hex[:8]}"
    kubectl(kubeconfig, "create", "namespace", name)
    try:
        yield name
    finally:
        kubectl(kubeconfig, "delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture(scope="session")
def api(kubeconfig: str) -> Iterator[Any]:
    """A kubernetes ApiClient for the test cluster."""
    from kubernetes import config as k8s_config

    client = k8s_config.new_client_from_config(config_file=kubeconfig)
    try:
        yield client
    finally:
        client.close()


def wait_for(
    what: str, check: Callable[[], Any], *, timeout: float = 90.0, interval: float = 0.5
) -> Any:
    """Poll until `check` returns something truthy; fail with `what` and the last value."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except Exception as exc:  # keep polling through transient API errors
            last = exc
        else:
            if last:
                return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; last: {last!r}")


def released(semaphore: threading.Semaphore, times: int, *, timeout: float = 10.0) -> None:
    """Wait until `semaphore` is released `times` times, and check that it is not once more
    (within a fifth of a second: a late extra release passes unseen, never a right count)."""
    for count in range(times):
        assert semaphore.acquire(timeout=timeout), f"released {count} times of {times}"
    assert not semaphore.acquire(timeout=0.2), f"released more than {times} times"


#: Seconds between an operator's repairs in the tests, which wait for repairs (the chart's
#: default is 20).
TEST_RECONCILE_INTERVAL = 10.0


class OperatorProcess:
    """`difusor operator` running as a real process against the test cluster."""

    def __init__(
        self,
        kubeconfig: str,
        log_path: Path,
        *,
        namespaces: tuple[str, ...] = (),
        args: tuple[str, ...] = (),
        reconcile_interval: float = TEST_RECONCILE_INTERVAL,
    ) -> None:
        """`reconcile_interval`: seconds between repairs."""
        self.kubeconfig = kubeconfig
        self.log_path = log_path
        self.namespaces = namespaces
        self.args = args
        self.reconcile_interval = reconcile_interval
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start (or restart) the operator process."""
        env = {
            **os.environ,
            "KUBECONFIG": self.kubeconfig,
            "DIFUSOR_KUBECONFIG": self.kubeconfig,
            "DIFUSOR_RECONCILE_INTERVAL": str(self.reconcile_interval),
        }
        watch = [arg for ns in self.namespaces for arg in ("-n", ns)]
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "difusor", "operator", "--liveness", "", *watch, *self.args],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        """Stop gracefully (kopf finishes what it is doing)."""
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)

    def log(self) -> str:
        """Everything the operator printed so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


#: Every child a publication named {n} gets, as (kubectl kind, name).
CHILDREN = [
    ("statefulset", "{n}-web"),
    ("service", "{n}-web"),
    ("service", "{n}-http"),
    ("service", "{n}-sftp"),
    ("configmap", "{n}-config"),
    ("secret", "{n}-sftp-host-keys"),
    ("secret", "{n}-agent-token"),
    ("serviceaccount", "{n}-agent"),
    ("role", "{n}-agent"),
    ("rolebinding", "{n}-agent"),
    ("poddisruptionbudget", "{n}-web"),
    ("networkpolicy", "{n}-web"),
    ("ingress", "{n}"),
]


@pytest.fixture(scope="module")
def operator(crds: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    """The operator, shared by the tests of one module (each works in its own namespace)."""
    proc = OperatorProcess(crds, tmp_path_factory.mktemp("operator") / "operator.log")
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


def unreachable_api() -> Any:
    """A kubernetes ApiClient whose server is a loopback port nothing listens on."""
    from kubernetes import client as k8s

    from .nginxproc import free_port

    configuration = k8s.Configuration()
    configuration.host = f"http://127.0.0.1:{free_port()}"
    return k8s.ApiClient(configuration)


def token_kubeconfig(kubeconfig: str, *, token: str, path: Path) -> str:
    """A kubeconfig for the same API server that authenticates with this bearer token only."""
    admin = yaml.safe_load(kubectl(kubeconfig, "config", "view", "--raw", "--minify", "--flatten"))
    cluster = admin["clusters"][0]
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [cluster],
        "users": [{"name": "token", "user": {"token": token}}],
        "contexts": [{"name": "token", "context": {"cluster": cluster["name"], "user": "token"}}],
        "current-context": "token",
    }
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return str(path)
