"""The automatic deny list on a real nginx: written by the agent, applied by one coalesced reload."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from difusor.agent import containment
from difusor.agent.containment import DenyList

from .nginxproc import Site, make_spec, running_nginx

pytestmark = pytest.mark.e2e

CUT = "20240602_2040"


def test_denied_ranges_get_403_on_every_path_but_the_probes_and_are_released(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = Site(tmp_path / "content")
    site.add_version(CUT)
    site.activate(CUT)
    monkeypatch.setattr(containment, "RELOAD_EVERY", 0.0)
    spec = make_spec(rateLimit={"denyList": ["127.0.0.9/32"]})
    with running_nginx(spec, workdir=tmp_path / "nginx", content=site.root) as server:
        deny = DenyList(site.root, tmp_path / "nginx" / "run" / "nginx.pid")
        assert not deny.apply([])  # nothing to deny and no file: no reload
        assert deny.apply(["127.0.0.5/32"])

        def status(source: str, path: str = "/index.html") -> int:
            return server.get(path, source=source).status

        def settled(expected: int) -> None:
            # During a reload the old workers accept connections until they get the master's
            # QUIT, after the new ones have started: the new config holds once several answers
            # in a row agree.
            deadline, streak = time.monotonic() + 30, 0
            while streak < 10 and time.monotonic() < deadline:
                streak = streak + 1 if status("127.0.0.5") == expected else 0
                time.sleep(0.02 if streak else 0.1)

        settled(403)
        assert status("127.0.0.5") == 403
        assert status("127.0.0.5", "/json/main.json") == 403
        assert status("127.0.0.5", "/readyz") == 200
        assert status("127.0.0.6") == 200
        assert status("127.0.0.9") == 403  # the spec's own entry
        assert not deny.apply(["127.0.0.5/32"])  # unchanged: no second reload
        assert deny.apply([])
        settled(200)
        assert status("127.0.0.5") == 200
        assert status("127.0.0.9") == 403  # the spec's own entry stays
        assert not (site.root / "containment" / "deny.conf").exists()


def test_reloads_are_coalesced(tmp_path: Path) -> None:
    pid = tmp_path / "nginx.pid"
    pid.write_text("999999999\n")  # no such process: the reload fails and stays pending
    deny = DenyList(tmp_path, pid)
    assert not deny.apply(["192.0.2.0/24"])
    assert deny.pending
    assert (tmp_path / "containment" / "deny.conf").read_text().splitlines()[1:] == [
        "deny 192.0.2.0/24;"
    ]
