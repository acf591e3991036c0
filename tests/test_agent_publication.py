"""The agent's copy of its publication: what the watch delivered, read again only when it may be
old; and its loops, which live through an API server they cannot reach."""

from __future__ import annotations

import dataclasses
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import urllib3
from kubernetes import client as k8s

from difusor.agent import main
from difusor.agent.main import FRESH_FOR, Agent, AgentConfig
from difusor.agent.records import UNRECORDED_FILE, save_unrecorded
from difusor.agent.stats import run_loop
from difusor.ingest.store import Quarantined, Stored
from difusor.models import IngestSpec, PrepPublicationSpec

from .archives import make_zip, site_files
from .conftest import unreachable_api

pytestmark = pytest.mark.unit

#: The publication of the agent's pod, as a pass of the agent hands it to _ingest.
PUBLICATION: dict[str, Any] = {
    "metadata": {"name": "prep", "uid": "u"},
    "spec": {"host": "prep.example.mx", "sftp": {"authorizedKeysSecret": "k"}},
}
SPEC = PrepPublicationSpec.model_validate(PUBLICATION["spec"])


def unreachable(*_: Any, **__: Any) -> None:
    """A call to an API server that does not answer at all, as urllib3 gives up on it."""
    raise urllib3.exceptions.MaxRetryError(None, "/apis", "refused")  # type: ignore[arg-type]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def agent(tmp_path: Path) -> Agent:
    token = tmp_path / "token"
    token.write_text("t")
    config = AgentConfig(
        publication="prep", namespace="ns", pod="prep-web-0", pod_ip="127.0.0.1",
        content_dir=tmp_path / "content", address="127.0.0.1", port=0, token_file=token,
        kubeconfig=None, interval=0.5,
    )  # fmt: skip
    agent = Agent(config, k8s.ApiClient())
    agent.recover()
    return agent


