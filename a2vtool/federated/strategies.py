"""Aggregation strategies: pure functions from node state dicts to a new global state dict."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from a2vtool.errors import InputError

if TYPE_CHECKING:  # torch is imported lazily so that the CLI starts fast
    import torch
    from torch import Tensor

StateDict = dict[str, "Tensor"]

STRATEGIES = ("none", "fedavg", "fedprox", "fedavgm", "fedadam", "median", "trimmed_mean", "kd")
WEIGHTINGS = ("samples", "uniform")


@dataclass
class StrategyParams:
    """Hyper-parameters of the server-side strategies (validated again by the config layer)."""

    weighting: Literal["samples", "uniform"] = "samples"
    mu: float = 0.01  # fedprox proximal coefficient (used on the node side)
    server_lr: float = 1.0  # fedavgm / fedadam server learning rate
    momentum: float = 0.9  # fedavgm
    beta1: float = 0.9  # fedadam (Reddi et al. 2021, "Adaptive Federated Optimization")
    beta2: float = 0.99  # fedadam
    tau: float = 1e-3  # fedadam adaptivity / numerical stability
    trim_ratio: float = 0.1  # trimmed_mean: fraction trimmed from EACH end per coordinate


# --------------------------------------------------------------------------------------------------
# helpers


def aggregation_weights(num_samples: Sequence[int], weighting: str) -> list[float]:
    """Normalised per-node weights: proportional to `num_samples` ("samples") or equal ("uniform")."""
    if weighting not in WEIGHTINGS:
        raise InputError(
            f"strategy.weighting: unknown weighting {weighting!r}",
            hint=f"use one of {', '.join(WEIGHTINGS)}",
        )
    n = len(num_samples)
    if n == 0:
        raise ValueError("aggregation_weights: no nodes (num_samples is empty)")
    if any(s < 0 for s in num_samples):
        raise ValueError(f"aggregation_weights: negative sample count in {list(num_samples)}")
    if weighting == "uniform":
        return [1.0 / n] * n
    total = sum(num_samples)
    if total <= 0:
        raise ValueError(
            f"aggregation_weights: all sample counts are zero ({list(num_samples)}); "
            "use weighting='uniform' or give every node data"
        )
    return [s / total for s in num_samples]


def _validate_states(global_state: StateDict, node_states: list[StateDict], num_samples: Sequence[int]) -> None:
    if not node_states:
        raise ValueError("aggregate: no node states to aggregate (node_states is empty)")
    if len(num_samples) != len(node_states):
        raise ValueError(
            f"aggregate: {len(node_states)} node states but {len(num_samples)} sample counts"
        )
    ref = node_states[0]
    for i, state in enumerate(node_states[1:], start=1):
        _compare(ref, state, "node 0", f"node {i}")
    _compare(ref, global_state, "node 0", "global state")


def _compare(a: StateDict, b: StateDict, name_a: str, name_b: str) -> None:
    if a.keys() != b.keys():
        missing = sorted(set(a) - set(b))
        extra = sorted(set(b) - set(a))
        first = (missing or extra)[0]
        raise ValueError(
            f"aggregate: key {first!r} mismatch: {name_b} lacks {missing} and adds {extra} "
            f"relative to {name_a}"
        )
    for key in a:
        if tuple(a[key].shape) != tuple(b[key].shape):
            raise ValueError(
                f"aggregate: shape mismatch for key {key!r}: {name_a} has {tuple(a[key].shape)}, "
                f"{name_b} has {tuple(b[key].shape)}"
            )


def _check_params(name: str, params: StrategyParams) -> None:
    def bad(field: str, value: object, rule: str) -> InputError:
        return InputError(f"strategy.{field}={value!r} is invalid for {name!r}", hint=rule)

    if name in ("fedavgm", "fedadam") and not params.server_lr > 0:
        raise bad("server_lr", params.server_lr, "use a value > 0")
    if name == "fedavgm" and not 0 <= params.momentum < 1:
        raise bad("momentum", params.momentum, "use a value in [0, 1)")
    if name == "fedadam":
        for field in ("beta1", "beta2"):
            value = getattr(params, field)
            if not 0 <= value < 1:
                raise bad(field, value, "use a value in [0, 1)")
        if not params.tau > 0:
            raise bad("tau", params.tau, "use a value > 0")
    if name == "trimmed_mean" and not 0 <= params.trim_ratio < 0.5:
        raise bad("trim_ratio", params.trim_ratio, "use a value in [0, 0.5)")


def _server_dtype(t: Tensor) -> torch.dtype:
    import torch

    # optimizer state is kept at least in float32 (bf16/fp16 momenta lose too much)
    return torch.promote_types(t.dtype, torch.float32)


def _weighted_mean(tensors: list[Tensor], weights: list[float]) -> Tensor:
    """Weighted mean in float64 (not cast back)."""
    import torch

    acc = tensors[0].detach().to(dtype=torch.float64) * weights[0]  # a new tensor: safe to add_ into
    for t, w in zip(tensors[1:], weights[1:]):
        acc.add_(t.detach().to(dtype=torch.float64), alpha=w)
    return acc


def _average(node_states: list[StateDict], weights: list[float]) -> dict[str, Tensor]:
    """Float keys -> float64 weighted means; non-float keys -> clone of node 0 (own dtype)."""
    out: dict[str, Tensor] = {}
    for key, first in node_states[0].items():
        if first.is_floating_point():
            out[key] = _weighted_mean([s[key] for s in node_states], weights)
        else:
            out[key] = first.detach().clone()
    return out


def _server_get(server_state: StateDict, key: str, like: Tensor) -> Tensor:
    import torch

    t = server_state.get(key)
    if t is None:
        return torch.zeros(like.shape, dtype=torch.float64, device=like.device)
    if tuple(t.shape) != tuple(like.shape):
        raise ValueError(
            f"aggregate: server state {key!r} has shape {tuple(t.shape)}, parameter has {tuple(like.shape)}"
        )
    return t.detach().to(dtype=torch.float64, device=like.device)


# --------------------------------------------------------------------------------------------------
# strategies (each: global, nodes, weights, server_state, params -> new global, new server state)


def _none(global_state: StateDict, node_states: list[StateDict], weights: list[float],
          server_state: StateDict, params: StrategyParams) -> tuple[StateDict, StateDict]:
    return {k: v.detach().clone() for k, v in global_state.items()}, _copy(server_state)


def _fedavg(global_state: StateDict, node_states: list[StateDict], weights: list[float],
            server_state: StateDict, params: StrategyParams) -> tuple[StateDict, StateDict]:
    avg = _average(node_states, weights)
    new = {k: v.to(dtype=node_states[0][k].dtype) for k, v in avg.items()}
    return new, _copy(server_state)


def _fedavgm(global_state: StateDict, node_states: list[StateDict], weights: list[float],
             server_state: StateDict, params: StrategyParams) -> tuple[StateDict, StateDict]:
    import torch

    avg = _average(node_states, weights)
    new: StateDict = {}
    server: StateDict = {}
    for key, g in global_state.items():
        if not g.is_floating_point():
            new[key] = avg[key]
            continue
        g64 = g.detach().to(dtype=torch.float64)
        d = g64 - avg[key]  # pseudo-gradient
        v = _server_get(server_state, f"m.{key}", g) * params.momentum + d
        new[key] = (g64 - params.server_lr * v).to(dtype=g.dtype)
        server[f"m.{key}"] = v.to(dtype=_server_dtype(g))
    return new, server


def _fedadam(global_state: StateDict, node_states: list[StateDict], weights: list[float],
             server_state: StateDict, params: StrategyParams) -> tuple[StateDict, StateDict]:
    import torch

    avg = _average(node_states, weights)
    new: StateDict = {}
    server: StateDict = {}
    b1, b2 = params.beta1, params.beta2
    for key, g in global_state.items():
        if not g.is_floating_point():
            new[key] = avg[key]
            continue
        g64 = g.detach().to(dtype=torch.float64)
        d = avg[key] - g64  # delta (note the sign, Reddi et al. 2021)
        m = _server_get(server_state, f"m.{key}", g) * b1 + (1 - b1) * d
        v = _server_get(server_state, f"v.{key}", g) * b2 + (1 - b2) * d * d
        new[key] = (g64 + params.server_lr * m / (v.sqrt() + params.tau)).to(dtype=g.dtype)
        server[f"m.{key}"] = m.to(dtype=_server_dtype(g))
        server[f"v.{key}"] = v.to(dtype=_server_dtype(g))
    return new, server


def _sorted_stack(node_states: list[StateDict], key: str) -> Tensor:
    import torch

    return torch.stack([s[key].detach().to(dtype=torch.float64) for s in node_states]).sort(dim=0).values


def _per_coordinate(node_states: list[StateDict], reduce: Any) -> StateDict:
    """Apply `reduce` to each float key's node values sorted along dim 0; non-float tensors come from node 0."""
    new: StateDict = {}
    for key, first in node_states[0].items():
        if not first.is_floating_point():
            new[key] = first.detach().clone()
            continue
        new[key] = reduce(_sorted_stack(node_states, key)).to(dtype=first.dtype)
    return new


