"""Flower ClientApp and ServerApp around the local engine's code: train_node/evaluate on nodes, Federation on the server."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from a2vtool.errors import A2VError, InputError

NODE_KEYS = ("node-index", "partition-id")  # node config keys naming the node of the config a SuperNode is
_RUNTIMES: dict[tuple[str, int, str], Any] = {}  # per ClientApp process: opened cache, split, targets


@dataclass(frozen=True)
class Clip:
    """What the server knows of a node's clip: its id and label (never its embedding)."""

    clip_id: str
    label: str


class NodeFailure(A2VError):
    """A node did not answer a round (it died, timed out or raised); the run directory holds the last complete round."""

    exit_code = 1


# -- records ----------------------------------------------------------------------------------------------------
def to_record(state: dict[str, Any]) -> Any:
    from flwr.app import ArrayRecord

    return ArrayRecord.from_torch_state_dict({k: v.detach().cpu().contiguous() for k, v in state.items()})


def from_record(rec: Any) -> dict[str, Any]:
    return {k: v.clone() for k, v in rec.to_torch_state_dict().items()}


def opt_to_records(opt_state: dict[str, Any]) -> tuple[Any, str]:
    from a2vtool.federated.checkpoint import flatten_optimizer

    tensors, meta = flatten_optimizer(opt_state)
    return to_record(tensors), json.dumps(meta)


def opt_from_records(rec: Any, meta: str) -> dict[str, Any]:
    from a2vtool.federated.checkpoint import unflatten_optimizer

    return unflatten_optimizer(from_record(rec), json.loads(meta))


def record_bytes(content: Any) -> int:
    """Bytes of the array records in a message's content (what dominates the traffic)."""
    return sum(r.count_bytes() for r in content.array_records.values())


# -- client side ----------------------------------------------------------------------------------------------------
def node_index(node_config: dict[str, Any]) -> int:
    for k in NODE_KEYS:
        if k in node_config:
            return int(node_config[k])
    raise InputError("this SuperNode has no node index", hint="start it with --node-config 'node-index=N' (N = its position in the config's nodes)")


def own_node(cfg: Any, index: int, node_config: dict[str, Any], caches: dict[Path, Any]) -> Any:
    """This node's data. With node-config overrides (its own embeddings/classes) only this node's cache is opened;
    otherwise the whole federation is resolved as the local engine does and this node's part is taken."""
    from a2vtool.federated.partition import NodeData, _explicit, build_nodes, stratified_split

    emb, classes = node_config.get("embeddings"), node_config.get("classes")
    if emb is None and classes is None:
        nodes = build_nodes(cfg, caches)
        if index >= len(nodes):
            raise InputError(f"node index {index} is out of range: the config has {len(nodes)} nodes")
        return nodes[index]
    if cfg.nodes is None:
        cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"embeddings": Path(emb)})})
        return build_nodes(cfg, caches)[index]
    if index >= len(cfg.nodes):
        raise InputError(f"node index {index} is out of range: the config has {len(cfg.nodes)} nodes")
    spec = cfg.nodes[index].model_copy(update={
        **({"embeddings": Path(emb)} if emb else {}),
        **({"classes": [c.strip() for c in str(classes).split(",") if c.strip()]} if classes else {}),
        "name": cfg.nodes[index].name or f"node-{index:02d}"})
    seed = cfg.seed if cfg.data.split_seed is None else cfg.data.split_seed
    name, cache, entries = _explicit(cfg.model_copy(update={"nodes": [spec]}), caches, seed)[0]
    if not entries:
        raise InputError(f"node {name!r} has no samples", hint="check its embeddings and classes in --node-config")
    return NodeData(name, cache, sorted({e.label for e in entries}), stratified_split(entries, cfg.data.ratios, seed + 1000 + index))


