"""Host pods: a stand-in kubelet that runs a publication's web pods as real processes on loopback.

It registers a Node of its own (kwok leaves it alone: it has no kwok annotation), keeps it Ready,
binds the pods' content claims to directories, and for every pod the scheduler puts on it:
gives the pod its own loopback address as pod IP, lays out its volumes (ConfigMap, Secrets, the
content volume, an emptyDir for /tmp) as directories, rewrites the mount paths in the rendered
nginx.conf and sshd_config to those directories, and starts the real nginx, `difusor agent`
(with a token of the pod's ServiceAccount, so its RBAC is the real one) and sshd. It writes
readiness into the pod's status from the real probes, restarts a process that dies, and kills
the processes when the pod is deleted. Traffic only ever goes to 127.0.0.0/8.

Probes run as a kubelet runs them: a container is probed on every turn of the loop until it
first passes (the kubelet's startup probe, and its immediate readiness probe once started),
then every `periodSeconds` of its readinessProbe, with its `timeoutSeconds`, and it leaves the
endpoints only after `failureThreshold` failures in a row. Probing every pod five times a
second, as the harness once did, made each pod's sshd fork a session for every probe: 0.4 of
this machine's two cores at 10 idle pods, 0.7 at 30, taken from the pods the benches time.
Like a kubelet, it learns of its pods and of the claims to bind from watches (`_Informer`), not
by listing them on every turn.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import logging
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes import watch as k8s_watch

from difusor.agent.sftpserver import prepare_host_keys
from difusor.render.files import SSHD_RUNTIME_DIR

from .conftest import kubectl, require_binary, token_kubeconfig, wait_for
from .sshdproc import _run_as

log = logging.getLogger("hostpods")

NODE_LABEL = "difusor.io/host-pods"
HTTP_PORT, AGENT_PORT, SFTP_PORT = 8080, 8081, 2222
_next_octet = iter(range(1, 250))
#: Second octet of the host pods' addresses (127.<net>.<harness>.<pod>): runs that share a machine
#: (several checkouts testing at once) set DIFUSOR_HOSTPOD_NET apart so their pods never collide.
_NET = int(os.environ.get("DIFUSOR_HOSTPOD_NET", "1"))


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Proc:
    """One container's process."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log: Path
    popen: subprocess.Popen[bytes] | None = None
    restarts: int = 0

    def start(self) -> None:
        out = self.log.open("ab")
        self.popen = subprocess.Popen(
            self.argv, env=self.env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
        out.close()

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def stop(self, *, grace: float = 5.0) -> None:
        if self.popen is None or self.popen.poll() is not None:
            return
        os.killpg(self.popen.pid, signal.SIGTERM)
        try:
            self.popen.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(timeout=30)

    def kill(self) -> None:
        """SIGKILL the whole process group, as an OOM kill or a node failure would."""
        if self.popen is not None and self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(timeout=30)


@dataclass
class HostPod:
    """A pod the harness runs."""

    name: str
    uid: str
    ip: str
    directory: Path
    content: Path
    procs: dict[str, Proc] = field(default_factory=dict)
    ready: bool | None = None
    started_at: str = field(default_factory=_now)
    #: Each container's last probe: (passed, time.monotonic() of the probe).
    probed: dict[str, tuple[bool, float]] = field(default_factory=dict)
    #: Containers that have passed a probe since they (re)started, with the probes they have
    #: failed in a row since their last success.
    failures: dict[str, int] = field(default_factory=dict)
    #: Probes of started containers that failed, in all (what a bench may report).
    failed_probes: int = 0

    def url(self, path: str = "/") -> str:
        """The pod's nginx, as a reader would reach it."""
        return f"http://{self.ip}:{HTTP_PORT}{path}"


class _Informer:
    """The objects one list call returns, kept current by a watch from the list's
    resourceVersion (listed again when the watch ends or fails); `changed` is set on each event."""

    def __init__(
        self, what: str, list_call: Callable[..., Any], stop: threading.Event, **selector: str
    ) -> None:
        self.what = what
        self.list_call = list_call
        self.selector = selector
        self.stop = stop
        self.changed = threading.Event()
        self.synced = threading.Event()
        self._objects: dict[str, Any] = {}
        self._lock = threading.Lock()
        self.thread = threading.Thread(target=self._run, name=f"informer-{what}", daemon=True)

    def items(self) -> list[Any]:
        with self._lock:
            return list(self._objects.values())

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                listed = self.list_call(**self.selector)
                with self._lock:
                    self._objects = {o.metadata.uid: o for o in listed.items}
                self.synced.set()
                self.changed.set()
                # A short watch: it ends by itself, so the harness stops within seconds.
                stream = k8s_watch.Watch().stream(
                    self.list_call, resource_version=listed.metadata.resource_version,
                    timeout_seconds=5, **self.selector,
                )  # fmt: skip
                for event in stream:
                    obj = event["object"]
                    with self._lock:
                        if event["type"] == "DELETED":
                            self._objects.pop(obj.metadata.uid, None)
                        else:
                            self._objects[obj.metadata.uid] = obj
                    self.changed.set()
                    if self.stop.is_set():
                        break
            except Exception:  # a 410 or a dropped connection: list again
                log.debug("%s watch ended", self.what, exc_info=True)
                self.stop.wait(0.2)


class Harness:
    """Plays kubelet for the pods scheduled onto its node."""

    def __init__(
        self,
        kubeconfig: str,
        *,
        namespace: str,
        root: Path | None = None,
        volume_size: str | None = None,
    ) -> None:
        """`volume_size` ("16m") makes every content volume a tmpfs of that size (a small disk)."""
        self.kubeconfig = kubeconfig
        self.volume_size = volume_size
        self.mounts: list[Path] = []
        self.namespace = namespace
        self.api = k8s_config.new_client_from_config(config_file=kubeconfig)
        self.core = k8s.CoreV1Api(self.api)
        self.node = f"host-{namespace}"
        self.root = root or Path(tempfile.mkdtemp(prefix="difusor-hostpods-"))
        self.root.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o755)
        self.octet = next(_next_octet)
        self.next_ip = iter(range(2, 250))
        self.pods: dict[str, HostPod] = {}
        self.ips: dict[str, str] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.errors: list[str] = []
        self.nginx = require_binary("nginx")
        self.sshd = require_binary("sshd")
        self.sftp_user, self.sftp_prefix = _run_as()
        self._pods = _Informer(
            "pods", self.core.list_namespaced_pod, self._stop,
            namespace=namespace, field_selector=f"spec.nodeName={self.node}",
        )  # fmt: skip
        self._claims = _Informer(
            "claims", self.core.list_namespaced_persistent_volume_claim, self._stop,
            namespace=namespace,
        )  # fmt: skip

    # --- lifecycle ------------------------------------------------------------------------

    @property
    def node_selector(self) -> dict[str, str]:
        """What a publication's spec.scheduling.nodeSelector needs to land on this node."""
        return {NODE_LABEL: self.node}

    def start(self) -> None:
        """Register the node and start playing kubelet."""
        node = k8s.V1Node(
            metadata=k8s.V1ObjectMeta(
                name=self.node,
                labels={
                    NODE_LABEL: self.node,
                    "kubernetes.io/hostname": self.node,
                    "kubernetes.io/os": "linux",
                },
            )
        )
        try:
            self.core.create_node(node)
        except k8s.ApiException as exc:
            if exc.status != 409:
                raise
        self._heartbeat()
        for informer in (self._pods, self._claims):
            informer.thread.start()
        self._thread = threading.Thread(
            target=self._loop, name=f"hostpods-{self.namespace}", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Kill every pod's processes and remove the node."""
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=30)
        # The informers' watches end within seconds by themselves; nothing waits on them.
        with self._lock:
            for pod in self.pods.values():
                for proc in pod.procs.values():
                    proc.stop(grace=2)
            self.pods.clear()
        for mount in self.mounts:
            subprocess.run(["umount", "-l", str(mount)], check=False, capture_output=True)
        with contextlib.suppress(k8s.ApiException):
            self.core.delete_node(self.node)
        self.api.close()
        if os.environ.get("DIFUSOR_KEEP_HOSTPODS"):
            # Each pod's process logs and volumes, for reading a benchmark's run afterwards.
            log.info("kept the host pods' directories in %s", self.root)
        else:
            shutil.rmtree(self.root, ignore_errors=True)

    def pod(self, name: str) -> HostPod:
        """A running pod by name (fails when the harness does not run it)."""
        with self._lock:
            for pod in self.pods.values():
                if pod.name == name:
                    return pod
        raise KeyError(f"pod {name} is not running on {self.node}")

    def running(self) -> list[HostPod]:
        """The pods running now, by name."""
        with self._lock:
            return sorted(self.pods.values(), key=lambda p: p.name)

    def listening(self, count: int = 3, *, timeout: float = 180) -> list[HostPod]:
        """Wait until `count` pods run and each one's nginx, agent and sshd take connections.

        A pod is running once its processes are started, a moment before they listen; and
        without a cut it is (rightly) not Ready, so readiness cannot be waited for instead.
        """

        def listening() -> list[HostPod] | None:
            pods = self.running()
            ports = (HTTP_PORT, AGENT_PORT, SFTP_PORT)
            ok = len(pods) == count and all(_tcp_ok(p.ip, port) for p in pods for port in ports)
            return pods if ok else None

        found: list[HostPod] = wait_for(f"{count} host pods listening", listening, timeout=timeout)
        return found

    # --- the loop -------------------------------------------------------------------------

    def _loop(self) -> None:
        last_beat = time.monotonic()
        while not self._stop.is_set():
            try:
                if time.monotonic() - last_beat > 10:
                    self._heartbeat()
                    last_beat = time.monotonic()
                if self._claims.changed.is_set():
                    self._claims.changed.clear()
                    self._bind_claims()
                if self._pods.synced.is_set():
                    self._pods.changed.clear()
                    self._sync()
            except Exception as exc:  # keep playing kubelet; the tests read self.errors
                log.exception("host-pod loop failed")
                self.errors.append(repr(exc))
            # A turn every 0.2 s (restarts, probes that are due), at once on a pod's event.
            self._pods.changed.wait(0.2)

    def _heartbeat(self) -> None:
        status = {
            "status": {
                "capacity": {"cpu": "32", "memory": "64Gi", "pods": "110"},
                "allocatable": {"cpu": "32", "memory": "64Gi", "pods": "110"},
                "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}],
                "conditions": [
                    {
                        "type": "Ready",
                        "status": "True",
                        "reason": "KubeletReady",
                        "message": "difusor host-pod harness",
                        "lastHeartbeatTime": _now(),
                        "lastTransitionTime": _now(),
                    }
                ],
            }
        }
        self.core.patch_node_status(self.node, status)

    def _bind_claims(self) -> None:
        for claim in self._claims.items():
            if claim.status.phase != "Pending":
                continue
            directory = self.root / "volumes" / claim.metadata.name
            directory.mkdir(parents=True, exist_ok=True)
            if self.volume_size and directory not in self.mounts:
                subprocess.run(
                    ["mount", "-t", "tmpfs", "-o", f"size={self.volume_size}", "tmpfs", str(directory)],
                    check=True, capture_output=True,
                )  # fmt: skip
                self.mounts.append(directory)
            directory.chmod(0o755)
            pv = {
                "apiVersion": "v1",
                "kind": "PersistentVolume",
                "metadata": {
                    "name": f"{self.namespace}-{claim.metadata.name}",
                    "labels": {NODE_LABEL: self.node},
                },
                "spec": {
                    "capacity": {"storage": claim.spec.resources.requests["storage"]},
                    "accessModes": ["ReadWriteOnce"],
                    "persistentVolumeReclaimPolicy": "Retain",
                    "storageClassName": claim.spec.storage_class_name or "",
                    "hostPath": {"path": str(directory)},
                    "claimRef": {"namespace": self.namespace, "name": claim.metadata.name},
                },
            }
            try:
                self.core.create_persistent_volume(pv)
            except k8s.ApiException as exc:
                if exc.status != 409:
                    raise

    def _sync(self) -> None:
        pods = self._pods.items()
        seen = set()
        for pod in pods:
            uid = pod.metadata.uid
            seen.add(uid)
            if pod.metadata.deletion_timestamp is not None:
                self._terminate(uid)
                try:
                    self.core.delete_namespaced_pod(
                        pod.metadata.name, self.namespace, grace_period_seconds=0,
                        body=k8s.V1DeleteOptions(grace_period_seconds=0, preconditions=k8s.V1Preconditions(uid=uid)),
                    )  # fmt: skip
                except k8s.ApiException as exc:
                    if exc.status not in (404, 409):
                        raise
                continue
            with self._lock:
                running = self.pods.get(uid)
            if running is None:
                running = self._launch(pod)
                if running is None:
                    continue
            self._restart_dead(running)
            self._report(pod, running)
        for uid in [u for u in list(self.pods) if u not in seen]:
            self._terminate(uid)

    def _terminate(self, uid: str) -> None:
        with self._lock:
            pod = self.pods.pop(uid, None)
        if pod is not None:
            for proc in pod.procs.values():
                proc.stop()

    def _restart_dead(self, pod: HostPod) -> None:
        for proc in pod.procs.values():
            if not proc.alive():
                proc.restarts += 1
                proc.start()
                # A restarted container starts over, as after its startup probe.
                pod.failures.pop(proc.name, None)

    # --- starting a pod -------------------------------------------------------------------

    def _launch(self, pod: k8s.V1Pod) -> HostPod | None:
        name, uid = pod.metadata.name, pod.metadata.uid
        claim = next(
            (
                v.persistent_volume_claim.claim_name
                for v in pod.spec.volumes
                if v.persistent_volume_claim
            ),
            None,
        )
        content = self.root / "volumes" / claim if claim else None
        if content is None or not content.exists():
            return None
        claim_obj = self.core.read_namespaced_persistent_volume_claim(claim, self.namespace)
        if claim_obj.status.phase != "Bound":
            return None
        if uid not in self.ips:
            self.ips[uid] = f"127.{_NET}.{self.octet}.{next(self.next_ip)}"
        ip = self.ips[uid]
        directory = self.root / "pods" / f"{name}-{uid[:8]}"
        shutil.rmtree(directory, ignore_errors=True)
        host = HostPod(name=name, uid=uid, ip=ip, directory=directory, content=content)
        mounts = self._volumes(pod, host)
        # The pod IP goes into the status before the processes start: they read it.
        self.core.patch_namespaced_pod_status(
            name, self.namespace,
            {"status": {"phase": "Pending", "hostIP": "127.0.0.1", "podIP": ip, "podIPs": [{"ip": ip}], "startTime": host.started_at}},
        )  # fmt: skip
        for container in pod.spec.containers:
            host.procs[container.name] = self._process(pod, container, host, mounts)
        for proc in host.procs.values():
            proc.start()
        with self._lock:
            self.pods[uid] = host
        log.info("started pod %s on %s", name, ip)
        return host

    def _volumes(self, pod: k8s.V1Pod, host: HostPod) -> dict[str, Path]:
        """A directory per volume; returns volume name -> directory."""
        dirs: dict[str, Path] = {}
        host.directory.mkdir(parents=True)
        host.directory.chmod(0o755)
        for volume in pod.spec.volumes:
            target = host.directory / "volumes" / volume.name
            if volume.persistent_volume_claim:
                dirs[volume.name] = host.content
                continue
            target.mkdir(parents=True)
            target.chmod(0o755)
            dirs[volume.name] = target
            if volume.config_map:
                try:
                    cm = self.core.read_namespaced_config_map(
                        volume.config_map.name, self.namespace
                    )
                except k8s.ApiException as exc:
                    # As the kubelet does: an optional ConfigMap that is missing is an empty volume.
                    if exc.status != 404 or not volume.config_map.optional:
                        raise
                    continue
                for key, value in (cm.data or {}).items():
                    (target / key).write_text(value)
            elif volume.secret:
                secret = self.core.read_namespaced_secret(volume.secret.secret_name, self.namespace)
                # As the kubelet does with fsGroup: the pod's group may read the Secret's files.
                group = pwd.getpwnam(self.sftp_user).pw_gid
                for key, value in (secret.data or {}).items():
                    path = target / key
                    path.write_bytes(base64.b64decode(value))
                    os.chown(path, 0, group)
                    path.chmod(volume.secret.default_mode or 0o644)
        logs = host.content / "logs"
        logs.mkdir(exist_ok=True)
        incoming = host.content / "incoming"
        incoming.mkdir(exist_ok=True)
        uid = _uid(self.sftp_user)
        os.chown(incoming, uid, uid)
        return dirs

    def _mount_map(
        self, container: k8s.V1Container, dirs: dict[str, Path]
    ) -> list[tuple[str, str]]:
        pairs = []
        for mount in container.volume_mounts or []:
            base = dirs[mount.name]
            if mount.sub_path:
                base = base / mount.sub_path
                base.mkdir(parents=True, exist_ok=True)
            pairs.append((mount.mount_path.rstrip("/"), str(base)))
        return sorted(pairs, key=lambda p: -len(p[0]))

    def _rewrite(self, text: str, pairs: list[tuple[str, str]], ip: str) -> str:
        """The pod's mount paths as the host directories, in one pass (a result is never rewritten)."""
        table = dict(pairs)
        pattern = re.compile(
            r"(?<![\w./-])(" + "|".join(re.escape(p) for p, _ in pairs) + r")(?=[/;\s\"']|$)",
            re.MULTILINE,
        )
        text = pattern.sub(lambda m: table[m.group(1)], text) if pairs else text
        return text.replace("0.0.0.0", ip)

    def _process(
        self, pod: k8s.V1Pod, container: k8s.V1Container, host: HostPod, dirs: dict[str, Path]
    ) -> Proc:
        pairs = self._mount_map(container, dirs)
        config_dir = dirs["config"]
        logfile = host.directory / f"{container.name}.log"
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONUNBUFFERED": "1"}
        for var in container.env or []:
            if var.value_from and var.value_from.field_ref:
                path = var.value_from.field_ref.field_path
                env[var.name] = {
                    "metadata.name": host.name,
                    "metadata.namespace": self.namespace,
                    "status.podIP": host.ip,
                }[path]
            else:
                env[var.name] = self._rewrite(var.value or "", pairs, host.ip)
        if container.name == "nginx":
            conf = host.directory / "nginx.conf"
            conf.write_text(self._rewrite((config_dir / "nginx.conf").read_text(), pairs, host.ip))
            return Proc(
                "nginx",
                [self.nginx, "-e", "stderr", "-c", str(conf), "-g", "daemon off;"],
                env,
                logfile,
            )
        if container.name == "agent":
            kubeconfig = self._agent_kubeconfig(pod, host)
            env.update(
                {
                    "DIFUSOR_AGENT_ADDRESS": host.ip,
                    "DIFUSOR_AGENT_TOKEN_FILE": str(dirs["agent-token"] / "token"),
                    "DIFUSOR_KUBECONFIG": kubeconfig,
                }
            )
            return Proc("agent", [sys.executable, "-m", "difusor", "agent"], env, logfile)
        if container.name == "sftp":
            tmp = dirs["tmp"]
            runtime = Path(self._rewrite(SSHD_RUNTIME_DIR, pairs, host.ip))
            prepare_host_keys(dirs["host-keys"], runtime)
            uid = _uid(self.sftp_user)
            for path in (tmp, runtime, *runtime.iterdir()):
                os.chown(path, uid, uid)
            text = self._rewrite((config_dir / "sshd_config").read_text(), pairs, host.ip)
            text = "\n".join(
                f"AllowUsers {self.sftp_user}" if line.startswith("AllowUsers ") else line
                for line in text.splitlines()
            ) + "\n"  # fmt: skip
            conf = host.directory / "sshd_config"
            conf.write_text(text)
            return Proc(
                "sftp", [*self.sftp_prefix, self.sshd, "-D", "-e", "-f", str(conf)], env, logfile
            )
        raise ValueError(f"no host process for container {container.name}")

    def _agent_kubeconfig(self, pod: k8s.V1Pod, host: HostPod) -> str:
        request = k8s.AuthenticationV1TokenRequest(
            spec=k8s.V1TokenRequestSpec(
                audiences=[],
                expiration_seconds=7200,
                bound_object_ref=k8s.V1BoundObjectReference(
                    kind="Pod", api_version="v1", name=host.name, uid=host.uid
                ),
            )
        )
        token = self.core.create_namespaced_service_account_token(
            pod.spec.service_account_name, self.namespace, request
        ).status.token
        return token_kubeconfig(
            self.kubeconfig, token=token, path=host.directory / "agent.kubeconfig"
        )

    # --- status ---------------------------------------------------------------------------

    def _report(self, pod: k8s.V1Pod, host: HostPod) -> None:
        probes = {c.name: c.readiness_probe for c in pod.spec.containers}
        ready = {name: _probe(host, name, probes.get(name)) for name in _PROBES}
        all_ready = all(ready.values())
        if host.ready == all_ready and pod.status.phase == "Running":
            return
        flag = "True" if all_ready else "False"
        status = {
            "phase": "Running",
            "hostIP": "127.0.0.1",
            "podIP": host.ip,
            "podIPs": [{"ip": host.ip}],
            "startTime": host.started_at,
            "conditions": [
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": host.started_at},
                {"type": "Initialized", "status": "True", "lastTransitionTime": host.started_at},
                {"type": "ContainersReady", "status": flag, "lastTransitionTime": _now()},
                {"type": "Ready", "status": flag, "lastTransitionTime": _now()},
            ],
            "containerStatuses": [
                {
                    "name": name,
                    "ready": ok,
                    "started": True,
                    "restartCount": host.procs[name].restarts,
                    "image": next(c.image for c in pod.spec.containers if c.name == name),
                    "imageID": "",
                    "state": {"running": {"startedAt": host.started_at}},
                }
                for name, ok in ready.items()
            ],
        }
        self.core.patch_namespaced_pod_status(pod.metadata.name, self.namespace, {"status": status})
        host.ready = all_ready


