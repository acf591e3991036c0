"""Copying a version between pods: the agent's peer endpoints and fetch_version, on loopback."""

from __future__ import annotations

import dataclasses
import http.client
import json
import random
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s

from difusor.agent import main, peers
from difusor.agent.main import Agent, AgentConfig, serve
from difusor.agent.peers import PeerError, fetch_version
from difusor.ingest.store import Store, write_json
from difusor.logic.archive import ManifestEntry, manifest_digest
from difusor.models import IngestSpec, PrepPublicationSpec

from .archives import make_zip, site_files

pytestmark = pytest.mark.e2e

NOW = datetime(2024, 6, 2, 20, 45, tzinfo=UTC)
TOKEN = "s3cret-token"


def _store(root: Path) -> Store:
    store = Store(root)
    store.recover()
    return store


def _ingest(store: Store, tmp: Path, cut: str, *, seed: int) -> str:
    files = site_files(cut=cut, actas=50, seed=0)
    files["json/main.json"] = json.dumps({"horaCorte": cut, "seed": seed}).encode()
    archive = make_zip(tmp / f"{cut}_PREP.zip", files)
    stored = store.ingest(archive, ingest=IngestSpec(), checksum=None, pinned=None, now=NOW)
    return stored.manifest_digest


def _agent(store: Store, token_file: Path) -> Agent:
    """An agent of the store's pod on a free port of 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = AgentConfig(
        publication="p", namespace="ns", pod=f"p-web-{store.root.name}", pod_ip="127.0.0.1",
        content_dir=store.root, address="127.0.0.1", port=port, token_file=token_file,
        kubeconfig=None, interval=1.0,
    )  # fmt: skip
    return Agent(config, k8s.ApiClient())


@contextmanager
def serving_agent(root: Path, token_file: Path) -> Iterator[tuple[Store, str]]:
    """A pod's store at root with an agent serving it on 127.0.0.1."""
    store = _store(root)
    agent = _agent(store, token_file)
    server = serve(agent)
    try:
        yield store, f"http://127.0.0.1:{agent.config.port}"
    finally:
        server.shutdown()


@pytest.fixture
def peer(tmp_path: Path) -> Iterator[tuple[Store, str]]:
    """A pod's store with an agent serving it on 127.0.0.1."""
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    with serving_agent(tmp_path / "a", token_file) as served:
        yield served


def test_every_pod_of_a_large_publication_can_connect_at_once(tmp_path: Path) -> None:
    """When a cut stages, every other pod connects to the one that received it at once.

    With socketserver's backlog of 5, the kernel drops the SYNs past the fifth connection not
    yet accepted and those pods retry a second later. Here nothing accepts: each connection
    must still complete its handshake (on loopback, within the connect call) and not wait for
    a retransmitted SYN a second later.
    """
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    server = main.listen(_agent(_store(tmp_path / "a"), token_file))
    host, port = server.server_address[:2]
    sockets: list[socket.socket] = []
    try:
        for n in range(100):
            sock = socket.socket()
            sockets.append(sock)
            sock.settimeout(0.5)
            try:
                sock.connect((str(host), port))
            except TimeoutError:
                pytest.fail(f"connection {n + 1} to an agent that has not accepted yet timed out")
    finally:
        for sock in sockets:
            sock.close()
        server.server_close()


def _get(url: str, path: str, token: str | None) -> int:
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    conn.request("GET", path, headers={"Authorization": f"Bearer {token}"} if token else {})
    status = conn.getresponse().status
    conn.close()
    return status


def test_a_peer_answers_only_with_the_publications_token(
    peer: tuple[Store, str], tmp_path: Path
) -> None:
    store, url = peer
    _ingest(store, tmp_path, "20240602_2040", seed=1)
    assert _get(url, "/v1/versions/20240602_2040/manifest", None) == 401
    assert _get(url, "/v1/versions/20240602_2040/manifest", "wrong") == 401
    assert _get(url, "/v1/versions/20240602_2040/manifest", TOKEN) == 200
    assert _get(url, "/v1/versions/20990101_0000/manifest", TOKEN) == 404
    assert _get(url, "/healthz", None) == 200
    # Not ready before the agent has read its publication.
    assert _get(url, "/readyz", None) == 503


