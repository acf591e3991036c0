"""The operator's promotion step against the real API server: how many steps a promotion takes.

No operator process and no agents: the test plays the pod's agent (its annotations) and calls the
Promoter as kopf's handlers do, so it sees what one call does and which watch events start one.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import urllib3
import yaml

from difusor.agent.records import Records
from difusor.controller.promotion import STEP_STAMPS, Promoter, _phase_patch
from difusor.ingest.store import Quarantined, Stored
from difusor.kube import core_path, custom_path, patch_status, read, request
from difusor.logic.archive import Reason
from difusor.models import cut_object_name, parse_time
from difusor.render.labels import (
    ACTIVE_ANNOTATION,
    PUBLICATION_LABEL,
    STAGED_ANNOTATION,
    common_labels,
)

from .cdnservers import HMAC_KEY, Fake, serving_in_thread
from .conftest import kubectl

pytestmark = pytest.mark.cluster

PUB = "prep-steps"
CUT = "20240602_2020"
DIGEST = "sha256:" + "ab" * 32
POD = f"{PUB}-web-0"
POD_IP = "127.0.0.9"

Obj = dict[str, Any]


def _publication(kubeconfig: str, namespace: str, hook: str) -> None:
    """A publication whose CDN is a webhook (purging everything: no manifest to read)."""
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "hook"},
              "stringData": {"hmacKey": HMAC_KEY}}  # fmt: skip
    doc = {
        "apiVersion": "prep.difusor.io/v1alpha1",
        "kind": "PrepPublication",
        "metadata": {"name": PUB},
        "spec": {
            "host": "prep.example.mx",
            "sftp": {"authorizedKeysSecret": "k"},
            "cdn": {
                "provider": "webhook",
                "credentialsSecret": "hook",
                "endpoint": hook,
                "everything": True,
            },
        },
    }
    stream = "---\n".join(yaml.safe_dump(d) for d in (secret, doc))
    kubectl(kubeconfig, "-n", namespace, "apply", "-f", "-", stdin=stream)


def _pod(api: Any, namespace: str) -> None:
    """The publication's one web pod, bound to no node (nothing runs it), with an address and
    the cut staged: the pod that received the upload, as its agent reports it."""
    body = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": POD,
            "labels": common_labels(PUB),
            "annotations": {STAGED_ANNOTATION: CUT},
        },
        "spec": {"nodeName": "no-such-node", "containers": [{"name": "web", "image": "x"}]},
    }
    request(api, "POST", core_path(namespace, "pods"), body=body)
    request(
        api,
        "PATCH",
        core_path(namespace, "pods", POD) + "/status",
        body={"status": {"podIP": POD_IP, "podIPs": [{"ip": POD_IP}]}},
        content_type="application/merge-patch+json",
    )


def _verified_cut(api: Any, namespace: str) -> None:
    name = cut_object_name(PUB, CUT)
    body = {
        "apiVersion": "prep.difusor.io/v1alpha1",
        "kind": "PrepCut",
        "metadata": {"name": name, "labels": {PUBLICATION_LABEL: PUB}},
        "spec": {"publication": PUB, "id": CUT, "manifestDigest": DIGEST, "receivedBy": POD},
    }
    request(api, "POST", custom_path(namespace, "prepcuts"), body=body)
    patch_status(api, namespace, "prepcuts", name, {"phase": "Verified"})


def _state(api: Any, namespace: str) -> tuple[Obj, Obj]:
    publication = read(api, custom_path(namespace, "preppublications", PUB))
    cut = read(api, custom_path(namespace, "prepcuts", cut_object_name(PUB, CUT)))
    assert publication is not None
    assert cut is not None
    return publication, cut


def test_one_call_moves_a_promotion_as_far_as_it_can_and_its_own_writes_start_no_step(
    api: Any, crds: str, kubeconfig: str, namespace: str
) -> None:
    with serving_in_thread(Fake("webhook")) as hook:
        _publication(kubeconfig, namespace, hook.url + "/purge")
        _pod(api, namespace)
        _verified_cut(api, namespace)
        promoter = Promoter(api)
        # What kopf's watches deliver first (handlers.cut_changed, pod_reported): both are news.
        publication, cut = _state(api, namespace)
        pod = read(api, core_path(namespace, "pods", POD))
        assert pod is not None
        assert promoter.cuts.saw(cut)
        assert promoter.pods.saw(pod)

        promoter.step(namespace, PUB, datetime.now(UTC))
        # The only pod has the cut already: staged and committed in one decision.
        publication, cut = _state(api, namespace)
        rollout = publication["status"]["rollout"]
        assert (rollout["phase"], rollout["targetCut"]) == ("Committing", CUT)
        assert (rollout["manifestDigest"], rollout["receivedByIP"]) == (DIGEST, POD_IP)
        assert cut["status"]["phase"] == "Committed"
        assert cut["status"]["stagingAt"] == cut["status"]["committedAt"]
        # The pod's report goes with the phase, in the same write.
        assert cut["status"]["pods"][POD]["stagedAt"]
        # The watch event of that write is recognised as the operator's own: no step for it.
        assert promoter.wrote(cut)
        # An agent's write of the same cut just before is not, though the mirror holds newer.
        older = {**cut, "metadata": {**cut["metadata"], "resourceVersion": "1"}}
        assert not promoter.cuts.saw(older)
        assert not promoter.wrote(older)
        assert hook.accepted == []

        # The agent swaps and reports it: news. That step sends the purge (every pod serves the
        # cut) and records its outcome, which the next decision reads: the same call takes it,
        # since the watch event of the outcome starts no step.
        request(
            api,
            "PATCH",
            core_path(namespace, "pods", POD),
            body={"metadata": {"annotations": {ACTIVE_ANNOTATION: CUT}}},
            content_type="application/merge-patch+json",
        )
        pod = read(api, core_path(namespace, "pods", POD))
        assert pod is not None
        assert promoter.pods.saw(pod)
        promoter.step(namespace, PUB, datetime.now(UTC))
        publication, cut = _state(api, namespace)
        assert len(hook.accepted) == 1
        assert cut["status"]["purge"]["outcome"] == "Succeeded"
        assert publication["status"]["activeCut"]["id"] == CUT
        assert publication["status"]["rollout"]["phase"] == "Idle"
        assert cut["status"]["phase"] == "Promoted"
        assert cut["status"]["pods"][POD]["activeAt"]
        assert promoter.wrote(cut)
        # A step with nothing to decide writes nothing and sends nothing.
        version = cut["metadata"]["resourceVersion"]
        promoter.step(namespace, PUB, datetime.now(UTC))
        assert _state(api, namespace)[1]["metadata"]["resourceVersion"] == version
        assert len(hook.accepted) == 1


def test_a_cut_staged_again_keeps_its_first_times_in_order() -> None:
    """A commit restarted (its pods went) and, later, a rollback to the cut: each time is the
    first passage through its step, so the times stay in order and servingAt stays when the
    cut first went live."""
    times = iter(datetime(2024, 6, 3, 2, 40, s, tzinfo=UTC) for s in range(60))
    status: Obj = {"phase": "Verified", "verifiedAt": "2024-06-03T02:39:59.5Z"}
    for phase in ("Staging", "Committed", "Staging", "Committed", "Promoted", "Superseded",
                  "Staging", "Committed", "Promoted"):  # fmt: skip
        status.update(_phase_patch({"status": status}, phase, next(times)))
    stamps = [parse_time(status[k]) for k in ("verifiedAt", *STEP_STAMPS)]
    assert stamps == sorted(stamps), stamps
    assert [t.second for t in stamps[1:]] == [0, 1, 1, 4]
    # Staged and committed in one decision: one instant for the steps it passed at once.
    once = _phase_patch({"status": {"phase": "Verified"}}, "Committed", next(times))
    assert once["stagingAt"] == once["stagedAt"] == once["committedAt"]
    assert "servingAt" not in once


def _recording_pod(api: Any, kubeconfig: str, namespace: str) -> tuple[dict[str, Any], Records]:
    """The publication (its purge sent to a webhook) and the records its pod POD writes."""
    with serving_in_thread(Fake("webhook")) as hook:
        _publication(kubeconfig, namespace, hook.url + "/purge")
    publication = read(api, custom_path(namespace, "preppublications", PUB))
    assert publication is not None
    return publication, Records(api, namespace=namespace, pod=POD)


@contextmanager
def _status_unreachable(records: Records, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The API server gone between a record's create and its status write (urllib3 gives up)."""

    def unreachable(*_: Any) -> None:
        raise urllib3.exceptions.MaxRetryError(None, "/apis", "refused")  # type: ignore[arg-type]

    with monkeypatch.context() as patched:
        patched.setattr(records, "_status", unreachable)
        with pytest.raises(urllib3.exceptions.MaxRetryError):
            yield


