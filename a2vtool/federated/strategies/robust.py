"""Robust aggregation: coordinate-wise median and trimmed mean (unweighted, Yin et al. 2018)."""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import Field

from a2vtool.errors import InputError
from a2vtool.federated.strategies.base import (
    ServerInputs,
    ServerOutput,
    StateDict,
    Strategy,
    StrategyParams,
    copy_state,
    register,
    validate_states,
)


class MedianParams(StrategyParams):
    name: Literal["median"] = "median"


class TrimmedMeanParams(StrategyParams):
    name: Literal["trimmed_mean"] = "trimmed_mean"
    trim_ratio: float = Field(0.1, ge=0, lt=0.5, description="Fraction trimmed from EACH end per coordinate.")


def _per_coordinate(node_states: list[StateDict], reduce: Any) -> StateDict:
    """Apply `reduce` to each float key's node values sorted along dim 0; non-float tensors come from node 0."""
    import torch

    new: StateDict = {}
    for key, first in node_states[0].items():
        if not first.is_floating_point():
            new[key] = first.detach().clone()
            continue
        stacked = torch.stack([s[key].detach().to(dtype=torch.float64) for s in node_states]).sort(dim=0).values
        new[key] = reduce(stacked).to(dtype=first.dtype)
    return new


def _median(inp: ServerInputs) -> ServerOutput:
    # For an even node count this is the MEAN of the two middle values (torch.median would return the lower one).
    validate_states(inp.global_state, inp.node_states, inp.num_samples)
    n = len(inp.node_states)
    new = _per_coordinate(inp.node_states, lambda s: s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2)
    return ServerOutput(new, copy_state(inp.server_state))


def _trimmed_mean(inp: ServerInputs) -> ServerOutput:
    # Per coordinate drop floor(trim_ratio * n) values from each end, mean the rest.
    validate_states(inp.global_state, inp.node_states, inp.num_samples)
    n = len(inp.node_states)
    k = math.floor(inp.params.trim_ratio * n)
    if n - 2 * k <= 0:
        raise InputError(f"strategy.trim_ratio={inp.params.trim_ratio} trims {k} of {n} node values from each end, "
                         "leaving none", hint="lower strategy.trim_ratio or aggregate more nodes")
    return ServerOutput(_per_coordinate(inp.node_states, lambda s: s[k:n - k].mean(dim=0)), copy_state(inp.server_state))


register(Strategy("median", "Coordinate-wise median of the node adapters (robust to outlying nodes).",
                  MedianParams, _median, order=50))
register(Strategy("trimmed_mean", "Coordinate-wise trimmed mean of the node adapters.", TrimmedMeanParams,
                  _trimmed_mean, order=60))
