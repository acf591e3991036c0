"""The node tier: the chart, the image and the rendered pods on a real kubelet, through Services.

One node per module (hack/node.sh: containerd, runc, CNI bridge, kubelet, kube-proxy in a network
namespace of its own) joins the test cluster; `helm install` runs the operator from the built
image; the example publication runs in a namespace that enforces the restricted Pod Security
level, on local PersistentVolumes. Every client (sftp, the readers) runs inside the node's network
namespace and reaches the pods only through the Services' ClusterIPs, as clients of a cluster do.
On kind (`make kind-test`, DIFUSOR_NODE_PID set to the kind node container's pid) the same tests
run with their clients in the kind node's network namespace.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from .archives import make_zip, site_files
from .conftest import BIN, IN_CI, REPO, TEST_CLUSTER, kubectl, require_binary, wait_for
from .hostpods import host_public_key

pytestmark = [pytest.mark.node, pytest.mark.timeout(1800)]

PUB = "prep-minimal"
RELEASE = "difusor"
OPERATOR_NS = "difusor-system"
TAINT = "difusor.io/real-node"
#: Figures for the closing note of the node tier, printed at the end of the module.
FIGURES: dict[str, Any] = {}


@dataclass
class Node:
    """The real node and how to run a client inside its network namespace."""

    kubeconfig: str
    name: str
    netns: str
    work: Path
    ctr: list[str]
    """ctr against the node's containerd, namespace k8s.io."""
    mount_pid: int | None = None
    """A process in the node's mount namespace, when it is not ours (kind)."""

    def mkdir(self, path: Path) -> None:
        if self.mount_pid is None:
            path.mkdir(parents=True, exist_ok=True)
        else:
            subprocess.run(
                ["nsenter", f"--target={self.mount_pid}", "--mount", "mkdir", "-p", str(path)],
                check=True,
            )

    def run(
        self, argv: list[str], *, stdin: str | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["nsenter", f"--net={self.netns}", *argv],
            input=stdin, capture_output=True, text=True, timeout=timeout, check=False,
        )  # fmt: skip

    def popen(self, argv: list[str]) -> subprocess.Popen[str]:
        return subprocess.Popen(
            ["nsenter", f"--net={self.netns}", *argv],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
        )  # fmt: skip

    def k(self, *args: str, check: bool = True, stdin: str | None = None) -> str:
        return kubectl(self.kubeconfig, *args, check=check, stdin=stdin)

    def kj(self, *args: str) -> Any:
        return json.loads(self.k(*args, "-o", "json"))


def _images() -> list[tuple[str, str]]:
    out = subprocess.run(
        ["bash", str(REPO / "hack" / "image.sh")],
        capture_output=True, text=True, check=True, timeout=3600,
    ).stdout  # fmt: skip
    return [tuple(line.split(" ", 1)) for line in out.splitlines() if line.strip()]  # type: ignore[misc]


