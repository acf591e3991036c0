"""The repository layout that DESIGN.md fixes, and the package's import hygiene."""

from __future__ import annotations

import subprocess
import sys

import pytest

from .conftest import REPO

pytestmark = pytest.mark.unit


def test_import_operator_from_the_repo_root_is_still_the_standard_library() -> None:
    out = subprocess.run(
        [sys.executable, "-c", "import operator; print(operator.__file__, operator.add(2, 3))"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    path, total = out.split()
    assert "/operator/" not in path.replace(str(REPO), "")
    assert not path.startswith(str(REPO))
    assert total == "5"


def test_source_root_is_not_a_package() -> None:
    assert not (REPO / "operator" / "__init__.py").exists()
    assert (REPO / "operator" / "difusor" / "__init__.py").exists()


def test_the_console_script_runs() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "difusor", "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert "crds" in out