def test_a_fetched_version_is_identical_and_links_what_the_pod_already_has(
    peer: tuple[Store, str], tmp_path: Path
) -> None:
    source, url = peer
    first = _ingest(source, tmp_path, "20240602_2040", seed=1)
    local = _store(tmp_path / "b")
    counts = fetch_version(local, cut="20240602_2040", peer=url, token=TOKEN, expected_digest=first)
    assert counts["linked"] == 0
    assert counts["fetched"] == len(source.manifest("20240602_2040"))
    assert local.manifest("20240602_2040") == source.manifest("20240602_2040")
    # Every pod serves the same bytes as the proof of what it serves.
    meta = Path("20240602_2040") / ".prep" / "manifest.json"
    assert (local.versions / meta).read_bytes() == (source.versions / meta).read_bytes()
    for entry in local.manifest("20240602_2040"):
        assert (local.versions / "20240602_2040" / entry.path).read_bytes() == (
            source.versions / "20240602_2040" / entry.path
        ).read_bytes()
    local.swap_current("20240602_2040")
    second = _ingest(source, tmp_path, "20240602_2100", seed=2)

    def no_split() -> list[str]:
        raise AssertionError("a fetch this small must not look up other peers")

    counts = fetch_version(
        local, cut="20240602_2100", peer=url, token=TOKEN, expected_digest=second,
        helpers=no_split,
    )  # fmt: skip
    # Only what changed travels (main.json and the CSV, which carry the cut time); the rest is a
    # hard link to the version the pod already has.
    before = {(e.sha256, e.size) for e in source.manifest("20240602_2040")}
    changed = [e.path for e in source.manifest("20240602_2100") if (e.sha256, e.size) not in before]
    assert sorted(changed) == ["datos/20240602_PREP_GUB_MICH.csv", "json/main.json"]
    assert counts["fetched"] == len(changed)
    assert counts["linked"] == len(source.manifest("20240602_2100")) - len(changed)
    same = local.versions / "20240602_2100" / "index.html"
    assert same.stat().st_ino == (local.versions / "20240602_2040" / "index.html").stat().st_ino


def test_a_pod_stages_the_rollouts_target_without_reading_the_api_server(
    peer: tuple[Store, str], tmp_path: Path
) -> None:
    """The rollout names the digest and the receiving pod with its IP: the agent fetches from
    that alone. Its API client points at no server, so any read would fail the fetch."""
    source, url = peer
    cut = "20240602_2040"
    digest = _ingest(source, tmp_path, cut, seed=1)
    local = _store(tmp_path / "b")
    fetcher = _agent(local, tmp_path / "token")
    fetcher.config = dataclasses.replace(fetcher.config, port=int(url.rsplit(":", 1)[1]))
    rollout = {
        "phase": "Staging", "targetCut": cut, "manifestDigest": digest,
        "receivedBy": "p-web-a", "receivedByIP": "127.0.0.1",
    }  # fmt: skip
    assert fetcher._fetch(cut, rollout=rollout)
    assert local.manifest(cut) == source.manifest(cut)


def test_versions_beyond_retention_are_removed_only_once_the_rollout_is_over(
    peer: tuple[Store, str], tmp_path: Path
) -> None:
    source, url = peer
    local = _store(tmp_path / "b")
    older, active, target = "20240602_2000", "20240602_2020", "20240602_2040"
    for n, cut in enumerate((older, active)):
        _ingest(local, tmp_path, cut, seed=n)
    local.swap_current(active)
    digest = _ingest(source, tmp_path, target, seed=2)
    agent = _agent(local, tmp_path / "token")
    agent.config = dataclasses.replace(agent.config, port=int(url.rsplit(":", 1)[1]))
    reports: list[tuple[str | None, str | None, str | None]] = []
    agent._report = lambda *, staged, active, error: reports.append((staged, active, error))  # type: ignore[method-assign]
    spec = PrepPublicationSpec.model_validate(
        {"host": "prep.example.mx", "sftp": {"authorizedKeysSecret": "k"}, "retention": {"cuts": 2}}
    )
    rollout = {
        "targetCut": target, "manifestDigest": digest,
        "receivedBy": "p-web-a", "receivedByIP": "127.0.0.1",
    }  # fmt: skip
    for phase in ("Staging", "Committing"):
        agent._promote(spec, {"activeCut": {"id": active}, "rollout": {**rollout, "phase": phase}})
        # Three versions where two are kept: the third waits for the rollout's end.
        assert sorted(local.cuts()) == [older, active, target]
    assert local.active_cut() == target
    assert reports[-1] == (target, target, None)
    agent._promote(spec, {"activeCut": {"id": target}, "rollout": {"phase": "Idle"}})
    assert sorted(local.cuts()) == [active, target]


