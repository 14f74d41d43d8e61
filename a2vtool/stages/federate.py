"""`federate` stage: trains adapters across nodes round after round; resumable; metrics streamed to disk."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from a2vtool import ui
from a2vtool.federated.config import FederateConfig

__all__ = ["FederateConfig", "run", "summary_table"]


ENGINES = ("local", "flower-sim", "flower")


def run(cfg: FederateConfig, *, resume: Path | None = None, engine: str = "local", options: Any = None) -> dict[str, Any]:
    """Run (or resume) a federation; returns the run manifest. All config and data errors surface before any
    model loads. `engine` picks where nodes train: local (here, in turn), flower-sim (Flower simulation on Ray)
    or flower (Flower deployment: SuperLink + SuperNodes); `options` is a flower_engine.EngineOptions."""
    from a2vtool.federated.loop import LocalEngine
    from a2vtool.federated.partition import node_table
    from a2vtool.models.adapters import slot_parameter_counts

    run_dir = Path(resume) if resume is not None else cfg.out
    if engine != "local":
        return _run_flower(cfg, run_dir, resume is not None, engine, options)
    fed = LocalEngine(cfg, run_dir, resume=resume is not None)
    ui.print_table(node_table(fed.nodes))
    try:
        fed.setup()
        counts = slot_parameter_counts(fed.global_model)
        ui.info(f"adapters: {fed.fed.params:,} parameters per node (" + ", ".join(f"{k} {v:,}" for k, v in counts.items()) + ")")
        if fed.start_round > cfg.rounds:
            ui.info(f"run {run_dir} already completed {cfg.rounds} rounds")
        with ui.progress("rounds", cfg.rounds - fed.start_round + 1) as adv:
            for r in range(fed.start_round, cfg.rounds + 1):
                adv(status=_status(fed.run_round(r)))
        return fed.finish()
    finally:
        fed.close()


def _run_flower(cfg: FederateConfig, run_dir: Path, resume: bool, engine: str, options: Any) -> dict[str, Any]:
    from a2vtool.errors import InputError
    from a2vtool.federated import flower_common as fe

    if engine not in ENGINES:
        raise InputError(f"--engine {engine!r} is not an engine; choose one of: {', '.join(ENGINES)}")
    if cfg.images.every:
        raise InputError(f"images.every is not supported by --engine {engine} (nodes hold the data)",
                         hint="set images.every=0 and render with generate-images from the run's adapters")
    fe.require_flwr()
    opts = options or fe.EngineOptions()
    if not resume and ((run_dir / "manifest.json").exists() or (run_dir / "rounds").is_dir()):
        raise InputError(f"run directory {run_dir} already holds a run",
                         hint=f"continue it with --resume {run_dir}, or choose another --out")
    if engine == "flower-sim":
        from a2vtool.federated.loop import check_config
        from a2vtool.federated.partition import node_table

        nodes, caches, _, _ = check_config(cfg)  # data and config errors before Ray starts
        for c in caches.values():
            c.close()
        ui.print_table(node_table(nodes))
        ui.info(f"flower-sim: {len(nodes)} nodes on Ray")
        from a2vtool.federated.flower_engine import run_simulation_engine

        return run_simulation_engine(cfg, run_dir, resume=resume, opts=opts)
    from a2vtool.federated.flower_deploy import run_deployment_engine

    return run_deployment_engine(cfg, run_dir, resume=resume, opts=opts)


def _status(res: Any) -> str:
    g = [x for x in res.records if x["node"] == "global" and x.get("eval")]
    if g:
        ev = next(iter(g[0]["eval"].values()))
        return f"round {res.round}: global acc {ev.get('acc', 0):.2f}"
    return f"round {res.round}"


def summary_table(manifest: dict[str, Any]) -> Any:
    from rich.table import Table

    t = Table(title=f"{manifest['config']['name']}: final accuracy (embedding-space zero-shot) after round {manifest['rounds']}")
    for col in ("model", "split", "acc", "chance", "acc (own classes)", "chance (own)", "cosine", "n"):
        t.add_column(col, justify="left" if col in ("model", "split") else "right")
    for node, splits in manifest["final"]["metrics"].items():
        for split, m in splits.items():
            t.add_row(node, split, f"{m['acc']:.3f}", f"{m['chance']:.3f}",
                      f"{m['acc_own']:.3f}" if "acc_own" in m else "-", f"{m['chance_own']:.3f}" if "chance_own" in m else "-",
                      f"{m['cos']:.3f}", str(m["n"]))
    return t
