"""The local engine: nodes train one after another on one device, the server aggregates, every round is checkpointed."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from typing import Any

from a2vtool.artifacts import base_manifest, cache_key, read_json_file, staged_dir, write_bytes_atomic, write_json_atomic
from a2vtool.config import dump_config, validate
from a2vtool.errors import InputError
from a2vtool.federated import checkpoint as ck
from a2vtool.federated.config import FederateConfig
from a2vtool.federated.partition import NodeData, build_nodes


def derive_seed(seed: int, *parts: int) -> int:
    """A seed for (round, node, ...) that depends only on the run seed, so a resumed run draws the same numbers."""
    import hashlib

    h = hashlib.sha256(json.dumps([seed, *parts]).encode()).digest()
    return int.from_bytes(h[:7], "little")


def check_pipeline(cfg: FederateConfig) -> tuple[str, dict[str, Any]]:
    """The pipeline family and the slots to train (no data needed: the Flower server side uses this alone)."""
    from a2vtool.models.text_targets import SLOTS, pipeline_family

    family = pipeline_family(cfg.pipeline.name_or_path)
    have = SLOTS[family]
    slots = cfg.pipeline.slots or list(have)
    bad = [s for s in slots if s not in have]
    if bad:
        raise InputError(f"pipeline.slots: {bad[0]!r} is not a target slot of {family} pipeline "
                         f"{cfg.pipeline.name_or_path}; it has: {', '.join(have)}")
    return family, {"slots": slots}


def check_config(cfg: FederateConfig) -> tuple[list[NodeData], dict[Path, Any], str, dict[str, Any]]:
    """Everything that can be checked without loading a model: caches, classes, nodes, pipeline family, slots."""
    caches: dict[Path, Any] = {}
    nodes = build_nodes(cfg, caches)
    family, extra = check_pipeline(cfg)
    shapes = {tuple(c.shape) for c in caches.values()}
    if len(shapes) != 1:
        raise InputError(f"the nodes' embedding caches have different token shapes {sorted(shapes)}; use one token mode")
    return nodes, caches, family, extra


class Federation:
    """A federate run. `setup()` loads models (or a checkpoint), `run_round(r)` does one round in this process.
    With `nodes` and `shape` given (node descriptors reported by Flower clients), it holds no data: the Flower
    ServerApp trains nodes remotely and calls `aggregate_round` and `finish_round`, the same code as `run_round`."""

    def __init__(self, cfg: FederateConfig, run_dir: Path, *, resume: bool = False,
                 nodes: list[NodeData] | None = None, shape: tuple[int, ...] | None = None) -> None:
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.resume = resume
        if nodes is None:
            self.nodes, self.caches, self.family, extra = check_config(cfg)
            self.shape = tuple(next(iter(self.caches.values())).shape)
        else:
            self.nodes, self.caches = nodes, {}
            self.family, extra = check_pipeline(cfg)
            self.shape = tuple(shape or ())
        self.slots: list[str] = extra["slots"]
        self.start_round = 1
        self.metrics_path = self.run_dir / "metrics.jsonl"

    # -- setup ------------------------------------------------------------------------------------
    def setup(self) -> None:
        import torch

        from a2vtool.federated.node import make_optimizer
        from a2vtool.models.adapters import build_adapters, count_parameters, set_target_stats
        from a2vtool.models.text_targets import ensure_text_targets
        from a2vtool.runtime import resolve_device

        cfg = self.cfg
        self.device = resolve_device(cfg.device)
        classes = sorted({c for nd in self.nodes for c in nd.classes})
        _, tt = ensure_text_targets(cfg.pipeline.targets_root, cfg.pipeline.name_or_path, classes,
                                    cfg.pipeline.template, cfg.pipeline.max_sequence_length)
        tt.slots = {k: v for k, v in tt.slots.items() if k in self.slots}
        self.targets = tt
        in_dim = self.shape[-1]
        shapes = tt.slot_shapes()
        self.arch = {"in_dim": in_dim, "slot_shapes": {k: list(v) for k, v in shapes.items()},
                     "spec": cfg.adapters.model_dump(), "family": self.family}
        torch.manual_seed(cfg.seed)
        self.global_model = build_adapters(in_dim, shapes, cfg.adapters)
        set_target_stats(self.global_model, tt.slots)
        self.models = []
        for i, _ in enumerate(self.nodes):
            torch.manual_seed(derive_seed(cfg.seed, 0, i))
            m = build_adapters(in_dim, shapes, cfg.adapters)
            set_target_stats(m, tt.slots)
            if cfg.strategy.name != "none":
                m.load_state_dict(self.global_model.state_dict())
            self.models.append(m)
        self.optimizers = [make_optimizer(m, cfg.training) for m in self.models]
        self.server_state: dict[str, Any] = {}
        self.kd_opt_state: dict[str, Any] | None = None
        self.generators = None
        if cfg.strategy.name == "kd":
            from a2vtool.models.generator_store import load_generator_set

            self.generators = load_generator_set(cfg.strategy.kd.generators)  # type: ignore[arg-type]
            missing = [c for c in classes if c not in self.generators.classes]
            if missing:
                raise InputError(f"strategy.kd.generators {cfg.strategy.kd.generators} has no generator for class "
                                 f"{missing[0]!r}; it covers: {', '.join(self.generators.classes)}")
        self.params = count_parameters(self.global_model)
        self.key = cache_key({"config": dump_config(cfg), "targets": tt.key})
        if self.resume:
            self._restore()
        else:
            self._start_fresh()

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
        for i, nd in enumerate(self.nodes):
            model_state, opt_state = ck.load_node_state(rd / f"{nd.name}.safetensors")
            self.models[i].load_state_dict(model_state)
            if opt_state is not None:
                self.optimizers[i].load_state_dict(opt_state)
        if (rd / "global.safetensors").is_file():
            from a2vtool.artifacts import load_tensors

            g, _ = load_tensors(rd / "global.safetensors", ck.ADAPTER_KIND)
            self.global_model.load_state_dict(g)
        if (rd / "server.safetensors").is_file():
            s, meta = ck.load_node_state(rd / "server.safetensors")
            self.server_state = s
            self.kd_opt_state = meta
        torch.set_rng_state(torch.frombuffer(bytearray(base64.b64decode(state["torch_rng"])), dtype=torch.uint8))
        lines = [ln for ln in self.metrics_path.read_text().splitlines() if _round_of(ln) <= r] \
            if self.metrics_path.exists() else []
        write_bytes_atomic(self.metrics_path, ("\n".join(lines) + "\n").encode() if lines else b"")
        self.start_round = r + 1

    # -- one round ---------------------------------------------------------------------------------
    def exchange(self) -> bool:
        return self.cfg.strategy.name != "none"

    def evaluate_now(self, r: int) -> bool:
        return bool((self.cfg.eval.every and r % self.cfg.eval.every == 0) or r == self.cfg.rounds)

    def run_round(self, r: int, on_step: Any = None) -> dict[str, Any]:
        """The local engine's round: train every node here in node-index order, then the shared server steps."""
        from a2vtool.federated.node import evaluate, train_node

        cfg, st = self.cfg, self.cfg.strategy
        t0 = time.perf_counter()
        global_params = None
        if self.exchange():
            gstate = self.global_model.state_dict()
            for m in self.models:
                m.load_state_dict(gstate)
            if st.name == "fedprox":
                global_params = [p.detach().clone().to(self.device) for p in self.global_model.parameters()]
        train_metrics = []
        E = cfg.training.local_epochs
        for i, nd in enumerate(self.nodes):
            m = self.models[i].to(self.device)
            _move_opt(self.optimizers[i], self.device)
            res = train_node(m, self.optimizers[i], self.caches[nd.cache], nd.splits["train"], self.targets, cfg.training,
                             device=self.device, seed=derive_seed(cfg.seed, r, i), first_epoch=(r - 1) * E,
                             total_epochs=cfg.rounds * E, global_params=global_params, mu=st.mu)
            self.models[i] = m.to("cpu")
            _move_opt(self.optimizers[i], "cpu")
            train_metrics.append(res)
            if on_step is not None:
                on_step(nd.name)
        del global_params
        self.aggregate_round(r)
        node_evals = global_eval = None
        if self.evaluate_now(r):
            node_evals = []
            for i, nd in enumerate(self.nodes):
                ev = {s: evaluate(self.models[i], [(self.caches[nd.cache], nd.splits[s])], self.targets, nd.classes,
                                  cfg.eval, "cpu") for s in cfg.eval.splits if nd.splits.get(s)}
                if cfg.eval.cross:
                    ev["federation_test"] = evaluate(self.models[i], self._all("test"), self.targets, None, cfg.eval, "cpu")
                node_evals.append(ev)
            if self.exchange():
                global_eval = {s: evaluate(self.global_model, self._all(s), self.targets, None, cfg.eval, "cpu")
                               for s in cfg.eval.splits}
        return self.finish_round(r, train_metrics, node_evals, global_eval, t0)

    def aggregate_round(self, r: int) -> None:
        """Server step after training: aggregate the node models (in node-index order) or distil into the global."""
        from a2vtool.federated.strategies import StrategyParams, aggregate

        st = self.cfg.strategy
        if self.exchange() and st.name != "kd":
            params = StrategyParams(weighting=st.weighting, mu=st.mu, server_lr=st.server_lr, momentum=st.momentum,
                                    beta1=st.beta1, beta2=st.beta2, tau=st.tau, trim_ratio=st.trim_ratio)
            new, self.server_state = aggregate(st.name, self.global_model.state_dict(),
                                               [m.state_dict() for m in self.models],
                                               [nd.count("train") for nd in self.nodes], self.server_state, params)
            self.global_model.load_state_dict(new)
        elif st.name == "kd":
            self._distill(r)

    def finish_round(self, r: int, train_metrics: list[dict[str, Any]], node_evals: list[dict[str, Any]] | None,
                     global_eval: dict[str, Any] | None, t0: float) -> dict[str, Any]:
        """Metrics records, images and the round checkpoint: shared by every engine."""
        records = []
        for i, nd in enumerate(self.nodes):
            rec: dict[str, Any] = {"round": r, "node": nd.name, "train": _round_floats(train_metrics[i])}
            if node_evals is not None:
                rec["eval"] = node_evals[i]
            records.append(rec)
        if global_eval is not None:
            records.append({"round": r, "node": "global", "eval": global_eval})
        if self.cfg.images.every and (r % self.cfg.images.every == 0 or r == self.cfg.rounds):
            self._images(r, records)
        self._checkpoint(r, records)
        wall = time.perf_counter() - t0
        compute = sum(float(m.get("seconds", 0.0)) for m in train_metrics)
        return {"round": r, "records": records, "wall": wall, "compute": compute}

    def _images(self, r: int, records: list[dict[str, Any]]) -> None:
        """Render up to images.max_per_class clips per class of the chosen splits with the chosen adapters."""
        from a2vtool.imaging.generate import render_round_images

        spec = self.cfg.images
        models: dict[str, Any] = {}
        if spec.models in ("global", "both") and self.cfg.strategy.name != "none":
            models["global"] = self.global_model
        if spec.models in ("nodes", "both") or not models:
            models.update({nd.name: self.models[i] for i, nd in enumerate(self.nodes)})
        clips = [g for s in spec.splits for g in self._all(s)]
        out = render_round_images(self.run_dir, r, models, clips, spec, self.targets,
                                  seed=self.cfg.seed + spec.seed_offset, device=self.device)
        for name, res in out.items():
            rec = next((x for x in records if x["node"] == name), None)
            if rec is None:
                rec = {"round": r, "node": name}
                records.append(rec)
            rec["images"] = {"count": res.get("images", 0), "dir": str(res.get("dir", "")),
                             **({"eval": res["eval"]} if res.get("eval") else {})}

    def _all(self, split: str) -> list[tuple[Any, list[Any]]]:
        return [(self.caches[nd.cache], nd.splits.get(split, [])) for nd in self.nodes if nd.splits.get(split)]

    def _distill(self, r: int) -> None:
        import torch

        from a2vtool.federated.kd import distill

        kd = self.cfg.strategy.kd
        owners: dict[str, list[int]] = {}
        for i, nd in enumerate(self.nodes):
            for c in {e.label for e in nd.splits["train"]}:
                owners.setdefault(c, []).append(i)
        g = torch.Generator().manual_seed(derive_seed(self.cfg.seed, r, 10_000))
        tokens = self.shape[0]
        samples = {c: self.generators.sample(c, kd.samples_per_class, sequence_length=tokens, generator=g)  # type: ignore[union-attr]
                   for c in sorted(owners)}
        out = distill(self.global_model, self.models, owners, samples, epochs=kd.epochs, lr=kd.lr,
                      batch_size=kd.batch_size, seed=derive_seed(self.cfg.seed, r, 10_001), optimizer_state=self.kd_opt_state)
        self.kd_opt_state = out["optimizer_state"]

    def _checkpoint(self, r: int, records: list[dict[str, Any]]) -> None:
        import torch

        # Metrics first: a kill between the two leaves lines of an incomplete round, which resume drops
        # (it keeps rounds <= the last complete checkpoint); the other order would lose a complete round's lines.
        with open(self.metrics_path, "a", encoding="utf-8") as f:
            for rec in records:
                f.write(json.dumps(rec) + "\n")
        with staged_dir(ck.round_dir(self.run_dir, r)) as d:
            for i, nd in enumerate(self.nodes):
                ck.save_node_state(d / f"{nd.name}.safetensors", self.models[i].state_dict(),
                                   self.optimizers[i].state_dict(), self.key)
            if self.cfg.strategy.name != "none":
                ck.save_adapters(d / "global.safetensors", self.global_model.state_dict(), self.key, self.arch,
                                 round=str(r), which="global", targets_key=self.targets.key)
            if self.server_state or self.kd_opt_state:
                ck.save_node_state(d / "server.safetensors", self.server_state, self.kd_opt_state, self.key)
            write_json_atomic(d / "state.json", {
                "round": r, "seed": self.cfg.seed,
                "torch_rng": base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode()})
        ck.prune_rounds(self.run_dir, self.cfg.checkpoints.keep_last)

    # -- end ---------------------------------------------------------------------------------------
    def finish(self, last: dict[str, Any] | None) -> dict[str, Any]:
        """Write final adapters and the run manifest (last)."""
        final = self.run_dir / "final"
        final.mkdir(exist_ok=True)
        files = {}
        r = self.cfg.rounds
        if self.cfg.strategy.name != "none":
            ck.save_adapters(final / "adapters-global.safetensors", self.global_model.state_dict(), self.key, self.arch,
                             round=str(r), which="global", targets_key=self.targets.key)
            files["global"] = "final/adapters-global.safetensors"
        for i, nd in enumerate(self.nodes):
            ck.save_adapters(final / f"adapters-{nd.name}.safetensors", self.models[i].state_dict(), self.key, self.arch,
                             round=str(r), which=nd.name, targets_key=self.targets.key)
            files[nd.name] = f"final/adapters-{nd.name}.safetensors"
        summary = summarise(read_metrics(self.metrics_path, r))
        manifest = base_manifest(ck.RUN_KIND, self.key, dump_config(self.cfg), seed=self.cfg.seed, rounds=r,
                                 family=self.family, slots=self.slots, targets_key=self.targets.key,
                                 targets_root=str(self.cfg.pipeline.targets_root), arch=self.arch, parameters=self.params,
                                 nodes={nd.name: {"classes": nd.classes, "train": nd.count("train"), "val": nd.count("val"),
                                                  "test": nd.count("test")} for nd in self.nodes},
                                 final={"adapters": files, "metrics": summary})
        write_json_atomic(self.run_dir / "manifest.json", manifest)
        return manifest

    def close(self) -> None:
        for c in self.caches.values():
            c.close()
        if self.cfg.images.every:
            from a2vtool.imaging.pipeline import release_pipeline

            release_pipeline()