def test_a_pod_that_cannot_fetch_the_target_reports_its_first_reason_until_the_rollout_ends(
    peer: tuple[Store, str], tmp_path: Path
) -> None:
    source, url = peer
    cut = "20240602_2040"
    _ingest(source, tmp_path, cut, seed=1)
    local = _store(tmp_path / "b")
    agent = _agent(local, tmp_path / "token")
    agent.config = dataclasses.replace(agent.config, port=int(url.rsplit(":", 1)[1]))
    agent._peers_with = lambda cut, *, prefer: []  # type: ignore[method-assign]
    reports: list[tuple[str | None, str | None, str | None]] = []
    agent._report = lambda *, staged, active, error: reports.append((staged, active, error))  # type: ignore[method-assign]
    spec = PrepPublicationSpec.model_validate(
        {"host": "prep.example.mx", "sftp": {"authorizedKeysSecret": "k"}}
    )
    # The receiving pod has the cut with another digest than the one verified.
    wrong = {
        "phase": "Staging", "targetCut": cut, "manifestDigest": "sha256:" + "0" * 64,
        "receivedBy": "p-web-a", "receivedByIP": "127.0.0.1",
    }  # fmt: skip
    agent._promote(spec, {"rollout": wrong})
    staged, active, error = reports[-1]
    assert (staged, active) == (None, None)
    assert error is not None
    assert error.startswith(f"{cut}: no pod could send it; from http://127.0.0.1:"), error
    assert "expected sha256:000" in error, error
    # The next attempt fails otherwise (nothing listens there): the first reason stays.
    agent._promote(spec, {"rollout": {**wrong, "receivedByIP": "127.0.0.2"}})
    assert reports[-1][2] == error
    assert local.cuts() == []
    # Once the rollout is over the pod reports no error.
    agent._promote(spec, {"rollout": {"phase": "Idle"}})
    assert reports[-1] == (None, None, None)


def test_a_digest_other_than_the_recorded_one_is_refused_and_leaves_nothing(
    peer: tuple[Store, str], tmp_path: Path
) -> None:
    source, url = peer
    _ingest(source, tmp_path, "20240602_2040", seed=1)
    local = _store(tmp_path / "b")
    with pytest.raises(PeerError, match="expected"):
        fetch_version(
            local, cut="20240602_2040", peer=url, token=TOKEN, expected_digest="sha256:" + "0" * 64
        )
    with pytest.raises(PeerError, match="401"):
        fetch_version(local, cut="20240602_2040", peer=url, token="wrong", expected_digest=None)
    assert list(local.versions.iterdir()) == []


def test_the_background_check_finds_a_damaged_file_and_a_peer_repairs_it(
    peer: tuple[Store, str], tmp_path: Path
) -> None:
    from difusor.agent.integrity import IntegrityCheck, file_matches
    from difusor.agent.peers import repair_files

    source, url = peer
    digest = _ingest(source, tmp_path, "20240602_2040", seed=1)
    local = _store(tmp_path / "b")
    fetch_version(local, cut="20240602_2040", peer=url, token=TOKEN, expected_digest=digest)
    local.swap_current("20240602_2040")
    entries = local.manifest("20240602_2040")
    victim = next(e for e in entries if e.path == "json/main.json")
    path = local.versions / "20240602_2040" / victim.path
    original = path.read_bytes()
    # Damaged in place (as a bad disk or a stray edit would), keeping its size.
    path.write_bytes(b"X" * len(original))
    check = IntegrityCheck(local)
    check.last -= 60  # a minute's budget at once: every file
    cut, damaged, checked = check.step(files_per_minute=len(entries))
    assert (cut, [e.path for e in damaged], checked) == (
        "20240602_2040",
        [victim.path],
        len(entries),
    )
    assert repair_files(local, cut="20240602_2040", peer=url, token=TOKEN, entries=damaged) == 1
    assert path.read_bytes() == original
    assert file_matches(local, "20240602_2040", victim)
    assert not [p for p in local.versions.iterdir() if "repair" in p.name]


