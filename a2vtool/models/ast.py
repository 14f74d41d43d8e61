"""The frozen audio encoder: loading an AST (hub id or folder), feature extraction and token reduction."""

from __future__ import annotations

import re
from typing import Any

from a2vtool.errors import InputError
from a2vtool.runtime import load_pretrained

TOKEN_MODE_RE = re.compile(r"^(full|cls|mean|pool:([1-9][0-9]*))$")


def check_token_mode(mode: str) -> str:
    if not TOKEN_MODE_RE.match(mode):
        raise InputError(f"unknown token mode {mode!r}", hint="use full, cls, mean or pool:N (e.g. pool:16)")
    return mode


def reduce_tokens(hidden: Any, mode: str) -> Any:
    """(B, L, D) encoder states -> (B, T, D) stored tokens: full (T=L), cls (token 0), mean, or pool:N."""
    import torch.nn.functional as F

    check_token_mode(mode)
    if mode == "full":
        return hidden
    if mode == "cls":
        return hidden[:, :1]
    if mode == "mean":
        return hidden.mean(dim=1, keepdim=True)
    n = int(mode.split(":")[1])
    return F.adaptive_avg_pool1d(hidden.transpose(1, 2).float(), n).transpose(1, 2).to(hidden.dtype)


def load_feature_extractor(name_or_path: str, revision: str | None, sample_rate: int | None) -> Any:
    from transformers import AutoFeatureExtractor

    kwargs: dict[str, Any] = {"revision": revision} if revision else {}
    if sample_rate is not None:
        kwargs["sampling_rate"] = sample_rate
    return load_pretrained(AutoFeatureExtractor.from_pretrained, name_or_path, "audio feature extractor", **kwargs)


def feature_settings(fe: Any) -> dict[str, Any]:
    """The feature extractor's settings that change its output, for the cache key."""
    d = dict(fe.to_dict())
    for k in ("processor_class", "feature_extractor_type", "_processor_class"):
        d.pop(k, None)
    return d


def load_audio_model(name_or_path: str, revision: str | None, device: str, dtype: Any) -> Any:
    """Load the encoder frozen, in eval mode, on `device` in `dtype`."""
    from transformers import AutoModel

    kwargs: dict[str, Any] = {"revision": revision} if revision else {}
    model = load_pretrained(AutoModel.from_pretrained, name_or_path, "audio model", dtype=dtype, **kwargs)
    model.requires_grad_(False)
    return model.eval().to(device)


def features(fe: Any, wave: Any, sample_rate: int) -> Any:
    """One clip's model input (frames, mel) as a float32 numpy array."""
    return fe(wave, sampling_rate=sample_rate, return_tensors="np")["input_values"][0]
