"""Every module of the package imports on its own, first, in a fresh interpreter: no import cycle that only works in
one import order, no module that relies on another having been imported before it."""

from __future__ import annotations

import os
import pkgutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "a2vtool"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}


def package_modules(path: Path = PACKAGE, prefix: str = "a2vtool") -> list[str]:
    """Every module and package under a2vtool/, found with pkgutil on the file system (nothing is imported here)."""
    found = [prefix]
    for info in pkgutil.iter_modules([str(path)]):
        name = f"{prefix}.{info.name}"
        found += package_modules(path / info.name, name) if info.ispkg else [name]
    return found


MODULES = sorted(package_modules())


def _import_alone(module: str) -> tuple[int, str]:
    r = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, text=True, env=ENV, timeout=300)
    return r.returncode, r.stderr


@pytest.fixture(scope="module")
def results() -> dict[str, tuple[int, str]]:
    # one fresh interpreter per module; two at a time (the test machines are small)
    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(zip(MODULES, pool.map(_import_alone, MODULES)))


def test_walk_finds_the_package() -> None:
    assert {"a2vtool", "a2vtool.cli", "a2vtool.embeddings", "a2vtool.embeddings_admin",
            "a2vtool.memory.workloads", "a2vtool.stages.memcheck"} <= set(MODULES)


@pytest.mark.parametrize("module", MODULES)
def test_module_imports_alone(module: str, results: dict[str, tuple[int, str]]) -> None:
    code, stderr = results[module]
    assert code == 0, f"`python -c 'import {module}'` failed in a fresh interpreter (exit {code}):\n{stderr}"