def test_a_large_fetch_is_split_between_the_peers_that_have_the_cut(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    files = site_files(cut="20240602_2040", actas=50)
    for n in range(4):
        files[f"datos/parte{n}.csv"] = bytes(random.Random(n).randbytes(2 << 20))
    archive = make_zip(tmp_path / "20240602_2040_PREP.zip", files)
    asked: list[tuple[Path, int]] = []
    real_write_bundle = main.write_bundle

    def recording(store: Store, cut: str, paths: list[str], *args: Any, **kwargs: Any) -> int:
        asked.append((store.root, len(paths)))
        return real_write_bundle(store, cut, paths, *args, **kwargs)

    monkeypatch.setattr(main, "write_bundle", recording)
    with (
        serving_agent(tmp_path / "a", token_file) as (first, first_url),
        serving_agent(tmp_path / "b", token_file) as (second, second_url),
    ):
        digest = ""
        for store in (first, second):
            copy = tmp_path / store.root.name / archive.name
            copy.write_bytes(archive.read_bytes())
            digest = store.ingest(
                copy, ingest=IngestSpec(), checksum=None, pinned=None, now=NOW
            ).manifest_digest
        local = _store(tmp_path / "c")
        counts = fetch_version(
            local, cut="20240602_2040", peer=first_url, token=TOKEN, expected_digest=digest,
            helpers=lambda: [second_url],
        )  # fmt: skip
    assert counts["fetched"] == len(files)
    assert counts["bytes"] == sum(len(data) for data in files.values())
    # Both peers sent a part, and every file once.
    assert sorted(root for root, _ in asked) == [first.root, second.root]
    assert sum(n for _, n in asked) == len(files)
    assert local.manifest("20240602_2040") == first.manifest("20240602_2040")
    for path, data in files.items():
        assert (local.versions / "20240602_2040" / path).read_bytes() == data


def test_a_manifest_read_before_is_read_again_once_its_file_changes(
    peer: tuple[Store, str], tmp_path: Path
) -> None:
    """Fetches reuse the local manifests they verified, but not one whose file was replaced."""
    source, _url = peer
    _ingest(source, tmp_path, "20240602_2040", seed=1)
    first = peers._manifest(source, "20240602_2040")
    assert peers._manifest(source, "20240602_2040") is first
    path = source.versions / "20240602_2040" / ".prep" / "manifest.json"
    document = json.loads(path.read_text())
    document["files"] = document["files"][1:]
    entries = [ManifestEntry(f["path"], f["size"], f["sha256"]) for f in document["files"]]
    document["digest"] = manifest_digest(entries)
    write_json(path, document)
    assert peers._manifest(source, "20240602_2040") == entries
    document["files"] = document["files"][1:]
    write_json(path, document)
    with pytest.raises(ValueError, match="digest"):
        peers._manifest(source, "20240602_2040")


def test_a_fetched_versions_manifest_is_kept_as_verified_on_arrival(
    peer: tuple[Store, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The next fetch indexes the local versions: the one just fetched is not read again."""
    source, url = peer
    digest = _ingest(source, tmp_path, "20240602_2050", seed=1)
    target = _store(tmp_path / "b")
    fetch_version(target, cut="20240602_2050", peer=url, token=TOKEN, expected_digest=digest)

    def read_again(cut: str) -> list[ManifestEntry]:
        raise AssertionError(f"the manifest of {cut} was read again")

    monkeypatch.setattr(target, "manifest", read_again)
    assert manifest_digest(peers._manifest(target, "20240602_2050")) == digest
