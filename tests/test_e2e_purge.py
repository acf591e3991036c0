"""End to end: the operator purges a real Varnish in front of host pods after every promotion."""

from __future__ import annotations

import contextlib
import http.client
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from difusor.models import PrepPublicationSpec

from .archives import make_zip, site_files
from .cdnservers import CF_TOKEN, HOST, ZONE, Fake, serving_in_thread
from .conftest import OperatorProcess, kubectl, wait_for
from .hostpods import (
    Harness,
    HostPod,
    dump_logs,
    host_public_key,
    hostpod_publication,
    served_cut,
    sftp_put,
)
from .nginxproc import make_spec
from .varnishproc import Varnish, running_varnish

pytestmark = pytest.mark.e2e

PUB = "prep-cdn"
CUT1, CUT2, CUT3 = "20240602_2020", "20240602_2040", "20240602_2100"
CUT4, CUT5 = "20240602_2120", "20240602_2140"
PATHS = ["/", "/index.html", "/json/main.json", "/json/distritos/01.json",
         "/json/distritos/04.json", "/datos/20240602_PREP_GUB_MICH.csv"]  # fmt: skip
OUTSIDER = "127.0.0.77"


@dataclass
class Setup:
    kubeconfig: str
    namespace: str
    harness: Harness
    work: Path
    key: Path
    known_hosts: Path
    host_public: str
    varnish: Varnish | None = None
    stack: contextlib.ExitStack | None = None

    def get(self, kind: str, name: str) -> dict[str, Any]:
        out = kubectl(self.kubeconfig, "-n", self.namespace, "get", kind, name, "-o", "json")
        return dict(json.loads(out))

    def cut(self, cut_id: str) -> dict[str, Any]:
        return self.get("prepcut", f"{PUB}-{cut_id.replace('_', '-')}")

    def upload(self, cut_id: str, *, seed: int, pod: HostPod) -> None:
        archive = make_zip(self.work / f"{cut_id}_PREP_MICH.zip",
                           site_files(cut=cut_id, actas=200, seed=seed))  # fmt: skip
        self.known_hosts.write_text(
            "".join(f"[{p.ip}]:2222 {self.host_public}\n" for p in self.harness.running())
        )
        proc = sftp_put(archive, user=self.harness.sftp_user, ip=pod.ip, key=self.key,
                        known_hosts=self.known_hosts, timeout=300)  # fmt: skip
        assert proc.returncode == 0, proc.stderr

    def start_varnish(self, port: int | None = None) -> Varnish:
        assert self.stack is not None
        backends = [(p.ip, 8080) for p in self.harness.running()]
        self.varnish = self.stack.enter_context(
            running_varnish(_spec(), workdir=self.work / "varnish", backends=backends, port=port)
        )
        return self.varnish


def _spec() -> PrepPublicationSpec:
    return make_spec()


def purged(setup: Setup, cut_id: str) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        cut = setup.cut(cut_id)
        status = cut.get("status") or {}
        done = status.get("phase") == "Promoted" and (status.get("purge") or {}).get("outcome")
        return cut if done == "Succeeded" else None

    try:
        found: dict[str, Any] = wait_for(f"cut {cut_id} promoted and purged", check, timeout=180)
    except AssertionError:
        print(dump_logs(setup.harness))
        raise
    return found


@pytest.fixture(scope="module")
def setup(
    operator: OperatorProcess, kubeconfig: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Setup]:
    with (
        hostpod_publication(
            kubeconfig, tmp_path_factory.mktemp("purge"), prefix="cdn", name=PUB, spec={}
        ) as stage,
        contextlib.ExitStack() as stack,
    ):
        harness, namespace, work = stage.harness, stage.namespace, stage.work
        public = host_public_key(kubeconfig, namespace=namespace, publication=PUB)
        setup = Setup(kubeconfig, namespace, harness, work, stage.key, work / "known_hosts", public)
        setup.stack = stack
        try:
            harness.listening(3)
            varnish = setup.start_varnish()
            cdn = {"provider": "varnish", "endpoint": varnish.endpoint, "purgers": ["127.0.0.1/32"]}
            kubectl(kubeconfig, "-n", namespace, "patch", "prep", PUB, "--type=merge",
                    "-p", json.dumps({"spec": {"cdn": cdn}}))  # fmt: skip
            yield setup
        finally:
            print(operator.log()[-6000:])


def through_varnish(
    setup: Setup, path: str, *, source: str | None = None
) -> tuple[str, str, bytes]:
    assert setup.varnish is not None
    status, headers, body = setup.varnish.request(path, source=source)
    assert status == 200, (path, status, body[:200])
    return headers["x-prep-cut"], headers["x-cache"], body


def test_the_first_cut_is_purged_everywhere_once_every_pod_serves_it(setup: Setup) -> None:
    pods = setup.harness.running()
    setup.upload(CUT1, seed=1, pod=pods[0])
    cut = purged(setup, CUT1)
    purge = cut["status"]["purge"]
    assert purge["provider"] == "varnish"
    assert purge["requestId"]
    assert purge["items"] == 1  # nothing purged before: everything
    assert purge["requestedAt"] >= cut["status"]["servingAt"]
    assert purge["completedAt"] >= purge["requestedAt"]
    assert all(served_cut(p.ip) == CUT1 for p in pods)
    publication = setup.get("prep", PUB)
    assert publication["status"]["purge"]["purgedCut"] == CUT1
    events = kubectl(setup.kubeconfig, "-n", setup.namespace, "get", "events")
    assert "Purged" in events
    table = kubectl(setup.kubeconfig, "-n", setup.namespace, "get", "cuts")
    assert "PURGE" in table
    assert "Succeeded" in table