@pytest.fixture(scope="module")
def node(kubeconfig: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    """The real node joined to the test cluster (or kind's, with DIFUSOR_TEST_KUBECONFIG)."""
    work = tmp_path_factory.mktemp("node")
    kind_pid = os.environ.get("DIFUSOR_NODE_PID")
    if kind_pid:
        in_node = ["nsenter", f"--target={kind_pid}", "--mount"]
        yield Node(
            kubeconfig, os.environ["DIFUSOR_NODE_NAME"], f"/proc/{kind_pid}/ns/net", work,
            ctr=[*in_node, "ctr", "-n", "k8s.io"], mount_pid=int(kind_pid),
        )  # fmt: skip
        return
    if os.geteuid() != 0 or not Path("/run").is_dir():
        message = "the node tier needs root (network namespaces, mounts, cgroups)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    for program in ("runc", "nft", "socat", "buildah", "mmdebstrap", "nsenter"):
        require_binary(program)
    images = _images()  # before the node: a cold build does not count in node-up's time
    script = REPO / "hack" / "node.sh"
    env = {**os.environ, "DIFUSOR_CLUSTER": TEST_CLUSTER}
    started = time.monotonic()
    up = subprocess.run(
        ["bash", str(script), "up", TEST_CLUSTER],
        capture_output=True, text=True, timeout=3600, check=False, env=env,
    )  # fmt: skip
    FIGURES["node_up_seconds"] = round(time.monotonic() - started, 1)
    try:
        assert up.returncode == 0, f"node.sh up failed:\n{up.stderr[-4000:]}"
        name, netns = up.stdout.split()
        FIGURES["images"] = {ref: Path(path).stat().st_size for ref, path in images}
        sock = f"/run/difusor-node/{TEST_CLUSTER}/containerd.sock"
        yield Node(
            kubeconfig, name, f"/run/netns/{netns}", work,
            ctr=[str(BIN / "ctr"), "--address", sock, "-n", "k8s.io"],
        )  # fmt: skip
    finally:
        down = subprocess.run(
            ["bash", str(script), "down", TEST_CLUSTER],
            capture_output=True, text=True, timeout=300, check=False, env=env,
        )  # fmt: skip
        print(down.stderr[-2000:])
        print("node tier figures:", json.dumps(FIGURES, indent=1))


def _local_volumes(node: Node, *, count: int) -> str:
    """A StorageClass without provisioner and `count` local PersistentVolumes on the node."""
    storage_class = f"difusor-local-{uuid.uuid4().hex[:6]}"
    base = Path(f"/var/lib/difusor-node/{TEST_CLUSTER}/volumes")
    docs: list[dict[str, Any]] = [
        {
            "apiVersion": "storage.k8s.io/v1",
            "kind": "StorageClass",
            "metadata": {"name": storage_class},
            "provisioner": "kubernetes.io/no-provisioner",
            "volumeBindingMode": "WaitForFirstConsumer",
        }
    ]
    for i in range(count):
        path = base / f"{storage_class}-{i}"
        node.mkdir(path)
        docs.append(
            {
                "apiVersion": "v1",
                "kind": "PersistentVolume",
                "metadata": {"name": f"{storage_class}-{i}", "labels": {"difusor.io/test": "node"}},
                "spec": {
                    "capacity": {"storage": "1Gi"},
                    "accessModes": ["ReadWriteOnce"],
                    "persistentVolumeReclaimPolicy": "Retain",
                    "storageClassName": storage_class,
                    "local": {"path": str(path)},
                    "nodeAffinity": {
                        "required": {
                            "nodeSelectorTerms": [
                                {
                                    "matchExpressions": [
                                        {
                                            "key": "kubernetes.io/hostname",
                                            "operator": "In",
                                            "values": [node.name],
                                        }
                                    ]
                                }
                            ]
                        }
                    },
                },
            }
        )
    node.k("apply", "-f", "-", stdin=yaml.safe_dump_all(docs))
    return storage_class


@dataclass
class Site:
    node: Node
    namespace: str
    key: Path
    known_hosts: Path

    def pods(self) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = self.node.kj(
            "-n", self.namespace, "get", "pods", "-l", f"app.kubernetes.io/instance={PUB}"
        )["items"]
        return sorted(items, key=lambda p: p["metadata"]["name"])

    def pod(self, name: str) -> dict[str, Any]:
        found: dict[str, Any] = self.node.kj("-n", self.namespace, "get", "pod", name)
        return found

    def service_ip(self, suffix: str) -> str:
        return str(
            self.node.kj("-n", self.namespace, "get", "service", f"{PUB}-{suffix}")["spec"][
                "clusterIP"
            ]
        )

    def ready_endpoints(self) -> set[str]:
        """Addresses of ready endpoints of the HTTP Service."""
        slices = self.node.kj(
            "-n", self.namespace, "get", "endpointslices",
            "-l", f"kubernetes.io/service-name={PUB}-http",
        )["items"]  # fmt: skip
        return {
            addr
            for s in slices
            for ep in s.get("endpoints") or []
            if (ep.get("conditions") or {}).get("ready")
            for addr in ep["addresses"]
        }

    def cut(self, cut_id: str) -> dict[str, Any] | None:
        out = self.node.k(
            "-n", self.namespace, "get", "prepcut", f"{PUB}-{cut_id.replace('_', '-')}",
            "-o", "json", check=False,
        )  # fmt: skip
        return json.loads(out) if out.startswith("{") else None

    def sftp(self, commands: str) -> subprocess.CompletedProcess[str]:
        """One sftp connection to the SFTP Service, from inside the node's network namespace."""
        return self.node.run(
            [
                require_binary("sftp"), "-b", "-", "-P", "22", "-F", "/dev/null",
                "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
                "-o", f"UserKnownHostsFile={self.known_hosts}", "-o", "IdentitiesOnly=yes",
                "-i", str(self.key), f"prep@{self.service_ip('sftp')}",
            ],
            stdin=commands, timeout=300,
        )  # fmt: skip

    def upload_with_checksum(self, archive: Path) -> None:
        """The archive in one connection, its .sha256 in a second: complete only on one pod."""
        digest = hashlib.sha256(archive.read_bytes()).hexdigest()
        checksum = archive.with_name(archive.name + ".sha256")
        checksum.write_text(f"{digest}  {archive.name}\n")
        for path in (archive, checksum):
            proc = self.sftp(f"put {path} {path.name}\n")
            assert proc.returncode == 0, f"sftp put {path.name} failed: {proc.stderr}"

    def served_by_every_pod(self, cut_id: str) -> bool:
        pods = self.pods()
        return len(pods) == 3 and all(
            (p["metadata"].get("annotations") or {}).get("prep.difusor.io/active") == cut_id
            for p in pods
        )

    def reader(self, *, seconds: float = 300) -> subprocess.Popen[str]:
        return self.node.popen(
            [
                sys.executable, "-m", "tests.node_reader",
                f"http://{self.service_ip('http')}/json/main.json",
                "--seconds", str(seconds), "--max-requests", "20000",
            ]
        )  # fmt: skip


def stop_reader(proc: subprocess.Popen[str]) -> dict[str, Any]:
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert out.startswith("{"), f"the reader failed: {err[-2000:]}"
    result: dict[str, Any] = json.loads(out)
    return result


def _ready_at(pod: dict[str, Any]) -> str | None:
    for cond in pod["status"].get("conditions") or []:
        if cond["type"] == "Ready" and cond["status"] == "True":
            return str(cond["lastTransitionTime"])
    return None


def _seconds(start: str, end: str) -> float:
    from datetime import datetime

    fmt = "%Y-%m-%dT%H:%M:%SZ"
    return (datetime.strptime(end, fmt) - datetime.strptime(start, fmt)).total_seconds()


@pytest.fixture(scope="module")
def site(node: Node) -> Iterator[Site]:
    """Chart installed with the built image; the example publication running on the node."""
    helm = str(BIN / "helm") if (BIN / "helm").exists() else require_binary("helm")
    image = os.environ.get("IMAGE", "ghcr.io/difusor/difusor:dev")
    nginx_image = os.environ.get("NGINX_IMAGE", "ghcr.io/difusor/difusor-nginx:dev")
    namespace = f"node-{uuid.uuid4().hex[:6]}"
    restricted = {
        "pod-security.kubernetes.io/enforce": "restricted",
        "pod-security.kubernetes.io/enforce-version": "latest",
    }
    for ns in (OPERATOR_NS, namespace):
        node.k("create", "namespace", ns, check=False)
        node.k(
            "label", "--overwrite", "namespace", ns, *(f"{k}={v}" for k, v in restricted.items())
        )
    toleration = {"key": TAINT, "operator": "Exists", "effect": "NoSchedule"}
    selector = {"kubernetes.io/hostname": node.name}
    values = {
        "image": {"repository": image.rsplit(":", 1)[0], "tag": image.rsplit(":", 1)[1],
                  "pullPolicy": "Never"},
        "nginxImage": nginx_image,
        "reconcileInterval": 10,
        "nodeSelector": selector,
        "tolerations": [toleration],
    }  # fmt: skip
    values_file = node.work / "values.yaml"
    values_file.write_text(yaml.safe_dump(values))
    storage_class = _local_volumes(node, count=3)
    try:
        install = subprocess.run(
            [
                helm, "upgrade", "--install", RELEASE, str(REPO / "charts" / "difusor"),
                "--kubeconfig", node.kubeconfig, "-n", OPERATOR_NS, "--take-ownership",
                "-f", str(values_file), "--wait", "--timeout", "5m",
            ],
            capture_output=True, text=True, timeout=400, check=False,
        )  # fmt: skip
        assert install.returncode == 0, f"helm install failed: {install.stderr}"
        key = node.work / "uploader"
        subprocess.run(
            [require_binary("ssh-keygen"), "-q", "-t", "ed25519", "-N", "", "-f", str(key)],
            check=True,
        )
        node.k("-n", namespace, "create", "secret", "generic", "iem-keys",
               f"--from-file=authorized_keys={key}.pub")  # fmt: skip
        publication = yaml.safe_load((REPO / "manifests" / "examples" / "minimal.yaml").read_text())
        publication["metadata"]["namespace"] = namespace
        publication["spec"].update(
            {
                "scheduling": {"nodeSelector": selector, "tolerations": [toleration]},
                "storage": {"size": "1Gi", "storageClassName": storage_class},
                # Clients reach it through the ClusterIP inside the node's namespace; the archive and
                # its checksum come in two connections, which only ClientIP affinity keeps together.
                "sftp": {"authorizedKeysSecret": "iem-keys", "service": {"type": "ClusterIP"}},
                "ingest": {"completion": "checksumFile"},
                # The readers are one client, far over a reader's limit.
                "rateLimit": {"requestsPerSecond": 10000, "burst": 10000, "connections": 1000},
            }
        )
        node.k("apply", "-f", "-", stdin=yaml.safe_dump(publication))
        public = host_public_key(node.kubeconfig, namespace=namespace, publication=PUB)
        site = Site(node, namespace, key, node.work / "known_hosts")
        wait_for("the SFTP Service", lambda: site.service_ip("sftp"), timeout=120)
        site.known_hosts.write_text(f"{site.service_ip('sftp')} {public}\n")
        yield site
    finally:
        print(node.k("-n", namespace, "get", "pods,pvc,endpointslices", "-o", "wide", check=False))
        print(
            node.k("-n", namespace, "get", "events", "--sort-by=.lastTimestamp", check=False)[
                -6000:
            ]
        )
        print(_container_logs(namespace, OPERATOR_NS))
        subprocess.run(
            [helm, "uninstall", RELEASE, "--kubeconfig", node.kubeconfig, "-n", OPERATOR_NS],
            capture_output=True, check=False, timeout=120,
        )  # fmt: skip
        node.k("delete", "namespace", namespace, "--wait=false", check=False)
        node.k("delete", "pv", "-l", "difusor.io/test=node", "--wait=false", check=False)
        node.k("delete", "storageclass", storage_class, "--wait=false", check=False)


def _container_logs(*namespaces: str) -> str:
    """The last lines of every container's log, read on the node (the API server cannot reach
    this kubelet, so `kubectl logs` cannot)."""
    from .conftest import CACHE

    out = []
    for path in sorted((CACHE / "node-logs" / TEST_CLUSTER / "pods").glob("*/*/*.log")):
        if path.parts[-3].split("_", 1)[0] in namespaces:
            lines = path.read_text(errors="replace").splitlines()[-25:]
            out.append(f"==== {path.parts[-3]} {path.parts[-2]} {path.name}\n" + "\n".join(lines))
    return "\n".join(out)


def test_the_web_pods_start_on_the_node_under_restricted_pod_security(site: Site) -> None:
    def started() -> list[dict[str, Any]] | None:
        # Started: every container past its startup probe (Ready needs an active cut).
        pods = site.pods()
        running = [
            p
            for p in pods
            if p["status"].get("containerStatuses")
            and all(c.get("started") for c in p["status"]["containerStatuses"])
        ]
        return pods if len(running) == 3 else None

    pods = wait_for("3 web pods started on the node", started, timeout=600)
    for pod in pods:
        assert pod["spec"]["nodeName"] == site.node.name
        claim = site.node.kj(
            "-n", site.namespace, "get", "pvc", f"content-{pod['metadata']['name']}"
        )
        assert claim["status"]["phase"] == "Bound"
        assert claim["spec"]["volumeName"].startswith("difusor-local-")
    # No cut yet: the pods run but stay out of the Service until one is active.
    assert site.ready_endpoints() == set()


def test_two_sftp_connections_of_one_client_reach_the_same_pod(site: Site) -> None:
    first, second = "20240602_2020", "20240602_2040"
    for cut_id, seed in ((first, 1), (second, 2)):
        archive = site.node.work / f"{cut_id}_PREP_MICH.zip"
        make_zip(archive, site_files(cut=cut_id, actas=300, seed=seed))
        site.upload_with_checksum(archive)
        wait_for(
            f"cut {cut_id} promoted on every pod",
            lambda c=cut_id: site.served_by_every_pod(c),
            timeout=240,
        )
    receivers = {site.cut(c)["spec"]["receivedBy"] for c in (first, second)}  # type: ignore[index]
    assert len(receivers) == 1, f"the uploads reached several pods: {receivers}"
    pods = site.pods()
    FIGURES["pod_start_to_ready_seconds"] = {
        p["metadata"]["name"]: _seconds(p["metadata"]["creationTimestamp"], _ready_at(p) or "")
        for p in pods
        if _ready_at(p)
    }
    assert site.ready_endpoints() == {p["status"]["podIP"] for p in pods}


def test_the_site_reads_through_the_service_while_a_cut_is_promoted(site: Site) -> None:
    reader = site.reader()
    time.sleep(3)
    cut_id = "20240602_2100"
    archive = site.node.work / f"{cut_id}_PREP_MICH.zip"
    make_zip(archive, site_files(cut=cut_id, actas=300, seed=3))
    site.upload_with_checksum(archive)
    wait_for(f"cut {cut_id} on every pod", lambda: site.served_by_every_pod(cut_id), timeout=240)
    time.sleep(3)
    result = stop_reader(reader)
    FIGURES["promotion"] = {k: result[k] for k in ("requests", "non_2xx", "mixed", "cuts")}
    assert result["mixed"] == 0
    assert result["non_2xx"] == 0, result["failures"]
    assert result["cuts"][-1] == cut_id


def _container_id(site: Site, pod: str, container: str) -> str:
    for status in site.pod(pod)["status"]["containerStatuses"]:
        if status["name"] == container:
            return str(status["containerID"]).split("://", 1)[1]
    raise AssertionError(f"no container {container} in {pod}")


def _restarts(site: Site, pod: str, container: str) -> int:
    for status in site.pod(pod)["status"]["containerStatuses"]:
        if status["name"] == container:
            return int(status["restartCount"])
    return 0


def _kill_container(site: Site, pod: str, container: str) -> None:
    """SIGKILL the container's process, as the OOM killer or a crash would."""
    proc = subprocess.run(
        [*site.node.ctr, "tasks", "kill", "--signal", "SIGKILL", _container_id(site, pod, container)],
        capture_output=True, text=True, check=False, timeout=30,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr


def _back_in_endpoints(site: Site, pod: str, *, since: float, was_out: list[bool]) -> float:
    """Seconds from `since` until the pod (by its current IP) is a ready endpoint again."""

    def back() -> bool:
        current = site.pod(pod)
        ip = current["status"].get("podIP")
        ready = ip in site.ready_endpoints() if ip else False
        if not ready:
            was_out[0] = True
        return ready and was_out[0]

    wait_for(f"{pod} back in the endpoints", back, timeout=300, interval=0.2)
    return round(time.monotonic() - since, 1)


@pytest.mark.parametrize("container", ["nginx", "agent"])
def test_a_killed_container_is_restarted_and_the_pod_rejoins_the_service(
    site: Site, container: str
) -> None:
    pod = f"{PUB}-web-0"
    before = _restarts(site, pod, container)
    reader = site.reader()
    time.sleep(2)
    since = time.monotonic()
    _kill_container(site, pod, container)

    def restarted_and_ready() -> bool:
        for status in site.pod(pod)["status"]["containerStatuses"]:
            if status["name"] == container:
                return int(status["restartCount"]) > before and bool(status.get("ready"))
        return False

    # A container back and ready within a millisecond of the failed probe (as the kubelet
    # logged once) may never show the pod out of the endpoints: the restart is the proof.
    wait_for(f"{container} of {pod} restarted and ready", restarted_and_ready, timeout=300)
    back = _back_in_endpoints(site, pod, since=since, was_out=[True])
    time.sleep(2)
    result = stop_reader(reader)
    FIGURES[f"kill_{container}"] = {
        "back_in_endpoints_seconds": back,
        **{k: result[k] for k in ("requests", "non_2xx", "mixed")},
    }
    assert _restarts(site, pod, container) == before + 1
    assert result["mixed"] == 0
    if container == "agent":
        # nginx kept serving throughout: the pod left rotation only because the agent was not ready.
        assert result["non_2xx"] == 0, result["failures"]


def test_a_deleted_pod_returns_on_its_own_volume(site: Site) -> None:
    pod = f"{PUB}-web-1"
    claim = site.node.kj("-n", site.namespace, "get", "pvc", f"content-{pod}")
    old_uid = site.pod(pod)["metadata"]["uid"]
    reader = site.reader()
    time.sleep(2)
    since = time.monotonic()
    site.node.k("-n", site.namespace, "delete", "pod", pod, "--wait=false")
    wait_for(f"{pod} recreated", lambda: site.pod(pod)["metadata"]["uid"] != old_uid, timeout=120)
    back = _back_in_endpoints(site, pod, since=since, was_out=[True])
    time.sleep(2)
    result = stop_reader(reader)
    FIGURES["delete_pod"] = {
        "back_in_endpoints_seconds": back,
        **{k: result[k] for k in ("requests", "non_2xx", "mixed")},
    }
    again = site.node.kj("-n", site.namespace, "get", "pvc", f"content-{pod}")
    assert again["metadata"]["uid"] == claim["metadata"]["uid"]
    assert again["spec"]["volumeName"] == claim["spec"]["volumeName"]
    assert result["mixed"] == 0
    assert result["non_2xx"] == 0, result["failures"]


def test_deleting_the_operator_pod_keeps_serving_and_promotion_resumes(site: Site) -> None:
    pods = site.node.kj(
        "-n", OPERATOR_NS, "get", "pods", "-l", "app.kubernetes.io/component=operator"
    )
    old = {p["metadata"]["name"] for p in pods["items"]}
    reader = site.reader()
    time.sleep(2)
    since = time.monotonic()
    site.node.k("-n", OPERATOR_NS, "delete", "pods", *old, "--wait=false")

    def new_operator_ready() -> bool:
        now = site.node.kj(
            "-n", OPERATOR_NS, "get", "pods", "-l", "app.kubernetes.io/component=operator"
        )
        return any(p["metadata"]["name"] not in old and _ready_at(p) for p in now["items"])

    wait_for("a new operator pod Ready", new_operator_ready, timeout=240, interval=0.5)
    operator_back = round(time.monotonic() - since, 1)
    cut_id = "20240602_2120"
    archive = site.node.work / f"{cut_id}_PREP_MICH.zip"
    make_zip(archive, site_files(cut=cut_id, actas=300, seed=4))
    site.upload_with_checksum(archive)
    wait_for(f"cut {cut_id} on every pod", lambda: site.served_by_every_pod(cut_id), timeout=240)
    result = stop_reader(reader)
    FIGURES["delete_operator"] = {
        "operator_ready_seconds": operator_back,
        **{k: result[k] for k in ("requests", "non_2xx", "mixed", "cuts")},
    }
    assert result["mixed"] == 0
    assert result["non_2xx"] == 0, result["failures"]
