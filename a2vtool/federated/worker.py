"""Node work, written once for every engine: start from the global, train locally, evaluate; the node's data lives here."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from a2vtool.errors import InputError
from a2vtool.federated.config import FederateConfig
from a2vtool.federated.partition import NodeData
from a2vtool.federated.seeds import derive_seed

StateDict = dict[str, Any]


@dataclass
class NodeUpdate:
    """What a node reports after its round: trained adapters and optimizer state, train figures, own evaluation."""

    model: StateDict
    optimizer: dict[str, Any]
    train: dict[str, Any]
    eval: dict[str, Any] | None


def check_pipeline(cfg: FederateConfig) -> tuple[str, list[str]]:
    """The pipeline family and the slots to train (needs no data: the Flower server side uses this alone)."""
    from a2vtool.models.text_targets import SLOTS, pipeline_family

    family = pipeline_family(cfg.pipeline.name_or_path)
    have = SLOTS[family]
    slots = cfg.pipeline.slots or list(have)
    bad = [s for s in slots if s not in have]
    if bad:
        raise InputError(f"pipeline.slots: {bad[0]!r} is not a target slot of {family} pipeline "
                         f"{cfg.pipeline.name_or_path}; it has: {', '.join(have)}")
    return family, slots


def load_targets(cfg: FederateConfig, classes: list[str], slots: list[str]) -> Any:
    """The federation's text targets (cached artifact), restricted to the trained slots."""
    from a2vtool.models.text_targets import ensure_text_targets

    p = cfg.pipeline
    _, tt = ensure_text_targets(p.targets_root, p.name_or_path, classes, p.template, p.max_sequence_length)
    tt.slots = {k: v for k, v in tt.slots.items() if k in slots}
    return tt


def build_model(shape: tuple[int, ...], targets: Any, cfg: FederateConfig, state: StateDict | None = None) -> Any:
    """Adapters for clips of `shape` (tokens, dim) and the federation's slots, with the target statistics set;
    `state` loaded when given."""
    from a2vtool.models.adapters import build_adapters, set_target_stats

    m = build_adapters(shape[-1], targets.slot_shapes(), cfg.adapters, tokens=shape[0])
    set_target_stats(m, targets.slots)
    if state is not None:
        m.load_state_dict(state)
    return m


def optimizer_to(opt: Any, device: Any) -> None:
    """Move an optimizer's state tensors to `device`; AdamW's `step` counters stay on the CPU (as torch wants)."""
    for st in opt.state.values():
        for k, v in st.items():
            if hasattr(v, "to") and k != "step":
                st[k] = v.to(device)


class NodeWorker:
    """One node: its data (cache and splits), the text targets, and its live adapters and optimizer between rounds."""

    def __init__(self, cfg: FederateConfig, index: int, node: NodeData, cache: Any, targets: Any, device: str) -> None:
        from a2vtool.federated.strategies import get

        self.cfg, self.index, self.node, self.cache, self.targets, self.device = cfg, index, node, cache, targets, device
        self.strategy = get(cfg.strategy.name)
        self.model: Any = None
        self.opt: Any = None

    def load(self, model_state: StateDict, opt_state: dict[str, Any] | None) -> None:
        """(Re)build the live adapters and optimizer from a state (priming by the server, or a ClientApp's context)."""
        from a2vtool.federated.node import make_optimizer

        self.model = build_model(tuple(self.cache.shape), self.targets, self.cfg, model_state)
        self.opt = make_optimizer(self.model, self.cfg.training)
        if opt_state is not None:
            self.opt.load_state_dict(opt_state)
            optimizer_to(self.opt, "cpu")

    def evaluate(self, model: Any, own: bool, splits: list[str] | None = None) -> dict[str, Any]:
        """Per split of this node's data: evaluate() figures; `own` adds accuracy over this node's classes."""
        from a2vtool.federated.node import evaluate

        nd, cfg = self.node, self.cfg
        return {s: evaluate(model, [(self.cache, nd.splits[s])], self.targets, nd.classes if own else None, cfg.eval, "cpu")
                for s in (splits or cfg.eval.splits) if nd.splits.get(s)}

    def evaluate_state(self, state: StateDict, splits: list[str] | None = None) -> dict[str, Any]:
        return self.evaluate(build_model(tuple(self.cache.shape), self.targets, self.cfg, state), False, splits)

    def close(self) -> None:
        self.model = self.opt = None


def node_round(worker: NodeWorker, r: int, global_state: StateDict | None, evaluate: bool) -> NodeUpdate:
    """The node's round, identical on every engine: start from the global (when the strategy exchanges), train for
    training.local_epochs with the run's derived seed, evaluate on the node's own splits when asked."""
    from a2vtool.federated.node import train_node

    if worker.model is None:
        raise RuntimeError(f"node {worker.node.name} was not primed with a state before round {r}")
    cfg, st = worker.cfg, worker.strategy
    model, opt = worker.model, worker.opt
    if global_state is not None and st.exchanges:
        model.load_state_dict(global_state)
    on_cpu = str(worker.device) == "cpu"
    if not on_cpu:
        model.to(worker.device)
        optimizer_to(opt, worker.device)
    global_params = [p.detach().clone() for p in model.parameters()] if st.proximal and global_state is not None else None
    E = cfg.training.local_epochs
    train = train_node(model, opt, worker.cache, worker.node.splits["train"], worker.targets, cfg.training,
                       device=worker.device, seed=derive_seed(cfg.seed, r, worker.index), first_epoch=(r - 1) * E,
                       total_epochs=cfg.rounds * E, global_params=global_params,
                       mu=float(getattr(cfg.strategy, "mu", 0.0)))
    del global_params
    if not on_cpu:
        model.to("cpu")
        optimizer_to(opt, "cpu")
    ev = worker.evaluate(model, own=True) if evaluate else None
    return NodeUpdate(model.state_dict(), opt.state_dict(), train, ev)


def open_workers(cfg: FederateConfig, nodes: list[NodeData], caches: dict[Path, Any], targets: Any,
                 device: str) -> list[NodeWorker]:
    return [NodeWorker(cfg, i, nd, caches[nd.cache], targets, device) for i, nd in enumerate(nodes)]