def test_after_the_next_promotion_readers_through_varnish_see_the_new_cut(setup: Setup) -> None:
    for path in PATHS:
        through_varnish(setup, path)
    assert through_varnish(setup, "/json/distritos/01.json")[:2] == (CUT1, "HIT")
    pods = setup.harness.running()
    setup.upload(CUT2, seed=2, pod=pods[1])
    cut = purged(setup, CUT2)
    assert "changed files" in cut["status"]["purge"]["plan"]
    for path in PATHS:
        cut_id, _, body = through_varnish(setup, path)
        assert cut_id == CUT2, path
        # What Varnish gives is what a pod serves now.
        conn = http.client.HTTPConnection(pods[2].ip, 8080, timeout=10)
        conn.request("GET", path)
        direct = conn.getresponse().read()
        conn.close()
        assert body == direct, path


def test_a_purge_from_outside_the_operators_addresses_is_refused(setup: Setup) -> None:
    assert setup.varnish is not None
    through_varnish(setup, "/index.html")
    status, _, _ = setup.varnish.request("/index.html", method="PURGE", source=OUTSIDER)
    assert status == 405
    assert through_varnish(setup, "/index.html", source=OUTSIDER)[1] == "HIT"


def test_an_operator_restart_sends_no_second_purge_for_a_purged_cut(
    setup: Setup, operator: OperatorProcess
) -> None:
    before = setup.cut(CUT2)["status"]["purge"]
    operator.kill()
    operator.start()
    # The restarted operator resumes every publication and takes a promotion step on each.
    time.sleep(10)
    assert setup.cut(CUT2)["status"]["purge"] == before


def test_a_failed_purge_marks_the_publication_degraded_and_is_retried_without_rollback(
    setup: Setup,
) -> None:
    assert setup.varnish is not None
    port = setup.varnish.port
    setup.varnish.stop()
    pods = setup.harness.running()
    setup.upload(CUT3, seed=3, pod=pods[2])

    def failed() -> dict[str, Any] | None:
        purge = (setup.cut(CUT3).get("status") or {}).get("purge") or {}
        return purge if purge.get("outcome") == "Failed" else None

    purge = wait_for("a failed purge", failed, timeout=180)
    assert purge["nextAttemptAt"]
    assert "Varnish" in purge["message"]
    publication = setup.get("prep", PUB)
    assert publication["status"]["activeCut"]["id"] == CUT3
    assert all(served_cut(p.ip) == CUT3 for p in pods)

    def degraded() -> bool:
        conditions = setup.get("prep", PUB)["status"].get("conditions") or []
        return any(
            c["type"] == "Degraded" and c["status"] == "True" and c["reason"] == "PurgeFailed"
            for c in conditions
        )

    wait_for("Degraded PurgeFailed", degraded, timeout=60)
    events = kubectl(setup.kubeconfig, "-n", setup.namespace, "get", "events")
    assert "PurgeFailed" in events
    setup.start_varnish(port=port)
    cut = purged(setup, CUT3)
    assert cut["status"]["purge"]["attempts"] >= 2
    wait_for("Degraded cleared", lambda: not degraded(), timeout=60)
    assert through_varnish(setup, "/json/main.json")[0] == CUT3


def test_a_cloud_provider_is_purged_with_the_secret_which_never_shows_in_status_or_events(
    setup: Setup, operator: OperatorProcess
) -> None:
    fake = Fake("cloudflare")
    wrong = CF_TOKEN[:-3] + "zzz"

    def secret(token: str) -> None:
        manifest = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "cf"},
                    "stringData": {"apiToken": token}}  # fmt: skip
        kubectl(setup.kubeconfig, "-n", setup.namespace, "apply", "-f", "-",
                stdin=yaml.safe_dump(manifest))  # fmt: skip

    def nowhere(*tokens: str) -> None:
        seen = "\n".join(
            kubectl(setup.kubeconfig, "-n", setup.namespace, "get", kind, "-o", "yaml")
            for kind in ("prepcuts", "prep", "events")
        )
        for token in tokens:
            assert token not in seen
            assert token not in operator.log()

    with serving_in_thread(fake):
        secret(CF_TOKEN)
        cdn = {"provider": "cloudflare", "credentialsSecret": "cf", "zone": ZONE,
               "endpoint": fake.url, "purgers": []}  # fmt: skip
        kubectl(setup.kubeconfig, "-n", setup.namespace, "patch", "prep", PUB, "--type=merge",
                "-p", json.dumps({"spec": {"cdn": cdn}}))  # fmt: skip
        setup.upload(CUT4, seed=4, pod=setup.harness.running()[0])
        cut = purged(setup, CUT4)
        files = [u for s in fake.accepted for u in s.json().get("files", [])]
        prefixes = [u for s in fake.accepted for u in s.json().get("prefixes", [])]
        # Every JSON file changed: the directory goes as one prefix (host/path, no scheme).
        assert f"{HOST}/json/" in prefixes
        assert f"https://{HOST}/index.html" in files
        assert cut["status"]["purge"]["requestId"]
        secret(wrong)
        setup.upload(CUT5, seed=5, pod=setup.harness.running()[1])

        def failed() -> dict[str, Any] | None:
            purge = (setup.cut(CUT5).get("status") or {}).get("purge") or {}
            return purge if purge.get("outcome") == "Failed" else None

        assert "403" in wait_for("a refused purge", failed, timeout=180)["message"]
        nowhere(CF_TOKEN, wrong)
        secret(CF_TOKEN)
        purged(setup, CUT5)
        nowhere(CF_TOKEN, wrong)
