"""`make demo`: a whole difusor on this machine, on loopback, with no Docker.

    hack/demo.py up     control plane, operator, the example publication on host pods (real nginx,
                        agent and sshd per pod), two sample cuts uploaded over SFTP; prints where
                        everything is. Idempotent.
    hack/demo.py down   stops everything `up` started.

The host pods are the test harness of tests/hostpods.py, run by a background process of this
script (`serve`), which plays kubelet for the publication's pods until `down`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
# The demo's pods take 127.200.x.y, apart from the tests' 127.1.x.y: `make test` run while the
# demo is up found the demo's nginx and sshd on its first host pods' addresses and ports.
os.environ.setdefault("DIFUSOR_HOSTPOD_NET", "200")

from tests.archives import make_zip, site_files  # noqa: E402
from tests.conftest import install_crds, kubectl  # noqa: E402
from tests.hostpods import host_public_key, served_cut, sftp_put  # noqa: E402

CACHE = Path(os.environ.get("DIFUSOR_CACHE", str(Path.home() / ".cache" / "difusor")))
STATE = CACHE / "demo"
CLUSTER = "difusor"
NAMESPACE = "difusor"
PUBLICATION = "prep-minimal"
CUTS = ("20240602_2000", "20240602_2020")
#: The pods' directories: outside /root, which the unprivileged sshd of each pod cannot enter.
PODS = Path("/tmp/difusor-demo-pods")


def say(message: str) -> None:
    print(f"demo: {message}", file=sys.stderr, flush=True)


def alive(pid_file: Path) -> bool:
    try:
        os.kill(int(pid_file.read_text()), 0)
    except (FileNotFoundError, ValueError, ProcessLookupError):
        return False
    return True


def spawn(name: str, argv: list[str], env: dict[str, str]) -> None:
    pid_file = STATE / f"{name}.pid"
    if alive(pid_file):
        say(f"{name} already running (pid {pid_file.read_text()})")
        return
    log = (STATE / f"{name}.log").open("ab")
    proc = subprocess.Popen(
        argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    pid_file.write_text(str(proc.pid))
    say(f"{name} started (pid {proc.pid}, log {STATE / f'{name}.log'})")


def serve() -> int:
    """Background process: play kubelet for the publication's pods until SIGTERM."""
    from tests.hostpods import Harness

    kubeconfig = os.environ["KUBECONFIG"]
    harness = Harness(kubeconfig, namespace=NAMESPACE, root=PODS)
    harness.start()
    stopping = {"now": False}
    signal.signal(signal.SIGTERM, lambda *_: stopping.update(now=True))
    try:
        while not stopping["now"]:
            pods = [{"name": p.name, "ip": p.ip, "ready": p.ready} for p in harness.running()]
            state = {"node": harness.node, "sftp_user": harness.sftp_user, "pods": pods}
            (STATE / "pods.json").write_text(json.dumps(state))
            time.sleep(1)
    finally:
        harness.stop()
    return 0


