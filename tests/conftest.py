"""Shared fixtures: real programs on loopback and the real local control plane."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
IN_CI = os.environ.get("CI", "").lower() == "true"


def require_binary(name: str) -> str:
    """Path of a program the test needs: fails under CI when it is missing, skips elsewhere."""
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if found:
        return found
    message = f"{name} is not installed (run `make deps`)"
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)