#: What each container's readinessProbe asks, by container (the rendered pod's probes), with
#: the probe's timeout in seconds.
_PROBES: dict[str, Callable[[str, float], bool]] = {
    "nginx": lambda ip, timeout: _http_ok(ip, HTTP_PORT, "/readyz", timeout),
    "agent": lambda ip, timeout: _http_ok(ip, AGENT_PORT, "/readyz", timeout),
    "sftp": lambda ip, timeout: _tcp_ok(ip, SFTP_PORT, timeout),
}


def _probe(host: HostPod, name: str, spec: k8s.V1Probe | None) -> bool:
    """One container's readiness now, as a kubelet has it: probed on every turn until it first
    passes, then every `periodSeconds`, each probe given `timeoutSeconds`; once it has passed,
    it is unready only after `failureThreshold` failures in a row (the Kubernetes defaults,
    10 s, 1 s and 3, where the spec gives none)."""
    period = (spec.period_seconds if spec else None) or 10
    timeout = (spec.timeout_seconds if spec else None) or 1
    threshold = (spec.failure_threshold if spec else None) or 3
    last = host.probed.get(name)
    now = time.monotonic()
    if last is not None and name in host.failures and now - last[1] < period:
        return last[0]
    ready = _PROBES[name](host.ip, timeout)
    if ready:
        host.failures[name] = 0
    elif name in host.failures:
        host.failed_probes += 1
        host.failures[name] += 1
        ready = host.failures[name] < threshold
    host.probed[name] = (ready, now)
    return ready