class NodeRuntime:
    """One node's data, text targets and model builder, kept for the life of the ClientApp process."""

    def __init__(self, cfg_json: str, node_config: dict[str, Any], classes: list[str] | None) -> None:
        from a2vtool.config import validate
        from a2vtool.federated.config import FederateConfig
        from a2vtool.federated.loop import check_pipeline
        from a2vtool.runtime import resolve_device

        self.cfg = validate(FederateConfig, json.loads(cfg_json), "run config from the ServerApp")
        self.index = node_index(node_config)
        self.caches: dict[Path, Any] = {}
        self.node = own_node(self.cfg, self.index, node_config, self.caches)
        self.cache = self.caches[self.node.cache]
        self.slots = check_pipeline(self.cfg)[1]["slots"]
        self.device = resolve_device(self.cfg.device)
        self.targets: Any = None
        if classes is not None:
            from a2vtool.models.text_targets import ensure_text_targets

            p = self.cfg.pipeline
            _, tt = ensure_text_targets(p.targets_root, p.name_or_path, classes, p.template, p.max_sequence_length)
            tt.slots = {k: v for k, v in tt.slots.items() if k in self.slots}
            self.targets = tt

    def describe(self) -> dict[str, Any]:
        nd = self.node
        return {"index": self.index, "name": nd.name, "cache": str(nd.cache), "classes": nd.classes,
                "shape": list(self.cache.shape),
                "splits": {s: [[e.clip_id, e.label] for e in es] for s, es in nd.splits.items()}}

    def build_model(self, state: dict[str, Any]) -> Any:
        from a2vtool.models.adapters import build_adapters, set_target_stats

        m = build_adapters(self.cache.shape[-1], self.targets.slot_shapes(), self.cfg.adapters)
        set_target_stats(m, self.targets.slots)
        m.load_state_dict(state)
        return m

    def evaluate(self, model: Any, own: bool) -> dict[str, Any]:
        from a2vtool.federated.node import evaluate

        nd, cfg = self.node, self.cfg
        return {s: evaluate(model, [(self.cache, nd.splits[s])], self.targets, nd.classes if own else None, cfg.eval, "cpu")
                for s in cfg.eval.splits if nd.splits.get(s)}


def _runtime(meta: Any, context: Any) -> NodeRuntime:
    classes = json.loads(meta["classes"]) if "classes" in meta else None
    key = (meta["config"], node_index(context.node_config), json.dumps(classes))
    if key not in _RUNTIMES:
        if len(_RUNTIMES) >= 16:  # a simulation actor serves many nodes; caches are memory-mapped, so this is cheap
            _RUNTIMES.pop(next(iter(_RUNTIMES)))
        _RUNTIMES[key] = NodeRuntime(meta["config"], dict(context.node_config), classes)
    return _RUNTIMES[key]


def client_query(msg: Any, context: Any) -> Any:
    from flwr.app import ConfigRecord, Message, RecordDict

    rt = _runtime(msg.content["a2v"], context)
    return Message(RecordDict({"a2v": ConfigRecord({"describe": json.dumps(rt.describe())})}), reply_to=msg)


def client_train(msg: Any, context: Any) -> Any:
    """One node's round: the same train_node call as the local engine; model and optimizer live in context.state."""
    from flwr.app import ConfigRecord, Message, RecordDict

    from a2vtool.federated.loop import derive_seed
    from a2vtool.federated.node import make_optimizer, train_node

    meta, content = msg.content["a2v"], msg.content
    rt = _runtime(meta, context)
    cfg, r, i = rt.cfg, int(meta["round"]), rt.index
    primed = "node" in content.array_records  # first round of this run (or of a resume): the server primes the node
    model = rt.build_model(from_record(content["node"] if primed else context.state["a2v.model"])).to(rt.device)
    opt = make_optimizer(model, cfg.training)  # loading the state below puts it on the parameters' device
    if primed and "node_opt" in content.array_records:
        opt.load_state_dict(opt_from_records(content["node_opt"], meta["node_opt_meta"]))
    elif not primed:
        opt.load_state_dict(opt_from_records(context.state["a2v.opt"], context.state["a2v"]["opt_meta"]))
    global_params = None
    if "global" in content.array_records:
        model.load_state_dict(from_record(content["global"]))
        if cfg.strategy.name == "fedprox":
            global_params = [p.detach().clone() for p in model.parameters()]
    E = cfg.training.local_epochs
    res = train_node(model, opt, rt.cache, rt.node.splits["train"], rt.targets, cfg.training, device=rt.device,
                     seed=derive_seed(cfg.seed, r, i), first_epoch=(r - 1) * E, total_epochs=cfg.rounds * E,
                     global_params=global_params, mu=cfg.strategy.mu)
    model.to("cpu")
    _opt_to_cpu(opt)
    ev = rt.evaluate(model, own=True) if meta["evaluate"] else None
    model_rec = to_record(model.state_dict())
    opt_rec, opt_meta = opt_to_records(opt.state_dict())
    context.state["a2v.model"] = model_rec
    context.state["a2v.opt"] = opt_rec
    context.state["a2v"] = ConfigRecord({"opt_meta": opt_meta, "round": r})
    out = RecordDict({"model": model_rec, "opt": opt_rec,
                      "a2v": ConfigRecord({"train": json.dumps(res), "eval": json.dumps(ev), "opt_meta": opt_meta, "index": i})})
    return Message(out, reply_to=msg)


