"""Strategies that average the nodes' adapters: none (standalone nodes), fedavg and fedprox."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from a2vtool.federated.strategies.base import (
    ServerInputs,
    ServerOutput,
    Strategy,
    StrategyParams,
    WeightedParams,
    copy_state,
    register,
    weighted_average,
)


class NoneParams(StrategyParams):
    name: Literal["none"] = "none"


class FedAvgParams(WeightedParams):
    name: Literal["fedavg"] = "fedavg"


class FedProxParams(WeightedParams):
    name: Literal["fedprox"] = "fedprox"
    mu: float = Field(0.01, ge=0, description="Proximal coefficient: node training adds (mu/2)||w - w_global||^2.")


def _none(inp: ServerInputs) -> ServerOutput:
    return ServerOutput(copy_state(inp.global_state), copy_state(inp.server_state))


def _fedavg(inp: ServerInputs) -> ServerOutput:
    return ServerOutput(weighted_average(inp), copy_state(inp.server_state))


register(Strategy("none", "Standalone nodes: no exchange, no global model (the baseline federation must beat).",
                  NoneParams, _none, order=0, exchanges=False))
register(Strategy("fedavg", "Federated averaging (McMahan et al. 2017): weighted mean of the node adapters.",
                  FedAvgParams, _fedavg, order=10))
register(Strategy("fedprox", "FedProx (Li et al. 2020): FedAvg with a proximal term in node training.",
                  FedProxParams, _fedavg, order=20, proximal=True))
