"""The Flower ClientApp: a node's data and NodeWorker per process; each message runs the shared node_round."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from a2vtool.errors import InputError
from a2vtool.federated.flower_common import from_record, node_index, opt_from_records, opt_to_records, to_record
from a2vtool.federated.worker import NodeUpdate, NodeWorker, node_round

_RUNTIMES: dict[tuple[str, int, str], Any] = {}  # per ClientApp process: opened cache, split, targets


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
    """One node's data and (once the server named the federation's classes) its NodeWorker, per ClientApp process."""

    def __init__(self, cfg_json: str, node_config: dict[str, Any], classes: list[str] | None) -> None:
        from a2vtool.config import validate
        from a2vtool.federated.config import FederateConfig
        from a2vtool.federated.worker import check_pipeline, load_targets
        from a2vtool.runtime import resolve_device

        self.cfg = validate(FederateConfig, json.loads(cfg_json), "run config from the ServerApp")
        self.index = node_index(node_config)
        self.caches: dict[Path, Any] = {}
        self.node = own_node(self.cfg, self.index, node_config, self.caches)
        self.cache = self.caches[self.node.cache]
        self.worker: NodeWorker | None = None
        if classes is not None:
            targets = load_targets(self.cfg, classes, check_pipeline(self.cfg)[1])
            self.worker = NodeWorker(self.cfg, self.index, self.node, self.cache, targets, resolve_device(self.cfg.device))

    def describe(self) -> dict[str, Any]:
        nd = self.node
        return {"index": self.index, "name": nd.name, "cache": str(nd.cache), "classes": nd.classes,
                "shape": list(self.cache.shape),
                "splits": {s: [[e.clip_id, e.label] for e in es] for s, es in nd.splits.items()}}


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
    """One node's round: node_round on the state the server primed, or the one kept in context.state."""
    from flwr.app import ConfigRecord, Message, RecordDict

    meta, content = msg.content["a2v"], msg.content
    worker = _runtime(meta, context).worker
    assert worker is not None  # train messages always name the classes
    if "node" in content.array_records:  # first round of this run (or of a resume): the server primes the node
        opt = opt_from_records(content["node_opt"], meta["node_opt_meta"]) if "node_opt" in content.array_records else None
        worker.load(from_record(content["node"]), opt)
    else:
        worker.load(from_record(context.state["a2v.model"]),
                    opt_from_records(context.state["a2v.opt"], context.state["a2v"]["opt_meta"]))
    g = from_record(content["global"]) if "global" in content.array_records else None
    r = int(meta["round"])
    upd: NodeUpdate = node_round(worker, r, g, bool(meta["evaluate"]))
    model_rec = to_record(upd.model)
    opt_rec, opt_meta = opt_to_records(upd.optimizer)
    worker.close()  # the state lives in context.state between messages
    context.state["a2v.model"] = model_rec
    context.state["a2v.opt"] = opt_rec
    context.state["a2v"] = ConfigRecord({"opt_meta": opt_meta, "round": r})
    out = RecordDict({"model": model_rec, "opt": opt_rec,
                      "a2v": ConfigRecord({"train": json.dumps(upd.train), "eval": json.dumps(upd.eval),
                                           "opt_meta": opt_meta, "index": worker.index})})
    return Message(out, reply_to=msg)


def client_evaluate(msg: Any, context: Any) -> Any:
    from flwr.app import ConfigRecord, Message, RecordDict

    meta = msg.content["a2v"]
    worker = _runtime(meta, context).worker
    assert worker is not None
    splits = json.loads(meta["splits"]) if "splits" in meta else None
    ev = worker.evaluate_state(from_record(msg.content["global"]), splits)
    return Message(RecordDict({"a2v": ConfigRecord({"eval": json.dumps(ev)})}), reply_to=msg)


def make_client_app() -> Any:
    from flwr.clientapp import ClientApp

    app = ClientApp()
    app.query()(client_query)
    app.train()(client_train)
    app.evaluate()(client_evaluate)
    return app
