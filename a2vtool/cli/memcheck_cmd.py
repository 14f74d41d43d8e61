"""`a2vtool memcheck`: thin wrapper over stages.memcheck; exit 3 (LeakDetected) when memory grows."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from a2vtool.cli.common import DebugOpt, Flag, JsonOpt, config_command, emit, flag_overrides, run_guarded, shared_flags

FLAGS = (  # --config and --set set memcheck's own keys `config` and `set` (the workload's file and overrides)
    Flag("--config", "config", short="-c"),
    Flag("--workload", "workload", short="-w"),
    Flag("--rounds", "rounds", short="-r"),
    Flag("--warmup", "warmup"),
    Flag("--threshold", "threshold_pct"),
    Flag("--slope-tolerance", "slope_tolerance_pct"),
    Flag("--per-step", "per_step", switch=True),
    Flag("--trace", "trace", switch=True),
    Flag("--no-tensors", "tensors", switch=False),
    Flag("--inject-leak", "inject_leak"),
    Flag("--cuda-snapshot", "cuda_snapshot", switch=True),
    Flag("--set", "set", short="-s", multiple=True),
    *shared_flags(),
)

PROBE_KEYS = ("family", "unit", "role", "first", "last", "growth_pct", "slope_per_round", "slope_pct_per_round",
              "fit_growth_pct", "leak")


def summary(report: dict[str, Any]) -> dict[str, Any]:
    """The verdict without the samples: what `--json` prints and the table shows."""
    keys = ("verdict", "workload", "rounds", "warmup", "rounds_measured", "threshold_pct", "slope_tolerance_pct",
            "inject_leak", "reasons", "culprits", "suspects", "notes", "rule", "files", "duration_s")
    out = {k: report.get(k) for k in keys}
    out["probes"] = {name: {k: st.get(k) for k in PROBE_KEYS} for name, st in report.get("probes", {}).items()}
    out["tracemalloc_top"] = report.get("tracemalloc_top", [])[:5]
    return out


def _fmt(v: float, unit: str) -> str:
    return f"{v:,.1f} MB" if unit == "MB" else f"{v:,.0f}"


def _table(s: dict[str, Any]) -> Any:
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    leak = s["verdict"] == "leak"
    t = Table(title=f"memcheck {s['workload']}: {s['rounds']} rounds, {s['warmup']} warm-up, "
                    f"threshold {s['threshold_pct']:g}%, slope tolerance {s['slope_tolerance_pct']:g}%/round")
    for col in ("probe", "first", "last", "growth %", "slope/round", "verdict"):
        t.add_column(col, justify="left" if col in ("probe", "verdict") else "right")
    for name, st in s["probes"].items():
        verdict = "[bold red]LEAK[/]" if st["leak"] else ("info" if st["role"] == "info" else "[green]ok[/]")
        slope = f"{st['slope_per_round']:+,.2f}" + (f" ({st['slope_pct_per_round']:+.2f}%)" if st["unit"] == "MB" else "")
        t.add_row(name, _fmt(st["first"], st["unit"]), _fmt(st["last"], st["unit"]), f"{st['growth_pct']:+.2f}",
                  slope, verdict)
    parts: list[Any] = [t]
    head = Text("verdict: LEAK" if leak else "verdict: clean", style="bold red" if leak else "bold green")
    parts.append(head)
    for r in s.get("reasons") or []:
        parts.append(Text(f"  why: {r}"))
    for c in s.get("culprits") or []:
        parts.append(Text(f"  culprit: {c}", style="red"))
    for n in s.get("notes") or []:
        parts.append(Text(f"  note: {n}", style="yellow"))
    files = s.get("files") or {}
    if files:
        parts.append(Text("  wrote: " + ", ".join(str(v) for v in files.values()), style="dim"))
    return Group(*parts)


def register(app: typer.Typer) -> None:
    @config_command(app, "memcheck", "memcheck", FLAGS)
    def memcheck(
        memcheck_config: Annotated[Path | None, typer.Option(
            "--memcheck-config", help="A memcheck config JSON (flags override it).", show_default=False)] = None,
        flags: Any = None,
        as_json: JsonOpt = False,
        debug: DebugOpt = False,
    ) -> None:
        """Run a workload for many rounds and check that memory does not grow; exit 3 on a leak.

        Writes memreport.json, memory.csv and memory.png into --out.

        Exit codes: 0 clean, 3 leak detected, 2 bad config (nothing runs), 1 runtime failure.
        """

        def go() -> dict[str, Any]:
            from a2vtool.config import load_config
            from a2vtool.errors import LeakDetected
            from a2vtool.stages.memcheck import MemcheckConfig, run

            cfg = load_config(MemcheckConfig, memcheck_config, None, flag_overrides(MemcheckConfig, flags))
            s = summary(run(cfg))
            emit(s, as_json, _table)
            if s["verdict"] == "leak":
                first = (s.get("culprits") or s.get("reasons") or ["memory grows"])[0]
                raise LeakDetected(f"memory leak detected in {s['workload']}: {first}",
                                   hint=f"see {Path(cfg.out) / 'memreport.json'} and memory.png")
            return s

        run_guarded(go, debug=debug, as_json=as_json)
