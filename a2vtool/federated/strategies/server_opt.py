"""Server-optimizer strategies (Reddi et al. 2021): the averaged update is a pseudo-gradient for momentum or Adam."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from a2vtool.federated.strategies.base import (
    ServerInputs,
    ServerOutput,
    StateDict,
    Strategy,
    WeightedParams,
    aggregation_weights,
    average,
    register,
    server_dtype,
    server_get,
    validate_states,
)


class FedAvgMParams(WeightedParams):
    name: Literal["fedavgm"] = "fedavgm"
    server_lr: float = Field(1.0, gt=0, description="Server learning rate.")
    momentum: float = Field(0.9, ge=0, lt=1, description="Server momentum.")


class FedAdamParams(WeightedParams):
    name: Literal["fedadam"] = "fedadam"
    server_lr: float = Field(1.0, gt=0, description="Server learning rate.")
    beta1: float = Field(0.9, ge=0, lt=1, description="First-moment decay.")
    beta2: float = Field(0.99, ge=0, lt=1, description="Second-moment decay.")
    tau: float = Field(1e-3, gt=0, description="Adaptivity (epsilon).")


def _averaged(inp: ServerInputs) -> StateDict:
    validate_states(inp.global_state, inp.node_states, inp.num_samples)
    return average(inp.node_states, aggregation_weights(inp.num_samples, inp.params.weighting))


def _fedavgm(inp: ServerInputs) -> ServerOutput:
    import torch

    avg, p = _averaged(inp), inp.params
    new: StateDict = {}
    server: StateDict = {}
    for key, g in inp.global_state.items():
        if not g.is_floating_point():
            new[key] = avg[key]
            continue
        g64 = g.detach().to(dtype=torch.float64)
        v = server_get(inp.server_state, f"m.{key}", g) * p.momentum + (g64 - avg[key])  # pseudo-gradient
        new[key] = (g64 - p.server_lr * v).to(dtype=g.dtype)
        server[f"m.{key}"] = v.to(dtype=server_dtype(g))
    return ServerOutput(new, server)


def _fedadam(inp: ServerInputs) -> ServerOutput:
    import torch

    avg, p = _averaged(inp), inp.params
    new: StateDict = {}
    server: StateDict = {}
    for key, g in inp.global_state.items():
        if not g.is_floating_point():
            new[key] = avg[key]
            continue
        g64 = g.detach().to(dtype=torch.float64)
        d = avg[key] - g64  # delta (note the sign, Reddi et al. 2021)
        m = server_get(inp.server_state, f"m.{key}", g) * p.beta1 + (1 - p.beta1) * d
        v = server_get(inp.server_state, f"v.{key}", g) * p.beta2 + (1 - p.beta2) * d * d
        new[key] = (g64 + p.server_lr * m / (v.sqrt() + p.tau)).to(dtype=g.dtype)
        server[f"m.{key}"] = m.to(dtype=server_dtype(g))
        server[f"v.{key}"] = v.to(dtype=server_dtype(g))
    return ServerOutput(new, server)


register(Strategy("fedavgm", "FedAvgM: server momentum on the averaged update.", FedAvgMParams, _fedavgm,
                  order=30, server_state=True))
register(Strategy("fedadam", "FedAdam: server Adam on the averaged update.", FedAdamParams, _fedadam,
                  order=40, server_state=True))