def _median(global_state: StateDict, node_states: list[StateDict], weights: list[float],
            server_state: StateDict, params: StrategyParams) -> tuple[StateDict, StateDict]:
    # Unweighted coordinate-wise median. For an even node count this is the MEAN of the two middle
    # values (torch.median would return the lower one, biasing the result).
    n = len(node_states)
    new = _per_coordinate(node_states, lambda s: s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2)
    return new, _copy(server_state)


def _trimmed_mean(global_state: StateDict, node_states: list[StateDict], weights: list[float],
                  server_state: StateDict, params: StrategyParams) -> tuple[StateDict, StateDict]:
    # Unweighted: per coordinate drop floor(trim_ratio * n) values from each end, mean the rest.
    import math

    n = len(node_states)
    k = math.floor(params.trim_ratio * n)
    if n - 2 * k <= 0:
        raise InputError(
            f"strategy.trim_ratio={params.trim_ratio} trims {k} of {n} node values from each end, "
            "leaving none",
            hint="lower strategy.trim_ratio or aggregate more nodes",
        )
    new = _per_coordinate(node_states, lambda s: s[k:n - k].mean(dim=0))
    return new, _copy(server_state)


def _copy(state: StateDict) -> StateDict:
    return {k: v.detach().clone() for k, v in state.items()}


