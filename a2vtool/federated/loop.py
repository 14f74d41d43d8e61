"""The local engine: every node's work runs here in node-index order on one device, then the server's work."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from a2vtool.artifacts import read_json_file
from a2vtool.config import validate
from a2vtool.errors import InputError
from a2vtool.federated.config import FederateConfig
from a2vtool.federated.metrics import merge_evals
from a2vtool.federated.partition import NodeData, build_nodes
from a2vtool.federated.server import Federation, RoundResult
from a2vtool.federated.worker import NodeWorker, StateDict, check_pipeline, node_round


def check_config(cfg: FederateConfig) -> tuple[list[NodeData], dict[Path, Any], str, list[str]]:
    """Everything that can be checked without loading a model: caches, classes, nodes, pipeline family, slots."""
    caches: dict[Path, Any] = {}
    nodes = build_nodes(cfg, caches)
    family, slots = check_pipeline(cfg)
    shapes = {tuple(c.shape) for c in caches.values()}
    if len(shapes) != 1:
        for c in caches.values():
            c.close()
        raise InputError(f"the nodes' embedding caches have different token shapes {sorted(shapes)}; use one token mode")
    return nodes, caches, family, slots


def load_run_config(run_dir: Path) -> FederateConfig:
    data = read_json_file(Path(run_dir) / "run.json", "run record")
    return validate(FederateConfig, data["config"], str(Path(run_dir) / "run.json"))


class LocalEngine:
    """Node work dispatched in-process, one node after another; state travels as live objects."""

    def __init__(self, cfg: FederateConfig, run_dir: Path, *, resume: bool = False) -> None:
        self.cfg = cfg
        self.nodes, self.caches, _, _ = check_config(cfg)
        shape = tuple(next(iter(self.caches.values())).shape)
        self.fed = Federation(cfg, run_dir, self.nodes, shape, resume=resume)
        self.workers: list[NodeWorker] = []
        self._eval_model: Any = None  # one model reused for every evaluation of a state

    def setup(self) -> None:
        from a2vtool.runtime import resolve_device

        self.fed.setup()
        device = resolve_device(self.cfg.device)
        self.workers = [NodeWorker(self.cfg, i, nd, self.caches[nd.cache], self.fed.targets, device)
                        for i, nd in enumerate(self.nodes)]
        for w, (model, opt) in zip(self.workers, self.fed.node_states):
            w.load(model, opt)

    @property
    def start_round(self) -> int:
        return self.fed.start_round

    @property
    def models(self) -> list[Any]:
        return [w.model for w in self.workers]

    @property
    def global_model(self) -> Any:
        return self.fed.global_model

    def run_round(self, r: int, on_step: Callable[[str], None] | None = None) -> RoundResult:
        import time

        t0 = time.perf_counter()
        g = self.fed.broadcast()
        ev_now = self.fed.evaluate_now(r)
        updates = []
        for w in self.workers:
            updates.append(node_round(w, r, g, ev_now))
            if on_step is not None:
                on_step(w.node.name)
        del g
        images = self._images if self.cfg.images.every else None
        return self.fed.server_round(r, updates, self.evaluate, cross=True, extras=images, t0=t0)

    def evaluate(self, states: list[StateDict], splits: list[str]) -> list[dict[str, Any]]:
        """Each state evaluated on every node's clips of `splits`, merged over the nodes (as the Flower engines do)."""
        out = []
        for state in states:
            if self._eval_model is None:
                self._eval_model = self.fed.build()
            model = self._eval_model
            model.load_state_dict(state)
            parts = [w.evaluate(model, own=False, splits=splits) for w in self.workers]
            out.append({s: merge_evals([p.get(s, {"n": 0}) for p in parts]) for s in splits})
        return out

    def _images(self, r: int, records: list[dict[str, Any]]) -> None:
        """Render up to images.max_per_class clips per class of the chosen splits with the chosen adapters."""
        from a2vtool.imaging.generate import render_round_images

        spec = self.cfg.images
        if not (r % spec.every == 0 or r == self.cfg.rounds):
            return
        models: dict[str, Any] = {}
        if spec.models in ("global", "both") and self.fed.strategy.exchanges:
            models["global"] = self.fed.global_model
        if spec.models in ("nodes", "both") or not models:
            models.update({w.node.name: w.model for w in self.workers})
        clips = [(self.caches[nd.cache], nd.splits[s]) for s in spec.splits for nd in self.nodes if nd.splits.get(s)]
        out = render_round_images(self.fed.run_dir, r, models, clips, spec, self.fed.targets,
                                  seed=self.cfg.seed + spec.seed_offset, device=self.workers[0].device)
        for name, res in out.items():
            rec = next((x for x in records if x["node"] == name), None)
            if rec is None:
                rec = {"round": r, "node": name}
                records.append(rec)
            rec["images"] = {"count": res.get("images", 0), "dir": str(res.get("dir", "")),
                             **({"eval": res["eval"]} if res.get("eval") else {})}

    def finish(self) -> dict[str, Any]:
        return self.fed.finish()

    def close(self) -> None:
        self._eval_model = None
        self.fed.close()
        for w in self.workers:
            w.close()
        for c in self.caches.values():
            c.close()
        if self.cfg.images.every:
            from a2vtool.imaging.pipeline import release_pipeline

            release_pipeline()