def _uid(user: str) -> int:
    return pwd.getpwnam(user).pw_uid


def _http_ok(ip: str, port: int, path: str, timeout: float = 1) -> bool:
    try:
        conn = http.client.HTTPConnection(ip, port, timeout=timeout)
        conn.request("GET", path)
        resp = conn.getresponse()
        resp.read()
        conn.close()
        return resp.status == 200
    except OSError:
        return False


def _tcp_ok(ip: str, port: int, timeout: float = 1) -> bool:
    with socket.socket() as sock:
        sock.settimeout(timeout)
        return sock.connect_ex((ip, port)) == 0


def dump_logs(harness: Harness) -> str:
    """Every process log of every pod, for a failing test's report."""
    out = []
    for pod in harness.running():
        for proc in pod.procs.values():
            text = proc.log.read_text(errors="replace") if proc.log.exists() else ""
            # nginx logs each request for a missing `current` at crit: noise before the first cut.
            lines = [line for line in text.splitlines() if "realpath()" not in line]
            out.append(f"==== {pod.name} {proc.name} ({pod.ip})\n" + "\n".join(lines[-60:]))
    return "\n".join(out)


#: What every e2e publication on host pods has unless its test says otherwise: three pods, the
#: uploader's key in Secret iem-keys, and limits far over what one loopback reader sends.
BASE_SPEC: dict[str, object] = {
    "host": "prep.example.mx",
    "replicas": 3,
    "sftp": {"authorizedKeysSecret": "iem-keys"},
    "promotion": {"stageTimeoutSeconds": 20, "minReadyReplicas": 2},
    "rateLimit": {"requestsPerSecond": 10000, "burst": 10000, "connections": 1000},
}


