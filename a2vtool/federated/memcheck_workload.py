"""memcheck workload: the real federate round loop, run in-process into a scratch run directory."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable


class FederateWorkload:
    """Each memcheck round is one federated round (node training, aggregation, evaluation, checkpoint)."""

    name = "federate"

    def __init__(self, cfg: Any) -> None:
        from a2vtool.config import load_config
        from a2vtool.federated.config import FederateConfig

        self.scratch = Path(tempfile.mkdtemp(prefix="a2v-memcheck-federate-"))
        overrides = {"rounds": cfg.rounds, "out": str(self.scratch / "run"), "device": cfg.device, "seed": cfg.seed,
                     "checkpoints.keep_last": 2}
        self.cfg = load_config(FederateConfig, cfg.config, list(cfg.set), overrides)
        self.fed: Any = None

    def setup(self) -> None:
        from a2vtool.federated.loop import LocalEngine

        self.fed = LocalEngine(self.cfg, self.cfg.out)  # config and data errors surface here, before any model loads
        self.fed.setup()

    def run_round(self, r: int, on_step: Callable[[str], None]) -> None:
        self.fed.run_round(r + 1, on_step=on_step)  # memcheck counts rounds from 0, federate from 1

    def close(self) -> None:
        if self.fed is not None:
            self.fed.close()
            self.fed = None
        shutil.rmtree(self.scratch, ignore_errors=True)


def make(cfg: Any) -> FederateWorkload:
    return FederateWorkload(cfg)