def test_the_watched_publication_is_used_until_it_may_be_old_then_read_again(
    agent: Agent, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = Clock()
    reads: list[str] = []

    def read(_api: object, method: str, path: str, **_: Any) -> dict[str, Any]:
        reads.append(f"{method} {path}")
        return {"metadata": {"name": "prep", "resourceVersion": str(len(reads))}}

    monkeypatch.setattr(main.time, "monotonic", clock)
    monkeypatch.setattr(main, "request", read)
    # Nothing seen yet: read.
    assert agent.publication()["metadata"]["resourceVersion"] == "1"
    assert reads == ["GET /apis/prep.difusor.io/v1alpha1/namespaces/ns/preppublications/prep"]
    # A watch event replaces it, and it is used as it is while it is fresh.
    agent.saw({"metadata": {"name": "prep", "resourceVersion": "watched"}})
    clock.now += FRESH_FOR - 1
    assert agent.publication()["metadata"]["resourceVersion"] == "watched"
    assert len(reads) == 1
    # Nothing for FRESH_FOR seconds (a watch that broke silently): read again.
    clock.now += 2
    assert agent.publication()["metadata"]["resourceVersion"] == "2"
    # A failed watch forgets it: the next pass reads.
    agent.saw(None)
    assert agent.publication()["metadata"]["resourceVersion"] == "3"


def test_a_pass_that_cannot_reach_the_api_server_is_logged_and_the_loop_goes_on(
    agent: Agent,
) -> None:
    """urllib3 gives up on a refused connection with MaxRetryError, which is no OSError: it
    used to end the agent, which came back without its publication and not Ready."""
    agent.api = unreachable_api()
    main.step_once(agent, datetime.now(UTC))
    assert agent.last_error is not None
    assert "Max retries exceeded" in agent.last_error, agent.last_error


def test_the_statistics_loop_lives_through_an_unreachable_api_server() -> None:
    stopping = threading.Event()
    passes: list[str] = []

    class Shipper:
        pod = "prep-web-0"

        def step(self) -> int:
            passes.append("step")
            if len(passes) == 1:
                raise urllib3.exceptions.MaxRetryError(None, "/api", "refused")  # type: ignore[arg-type]
            stopping.set()
            return 0

        def pause(self) -> float:
            return 0.0

    run_loop(Shipper(), stopping=stopping)  # type: ignore[arg-type]
    # The failed pass, the next one, and the last one at the stop.
    assert passes == ["step", "step", "step"]


def test_a_stored_cut_the_api_server_did_not_take_is_recorded_on_a_later_pass(
    agent: Agent, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The upload has left incoming/ once stored: a record that failed is not lost, it goes
    first on the next pass, with the time the upload was received."""
    stored = Stored(
        cut="20240602_2040", time=None, archive="20240602_2040_PREP.zip",
        archive_sha256="a" * 64, manifest_digest="sha256:" + "b" * 64, files=3, bytes=10,
    )  # fmt: skip
    outcomes: list[list[Stored]] = [[stored], []]
    monkeypatch.setattr(agent.intake, "run", lambda **_: iter(outcomes.pop(0)))
    calls: list[tuple[str, str]] = []

    def record(publication: Any, outcome: Stored, *, received_at: str) -> None:
        calls.append((outcome.cut, received_at))
        if len(calls) == 1:
            unreachable()

    monkeypatch.setattr(agent.records, "stored", record)
    received = datetime(2024, 6, 3, 2, 40, tzinfo=UTC)
    with pytest.raises(urllib3.exceptions.MaxRetryError):
        agent._ingest(PUBLICATION, SPEC, received)
    assert agent.unrecorded == [(stored, "2024-06-03T02:40:00Z")]
    agent._ingest(PUBLICATION, SPEC, received + timedelta(minutes=1))
    assert calls == [("20240602_2040", "2024-06-03T02:40:00Z")] * 2
    assert agent.unrecorded == []


def test_a_cut_left_unrecorded_is_recorded_by_the_agent_that_starts_next(
    agent: Agent, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An agent restarted while the API server is away: the cut it stored and could not record
    is listed on the volume, and the agent that starts next records it first, with the time it
    was received. A night without an outage writes no list."""
    store = agent.store
    listed = store.root / UNRECORDED_FILE
    received = datetime(2024, 6, 3, 2, 40, tzinfo=UTC)
    recorded: list[tuple[str, str]] = []

    def record(publication: Any, outcome: Stored, *, received_at: str) -> None:
        recorded.append((outcome.cut, received_at))

    # A cut recorded at once leaves nothing on the volume.
    make_zip(store.incoming / "20240602_2020_PREP.zip", site_files(cut="20240602_2020"))
    monkeypatch.setattr(agent.records, "stored", record)
    agent._ingest(PUBLICATION, SPEC, received - timedelta(minutes=20))
    assert recorded == [("20240602_2020", "2024-06-03T02:20:00Z")]
    assert not listed.exists()
    # The next one, stored while the API server is away, is listed; the agent then stops.
    make_zip(store.incoming / "20240602_2040_PREP.zip", site_files(cut="20240602_2040"))
    monkeypatch.setattr(agent.records, "stored", unreachable)
    with pytest.raises(urllib3.exceptions.MaxRetryError):
        agent._ingest(PUBLICATION, SPEC, received)
    assert not list(store.incoming.iterdir())
    assert (store.versions / "20240602_2040").is_dir()
    assert listed.exists()

    after = Agent(agent.config, k8s.ApiClient())
    assert any("20240602_2040" in line for line in after.recover())
    (unrecorded,) = after.unrecorded
    assert unrecorded[0].cut == "20240602_2040"
    assert unrecorded[1] == "2024-06-03T02:40:00Z"
    monkeypatch.setattr(after.records, "stored", record)
    after._ingest(PUBLICATION, SPEC, received + timedelta(minutes=7))
    assert recorded[1:] == [("20240602_2040", "2024-06-03T02:40:00Z")]
    assert after.unrecorded == []
    assert not listed.exists()


def test_a_listed_cut_removed_since_and_an_unreadable_list_are_not_recorded(agent: Agent) -> None:
    store = agent.store
    outcome = store.process(
        make_zip(store.incoming / "20240602_2040_PREP.zip", site_files(cut="20240602_2040")),
        ingest=IngestSpec(),
        now=datetime(2024, 6, 3, 2, 40, tzinfo=UTC),
    )
    assert isinstance(outcome, Stored)
    gone = dataclasses.replace(outcome, cut="20240602_2020")
    listed = store.root / UNRECORDED_FILE
    save_unrecorded(store, [(gone, "2024-06-03T02:20:00Z"), (outcome, "2024-06-03T02:40:00Z")])
    after = Agent(agent.config, k8s.ApiClient())
    after.recover()
    # The version of 20240602_2020 is not on the volume (pruned, or never complete).
    assert after.unrecorded == [(outcome, "2024-06-03T02:40:00Z")]
    listed.write_text("{not json")
    again = Agent(agent.config, k8s.ApiClient())
    again.recover()
    assert again.unrecorded == []


def test_a_rejection_the_api_server_did_not_take_is_recorded_by_the_next_agent(
    agent: Agent, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bad upload is quarantined whether or not the API server answers; its record (the
    night's account of rejected uploads) waits in the same line as the stored cuts."""
    store = agent.store
    (store.incoming / "20240602_2040_PREP.zip").write_bytes(b"not a zip at all")

    monkeypatch.setattr(agent.records, "rejected", unreachable)
    with pytest.raises(urllib3.exceptions.MaxRetryError):
        agent._ingest(PUBLICATION, SPEC, datetime(2024, 6, 3, 2, 40, tzinfo=UTC))
    assert [p.name for p in store.quarantine_dir.iterdir() if p.suffix == ".zip"] == [
        "20240602_2040_PREP.zip"
    ]
    after = Agent(agent.config, k8s.ApiClient())
    after.recover()
    recorded: list[tuple[str, str | None, str, str]] = []

    def record(_: Any, outcome: Quarantined, *, cut_id: str | None, received_at: str) -> None:
        recorded.append((outcome.archive, cut_id, str(outcome.reason), received_at))

    monkeypatch.setattr(after.records, "rejected", record)
    after._ingest(PUBLICATION, SPEC, datetime(2024, 6, 3, 2, 47, tzinfo=UTC))
    ((archive, cut_id, reason, received_at),) = recorded
    assert (archive, cut_id, received_at) == (
        "20240602_2040_PREP.zip",
        "20240602_2040",
        "2024-06-03T02:40:00Z",
    )
    assert reason == "CorruptArchive"
    assert after.unrecorded == []
    assert not (store.root / UNRECORDED_FILE).exists()


@pytest.mark.parametrize(
    ("status", "kept"),
    [(422, False), (400, False), (404, False), (503, True), (429, True), (401, True), (403, True)],
)
def test_a_record_the_api_server_refuses_does_not_hold_the_line(
    agent: Agent, monkeypatch: pytest.MonkeyPatch, status: int, kept: bool
) -> None:
    """A record refused as it is (422, 400, 404) would fail on every retry: kept first in line
    it would hold every later cut's record, and their promotions, for good. It is logged and
    dropped; an overloaded or failing API server (429, 5xx), or one that does not take the
    agent's token or permissions yet (401, 403), keeps it first."""
    first, second = (
        Stored(
            cut=cut, time=None, archive=f"{cut}_PREP.zip", archive_sha256="a" * 64,
            manifest_digest="sha256:" + "b" * 64, files=3, bytes=10,
        )
        for cut in ("20240602_2040", "20240602_2100")
    )  # fmt: skip
    recorded: list[str] = []

    def record(_: Any, outcome: Stored, *, received_at: str) -> None:
        if outcome is first:
            raise k8s.ApiException(status=status, reason="answered")
        recorded.append(outcome.cut)

    monkeypatch.setattr(agent.records, "stored", record)
    monkeypatch.setattr(agent.intake, "run", lambda **_: iter([first, second]))
    if kept:
        with pytest.raises(k8s.ApiException):
            agent._ingest(PUBLICATION, SPEC, datetime(2024, 6, 3, 2, 40, tzinfo=UTC))
        assert [o.cut for o, _ in agent.unrecorded] == ["20240602_2040"]
        assert recorded == []
    else:
        agent._ingest(PUBLICATION, SPEC, datetime(2024, 6, 3, 2, 40, tzinfo=UTC))
        assert agent.unrecorded == []
        assert recorded == ["20240602_2100"]
