"""memcheck settings: what `a2vtool memcheck` runs and how growth is judged (the stage and the workloads share it)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from a2vtool.config import StageConfig

NEEDS_CONFIG = ("federate", "generate-images", "train-generator")


class MemcheckConfig(StageConfig):
    """`a2vtool memcheck`: which workload, how many rounds, and when growth is a leak."""

    workload: Literal["federate", "generate-images", "train-generator", "synthetic"] = Field(
        "federate", description="What to run: a stage's round loop, or 'synthetic' (a small MLP loop for self-tests).")
    config: Path | None = Field(
        None, description="The workload's own config file (e.g. a federate config); required except for synthetic.")
    set: list[str] = Field(default_factory=list, description="key.path=value overrides for the workload's config.")
    rounds: int = Field(10, ge=2, le=100_000, description="Rounds to run, warm-up included.")
    warmup: int = Field(2, ge=0, description="First rounds excluded from the analysis (caches, allocator warm-up).")
    threshold_pct: float = Field(5.0, gt=0, le=1000, description="Growth (% of the first measured round) that is a leak.")
    slope_tolerance_pct: float = Field(
        0.25, ge=0, le=100, description="Steady growth per round (% of the first measured value) tolerated as noise.")
    per_step: bool = Field(False, description="Also sample after every node step (plotted; the verdict uses rounds).")
    trace: bool = Field(False, description="Run tracemalloc and report the allocation sites that grew (slower).")
    tensors: bool = Field(True, description="Scan gc for live tensors and Python objects after every round.")
    inject_leak: Literal["tensor", "graph", "list"] | None = Field(
        None, description="Self-test: add a known leak (tensor, graph or list) after every round.")
    cuda_snapshot: bool = Field(False, description="On CUDA, record allocator history and save cuda_snapshot.pickle.")
    out: Path = Field(Path("runs/memcheck"), description="Folder for memreport.json, memory.csv and memory.png.")

    @model_validator(mode="after")
    def _check(self) -> MemcheckConfig:
        problems = []
        if self.warmup > self.rounds - 2:
            problems.append(f"warmup ({self.warmup}) must be at most rounds-2 ({self.rounds - 2}): at least 2 rounds "
                            "must be measured after warm-up (5 or more recommended)")
        if self.workload in NEEDS_CONFIG and self.config is None:
            problems.append(f"workload {self.workload!r} needs its config file: set config (--config FILE)")
        if problems:
            raise ValueError("; ".join(problems))
        return self
