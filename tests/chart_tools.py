"""Helpers of the chart tests: helm, rendered documents, and the operator under a ServiceAccount."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from .conftest import BIN, REPO, kubectl, require_binary, token_kubeconfig

CHART = REPO / "charts" / "difusor"
SCENARIOS = sorted((CHART / "ci").glob("*-values.yaml"))

Doc = dict[str, Any]


def helm_path() -> str:
    """The pinned helm from the cache, or one on PATH (a missing helm fails under CI)."""
    pinned = BIN / "helm"
    if pinned.exists():
        return str(pinned)
    return require_binary("helm")


class Helm:
    """helm with its cache, config and data kept in a directory of the test session."""

    def __init__(self, path: str, home: Path) -> None:
        self.path = path
        self.env = {
            **os.environ,
            "HELM_CACHE_HOME": str(home / "cache"),
            "HELM_CONFIG_HOME": str(home / "config"),
            "HELM_DATA_HOME": str(home / "data"),
        }

    def run(
        self, *args: str, check: bool = True, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        """Run helm; with check, fail showing its stderr."""
        proc = subprocess.run(
            [self.path, *args],
            capture_output=True,
            text=True,
            env=self.env,
            check=False,
            timeout=timeout,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} failed: {proc.stderr.strip()}")
        return proc

    def template(
        self, *args: str, release: str = "difusor", namespace: str = "difusor-system"
    ) -> list[Doc]:
        """The documents `helm template` renders (with extra args such as -f and --set)."""
        out = self.run("template", release, str(CHART), "--namespace", namespace, *args).stdout
        return [doc for doc in yaml.safe_load_all(out) if doc]

    def show_only(self, template: str, *args: str) -> list[Doc]:
        """The documents one template renders."""
        return self.template("--show-only", f"templates/{template}", *args)


def of_kind(docs: list[Doc], kind: str) -> list[Doc]:
    """The documents of one kind."""
    return [doc for doc in docs if doc["kind"] == kind]


def one(docs: list[Doc], kind: str) -> Doc:
    """The only document of a kind."""
    found = of_kind(docs, kind)
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def granted(rules: list[Doc]) -> set[tuple[str, str, str]]:
    """(apiGroup, resource, verb) for every combination the rules grant."""
    return {
        (group, resource, verb)
        for rule in rules
        for group in rule.get("apiGroups", [])
        for resource in rule.get("resources", [])
        for verb in rule.get("verbs", [])
    }


def plural(kind: str) -> str:
    """The resource name of a kind (enough for the kinds the operator makes)."""
    lower = kind.lower()
    if lower.endswith("y"):
        return lower[:-1] + "ies"
    if lower.endswith("s"):
        return lower + "es"
    return lower + "s"


def service_account_kubeconfig(
    kubeconfig: str, *, namespace: str, service_account: str, path: Path
) -> Path:
    """A kubeconfig for the same API server that authenticates as the ServiceAccount."""
    token = kubectl(
        kubeconfig, "-n", namespace, "create", "token", service_account, "--duration=2h"
    ).strip()
    return Path(token_kubeconfig(kubeconfig, token=token, path=path))


def lines_with(text: str, needle: str) -> Iterator[str]:
    """The lines of a log that mention a word, case-insensitively."""
    return (line for line in text.splitlines() if needle in line.lower())