_Impl = Callable[[StateDict, list[StateDict], list[float], StateDict, StrategyParams],
                 tuple[StateDict, StateDict]]

_IMPLS: dict[str, _Impl] = {
    "none": _none,
    "fedavg": _fedavg,
    "fedprox": _fedavg,  # the proximal term acts during node training; aggregation is FedAvg
    "fedavgm": _fedavgm,
    "fedadam": _fedadam,
    "median": _median,
    "trimmed_mean": _trimmed_mean,
}


# --------------------------------------------------------------------------------------------------
# public API


def aggregate(name: str, global_state: StateDict, node_states: list[StateDict], num_samples: list[int],
              server_state: StateDict, params: StrategyParams) -> tuple[StateDict, StateDict]:
    """-> (new_global_state, new_server_state). Inputs are never modified in place."""
    if name not in STRATEGIES:
        raise InputError(
            f"strategy.name: unknown strategy {name!r}", hint=f"use one of {', '.join(STRATEGIES)}"
        )
    if name == "kd":
        raise ValueError(
            "aggregate: strategy 'kd' needs the models, not state dicts; "
            "call a2vtool.federated.kd.distill instead"
        )
    if name == "none":
        return _none(global_state, node_states, [], server_state, params)
    _check_params(name, params)
    _validate_states(global_state, node_states, num_samples)
    weights = aggregation_weights(num_samples, params.weighting)
    return _IMPLS[name](global_state, node_states, weights, server_state, params)


def proximal_term(params: Iterable[Tensor], global_params: Iterable[Tensor], mu: float) -> Tensor:
    """FedProx penalty (mu/2) * sum ||w - w_g||^2; differentiable w.r.t. `params`, global detached."""
    import torch

    total: Tensor | None = None
    p_list, g_list = list(params), list(global_params)
    if len(p_list) != len(g_list):
        raise ValueError(f"proximal_term: {len(p_list)} parameters but {len(g_list)} global parameters")
    for i, (w, wg) in enumerate(zip(p_list, g_list)):
        if w.shape != wg.shape:
            raise ValueError(
                f"proximal_term: parameter {i} has shape {tuple(w.shape)}, global has {tuple(wg.shape)}"
            )
        sq = (w - wg.detach().to(device=w.device, dtype=w.dtype)).pow(2).sum()
        total = sq if total is None else total + sq
    if total is None:
        return torch.zeros(())
    return total * (mu / 2)
