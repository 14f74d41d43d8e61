"""memcheck workload: each round renders the configured generate-images selection into a scratch folder."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable


class GenerateImagesWorkload:
    """Round r renders every selected image afresh (no skipping) into scratch/round-r, then deletes it.
    The one pipeline stays cached across rounds (as in federate); everything else must be freed."""

    name = "generate-images"

    def __init__(self, cfg: Any) -> None:
        from a2vtool.config import load_config
        from a2vtool.imaging.config import GenerateConfig

        self.scratch = Path(tempfile.mkdtemp(prefix="a2v-memcheck-images-"))
        self.cfg = load_config(GenerateConfig, cfg.config, list(cfg.set),
                               {"device": cfg.device, "seed": cfg.seed, "out": str(self.scratch / "round")})

    def setup(self) -> None:
        from a2vtool.stages.generate_images import check_inputs

        check_inputs(self.cfg)

    def run_round(self, r: int, on_step: Callable[[str], None]) -> None:
        from a2vtool.stages.generate_images import run

        out = self.scratch / f"round-{r:04d}"
        run(self.cfg.model_copy(update={"out": out}), keep_pipeline=True)
        shutil.rmtree(out, ignore_errors=True)
        on_step("render")

    def close(self) -> None:
        from a2vtool.imaging.pipeline import release_pipeline

        release_pipeline()
        shutil.rmtree(self.scratch, ignore_errors=True)


def make(cfg: Any) -> GenerateImagesWorkload:
    return GenerateImagesWorkload(cfg)