@dataclass
class Stage:
    """A namespace with the host-pod harness running, an uploader key and a publication."""

    kubeconfig: str
    namespace: str
    harness: Harness
    work: Path
    key: Path
    """The uploader's private key (its public half is in Secret iem-keys)."""


@contextlib.contextmanager
def hostpod_publication(
    kubeconfig: str,
    work: Path,
    *,
    prefix: str,
    name: str,
    spec: Mapping[str, object],
    objects: tuple[dict[str, object], ...] = (),
    volume_size: str | None = None,
) -> Iterator[Stage]:
    """A new namespace, host pods, the uploader's key and the publication `name` (BASE_SPEC with
    `spec`'s top-level fields over it), applied with `objects`; the pods' logs are printed and
    everything is stopped and deleted at the end."""
    namespace = f"{prefix}-{uuid.uuid4().hex[:6]}"
    kubectl(kubeconfig, "create", "namespace", namespace)
    harness = Harness(kubeconfig, namespace=namespace, volume_size=volume_size)
    harness.start()
    try:
        key = work / "uploader"
        subprocess.run(
            [require_binary("ssh-keygen"), "-q", "-t", "ed25519", "-N", "", "-f", str(key)],
            check=True,
        )
        kubectl(kubeconfig, "-n", namespace, "create", "secret", "generic", "iem-keys",
                f"--from-file=authorized_keys={key}.pub")  # fmt: skip
        publication = {
            "apiVersion": "prep.difusor.io/v1alpha1",
            "kind": "PrepPublication",
            "metadata": {"name": name},
            "spec": {
                **BASE_SPEC,
                "scheduling": {"nodeSelector": harness.node_selector},
                **spec,
            },
        }
        kubectl(kubeconfig, "-n", namespace, "apply", "-f", "-",
                stdin=yaml.safe_dump_all([*objects, publication]))  # fmt: skip
        yield Stage(kubeconfig, namespace, harness, work, key)
    finally:
        print(dump_logs(harness))
        if harness.errors:
            print("harness errors:", harness.errors[-5:])
        harness.stop()
        kubectl(kubeconfig, "delete", "namespace", namespace, "--wait=false", check=False)