def up() -> int:
    STATE.mkdir(parents=True, exist_ok=True)
    kubeconfig = subprocess.run(
        ["bash", str(REPO / "hack" / "cluster.sh"), "up", CLUSTER],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    env = {**os.environ, "KUBECONFIG": kubeconfig, "DIFUSOR_KUBECONFIG": kubeconfig}
    install_crds(kubeconfig)
    kubectl(kubeconfig, "create", "namespace", NAMESPACE, check=False)
    key = STATE / "uploader"
    if not key.exists():
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "difusor-demo", "-f", str(key)],
            check=True,
        )
    secret = kubectl(kubeconfig, "-n", NAMESPACE, "create", "secret", "generic", "iem-keys",
                     f"--from-file=authorized_keys={key}.pub", "--dry-run=client", "-o", "yaml")  # fmt: skip
    kubectl(kubeconfig, "apply", "-f", "-", stdin=secret)
    python = str(REPO / ".venv" / "bin" / "python")
    spawn("operator", [python, "-m", "difusor", "operator", "--liveness", ""], env)
    spawn("hostpods", [python, str(Path(__file__).resolve()), "serve"], env)
    publication = yaml.safe_load((REPO / "manifests" / "examples" / "minimal.yaml").read_text())
    publication["spec"]["scheduling"] = {
        "nodeSelector": {"difusor.io/host-pods": f"host-{NAMESPACE}"}
    }
    kubectl(kubeconfig, "apply", "-f", "-", stdin=yaml.safe_dump(publication))
    say("waiting for 3 host pods (nginx, agent and sshd each)")
    pods = wait_pods(3)
    public = host_public_key(kubeconfig, namespace=NAMESPACE, publication=PUBLICATION)
    known_hosts = STATE / "known_hosts"
    known_hosts.write_text("".join(f"[{p['ip']}]:2222 {public}\n" for p in pods))
    user = json.loads((STATE / "pods.json").read_text())["sftp_user"]
    for n, cut in enumerate(CUTS):
        if served_cut(pods[0]["ip"]) and served_cut(pods[0]["ip"]) >= cut:
            continue
        archive = make_zip(STATE / f"{cut}_PREP_MICH.zip", site_files(cut=cut, actas=500, seed=n))
        target = pods[n % len(pods)]
        say(f"uploading {archive.name} over SFTP to {target['name']} ({target['ip']}:2222)")
        upload(archive, user=user, ip=target["ip"], key=key, known_hosts=known_hosts)
        deadline = time.monotonic() + 120
        while not all(served_cut(p["ip"]) == cut for p in pods) and time.monotonic() < deadline:
            time.sleep(0.5)
    kubectl(
        kubeconfig,
        "-n",
        NAMESPACE,
        "wait",
        "--for=condition=Ready",
        f"prep/{PUBLICATION}",
        "--timeout=60s",
        check=False,
    )
    print()
    print(kubectl(kubeconfig, "-n", NAMESPACE, "get", "prep,prepcuts"))
    print("Each web pod serves the active cut (real nginx on its own loopback address):")
    for pod in pods:
        print(
            f"  {pod['name']}: http://{pod['ip']}:8080/json/main.json   (cut {served_cut(pod['ip'])})"
        )
    print(
        f"SFTP (the institute's endpoint, same host key on every pod): {user}@{pods[0]['ip']} port 2222"
    )
    print(f"  sftp -P 2222 -i {key} -o UserKnownHostsFile={known_hosts} {user}@{pods[0]['ip']}")
    # The pinned kubectl lives in the cache, which is not on a user's PATH outside `make`.
    print(
        f"  export KUBECONFIG={kubeconfig} PATH={CACHE / 'bin'}:$PATH; kubectl -n {NAMESPACE} get prep,cuts,pods"
    )
    print(
        f"Logs: {STATE}/operator.log, {PODS}/pods/*/{{nginx,agent,sftp}}.log.  Stop: make demo-down"
    )
    return 0


def upload(archive: Path, *, user: str, ip: str, key: Path, known_hosts: Path) -> None:
    """Upload over SFTP, retrying while the pod's sshd is still starting."""
    for _ in range(60):
        proc = sftp_put(archive, user=user, ip=ip, key=key, known_hosts=known_hosts)
        if proc.returncode == 0:
            return
        time.sleep(1)
    raise SystemExit(f"demo: sftp failed: {proc.stderr}")


def wait_pods(count: int) -> list[dict[str, str]]:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            pods = json.loads((STATE / "pods.json").read_text())["pods"]
        except (FileNotFoundError, ValueError):
            pods = []
        # Not Ready yet: a pod is Ready only once it serves a cut, and none has arrived.
        if len(pods) == count:
            return sorted(pods, key=lambda p: p["name"])
        if not alive(STATE / "hostpods.pid"):
            break
        time.sleep(1)
    raise SystemExit(f"demo: the host pods did not start; see {STATE}/hostpods.log")


def down() -> int:
    for name in ("hostpods", "operator"):
        pid_file = STATE / f"{name}.pid"
        if alive(pid_file):
            pid = int(pid_file.read_text())
            os.kill(pid, signal.SIGTERM)
            for _ in range(100):
                if not alive(pid_file):
                    break
                time.sleep(0.2)
            say(f"{name} stopped")
        pid_file.unlink(missing_ok=True)
    subprocess.run(["bash", str(REPO / "hack" / "cluster.sh"), "down", CLUSTER], check=False)
    (STATE / "pods.json").unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    command = sys.argv[1] if len(sys.argv) > 1 else "up"
    sys.exit({"up": up, "down": down, "serve": serve}[command]())
