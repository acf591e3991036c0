"""The rendered sshd_config: golden files and the properties that matter (test_sftp runs it)."""

from __future__ import annotations

import os

import pytest

from difusor.models import SftpSpec
from difusor.render.sshd import render_sshd_config

from .conftest import REPO

GOLDEN = REPO / "tests" / "golden" / "sshd"
SPEC = SftpSpec(authorized_keys_secret="iem-keys")
CASES = {
    "default.conf": {},
    "custom-paths.conf": {
        "port": 2022,
        "listen_addresses": ("0.0.0.0", "::"),
        "host_keys": ("/keys/ed25519", "/keys/rsa"),
        "authorized_keys_file": "/keys/authorized/authorized_keys",
        "upload_dir": "/data/incoming",
        "pid_file": "/tmp/run/sshd.pid",
        "user": "iem",
    },
}


def directives(config: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in config.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.partition(" ")
            found.setdefault(key, []).append(value)
    return found


@pytest.mark.unit
@pytest.mark.parametrize("name", sorted(CASES))
def test_rendered_config_matches_the_golden_file(name: str) -> None:
    rendered = render_sshd_config(SPEC, **CASES[name])  # type: ignore[arg-type]
    if os.environ.get("DIFUSOR_UPDATE_GOLDEN") == "1":
        (GOLDEN / name).write_text(rendered)
    assert rendered == (GOLDEN / name).read_text()


@pytest.mark.unit
def test_config_allows_only_keys_and_only_internal_sftp() -> None:
    conf = directives(render_sshd_config(SPEC))
    assert conf["ForceCommand"][0].startswith("internal-sftp -d /srv/prep/incoming")
    assert conf["Subsystem"] == [f"sftp {conf['ForceCommand'][0]}"]
    assert "-P symlink,hardlink," in conf["ForceCommand"][0]
    assert "rename" not in conf["ForceCommand"][0]
    for key in ("PasswordAuthentication", "KbdInteractiveAuthentication", "PermitTTY"):
        assert conf[key] == ["no"]
    for key in ("AllowTcpForwarding", "AllowAgentForwarding", "X11Forwarding", "PermitTunnel"):
        assert conf[key] == ["no"]
    assert conf["DisableForwarding"] == ["yes"]
    assert conf["AuthenticationMethods"] == ["publickey"]
    assert conf["AllowUsers"] == ["prep"]
    assert conf["AuthorizedKeysFile"] == ["/etc/difusor/sftp/authorized_keys"]
    assert conf["Port"] == ["2222"]


@pytest.mark.unit
def test_config_offers_only_modern_algorithms() -> None:
    conf = directives(render_sshd_config(SPEC))
    ciphers = conf["Ciphers"][0].split(",")
    assert all("gcm" in c or "ctr" in c or "chacha20" in c for c in ciphers)
    assert all("-etm@" in m for m in conf["MACs"][0].split(","))
    assert all("25519" in k for k in conf["KexAlgorithms"][0].split(","))
    assert "ssh-rsa" not in conf["PubkeyAcceptedAlgorithms"][0].split(",")
