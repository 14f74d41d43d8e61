"""The strategy registry: every module of this package registers its strategies; config, CLI and docs read them here.

Adding a strategy is one new module here (a params model, a `step(ServerInputs) -> ServerOutput`, a `register(...)`
call) and its test; the config's list of names, `a2vtool strategies` and docs/strategies.md come from the registry.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import TYPE_CHECKING, Annotated, Any, Union

from pydantic import Discriminator, Tag, ValidationError

from a2vtool.errors import InputError
from a2vtool.federated.strategies.base import (
    REGISTRY,
    WEIGHTINGS,
    ServerEnv,
    ServerInputs,
    ServerOutput,
    StateDict,
    Strategy,
    StrategyParams,
    aggregation_weights,
)

if TYPE_CHECKING:
    from collections.abc import Iterable

    from torch import Tensor

for _m in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    if _m != "base":
        importlib.import_module(f"{__name__}.{_m}")

STRATEGIES: tuple[str, ...] = tuple(s.name for s in sorted(REGISTRY.values(), key=lambda s: (s.order, s.name)))
DEFAULT = "fedavg"


def get(name: str) -> Strategy:
    """The registered strategy `name`; an unknown name is an InputError listing the valid ones."""
    if name not in REGISTRY:
        raise InputError(f"strategy.name: unknown strategy {name!r}", hint=f"use one of {', '.join(STRATEGIES)}")
    return REGISTRY[name]


def _tag(v: Any) -> str:
    if isinstance(v, dict):
        return str(v.get("name", DEFAULT))
    return str(getattr(v, "name", DEFAULT))


# The `strategy` section of a federate config: one typed params model per registered strategy, chosen by `name`.
StrategySpec = Annotated[
    Union[tuple(Annotated[REGISTRY[n].params, Tag(n)] for n in STRATEGIES)],  # type: ignore[valid-type]
    Discriminator(_tag),
]


def params_for(name: str, **values: Any) -> Any:
    """Strategy `name`'s params model from keyword values; a bad value is one InputError naming strategy.<key>."""
    cls = get(name).params
    try:
        return cls(name=name, **values)
    except ValidationError as e:
        err = e.errors()[0]
        raise InputError(f"strategy.{'.'.join(str(p) for p in err['loc'])}={err.get('input')!r} is invalid for "
                         f"{name!r}: {err['msg']}") from None


def aggregate(name: str, global_state: StateDict, node_states: list[StateDict], num_samples: list[int],
              server_state: StateDict, params: Any = None) -> tuple[StateDict, StateDict]:
    """Apply strategy `name`'s server step to state dicts alone -> (new global, new server state). Inputs are never
    modified. Strategies that need more than state dicts (kd) raise ValueError naming what they need."""
    st = get(name)
    out = st.step(ServerInputs(global_state, node_states, num_samples, server_state, params or params_for(name)))
    return out.global_state, out.server_state


def proximal_term(params: Iterable[Tensor], global_params: Iterable[Tensor], mu: float) -> Tensor:
    """FedProx penalty (mu/2) * sum ||w - w_g||^2; differentiable w.r.t. `params`, global detached."""
    import torch

    total: Tensor | None = None
    p_list, g_list = list(params), list(global_params)
    if len(p_list) != len(g_list):
        raise ValueError(f"proximal_term: {len(p_list)} parameters but {len(g_list)} global parameters")
    for i, (w, wg) in enumerate(zip(p_list, g_list)):
        if w.shape != wg.shape:
            raise ValueError(f"proximal_term: parameter {i} has shape {tuple(w.shape)}, global has {tuple(wg.shape)}")
        sq = (w - wg.detach().to(device=w.device, dtype=w.dtype)).pow(2).sum()
        total = sq if total is None else total + sq
    if total is None:
        return torch.zeros(())
    return total * (mu / 2)


def describe() -> list[dict[str, Any]]:
    """Every strategy with its flags and parameters (name, type, default, description), in listing order."""
    out = []
    for n in STRATEGIES:
        st = REGISTRY[n]
        params = []
        for fname, f in st.params.model_fields.items():
            if fname == "name":
                continue
            ann = _type_name(f.annotation)
            params.append({"name": fname, "type": ann, "required": f.is_required(),
                           "default": None if f.is_required() else f.default, "description": f.description or ""})
        flags = [k for k in ("exchanges", "proximal", "server_state", "needs_generators") if getattr(st, k)]
        out.append({"name": n, "summary": st.summary, "flags": flags, "params": params})
    return out


def _type_name(ann: Any) -> str:
    from typing import Literal, get_args, get_origin

    if get_origin(ann) is Literal:
        return " \\| ".join(str(a) for a in get_args(ann))
    return getattr(ann, "__name__", str(ann))


def markdown() -> str:
    """docs/strategies.md, generated from the registry (a test keeps the file equal to this)."""
    lines = ["# Strategies", "", "Generated from the strategy registry (`a2vtool strategies --markdown`); "
             "do not edit by hand.", "", "Set one with `strategy.name`; its parameters sit beside it in the "
             "`strategy` section (`--set strategy.name=fedprox --set strategy.mu=0.01`). A parameter of another "
             "strategy is an unknown key.", ""]
    for d in describe():
        lines += [f"## `{d['name']}`", "", d["summary"], "", f"Flags: {', '.join(d['flags']) or '(none)'}", ""]
        if d["params"]:
            lines += ["| parameter | type | default | description |", "|---|---|---|---|"]
            for p in d["params"]:
                default = "(required)" if p["required"] else f"`{p['default']}`"
                lines.append(f"| `{p['name']}` | {p['type']} | {default} | {p['description']} |")
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"


__all__ = ["REGISTRY", "STRATEGIES", "WEIGHTINGS", "ServerEnv", "ServerInputs", "ServerOutput", "Strategy",
           "StrategyParams", "StrategySpec", "aggregate", "aggregation_weights", "describe", "get", "markdown",
           "params_for", "proximal_term"]
