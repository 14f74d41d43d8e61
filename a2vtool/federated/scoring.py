"""Zero-shot scoring of adapter outputs against the class text targets (shared by node evaluation and KD)."""

from __future__ import annotations

from typing import Any


def class_space(targets: Any, device: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """Per slot: the mean class target and the unit-norm centred class targets (C, prod(shape)). Class targets share
    a large common component (the template's words), so nearest-target search is cosine in the centred space."""
    import torch.nn.functional as F

    center = {k: v.flatten(1).to(device).mean(0) for k, v in targets.slots.items()}
    tnorm = {k: F.normalize(v.flatten(1).to(device) - center[k], dim=1) for k, v in targets.slots.items()}
    return center, tnorm


def class_scores(pred: dict[str, Any], center: dict[str, Any], tnorm: dict[str, Any]) -> Any:
    """(B, C) zero-shot scores of adapter outputs against every class target: centred cosine summed over slots."""
    import torch.nn.functional as F

    score = None
    for k, tn in tnorm.items():
        s = F.normalize(pred[k].flatten(1) - center[k], dim=1) @ tn.T
        score = s if score is None else score + s
    return score
