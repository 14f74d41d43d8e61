"""Diffusion pipelines for rendering: loading without text encoders, one cached per process, freeing, expected shapes."""

from __future__ import annotations

import gc
import warnings
from dataclasses import dataclass, field
from typing import Any

from a2vtool.errors import InputError

# family -> components not needed when conditioning comes from adapters (or stored text targets)
NO_TEXT: dict[str, dict[str, Any]] = {
    "sd": {"text_encoder": None, "tokenizer": None, "safety_checker": None, "feature_extractor": None,
           "requires_safety_checker": False},
    "sdxl": {"text_encoder": None, "tokenizer": None, "text_encoder_2": None, "tokenizer_2": None},
    "flux": {"text_encoder": None, "tokenizer": None, "text_encoder_2": None, "tokenizer_2": None},
}
DEFAULT_GUIDANCE = {"sd": 7.5, "sdxl": 5.0, "flux": 0.0}


@dataclass
class Loaded:
    """A loaded pipeline and what it was loaded with."""

    pipe: Any
    family: str
    name: str
    device: str
    dtype: Any
    key: tuple[Any, ...]
    savers: list[str] = field(default_factory=list)


_CACHE: dict[str, Loaded | None] = {"current": None}


def load_pipeline(name: str, family: str, device: str, dtype: Any, *, offload: bool = False,
                  attention_slicing: bool = False, vae_tiling: bool = False) -> Loaded:
    """Load `name` (folder or hub id) without text encoders on `device`; memory savers apply on CUDA only."""
    from diffusers import DiffusionPipeline

    from a2vtool.runtime import load_pretrained

    kwargs = dict(NO_TEXT[family])
    kwargs["torch_dtype"] = dtype
    with warnings.catch_warnings():  # diffusers >= 0.36 renames torch_dtype to dtype; older ones only know torch_dtype
        warnings.filterwarnings("ignore", message=".*torch_dtype.*", category=FutureWarning)
        pipe = load_pretrained(DiffusionPipeline.from_pretrained, name, "diffusion pipeline", **kwargs)
    savers: list[str] = []
    cuda = device.startswith("cuda")
    if cuda and offload:
        try:
            import accelerate  # noqa: F401
        except ImportError:
            raise InputError("offload needs the accelerate package", hint="pip install accelerate, or set offload false") from None
        gpu = int(device.split(":")[1]) if ":" in device else 0
        pipe.enable_model_cpu_offload(gpu_id=gpu)
        savers.append("offload")
    else:
        pipe.to(device)
    if cuda and attention_slicing and hasattr(pipe, "enable_attention_slicing"):
        pipe.enable_attention_slicing()
        savers.append("attention_slicing")
    if cuda and vae_tiling and hasattr(pipe.vae, "enable_tiling"):
        pipe.vae.enable_tiling()
        savers.append("vae_tiling")
    pipe.set_progress_bar_config(disable=True)
    key = (name, family, device, str(dtype), offload, attention_slicing, vae_tiling)
    return Loaded(pipe, family, name, device, dtype, key, savers)


def get_pipeline(name: str, family: str, device: str, dtype: Any, **savers: bool) -> Loaded:
    """The process-wide pipeline: reused when loaded with the same settings, else the old one is freed first.
    Exactly one pipeline is ever held, so rendering every round keeps memory flat."""
    key = (name, family, device, str(dtype), savers.get("offload", False), savers.get("attention_slicing", False),
           savers.get("vae_tiling", False))
    cur = _CACHE["current"]
    if cur is not None and cur.key == key:
        return cur
    release_pipeline()
    loaded = load_pipeline(name, family, device, dtype, **savers)
    _CACHE["current"] = loaded
    return loaded


def release_pipeline() -> None:
    """Drop the cached pipeline and return its memory (host and CUDA)."""
    cur = _CACHE["current"]
    _CACHE["current"] = None
    if cur is not None:
        if "offload" in cur.savers and hasattr(cur.pipe, "remove_all_hooks"):
            cur.pipe.remove_all_hooks()
        del cur
    free_memory()


def free_memory() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def expected_shapes(pipe: Any, family: str) -> dict[str, tuple[int | None, ...]]:
    """What the pipeline's denoiser accepts per slot, read from its components' configs (None = any length)."""
    return expected_from_config(family, dict(pipe.transformer.config if family == "flux" else pipe.unet.config))


def denoiser_config(name: str, family: str) -> dict[str, Any]:
    """The UNet / transformer config of a pipeline (folder or hub id), read without loading any weights."""
    from diffusers import FluxTransformer2DModel, UNet2DConditionModel

    from a2vtool.runtime import load_pretrained

    cls, sub = (FluxTransformer2DModel, "transformer") if family == "flux" else (UNet2DConditionModel, "unet")
    return dict(load_pretrained(cls.load_config, name, f"{sub} config", subfolder=sub))


def expected_from_config(family: str, cfg: dict[str, Any]) -> dict[str, tuple[int | None, ...]]:
    """SD: prompt_embeds 77 x cross_attention_dim; SDXL adds pooled; FLUX: N x joint_attention_dim + pooled."""
    if family == "flux":
        return {"prompt_embeds": (None, int(cfg["joint_attention_dim"])),
                "pooled_prompt_embeds": (int(cfg["pooled_projection_dim"]),)}
    cross = cfg["cross_attention_dim"]
    cross = int(cross if isinstance(cross, int) else cross[0])
    out: dict[str, tuple[int | None, ...]] = {"prompt_embeds": (77, cross)}
    if family == "sdxl":
        out["pooled_prompt_embeds"] = (int(cfg["projection_class_embeddings_input_dim"]) - 6 * int(cfg["addition_time_embed_dim"]),)
    return out


def default_size(pipe: Any, family: str) -> tuple[int, int]:
    """The pipeline's own default (height, width)."""
    scale = int(getattr(pipe, "vae_scale_factor", 8))
    if family == "flux":
        s = int(getattr(pipe, "default_sample_size", 128)) * scale
    else:
        s = int(pipe.unet.config.sample_size) * scale
    return s, s


def check_size(family: str, height: int, width: int, vae_scale: int) -> None:
    mult = 2 * vae_scale if family == "flux" else 8
    for what, v in (("height", height), ("width", width)):
        if v % mult:
            raise InputError(f"{what} {v} is not a multiple of {mult}, which this {family} pipeline needs")


def check_conditioning(shapes: dict[str, tuple[int, ...]], expected: dict[str, tuple[int | None, ...]],
                       family: str, source: str, pipeline: str) -> None:
    """Slot names and per-sample shapes of the conditioning must be what the pipeline expects (InputError, exit 2)."""
    def fmt(d: dict[str, tuple[int | None, ...]]) -> str:
        return ", ".join(f"{k} {'x'.join('N' if v is None else str(v) for v in sh)}" for k, sh in sorted(d.items()))

    missing = [s for s in expected if s not in shapes]
    extra = [s for s in shapes if s not in expected]
    if missing or extra:
        raise InputError(f"{source} gives {fmt(shapes)} but the {family} pipeline {pipeline} expects {fmt(expected)} "
                         f"(missing {missing}, unexpected {extra})", hint="use adapters trained for this pipeline family")
    for slot, want in expected.items():
        got = tuple(shapes[slot])
        if len(got) != len(want) or any(w is not None and g != w for g, w in zip(got, want)):
            shown = "x".join("N" if w is None else str(w) for w in want)
            raise InputError(f"{source} {slot} has shape {'x'.join(map(str, got))} but the {family} pipeline "
                             f"{pipeline} expects {shown}", hint="use adapters trained for this pipeline")
