"""The dependency graph keeps the declared architecture: `lint-imports` (import-linter, contracts in pyproject.toml
under [tool.importlinter]) checks the layers, that no stage imports another and that siblings have no cycles."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def lint_imports_command() -> list[str]:
    """The `lint-imports` console script next to this interpreter, else the one on PATH, else `-m importlinter.cli`."""
    here = Path(sys.executable).with_name("lint-imports")
    if here.is_file():
        return [str(here)]
    found = shutil.which("lint-imports")
    if found:
        return [found]
    pytest.importorskip("importlinter", reason="import-linter is in the dev extra: pip install -e '.[dev]'")
    return [sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command as c; sys.exit(c())"]


def test_import_contracts_are_kept() -> None:
    # --no-cache: nothing is written into the checkout
    r = subprocess.run([*lint_imports_command(), "--no-cache", "--no-logo"], cwd=ROOT, capture_output=True, text=True,
                       env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=300)
    assert r.returncode == 0, f"lint-imports found broken contracts (exit {r.returncode}):\n{r.stdout}\n{r.stderr}"
