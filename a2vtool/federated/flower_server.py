"""The Flower ServerApp: node descriptors from the SuperNodes, then Federation.server_round on the nodes' replies."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from a2vtool.errors import InputError
from a2vtool.federated.flower_common import NodeFailure, expected_nodes, from_record, opt_from_records, opt_to_records, record_bytes, to_record


def _fail(what: str) -> Exception:
    return NodeFailure(what, hint="the run directory keeps every complete round: fix the node, then continue with --resume RUN_DIR")


def _wait_for_nodes(grid: Any, n: int, timeout: float | None) -> list[int]:
    t0 = time.monotonic()
    while True:
        ids = sorted(grid.get_node_ids())
        if len(ids) >= n:
            return ids
        if timeout is not None and time.monotonic() - t0 > timeout:
            raise _fail(f"only {len(ids)} of {n} SuperNodes connected to the SuperLink within {timeout:.0f}s")
        time.sleep(0.2)


def _send_and_receive(grid: Any, msgs: list[Any], timeout: float | None) -> list[Any]:
    """Grid.push_messages + pull_messages with a short, growing poll interval (10 ms .. 200 ms): the deployment
    Grid's own send_and_receive sleeps 3 s between pulls, which would dominate a small round."""
    pending = set(grid.push_messages(msgs))
    out: list[Any] = []
    end = None if timeout is None else time.monotonic() + timeout
    wait = 0.01
    while pending and (end is None or time.monotonic() < end):
        got = list(grid.pull_messages(pending))
        out += got
        pending -= {m.metadata.reply_to_message_id for m in got}
        if pending:
            time.sleep(wait)
            wait = min(wait * 1.5, 0.2)
    return out


def _ask(grid: Any, contents: dict[int, Any], kind: str, r: int, timeout: float | None,
         names: dict[int, str], comm: dict[str, int]) -> dict[int, Any]:
    """Send one message per node id and wait for every reply; a missing or failed reply names the node."""
    from flwr.app import Message

    msgs = [Message(c, dst_node_id=nid, message_type=kind, group_id=str(r)) for nid, c in contents.items()]
    comm["down"] = comm.get("down", 0) + sum(record_bytes(c) for c in contents.values())
    replies = {m.metadata.src_node_id: m for m in _send_and_receive(grid, msgs, timeout)}
    for nid in contents:
        m = replies.get(nid)
        if m is None:
            raise _fail(f"{names.get(nid, 'node')} (SuperNode {nid}) sent no reply to {kind} in round {r} within "
                        f"{timeout:.0f}s: it died or lost its connection" if timeout else
                        f"{names.get(nid, 'node')} (SuperNode {nid}) sent no reply to {kind} in round {r}")
        if m.has_error():
            raise _fail(f"{names.get(nid, 'node')} (SuperNode {nid}) failed in {kind}, round {r}: "
                        f"{m.error.reason} (code {m.error.code})")
        comm["up"] = comm.get("up", 0) + record_bytes(m.content)
    return replies


def _describe(grid: Any, cfg: Any, cfg_json: str, timeout: float | None, comm: dict[str, int]) -> tuple[list[int], list[Any], tuple[int, ...]]:
    """Ask every SuperNode which node it is: node ids in node-index order, node descriptors, the token shape."""
    from flwr.app import ConfigRecord, RecordDict

    from a2vtool.federated.flower_common import Clip
    from a2vtool.federated.partition import NodeData

    n = expected_nodes(cfg)
    ids = _wait_for_nodes(grid, n, timeout)
    desc = _ask(grid, {nid: RecordDict({"a2v": ConfigRecord({"config": cfg_json})}) for nid in ids}, "query", 0,
                timeout, {nid: "node" for nid in ids}, comm)
    by_index: dict[int, tuple[int, dict[str, Any]]] = {}
    for nid, m in desc.items():
        d = json.loads(m.content["a2v"]["describe"])
        if d["index"] in by_index:
            raise InputError(f"two SuperNodes ({by_index[d['index']][0]} and {nid}) both say they are node index {d['index']}",
                             hint="give each SuperNode its own --node-config 'node-index=N'")
        by_index[d["index"]] = (nid, d)
    missing = [i for i in range(n) if i not in by_index]
    if missing:
        raise InputError(f"no SuperNode is node index {missing[0]} (the config has {n} nodes)")
    order = [by_index[i][0] for i in range(n)]  # node id per node index: aggregation follows node-index order
    infos = [by_index[i][1] for i in range(n)]
    shapes = {tuple(d["shape"]) for d in infos}
    if len(shapes) != 1:
        raise InputError(f"the nodes' embedding caches have different token shapes {sorted(shapes)}; use one token mode")
    nodes = [NodeData(d["name"], Path(d["cache"]), d["classes"],
                      {s: [Clip(c, lab) for c, lab in es] for s, es in d["splits"].items()}) for d in infos]
    return order, nodes, shapes.pop()