def client_evaluate(msg: Any, context: Any) -> Any:
    from flwr.app import ConfigRecord, Message, RecordDict

    rt = _runtime(msg.content["a2v"], context)
    ev = rt.evaluate(rt.build_model(from_record(msg.content["global"])), own=False)
    return Message(RecordDict({"a2v": ConfigRecord({"eval": json.dumps(ev)})}), reply_to=msg)


def _opt_to_cpu(opt: Any) -> None:
    for st in opt.state.values():
        for k, v in st.items():
            if hasattr(v, "to"):
                st[k] = v.to("cpu")


def make_client_app() -> Any:
    from flwr.clientapp import ClientApp

    app = ClientApp()
    app.query()(client_query)
    app.train()(client_train)
    app.evaluate()(client_evaluate)
    return app


def make_server_app(cfg: Any, run_dir: Path, resume: bool, timeout: float | None, holder: dict[str, Any]) -> Any:
    """A ServerApp running `serve`; its result (or exception) is left in `holder` for the caller."""
    from flwr.serverapp import ServerApp

    app = ServerApp()

    @app.main()
    def main(grid: Any, context: Any) -> None:
        try:
            holder["manifest"] = serve(grid, cfg, run_dir, resume=resume, timeout=timeout)
        except BaseException as e:  # noqa: BLE001 - handed to the caller's thread
            holder["error"] = e

    return app


def deployment_server_app() -> Any:
    """The ServerApp of the deployment engine: its run config names the resolved config file and run directory."""
    from flwr.serverapp import ServerApp

    app = ServerApp()

    @app.main()
    def main(grid: Any, context: Any) -> None:
        from a2vtool.artifacts import read_json_file
        from a2vtool.config import validate
        from a2vtool.federated.config import FederateConfig

        rc = context.run_config
        status = Path(str(rc["status"]))
        try:
            cfg = validate(FederateConfig, read_json_file(Path(str(rc["config"])), "config"), str(rc["config"]))
            timeout = float(rc["timeout"]) or None
            serve(grid, cfg, Path(str(rc["run-dir"])), resume=bool(rc["resume"]), timeout=timeout)
            status.write_text(json.dumps({"ok": True}))
        except BaseException as e:
            status.write_text(json.dumps({"ok": False, "error": getattr(e, "message", str(e)) or type(e).__name__,
                                          "type": type(e).__name__, "hint": getattr(e, "hint", None)}))
            raise

    return app


def merge_evals(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-node evaluate() results of one model -> the figures over all their clips (n-weighted means)."""
    parts = [p for p in parts if p.get("n")]
    n = sum(p["n"] for p in parts)
    if not n:
        return {"n": 0}
    out: dict[str, Any] = {"n": n}
    for k in ("mse", "cos"):
        out[k] = {s: sum(p[k][s] * p["n"] for p in parts) / n for s in parts[0][k]}
    out["acc"] = sum(round(p["acc"] * p["n"]) for p in parts) / n
    out["chance"] = parts[0]["chance"]
    return out


def serve(grid: Any, cfg: Any, run_dir: Path, *, resume: bool, timeout: float | None) -> dict[str, Any]:
    from a2vtool.federated.flower_server import serve as _serve

    return _serve(grid, cfg, run_dir, resume=resume, timeout=timeout)
