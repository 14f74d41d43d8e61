"""Imaging settings: the render options shared by `generate-images` and federate's per-round images."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from a2vtool.config import StageConfig, Strict
from a2vtool.models.text_targets import DEFAULT_TEMPLATE


class RenderOptions(Strict):
    """How the diffusion pipeline draws: steps, guidance, size, batching, precision, negatives, memory savers."""

    steps: int = Field(4, ge=1, le=1000, description="Denoising steps per image (FLUX.1-schnell: 1-4; SD: 20-50).")
    guidance: float | None = Field(None, ge=0, description="Guidance scale; None = the family default (SD 7.5, FLUX 0).")
    height: int | None = Field(None, ge=8, description="Image height in px; None = the pipeline's default size.")
    width: int | None = Field(None, ge=8, description="Image width in px; None = the pipeline's default size.")
    batch_size: int = Field(4, ge=1, le=256, description="Images per pipeline call.")
    dtype: Literal["auto", "fp32", "fp16", "bf16"] = Field("auto", description="Pipeline precision; auto = bf16 on CUDA, fp32 on CPU.")
    negative: Literal["empty", "zeros"] = Field(
        "empty", description="Unconditional embeddings for classifier-free guidance: the encoded empty prompt, or zeros.")
    offload: bool = Field(False, description="CUDA only: model CPU offload (needs accelerate); saves GPU memory, slower.")
    attention_slicing: bool = Field(False, description="CUDA only: attention slicing (lower peak memory).")
    vae_tiling: bool = Field(False, description="CUDA only: VAE tiling (large images with less memory).")
    template: str = Field(DEFAULT_TEMPLATE, description="Prompt template of the text targets (oracle, negatives, CLIP score).")
    targets_root: Path = Field(Path("cache/text-targets"), description="Where text-target artifacts are cached.")


class ImagesSpec(RenderOptions):
    """Images rendered inside `federate` every N rounds (into run_dir/images/round-NNNN/<model>/)."""

    every: int = Field(0, ge=0, description="Render images every N rounds (0 = off).")
    splits: list[str] = Field(["test"], description="Splits whose clips are rendered.")
    max_per_class: int = Field(2, ge=1, description="Clips rendered per class and model.")
    models: Literal["global", "nodes", "both"] = Field("global", description="Render with the global adapters, each node's, or both.")
    seed_offset: int = Field(0, description="Added to the run seed for image noise (per-image seeds derive from it and the clip id).")
    eval_clip: str | None = Field(None, description="CLIP model (hub id or folder) for zero-shot evaluation of the images; None = off.")


class GenerateConfig(RenderOptions, StageConfig):
    """`a2vtool generate-images`: adapters + embeddings (or generators, or oracle targets) -> PNGs, grids, manifest."""

    adapters: Path | None = Field(None, description="A federate run dir (uses its final adapters) or one adapters .safetensors file.")
    which: str = Field("global", description="Adapters of a run dir: global or a node name (node-00, ...).")
    embeddings: Path | None = Field(None, description="Embedding cache (folder, or a root holding exactly one cache).")
    dataset: str | None = Field(None, description="Dataset inside the cache (needed if it holds several).")
    classes: list[str] | None = Field(None, description="Classes to render; None = every class of the source.")
    splits: list[str] | None = Field(["test"], description="Splits whose clips are rendered (the dataset's own, else the federate run's partition); None = every split.")
    max_per_class: int | None = Field(None, ge=1, description="At most this many clips per class (first in cache order).")
    count: int | None = Field(None, ge=1, description="At most this many images in all.")
    from_generators: Path | None = Field(None, description="A train-generator output: render synthetic embeddings, no audio needed.")
    samples_per_class: int = Field(4, ge=1, description="Generators / oracle without embeddings: images per class.")
    pipeline: str = Field("black-forest-labs/FLUX.1-schnell", description="Diffusion pipeline: hub id or local folder.")
    oracle: bool = Field(False, description="Render from each class's ground-truth text targets (upper-bound baseline).")
    max_sequence_length: int | None = Field(None, ge=1, le=512, description="FLUX oracle/negatives: T5 tokens; None = the adapters' own.")
    eval_clip: str | None = Field(None, description="CLIP model (hub id or folder) for zero-shot evaluation; None = off.")
    grid_columns: int = Field(8, ge=1, description="Columns of the per-class grids.")
    out: Path = Field(Path("runs/images"), description="Output folder: images/, grids/, journal.jsonl, manifest.json.")

    @model_validator(mode="after")
    def _sources(self) -> GenerateConfig:
        problems = []
        if self.embeddings is not None and self.from_generators is not None:
            problems.append("give embeddings or from_generators, not both")
        if not self.oracle and self.adapters is None:
            problems.append("adapters is required (a run dir or an adapters .safetensors file) unless oracle is true")
        if not self.oracle and self.embeddings is None and self.from_generators is None:
            problems.append("give embeddings (a cache) or from_generators (a generators folder)")
        if self.oracle and self.embeddings is None and self.from_generators is None and not self.classes:
            problems.append("oracle without embeddings or generators needs classes")
        if problems:
            raise ValueError("; ".join(problems))
        return self
