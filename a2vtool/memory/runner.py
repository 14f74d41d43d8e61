"""memcheck runner: the Workload protocol, self-test leak injection, and the measure-analyse-report loop."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from a2vtool import SCHEMA_VERSION, ui
from a2vtool.errors import InputError
from a2vtool.memory import probes
from a2vtool.memory.analysis import analyse
from a2vtool.memory.report import write_report

LEAK_KINDS = ("tensor", "graph", "list")
TENSOR_LEAK_SHAPE = (1024, 1024)  # float32: 4 MB kept per round
LIST_LEAK_ITEMS = 200_000         # ints kept per round (about 7-8 MB)
CUDA_SNAPSHOT = "cuda_snapshot.pickle"

# What injected leaks keep alive. Module-level on purpose (a leak is a reference nobody drops); cleared at the
# end of every run_memcheck so that the calling process does not keep it.
_HELD: dict[str, list[Any]] = {}


class Workload(Protocol):
    """What memcheck runs. `setup` loads everything (it is not measured as growth: it precedes the baseline);
    `run_round(r, on_step)` does one round and may call `on_step(label)` after each node step so that per-step
    probes can be taken; `close` frees everything (it is called even when a round fails).
    A factory building a Workload must validate its configuration before returning (errors exit 2 before
    anything runs) and leave heavy loading to `setup`."""

    name: str

    def setup(self) -> None: ...

    def run_round(self, r: int, on_step: Callable[[str], None]) -> None: ...

    def close(self) -> None: ...


def make_leak(kind: str) -> Callable[[int], None]:
    """A function called after every round that keeps something alive: a known leak for self-tests.

    tensor: a 4 MB float32 tensor per round; graph: the loss of a forward pass through a small model, kept
    with its autograd graph (no .detach()); list: 200,000 new ints appended to one Python list per round.
    """
    if kind not in LEAK_KINDS:
        raise InputError(f"unknown leak kind {kind!r}", hint=f"use one of {', '.join(LEAK_KINDS)}")
    import torch

    held = _HELD.setdefault(kind, [])
    if kind == "tensor":
        def leak(r: int) -> None:
            held.append(torch.full(TENSOR_LEAK_SHAPE, float(r)))
        return leak
    if kind == "graph":
        gen = torch.Generator().manual_seed(1234)
        model = torch.nn.Sequential(torch.nn.Linear(128, 256), torch.nn.ReLU(), torch.nn.Linear(256, 1))

        def leak(r: int) -> None:
            x = torch.randn(256, 128, generator=gen)
            loss = model(x).pow(2).mean()
            held.append(loss)  # the bug of seed 002: kept without .detach(), so its whole graph stays alive
        return leak

    def leak(r: int) -> None:
        start = 10**9 + r * LIST_LEAK_ITEMS
        held.extend(range(start, start + LIST_LEAK_ITEMS))
    return leak


class _Leaky:
    """A workload with a known leak added after each of its rounds."""

    def __init__(self, inner: Workload, kind: str) -> None:
        self.inner = inner
        self.kind = kind
        self.name = f"{inner.name}+leak:{kind}"
        self._leak: Callable[[int], None] | None = None

    def setup(self) -> None:
        self.inner.setup()
        self._leak = make_leak(self.kind)

    def run_round(self, r: int, on_step: Callable[[str], None]) -> None:
        self.inner.run_round(r, on_step)
        assert self._leak is not None
        self._leak(r)

    def close(self) -> None:
        self._leak = None
        self.inner.close()


def inject(workload: Workload, kind: str | None) -> Workload:
    """`workload` itself, or wrapped with the `kind` leak (tensor, graph or list)."""
    if kind is None:
        return workload
    if kind not in LEAK_KINDS:
        raise InputError(f"unknown leak kind {kind!r}", hint=f"use one of {', '.join(LEAK_KINDS)}")
    return _Leaky(workload, kind)


def check_args(rounds: int, warmup: int, threshold_pct: float, slope_tolerance_pct: float) -> None:
    if rounds < 2:
        raise InputError(f"rounds must be >= 2, got {rounds}")
    if not 0 <= warmup < rounds - 1:
        raise InputError(f"warmup must be between 0 and rounds-2 = {rounds - 2} (2 measured rounds at least), "
                         f"got {warmup}")
    if threshold_pct <= 0 or slope_tolerance_pct < 0:
        raise InputError("threshold_pct must be > 0 and slope_tolerance_pct >= 0")


def run_memcheck(workload: Workload, *, rounds: int, warmup: int, threshold_pct: float, slope_tolerance_pct: float,
                 per_step: bool, trace: bool, inject_leak: str | None, out: Path, cuda_snapshot: bool,
                 tensors: bool = True, meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run `rounds` rounds of `workload`, sample after each (and after each step with `per_step`), analyse the
    rounds after `warmup`, write memreport.json, memory.csv and memory.png into `out`, and return the report.

    Never raises on a leak: the caller decides (the CLI raises LeakDetected, exit 3, on verdict "leak").
    """
    check_args(rounds, warmup, threshold_pct, slope_tolerance_pct)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    wl = inject(workload, inject_leak)
    samples: list[dict[str, Any]] = []
    seq = itertools.count()
    state: dict[str, Any] = {"round": -1, "first_snap": None}
    top: list[dict[str, Any]] = []
    started_trace = recording = False
    files: dict[str, str] = {}
    t0 = time.monotonic()

    def take(r: int, phase: str, label: str | None = None) -> dict[str, Any]:
        s = probes.sample(next(seq), r, phase, tensors=tensors, trace=trace)
        if label is not None:
            s["label"] = label
        samples.append(s)
        return s

    def on_step(label: str) -> None:
        if per_step:
            take(state["round"], "step", str(label))

    try:
        if trace:
            started_trace = probes.trace_start()
        if cuda_snapshot:
            recording = probes.cuda_history_start()
            if not recording:
                ui.warn("--cuda-snapshot ignored: CUDA is not available")
        wl.setup()
        take(-1, "setup")
        with ui.progress(f"memcheck {wl.name}", rounds) as advance:
            for r in range(rounds):
                state["round"] = r
                wl.run_round(r, on_step)
                if trace and r == warmup:
                    # before the sample, so the snapshot's own memory is part of the baseline
                    state["first_snap"] = probes.trace_snapshot()
                s = take(r, "round")
                advance(status=f"rss {s.get('rss_mb', 0):.0f} MB"
                        + (f", {s['tensor_count']:.0f} tensors" if "tensor_count" in s else ""))
        if state["first_snap"] is not None:
            top = probes.trace_top(state["first_snap"], probes.trace_snapshot())
        if recording:
            probes.cuda_history_dump(str(out / CUDA_SNAPSHOT))
            recording = False
            files["cuda_snapshot"] = str(out / CUDA_SNAPSHOT)
    finally:
        state.clear()
        try:
            wl.close()
        finally:
            _HELD.clear()
            if started_trace:
                import tracemalloc

                tracemalloc.stop()
            if recording:
                import torch

                torch.cuda.memory._record_memory_history(enabled=None)
    verdict = analyse(samples, warmup, threshold_pct, slope_tolerance_pct, trace_top=top)
    report: dict[str, Any] = {
        "kind": "memreport",
        "schema_version": SCHEMA_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "workload": wl.name,
        "rounds": rounds,
        "per_step": per_step,
        "trace": trace,
        "tensors": tensors,
        "inject_leak": inject_leak,
        "duration_s": round(time.monotonic() - t0, 3),
        **(meta or {}),
        **verdict,
        "files": files,
    }
    write_report(out, report, samples)
    return report
