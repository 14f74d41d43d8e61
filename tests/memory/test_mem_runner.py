"""run_memcheck end to end: a clean synthetic loop passes at 1 %, each injected leak is caught and named."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from a2vtool.errors import A2VError
from a2vtool.memory import runner
from a2vtool.memory.analysis import analyse
from a2vtool.memory.runner import run_memcheck
from a2vtool.memory.workloads import WORKLOADS, lazy, make_synthetic
from a2vtool.stages.memcheck import MemcheckConfig

ROUNDS, WARMUP = 8, 2  # the clean run; leak runs use LEAK_ROUNDS (count rules need 3 measured rounds)
LEAK_ROUNDS = 6


def synthetic() -> Any:
    return make_synthetic(MemcheckConfig(workload="synthetic", device="cpu"))


def go(workload: Any, out: Path, **kw: Any) -> dict[str, Any]:
    args: dict[str, Any] = dict(rounds=ROUNDS, warmup=WARMUP, threshold_pct=5.0, slope_tolerance_pct=0.25,
                                per_step=False, trace=False, inject_leak=None, out=out, cuda_snapshot=False)
    args.update(kw)
    return run_memcheck(workload, **args)


@pytest.fixture(scope="module")
def run_kind(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], tuple[dict[str, Any], Path]]:
    cache: dict[str, tuple[dict[str, Any], Path]] = {}

    def get(kind: str) -> tuple[dict[str, Any], Path]:
        if kind not in cache:
            out = tmp_path_factory.mktemp(f"memcheck-{kind}")
            if kind == "clean":
                rep = go(synthetic(), out, threshold_pct=1.0)
            elif kind == "once":
                rep = go(OnceWorkload(), out, rounds=LEAK_ROUNDS, threshold_pct=1.0, per_step=True)
            else:
                rep = go(synthetic(), out, rounds=LEAK_ROUNDS, inject_leak=kind)
            cache[kind] = (rep, out)
        return cache[kind]

    return get


def test_clean_synthetic_passes_at_one_percent(run_kind: Callable[[str], tuple[dict[str, Any], Path]]) -> None:
    rep, _ = run_kind("clean")
    assert rep["verdict"] == "clean", rep["reasons"]
    assert rep["culprits"] == [] and rep["rounds_measured"] == ROUNDS - WARMUP
    assert rep["probes"]["tensor_count"]["growth_pct"] == 0
    assert not runner._HELD


def test_outputs_have_a_row_per_sample(run_kind: Callable[[str], tuple[dict[str, Any], Path]]) -> None:
    rep, out = run_kind("once")
    n = 1 + LEAK_ROUNDS * (1 + 1)  # setup + per round: 1 step + the end of round
    with open(out / "memory.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert len(table) == n
    assert [r["phase"] for r in table[:4]] == ["setup", "step", "round", "step"]
    assert table[1]["label"] == "work" and float(table[1]["x"]) == 0.5 and float(table[2]["x"]) == 1.0
    assert {"rss_mb", "uss_mb", "tensor_count", "tensor_mb", "graph_tensors", "fds"} <= set(table[0])
    assert all(float(r["rss_mb"]) > 0 for r in table)
    saved = json.loads((out / "memreport.json").read_text())
    assert saved["verdict"] == "clean" and len(saved["samples"]) == n and saved["kind"] == "memreport"
    assert saved["probes"]["rss_mb"]["first"] == pytest.approx(rep["probes"]["rss_mb"]["first"])
    png = (out / "memory.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    assert set(rep["files"]) == {"report", "csv", "plot"}


def test_tensor_leak_is_named(run_kind: Callable[[str], tuple[dict[str, Any], Path]]) -> None:
    rep, _ = run_kind("tensor")
    assert rep["verdict"] == "leak"
    assert rep["probes"]["tensor_count"]["leak"] and rep["probes"]["tensor_mb"]["leak"]
    assert any("tensor group cpu float32 [1024, 1024] grows every round" in c and "+4.00 MB/round" in c
               for c in rep["culprits"])
    assert not runner._HELD


def test_graph_leak_is_named_as_autograd_history(run_kind: Callable[[str], tuple[dict[str, Any], Path]]) -> None:
    rep, _ = run_kind("graph")
    assert rep["verdict"] == "leak"
    assert rep["probes"]["graph_tensors"]["leak"]
    assert "tensors with autograd history are growing" in rep["culprits"][0]
    assert rep["culprit_details"][0]["kind"] == "autograd"


def test_list_leak_is_named_as_python_objects(run_kind: Callable[[str], tuple[dict[str, Any], Path]]) -> None:
    rep, _ = run_kind("list")
    assert rep["verdict"] == "leak"
    assert not rep["probes"]["tensor_count"]["leak"]
    assert any("Python objects growing" in c and "list/int objects growing" in c for c in rep["culprits"])


class StringLeak:
    """Keeps 20,000 new strings per round (a cheap workload for the tracemalloc wiring)."""

    name = "strings"

    def __init__(self) -> None:
        self.kept: list[str] = []

    def setup(self) -> None:
        pass

    def run_round(self, r: int, on_step: Callable[[str], None]) -> None:
        self.kept.extend(f"{r}-{i}-{'x' * 40}" for i in range(20_000))  # the growing site

    def close(self) -> None:
        self.kept.clear()


def test_trace_names_the_growing_allocation_site(tmp_path: Path) -> None:
    rep = go(StringLeak(), tmp_path, rounds=4, warmup=1, trace=True, tensors=False)
    line = StringLeak.run_round.__code__.co_firstlineno + 1
    assert rep["tracemalloc_top"][0]["site"].endswith(f"test_mem_runner.py:{line}")
    assert rep["tracemalloc_top"][0]["count_diff"] >= 2 * 20_000 - 100
    assert "traced_mb" in (tmp_path / "memory.csv").read_text().splitlines()[0]
    import tracemalloc

    assert not tracemalloc.is_tracing()


class OnceWorkload:
    """Allocates 64 MB of tensor and a 300k-item list in round 1 (warm-up), keeps them, then stays flat."""

    name = "once"

    def __init__(self) -> None:
        self.kept: list[Any] = []

    def setup(self) -> None:
        self.kept = []

    def run_round(self, r: int, on_step: Callable[[str], None]) -> None:
        if r == 1:
            self.kept.append(torch.ones(16 << 20))
            self.kept.append(list(range(10**9, 10**9 + 300_000)))
        x = torch.randn(128, 128)
        _ = float((x @ x).sum())
        on_step("work")

    def close(self) -> None:
        self.kept.clear()


def test_one_off_allocation_in_warmup_is_not_a_leak(run_kind: Callable[[str], tuple[dict[str, Any], Path]]) -> None:
    rep, out = run_kind("once")
    assert rep["verdict"] == "clean", rep["reasons"]
    # the same samples with no warm-up do show the jump
    samples = json.loads((out / "memreport.json").read_text())["samples"]
    assert analyse(samples, 0, 1.0, 0.25)["verdict"] == "leak"


class FailingWorkload(OnceWorkload):
    name = "failing"
    closed = False

    def run_round(self, r: int, on_step: Callable[[str], None]) -> None:
        raise RuntimeError("boom")

    def close(self) -> None:
        FailingWorkload.closed = True


def test_a_failing_round_closes_the_workload_and_clears_leaks(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="boom"):
        go(FailingWorkload(), tmp_path, inject_leak="tensor")
    assert FailingWorkload.closed and not runner._HELD


def test_bad_arguments_and_missing_workloads() -> None:
    with pytest.raises(A2VError, match="warmup"):
        go(synthetic(), Path("/nonexistent"), rounds=4, warmup=3)
    with pytest.raises(A2VError, match="unknown leak kind"):
        runner.inject(synthetic(), "banana")
    cfg = MemcheckConfig(workload="synthetic")
    with pytest.raises(A2VError, match="workload nowhere is not available in this build"):
        lazy("a2vtool.no_such_module_here:make", "nowhere")(cfg)
    with pytest.raises(A2VError, match="not available in this build"):
        lazy("a2vtool.memory.runner:no_such_factory", "nowhere")(cfg)
    assert set(WORKLOADS) == {"synthetic", "federate", "generate-images", "train-generator"}


def test_synthetic_restores_torch_threads() -> None:
    before = torch.get_num_threads()
    w = synthetic()
    w.setup()
    w.run_round(0, lambda label: None)
    w.close()
    assert torch.get_num_threads() == before


def test_report_files_from_hand_made_samples_with_cuda(tmp_path: Path) -> None:
    from a2vtool.memory.report import write_report

    samples = [{"step": 0, "round": -1, "phase": "setup", "rss_mb": 400.0, "cuda_allocated_mb": 0.0,
                "cuda_reserved_mb": 0.0, "tensor_groups": {"cuda:0 float32 [2]": [1, 8]}}]
    for r in range(6):
        samples.append({"step": r + 1, "round": r, "phase": "round", "rss_mb": 500.0 + r,
                        "cuda_allocated_mb": 100.0 + 10 * r, "cuda_reserved_mb": 200.0, "tensor_count": 5.0})
    verdict = analyse(samples, 1, 5.0, 0.25)
    assert verdict["verdict"] == "leak" and verdict["probes"]["cuda_allocated_mb"]["leak"]
    files = write_report(tmp_path, {"workload": "hand", **verdict}, samples)
    header = (tmp_path / "memory.csv").read_text().splitlines()
    assert header[0] == "step,round,phase,label,t,x,rss_mb,cuda_allocated_mb,cuda_reserved_mb,tensor_count"
    assert header[1].endswith(",400,0,0,") and len(header) == 1 + 7
    assert Path(files["plot"]).read_bytes()[:4] == b"\x89PNG"
    saved = json.loads((tmp_path / "memreport.json").read_text())
    assert "tensor_groups" not in saved["samples"][0] and saved["verdict"] == "leak"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_synthetic_with_snapshot(tmp_path: Path) -> None:
    w = make_synthetic(MemcheckConfig(workload="synthetic", device="cuda"))
    rep = go(w, tmp_path, rounds=5, warmup=1, cuda_snapshot=True, inject_leak="tensor")
    assert rep["verdict"] == "leak"
    assert "cuda_allocated_mb" in rep["probes"] and rep["probes"]["cuda_allocated_mb"]["first"] > 0
    assert (tmp_path / runner.CUDA_SNAPSHOT).stat().st_size > 0


def test_lazy_factories_accept_both_forms(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys
    import types

    mod = types.ModuleType("a2v_fake_workloads")
    seen: dict[str, Any] = {}

    def by_cfg(cfg: MemcheckConfig) -> Any:
        seen["cfg"] = cfg
        return OnceWorkload()

    def by_parts(config: Path | None = None, sets: list[str] | None = None, device: str = "auto", seed: int = 0) -> Any:
        seen["parts"] = (config, sets, device, seed)
        return OnceWorkload()

    mod.by_cfg, mod.by_parts = by_cfg, by_parts  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "a2v_fake_workloads", mod)
    cfg = MemcheckConfig(workload="train-generator", config=Path("x.json"), set=["a=1"], device="cpu", seed=7)
    assert lazy("a2v_fake_workloads:by_cfg", "x")(cfg).name == "once" and seen["cfg"] is cfg
    lazy("a2v_fake_workloads:by_parts", "x")(cfg)
    assert seen["parts"] == (Path("x.json"), ["a=1"], "cpu", 7)
