"""`a2vtool memcheck` exit codes: 0 clean, 3 leak (JSON still printed), 2 bad config before anything runs."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from a2vtool import ui
from a2vtool.cli.memcheck_cmd import register
from a2vtool.memory import workloads


@pytest.fixture()
def app() -> Iterator[typer.Typer]:
    a = typer.Typer()
    register(a)

    @a.command("noop")
    def _noop() -> None:  # a second command so that "memcheck" stays a subcommand
        """Nothing."""

    yield a
    ui.set_quiet(False)


def invoke(app: typer.Typer, *args: str) -> object:
    return CliRunner().invoke(app, ["memcheck", *args])


def test_clean_synthetic_exits_0_with_a_table(app: typer.Typer, tmp_path: Path) -> None:
    out = tmp_path / "mc"
    r = invoke(app, "--workload", "synthetic", "--rounds", "6", "--warmup", "2", "--threshold", "1", "--out", str(out))
    assert r.exit_code == 0, r.output
    assert "verdict: clean" in r.stdout and "rss_mb" in r.stdout and "growth %" in r.stdout
    assert {p.name for p in out.iterdir()} >= {"memreport.json", "memory.csv", "memory.png"}
    saved = json.loads((out / "memreport.json").read_text())
    assert saved["config"]["workload"] == "synthetic" and saved["config"]["threshold_pct"] == 1.0


def test_injected_leak_exits_3_after_printing_the_json_verdict(app: typer.Typer, tmp_path: Path) -> None:
    r = invoke(app, "-w", "synthetic", "-r", "6", "--warmup", "2", "--inject-leak", "graph", "--json",
               "--set", "steps=2", "-o", str(tmp_path / "mc"))
    assert r.exit_code == 3, r.output
    verdict = json.loads(r.stdout)
    assert verdict["verdict"] == "leak" and verdict["inject_leak"] == "graph"
    assert "tensors with autograd history are growing" in verdict["culprits"][0]
    assert verdict["probes"]["graph_tensors"]["leak"] is True
    assert "memory leak detected" in r.stderr


@pytest.mark.parametrize(("args", "message"), [
    (["--workload", "synthetic", "--set", "bogus=1"], "bogus"),
    (["--config", "missing.json"], "not found"),
    (["--workload", "federate"], "needs its config file"),
    (["-w", "synthetic", "--rounds", "4", "--warmup", "3"], "warmup"),
    (["-w", "synthetic", "--inject-leak", "banana"], "inject_leak"),
    (["-w", "synthetic", "--threshold", "0"], "threshold_pct"),
])
def test_config_errors_exit_2_before_anything_runs(app: typer.Typer, tmp_path: Path, args: list[str],
                                                   message: str) -> None:
    out = tmp_path / "mc"
    r = invoke(app, *[a.replace("missing.json", str(tmp_path / "missing.json")) for a in args], "--out", str(out))
    assert r.exit_code == 2, r.output
    assert message in r.stderr
    assert not out.exists()


def test_unavailable_workload_exits_1(app: typer.Typer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "run.json"
    cfg.write_text("{}")
    monkeypatch.setitem(workloads.WORKLOADS, "federate", workloads.lazy("a2vtool.not_built_yet:make", "federate"))
    r = invoke(app, "--config", str(cfg), "--out", str(tmp_path / "mc"))
    assert r.exit_code == 1
    assert "workload federate is not available in this build" in r.stderr
    assert not (tmp_path / "mc").exists()
