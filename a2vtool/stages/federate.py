"""`federate` stage: trains adapters across nodes round after round; resumable; metrics streamed to disk."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from a2vtool import ui
from a2vtool.federated.config import FederateConfig

__all__ = ["FederateConfig", "run", "summary_table"]


def run(cfg: FederateConfig, *, resume: Path | None = None, engine: str = "local") -> dict[str, Any]:
    """Run (or resume) a federation; returns the run manifest. All config and data errors surface before any
    model loads."""
    from a2vtool.federated.loop import Federation
    from a2vtool.federated.partition import node_table
    from a2vtool.models.adapters import slot_parameter_counts

    if engine != "local":
        from a2vtool.errors import InputError

        raise InputError(f"engine {engine!r} is not available in this build", hint="use --engine local")
    run_dir = Path(resume) if resume is not None else cfg.out
    fed = Federation(cfg, run_dir, resume=resume is not None)
    ui.print_table(node_table(fed.nodes))
    try:
        fed.setup()
        counts = slot_parameter_counts(fed.global_model)
        ui.info(f"adapters: {fed.params:,} parameters per node (" + ", ".join(f"{k} {v:,}" for k, v in counts.items()) + ")")
        last = None
        if fed.start_round > cfg.rounds:
            ui.info(f"run {run_dir} already completed {cfg.rounds} rounds")
        with ui.progress("rounds", cfg.rounds - fed.start_round + 1) as adv:
            for r in range(fed.start_round, cfg.rounds + 1):
                last = fed.run_round(r)
                adv(status=_status(last))
        return fed.finish(last)
    finally:
        fed.close()


def _status(res: dict[str, Any]) -> str:
    g = [x for x in res["records"] if x["node"] == "global" and x.get("eval")]
    if g:
        ev = next(iter(g[0]["eval"].values()))
        return f"round {res['round']}: global acc {ev.get('acc', 0):.2f}"
    return f"round {res['round']}"


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
