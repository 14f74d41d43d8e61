"""What a strategy is: one registered object with its name, typed parameters, server step and flags; shared helpers."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from a2vtool.config import Strict
from a2vtool.errors import InputError

if TYPE_CHECKING:  # torch is imported lazily so that the CLI starts fast
    from torch import Tensor

StateDict = dict[str, "Tensor"]
WEIGHTINGS = ("samples", "uniform")


class StrategyParams(Strict):
    """Base of every strategy's parameters; each strategy adds its own fields and fixes `name`."""


class WeightedParams(StrategyParams):
    """Parameters of the strategies that average the nodes' adapters."""

    weighting: Literal["samples", "uniform"] = Field(
        "samples", description="Node weights: proportional to train clips (samples) or equal (uniform).")


@dataclass
class ServerEnv:
    """What a server step may use beyond state dicts (KD needs it; averaging strategies ignore it)."""

    round: int
    seed: int
    build_model: Callable[[StateDict], Any]  # adapters built from a state dict (cpu)
    class_owners: dict[str, list[int]]  # class -> indices of the nodes that trained on it
    tokens: int  # token count of the embeddings (sequence length of synthetic samples)
    generators: Any = None  # models.generator_store.GeneratorSet when the strategy needs generators
    targets: Any = None  # the federation's text targets (models.text_targets.TextTargets)


@dataclass
class ServerInputs:
    """One server step's inputs: the global before the round, the nodes' trained states (node-index order)."""

    global_state: StateDict
    node_states: list[StateDict]
    num_samples: list[int]
    server_state: StateDict
    params: Any
    optimizer_state: dict[str, Any] | None = None  # a server-side optimizer's state (KD), None when fresh
    env: ServerEnv | None = None


@dataclass
class ServerOutput:
    global_state: StateDict
    server_state: StateDict = field(default_factory=dict)
    optimizer_state: dict[str, Any] | None = None
    diagnostics: dict[str, Any] = field(default_factory=dict)  # JSON-able figures recorded in metrics.jsonl


@dataclass(frozen=True)
class Strategy:
    """A registered strategy. `step` maps ServerInputs to ServerOutput; flags tell the round engine what it needs."""

    name: str
    summary: str
    params: type[StrategyParams]
    step: Callable[[ServerInputs], ServerOutput]
    order: int = 100  # position in listings (registration order of the built-ins)
    exchanges: bool = True  # nodes start every round from the global adapters (False: standalone nodes)
    proximal: bool = False  # node training adds a proximal term toward the round's global (params.mu)
    server_state: bool = False  # keeps state on the server across rounds (checkpointed)
    needs_generators: bool = False  # samples synthetic embeddings from train-generator output (params.generators)
    check: Callable[[Any], None] | None = None  # extra parameter checks raising InputError


REGISTRY: dict[str, Strategy] = {}


def register(strategy: Strategy) -> Strategy:
    if strategy.name in REGISTRY:
        raise ValueError(f"strategy {strategy.name!r} is registered twice")
    name_field = strategy.params.model_fields.get("name")
    if name_field is None or name_field.default != strategy.name:
        raise ValueError(f"strategy {strategy.name!r}: its params model must fix name = {strategy.name!r}")
    REGISTRY[strategy.name] = strategy
    return strategy


# -- helpers shared by the strategies ---------------------------------------------------------------------------
def aggregation_weights(num_samples: Sequence[int], weighting: str) -> list[float]:
    """Normalised per-node weights: proportional to `num_samples` ("samples") or equal ("uniform")."""
    if weighting not in WEIGHTINGS:
        raise InputError(f"strategy.weighting: unknown weighting {weighting!r}", hint=f"use one of {', '.join(WEIGHTINGS)}")
    n = len(num_samples)
    if n == 0:
        raise ValueError("aggregation_weights: no nodes (num_samples is empty)")
    if any(s < 0 for s in num_samples):
        raise ValueError(f"aggregation_weights: negative sample count in {list(num_samples)}")
    if weighting == "uniform":
        return [1.0 / n] * n
    total = sum(num_samples)
    if total <= 0:
        raise ValueError(f"aggregation_weights: all sample counts are zero ({list(num_samples)}); "
                         "use weighting='uniform' or give every node data")
    return [s / total for s in num_samples]


def validate_states(global_state: StateDict, node_states: list[StateDict], num_samples: Sequence[int]) -> None:
    if not node_states:
        raise ValueError("aggregate: no node states to aggregate (node_states is empty)")
    if len(num_samples) != len(node_states):
        raise ValueError(f"aggregate: {len(node_states)} node states but {len(num_samples)} sample counts")
    ref = node_states[0]
    for i, state in enumerate(node_states[1:], start=1):
        _compare(ref, state, "node 0", f"node {i}")
    _compare(ref, global_state, "node 0", "global state")


def _compare(a: StateDict, b: StateDict, name_a: str, name_b: str) -> None:
    if a.keys() != b.keys():
        missing, extra = sorted(set(a) - set(b)), sorted(set(b) - set(a))
        first = (missing or extra)[0]
        raise ValueError(f"aggregate: key {first!r} mismatch: {name_b} lacks {missing} and adds {extra} relative to {name_a}")
    for key in a:
        if tuple(a[key].shape) != tuple(b[key].shape):
            raise ValueError(f"aggregate: shape mismatch for key {key!r}: {name_a} has {tuple(a[key].shape)}, "
                             f"{name_b} has {tuple(b[key].shape)}")


def average(node_states: list[StateDict], weights: list[float]) -> StateDict:
    """Float keys -> float64 weighted means; non-float keys -> clone of node 0 (own dtype)."""
    import torch

    out: StateDict = {}
    for key, first in node_states[0].items():
        if first.is_floating_point():
            acc = first.detach().to(dtype=torch.float64) * weights[0]  # a new tensor: safe to add_ into
            for s, w in zip(node_states[1:], weights[1:]):
                acc.add_(s[key].detach().to(dtype=torch.float64), alpha=w)
            out[key] = acc
        else:
            out[key] = first.detach().clone()
    return out


def weighted_average(inp: ServerInputs) -> StateDict:
    """The nodes' states averaged with the strategy's weighting, cast back to each key's dtype."""
    validate_states(inp.global_state, inp.node_states, inp.num_samples)
    weights = aggregation_weights(inp.num_samples, getattr(inp.params, "weighting", "samples"))
    avg = average(inp.node_states, weights)
    return {k: v.to(dtype=inp.node_states[0][k].dtype) for k, v in avg.items()}


def server_dtype(t: Tensor) -> Any:
    import torch

    return torch.promote_types(t.dtype, torch.float32)  # server state kept at least in float32


def server_get(server_state: StateDict, key: str, like: Tensor) -> Tensor:
    import torch

    t = server_state.get(key)
    if t is None:
        return torch.zeros(like.shape, dtype=torch.float64, device=like.device)
    if tuple(t.shape) != tuple(like.shape):
        raise ValueError(f"aggregate: server state {key!r} has shape {tuple(t.shape)}, parameter has {tuple(like.shape)}")
    return t.detach().to(dtype=torch.float64, device=like.device)


def copy_state(state: StateDict) -> StateDict:
    return {k: v.detach().clone() for k, v in state.items()}


def bad_param(name: str, fld: str, value: object, rule: str) -> InputError:
    return InputError(f"strategy.{fld}={value!r} is invalid for {name!r}", hint=rule)
