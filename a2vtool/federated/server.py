"""Server work, written once for every engine: aggregate or distil, evaluate the global, metrics and the round checkpoint."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from a2vtool.artifacts import base_manifest, cache_key, clean_partials, write_bytes_atomic, write_json_atomic
from a2vtool.config import dump_config
from a2vtool.errors import InputError
from a2vtool.federated import checkpoint as ck
from a2vtool.federated.config import FederateConfig
from a2vtool.federated.metrics import read_metrics, round_floats, round_of, summarise
from a2vtool.federated.partition import NodeData
from a2vtool.federated.seeds import derive_seed
from a2vtool.federated.worker import NodeUpdate, StateDict, build_model, check_pipeline, load_targets

# engine-provided evaluation of a list of adapter states over the given splits, merged over every node's clips
EvaluateFn = Callable[[list[StateDict], list[str]], list[dict[str, Any]]]


@dataclass
class RoundResult:
    round: int
    records: list[dict[str, Any]]
    wall: float
    compute: float

    def __getitem__(self, key: str) -> Any:  # dict-style access for callers that print summaries
        return getattr(self, key)


class Federation:
    """A federate run's server side. It holds descriptors of the nodes (names, classes, clip ids), never their data:
    the global adapters, the strategy's server state, and the nodes' latest states (for checkpoints and the end)."""

    def __init__(self, cfg: FederateConfig, run_dir: Path, nodes: list[NodeData], shape: tuple[int, ...], *,
                 resume: bool = False) -> None:
        from a2vtool.federated.strategies import get

        self.cfg, self.run_dir, self.nodes, self.shape, self.resume = cfg, Path(run_dir), nodes, tuple(shape), resume
        self.strategy = get(cfg.strategy.name)
        self.family, self.slots = check_pipeline(cfg)
        self.start_round = 1
        self.metrics_path = self.run_dir / "metrics.jsonl"
        self.writer = ck.CheckpointWriter(cfg.checkpoints.background)

    # -- setup ----------------------------------------------------------------------------------------------------
    def setup(self) -> None:
        """Text targets, the global adapters, initial node states (fresh or from the last complete checkpoint)."""
        import torch

        from a2vtool.models.adapters import count_parameters

        cfg = self.cfg
        classes = sorted({c for nd in self.nodes for c in nd.classes})
        self.targets = load_targets(cfg, classes, self.slots)
        shapes = self.targets.slot_shapes()
        self.arch = {"in_dim": self.shape[-1], "slot_shapes": {k: list(v) for k, v in shapes.items()},
                     "spec": cfg.adapters.resolved(self.shape[0]).model_dump(), "family": self.family}
        torch.manual_seed(cfg.seed)
        self.global_model = self.build()
        self.node_states: list[tuple[StateDict, dict[str, Any] | None]] = []
        for i, _ in enumerate(self.nodes):
            torch.manual_seed(derive_seed(cfg.seed, 0, i))
            m = self.build()
            if self.strategy.exchanges:
                m.load_state_dict(self.global_model.state_dict())
            self.node_states.append((m.state_dict(), None))
        self.server_state: StateDict = {}
        self.server_opt: dict[str, Any] | None = None
        self.generators = self._generators(classes) if self.strategy.needs_generators else None
        self.params = count_parameters(self.global_model)
        self.key = cache_key({"config": dump_config(cfg), "targets": self.targets.key})
        if self.resume:
            self._restore()
        else:
            self._start_fresh()

    def build(self, state: StateDict | None = None) -> Any:
        return build_model(tuple(self.shape), self.targets, self.cfg, state)

    def _generators(self, classes: list[str]) -> Any:
        from a2vtool.models.generator_store import load_generator_set

        path = self.cfg.strategy.generators
        gens = load_generator_set(path)
        missing = [c for c in classes if c not in gens.classes]
        if missing:
            raise InputError(f"strategy.generators {path} has no generator for class {missing[0]!r}; "
                             f"it covers: {', '.join(gens.classes)}")
        rec = gens.recommended_for_kd
        if rec and not rec.get("use_this_artifact", True):  # the generator report says another one suits KD better
            from a2vtool import ui

            ui.warn(f"strategy.generators {path}: {rec.get('line', 'its quality report recommends another generator for KD')}")
        return gens

    def _start_fresh(self) -> None:
        if (self.run_dir / "manifest.json").exists() or ck.complete_rounds(self.run_dir):
            raise InputError(f"run directory {self.run_dir} already holds a run",
                             hint=f"continue it with --resume {self.run_dir}, or choose another --out")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.run_dir / "run.json", {
            "config": dump_config(self.cfg), "targets_key": self.targets.key, "family": self.family,
            "nodes": {nd.name: {"classes": nd.classes, "cache": str(nd.cache),
                                "splits": {s: [e.clip_id for e in es] for s, es in nd.splits.items()}} for nd in self.nodes}})
        write_bytes_atomic(self.metrics_path, b"")

    def _restore(self) -> None:
        import torch

        clean_partials(self.run_dir / "rounds")  # staging folders of a checkpoint a kill interrupted
        clean_partials(self.run_dir)
        done = ck.complete_rounds(self.run_dir)
        if not done:  # killed before round 1 finished: start over in the same directory
            if (self.run_dir / "run.json").exists():
                write_bytes_atomic(self.metrics_path, b"")
            else:
                self._start_fresh()
            return
        r = done[-1]
        rd = ck.round_dir(self.run_dir, r)
        state = ck.read_state(self.run_dir, r)
        self.node_states = [ck.load_node_state(rd / f"{nd.name}.safetensors") for nd in self.nodes]
        if (rd / "global.safetensors").is_file():
            from a2vtool.artifacts import load_tensors

            g, _ = load_tensors(rd / "global.safetensors", ck.ADAPTER_KIND)
            self.global_model.load_state_dict(g)
        if (rd / "server.safetensors").is_file():
            self.server_state, self.server_opt = ck.load_node_state(rd / "server.safetensors")
        torch.set_rng_state(torch.frombuffer(bytearray(base64.b64decode(state["torch_rng"])), dtype=torch.uint8))
        lines = [ln for ln in self.metrics_path.read_text().splitlines() if round_of(ln) <= r] \
            if self.metrics_path.exists() else []
        write_bytes_atomic(self.metrics_path, ("\n".join(lines) + "\n").encode() if lines else b"")
        self.start_round = r + 1

    # -- one round ------------------------------------------------------------------------------------------------
    def evaluate_now(self, r: int) -> bool:
        return bool((self.cfg.eval.every and r % self.cfg.eval.every == 0) or r == self.cfg.rounds)

    def broadcast(self) -> StateDict | None:
        """What every node starts the round from: the global adapters, or None when the strategy exchanges nothing."""
        return self.global_model.state_dict() if self.strategy.exchanges else None

    def server_round(self, r: int, updates: list[NodeUpdate], evaluate: EvaluateFn, *, cross: bool = False,
                     extras: Callable[[int, list[dict[str, Any]]], None] | None = None,
                     t0: float | None = None) -> RoundResult:
        """The server's round, identical on every engine: take the nodes' updates (node-index order), run the
        strategy's server step, evaluate the global (and, with `cross`, every node model on the federation's test
        split) through the engine's `evaluate`, write metrics, then the round checkpoint."""
        t0 = time.perf_counter() if t0 is None else t0
        if len(updates) != len(self.nodes):
            raise ValueError(f"server_round: {len(updates)} node updates for {len(self.nodes)} nodes")
        self.node_states = [(u.model, u.optimizer) for u in updates]
        diagnostics = self._server_step(r, updates)
        ev_now = self.evaluate_now(r)
        node_evals = [dict(u.eval or {}) for u in updates] if ev_now else None
        global_eval = None
        if ev_now and self.strategy.exchanges:
            global_eval = evaluate([self.global_model.state_dict()], list(self.cfg.eval.splits))[0]
        if ev_now and cross and self.cfg.eval.cross and node_evals is not None:
            for ev, got in zip(node_evals, evaluate([u.model for u in updates], ["test"])):
                ev["federation_test"] = got["test"]
        records = self._records(r, updates, node_evals, global_eval, diagnostics)
        if extras is not None:
            extras(r, records)
        self._checkpoint(r, records)
        wall = time.perf_counter() - t0
        compute = sum(float(u.train.get("seconds", 0.0)) for u in updates)
        return RoundResult(r, records, wall, compute)

    def _server_step(self, r: int, updates: list[NodeUpdate]) -> dict[str, Any]:
        from a2vtool.federated.strategies import ServerEnv, ServerInputs

        if not self.strategy.exchanges:
            return {}
        env = ServerEnv(round=r, seed=self.cfg.seed, build_model=self.build, class_owners=self.class_owners(),
                        tokens=self.shape[0], generators=self.generators, targets=self.targets)
        out = self.strategy.step(ServerInputs(self.global_model.state_dict(), [u.model for u in updates],
                                              [nd.count("train") for nd in self.nodes], self.server_state,
                                              self.cfg.strategy, self.server_opt, env))
        self.global_model.load_state_dict(out.global_state)
        self.server_state, self.server_opt = out.server_state, out.optimizer_state
        return out.diagnostics

    def class_owners(self) -> dict[str, list[int]]:
        owners: dict[str, list[int]] = {}
        for i, nd in enumerate(self.nodes):
            for c in sorted({e.label for e in nd.splits.get("train", [])}):
                owners.setdefault(c, []).append(i)
        return owners

    def _records(self, r: int, updates: list[NodeUpdate], node_evals: list[dict[str, Any]] | None,
                 global_eval: dict[str, Any] | None, diagnostics: dict[str, Any]) -> list[dict[str, Any]]:
        records = []
        for i, nd in enumerate(self.nodes):
            rec: dict[str, Any] = {"round": r, "node": nd.name, "train": round_floats(updates[i].train)}
            if node_evals is not None:
                rec["eval"] = node_evals[i]
            records.append(rec)
        if global_eval is not None or diagnostics:
            rec = {"round": r, "node": "global"}
            if global_eval is not None:
                rec["eval"] = global_eval
            if diagnostics:
                rec["server"] = round_floats(diagnostics)
            records.append(rec)
        return records

    def _checkpoint(self, r: int, records: list[dict[str, Any]]) -> None:
        """Metrics now; the round checkpoint from a snapshot of this round's states, written by the checkpoint
        writer (in the background while the next round trains, by default)."""
        import torch

        # Metrics first: a kill between the two leaves lines of an incomplete round, which resume drops
        # (it keeps rounds <= the last complete checkpoint); the other order would lose a complete round's lines.
        with open(self.metrics_path, "a", encoding="utf-8") as f:
            for rec in records:
                f.write(json.dumps(rec) + "\n")
        snap = ck.clone_tensors({"nodes": self.node_states, "server": (self.server_state, self.server_opt),
                                 "global": self.global_model.state_dict() if self.strategy.exchanges else None})
        state = {"round": r, "seed": self.cfg.seed,
                 "torch_rng": base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode()}
        self.writer.submit(lambda: self._write_checkpoint(r, snap, state))

    def _write_checkpoint(self, r: int, snap: dict[str, Any], state: dict[str, Any]) -> None:
        from a2vtool.artifacts import staged_dir

        with staged_dir(ck.round_dir(self.run_dir, r)) as d:
            for nd, (model, opt) in zip(self.nodes, snap["nodes"]):
                ck.save_node_state(d / f"{nd.name}.safetensors", model, opt, self.key)
            if snap["global"] is not None:
                ck.save_adapters(d / "global.safetensors", snap["global"], self.key, self.arch,
                                 round=str(r), which="global", targets_key=self.targets.key)
            server_state, server_opt = snap["server"]
            if server_state or server_opt:
                ck.save_node_state(d / "server.safetensors", server_state, server_opt, self.key)
            write_json_atomic(d / "state.json", state)  # last: the round is complete
        ck.prune_rounds(self.run_dir, self.cfg.checkpoints.keep_last)

    def flush(self) -> None:
        """Wait for the checkpoint being written (raising its error, if any)."""
        self.writer.wait()

    def close(self) -> None:
        """Wait for the last checkpoint write and stop the writer thread (also after an error)."""
        self.writer.close()

    # -- end ------------------------------------------------------------------------------------------------------
    def finish(self) -> dict[str, Any]:
        """Wait for the last round checkpoint, then write final adapters and the run manifest (last)."""
        self.flush()
        final = self.run_dir / "final"
        final.mkdir(exist_ok=True)
        files = {}
        r = self.cfg.rounds
        if self.strategy.exchanges:
            ck.save_adapters(final / "adapters-global.safetensors", self.global_model.state_dict(), self.key, self.arch,
                             round=str(r), which="global", targets_key=self.targets.key)
            files["global"] = "final/adapters-global.safetensors"
        for nd, (model, _) in zip(self.nodes, self.node_states):
            ck.save_adapters(final / f"adapters-{nd.name}.safetensors", model, self.key, self.arch,
                             round=str(r), which=nd.name, targets_key=self.targets.key)
            files[nd.name] = f"final/adapters-{nd.name}.safetensors"
        summary = summarise(read_metrics(self.metrics_path, r))
        manifest = base_manifest(ck.RUN_KIND, self.key, dump_config(self.cfg), seed=self.cfg.seed, rounds=r,
                                 family=self.family, slots=self.slots, targets_key=self.targets.key,
                                 targets_root=str(self.cfg.pipeline.targets_root), arch=self.arch, parameters=self.params,
                                 strategy={"name": self.strategy.name, "flags": _flags(self.strategy)},
                                 nodes={nd.name: {"classes": nd.classes, "train": nd.count("train"), "val": nd.count("val"),
                                                  "test": nd.count("test")} for nd in self.nodes},
                                 final={"adapters": files, "metrics": summary})
        write_json_atomic(self.run_dir / "manifest.json", manifest)
        return manifest


def _flags(st: Any) -> list[str]:
    return [k for k in ("exchanges", "proximal", "server_state", "needs_generators") if getattr(st, k)]