def test_a_cut_whose_record_did_not_reach_the_api_server_is_recorded_on_the_next_try(
    api: Any, crds: str, kubeconfig: str, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The agent's record of a stored cut is a create, then a status write. When the API server
    is gone between the two, the retry finds the PrepCut without a phase and writes it Verified
    with the time the upload was received; the same archive sent again stays a no-op."""
    publication, records = _recording_pod(api, kubeconfig, namespace)
    stored = Stored(
        cut=CUT, time=None, archive=f"{CUT}_PREP.zip", archive_sha256="a" * 64,
        manifest_digest=DIGEST, files=3, bytes=10,
    )  # fmt: skip

    with _status_unreachable(records, monkeypatch):
        records.stored(publication, stored, received_at="2024-06-03T02:40:00Z")
    name = cut_object_name(PUB, CUT)
    cut = read(api, custom_path(namespace, "prepcuts", name))
    assert cut is not None
    assert not (cut.get("status") or {}).get("phase")
    records.stored(publication, stored, received_at="2024-06-03T02:40:00Z")
    cut = read(api, custom_path(namespace, "prepcuts", name))
    assert cut is not None
    assert cut["status"]["phase"] == "Verified"
    assert cut["status"]["receivedAt"] == "2024-06-03T02:40:00Z"
    version = cut["metadata"]["resourceVersion"]
    records.stored(publication, stored, received_at="2024-06-03T02:45:00Z")
    again = read(api, custom_path(namespace, "prepcuts", name))
    assert again is not None
    assert again["metadata"]["resourceVersion"] == version


def test_a_rejection_whose_record_did_not_reach_the_api_server_is_finished_on_the_next_try(
    api: Any, crds: str, kubeconfig: str, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rejected upload is recorded as a create, a status write and an Event. When the API
    server is gone after the create, the retry finishes that PrepCut (Rejected, with the time
    the upload was received) instead of naming a second one apart; the same bad archive sent
    again once it is recorded gets a record of its own, as before."""
    publication, records = _recording_pod(api, kubeconfig, namespace)
    bad = Quarantined(
        archive=f"{CUT}_PREP.zip", reason=Reason.PATH_TRAVERSAL, message="../etc/passwd",
        sha256="c" * 64, path=Path("/quarantine") / f"{CUT}_PREP.zip",
    )  # fmt: skip

    with _status_unreachable(records, monkeypatch):
        records.rejected(publication, bad, cut_id=CUT, received_at="2024-06-03T02:40:00Z")
    records.rejected(publication, bad, cut_id=CUT, received_at="2024-06-03T02:40:00Z")
    listed = request(
        api, "GET", custom_path(namespace, "prepcuts"),
        query=[("labelSelector", f"{PUBLICATION_LABEL}={PUB}")],
    )["items"]  # fmt: skip
    assert [c["metadata"]["name"] for c in listed] == [cut_object_name(PUB, CUT)]
    (cut,) = listed
    assert cut["status"]["phase"] == "Rejected"
    assert cut["status"]["reason"] == "PathTraversal"
    assert cut["status"]["receivedAt"] == "2024-06-03T02:40:00Z"
    records.rejected(publication, bad, cut_id=CUT, received_at="2024-06-03T02:50:00Z")
    apart = read(
        api, custom_path(namespace, "prepcuts", cut_object_name(PUB, f"{CUT}-rejected-cccccccc"))
    )
    assert apart is not None
    assert apart["status"]["receivedAt"] == "2024-06-03T02:50:00Z"
