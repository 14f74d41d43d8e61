"""`memcheck` stage: run a workload (a federate config, ...) for many rounds and report whether memory grows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from a2vtool.config import dump_config
from a2vtool.errors import InputError
from a2vtool.memory.config import NEEDS_CONFIG, MemcheckConfig

__all__ = ["NEEDS_CONFIG", "MemcheckConfig", "check_inputs", "run"]  # the config model lives in memory.config


def check_inputs(cfg: MemcheckConfig) -> None:
    """Errors that need the file system, raised before anything is loaded."""
    if cfg.config is not None and not Path(cfg.config).is_file():
        raise InputError(f"{cfg.workload} config file not found: {cfg.config}", hint="check --config")


def run(cfg: MemcheckConfig) -> dict[str, Any]:
    """Build the workload (validating its own config first), run memcheck and return the report.

    The report's "verdict" is "clean" or "leak"; raising LeakDetected is the caller's choice (the CLI does).
    """
    from a2vtool.memory.runner import run_memcheck
    from a2vtool.memory.workloads import get_workload

    check_inputs(cfg)
    workload = get_workload(cfg.workload)(cfg)
    return run_memcheck(
        workload, rounds=cfg.rounds, warmup=cfg.warmup, threshold_pct=cfg.threshold_pct,
        slope_tolerance_pct=cfg.slope_tolerance_pct, per_step=cfg.per_step, trace=cfg.trace,
        inject_leak=cfg.inject_leak, out=cfg.out, cuda_snapshot=cfg.cuda_snapshot, tensors=cfg.tensors,
        meta={"config": dump_config(cfg)},
    )