def _round_of(line: str) -> float:
    """The round of a metrics line; a blank or torn line (a kill mid-write) counts as beyond every round."""
    try:
        return json.loads(line)["round"]
    except (ValueError, KeyError, TypeError):
        return float("inf")


def _move_opt(opt: Any, device: str) -> None:
    for st in opt.state.values():
        for k, v in st.items():
            if hasattr(v, "to") and k != "step":
                st[k] = v.to(device)


def _round_floats(d: dict[str, Any]) -> dict[str, Any]:
    return {k: (round(v, 8) if isinstance(v, float) else _round_floats(v) if isinstance(v, dict) else v) for k, v in d.items()}


def read_metrics(path: Path, r: int | None = None) -> list[dict[str, Any]]:
    if not Path(path).exists():
        return []
    rows = [json.loads(ln) for ln in Path(path).read_text().splitlines() if ln.strip()]
    return [x for x in rows if r is None or x["round"] == r]


def summarise(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Per node (and global): the last round's test accuracy figures, for tables and manifests."""
    out: dict[str, Any] = {}
    for rec in records:
        ev = rec.get("eval") or {}
        row: dict[str, Any] = {}
        for split, m in ev.items():
            if m.get("n"):
                row[split] = {k: m[k] for k in ("acc", "chance", "acc_own", "chance_own", "n") if k in m}
                row[split]["cos"] = sum(m["cos"].values()) / len(m["cos"])
        out[rec["node"]] = row
    return out


def load_run_config(run_dir: Path) -> FederateConfig:
    data = read_json_file(Path(run_dir) / "run.json", "run record")
    return validate(FederateConfig, data["config"], str(Path(run_dir) / "run.json"))