def serve(grid: Any, cfg: Any, run_dir: Path, *, resume: bool, timeout: float | None) -> dict[str, Any]:
    """Describe nodes, then every round: node_round on the ClientApps, Federation.server_round here."""
    from flwr.app import ConfigRecord, RecordDict

    from a2vtool.config import dump_config
    from a2vtool.federated.metrics import merge_evals
    from a2vtool.federated.server import Federation
    from a2vtool.federated.worker import NodeUpdate

    cfg_json = json.dumps(dump_config(cfg), sort_keys=True)
    comm: dict[str, int] = {}
    order, nodes, shape = _describe(grid, cfg, cfg_json, timeout, comm)
    names = {nid: nodes[i].name for i, nid in enumerate(order)}
    fed = Federation(cfg, run_dir, nodes, shape, resume=resume)
    fed.setup()
    classes = json.dumps(fed.targets.classes)
    primed: set[int] = set()
    log = Path(run_dir) / "engine.jsonl"
    r = 0

    def evaluate(states: list[Any], splits: list[str]) -> list[dict[str, Any]]:
        out = []
        for state in states:
            meta = {"config": cfg_json, "classes": classes, "round": r, "splits": json.dumps(splits)}
            g = to_record(state)
            ev = _ask(grid, {nid: RecordDict({"global": g, "a2v": ConfigRecord(meta)}) for nid in order},
                      "evaluate", r, timeout, names, comm)
            parts = [json.loads(ev[nid].content["a2v"]["eval"]) for nid in order]
            out.append({s: merge_evals([p.get(s, {"n": 0}) for p in parts]) for s in splits})
        return out

    for r in range(fed.start_round, cfg.rounds + 1):
        t0 = time.perf_counter()
        comm.clear()
        g = fed.broadcast()
        gstate = to_record(g) if g is not None else None
        contents = {}
        for i, nid in enumerate(order):
            meta = {"config": cfg_json, "classes": classes, "round": r, "evaluate": fed.evaluate_now(r)}
            rd = RecordDict({})
            if gstate is not None:
                rd["global"] = gstate
            if i not in primed:
                model, opt = fed.node_states[i]
                rd["node"] = to_record(model)
                if opt is not None and opt.get("state"):
                    rd["node_opt"], meta["node_opt_meta"] = opt_to_records(opt)
            rd["a2v"] = ConfigRecord(meta)
            contents[nid] = rd
        replies = _ask(grid, contents, "train", r, timeout, names, comm)
        primed.update(range(len(order)))
        updates = []
        for nid in order:
            c = replies[nid].content
            updates.append(NodeUpdate(from_record(c["model"]), opt_from_records(c["opt"], c["a2v"]["opt_meta"]),
                                      json.loads(c["a2v"]["train"]), json.loads(c["a2v"]["eval"])))
        res = fed.server_round(r, updates, evaluate, cross=False, t0=t0)
        with open(log, "a", encoding="utf-8") as f:
            f.write(json.dumps({"round": r, "wall": res.wall, "bytes_down": comm.get("down", 0),
                                "bytes_up": comm.get("up", 0)}) + "\n")
    return fed.finish()


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