def host_public_key(kubeconfig: str, *, namespace: str, publication: str) -> str:
    """The ed25519 public host key that every pod of the publication presents (waits for it)."""
    from .conftest import wait_for

    def read() -> str | None:
        out = kubectl(
            kubeconfig, "-n", namespace, "get", "secret", f"{publication}-sftp-host-keys", "-o", "json",
            check=False,
        )  # fmt: skip
        if not out.startswith("{"):
            return None
        return (
            base64.b64decode(json.loads(out)["data"]["ssh_host_ed25519_key.pub"]).decode().strip()
        )

    found: str = wait_for(f"the host keys of {publication}", read, timeout=120)
    return found


def served_cut(ip: str) -> str | None:
    """The X-Prep-Cut of a pod's /json/main.json, or None while it serves nothing."""
    try:
        conn = http.client.HTTPConnection(ip, HTTP_PORT, timeout=5)
        conn.request("GET", "/json/main.json")
        resp = conn.getresponse()
        resp.read()
        conn.close()
    except OSError:
        return None
    return resp.getheader("X-Prep-Cut") if resp.status == 200 else None


def sftp_put(
    archive: Path,
    *,
    user: str,
    ip: str,
    key: Path,
    known_hosts: Path,
    timeout: float = 600,
    mbps: int | None = None,
) -> subprocess.CompletedProcess[str]:
    """Upload as the institute's client does: to a temporary name, then rename (real sftp);
    at most `mbps` MB/s when given (`sftp -l`, as an uplink would hold it)."""
    temporary = f".{archive.name}.part"
    limit = ["-l", str(mbps * 8000)] if mbps else []  # sftp -l counts Kbit/s
    return subprocess.run(
        [
            require_binary("sftp"), "-b", "-", "-P", str(SFTP_PORT), "-F", "/dev/null", *limit,
            "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
            "-o", f"UserKnownHostsFile={known_hosts}", "-o", "IdentitiesOnly=yes",
            "-i", str(key), f"{user}@{ip}",
        ],
        input=f"put {archive} {temporary}\nrename {temporary} {archive.name}\n",
        capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip
