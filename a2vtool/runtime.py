"""Run-time choices shared by stages: device and dtype resolution, seeding, model identity and loading."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

from a2vtool.artifacts import HashMemo, cache_key
from a2vtool.errors import InputError, ModelLoadError

DTYPES = {"fp32": "float32", "float32": "float32", "fp16": "float16", "float16": "float16",
          "bf16": "bfloat16", "bfloat16": "bfloat16"}


def resolve_device(name: str = "auto") -> str:
    """'auto' -> 'cuda' when available else 'cpu'; an unavailable explicit CUDA device is an input error."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"device {name!r} requested but CUDA is not available", hint="use --device cpu or auto")
    if name not in ("cpu", "mps") and not name.startswith("cuda"):
        raise InputError(f"unknown device {name!r}", hint="use auto, cpu, cuda or cuda:N")
    return name


def resolve_dtype(name: str, device: str) -> Any:
    """'auto' -> bf16 on CUDA, fp32 elsewhere; half types on CPU are allowed but slow."""
    import torch

    if name == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    if name not in DTYPES:
        raise InputError(f"unknown dtype {name!r}", hint="use auto, fp32, fp16 or bf16")
    return getattr(torch, DTYPES[name])


def seed_everything(seed: int) -> None:
    import random

    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def torch_generator(seed: int, device: str = "cpu") -> Any:
    import torch

    g = torch.Generator(device=device)
    g.manual_seed(seed)
    return g


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".json", ".txt", ".model")


def model_identity(name_or_path: str, revision: str | None = None, memo: HashMemo | None = None) -> dict[str, str]:
    """Identity of a model for cache keys: hub id + revision, or for a local folder a hash of its files."""
    p = Path(name_or_path).expanduser()
    if p.exists():
        if not p.is_dir():
            raise InputError(f"model path {p} is a file; point at the model's folder (Hugging Face layout)")
        memo = memo or HashMemo(None)
        files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix in WEIGHT_SUFFIXES)
        if not files:
            raise ModelLoadError(f"model folder {p} holds no config or weight files")
        digest = cache_key({str(f.relative_to(p)): memo.sha256(f) for f in files})
        return {"local_sha256": digest}
    return {"hub_id": name_or_path, "revision": revision or "main"}


def is_local(name_or_path: str) -> bool:
    return Path(name_or_path).expanduser().exists()


def load_pretrained(loader: Callable[..., Any], name_or_path: str, what: str, **kwargs: Any) -> Any:
    """Call `loader(name_or_path, **kwargs)` (a `from_pretrained`), turning fetch failures into one clear line."""
    local = is_local(name_or_path)
    if not local and name_or_path.startswith((".", "~", "/")):  # a path, never a hub id
        raise ModelLoadError(f"{what} folder not found: {name_or_path}",
                             hint="check the path, or build the tiny models with `a2vtool models tiny --out models/tiny`")
    if os.environ.get("HF_HUB_DISABLE_PROGRESS_BARS") == "1" and "diffusers" in getattr(loader, "__module__", ""):
        from diffusers.utils import logging as dlog

        dlog.disable_progress_bar()
    try:
        return loader(str(Path(name_or_path).expanduser()) if local else name_or_path, **kwargs)
    except (OSError, ValueError, EnvironmentError) as e:
        offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
        where = f"folder {name_or_path}" if local else f"hub id {name_or_path!r}"
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        hint = ("point at a local folder in Hugging Face layout, or build the tiny models with "
                "`a2vtool models tiny --out models/tiny`")
        mode = " (HF_HUB_OFFLINE is set)" if offline and not local else ""
        raise ModelLoadError(f"cannot load {what} from {where}{mode}: {reason}", hint=hint) from None
