"""`a2vtool train-generator`: thin wrapper over stages.train_generator."""

from __future__ import annotations

from typing import Any

import typer

from a2vtool.cli.common import (ConfigOpt, DebugOpt, Flag, JsonOpt, SetOpt, config_command, csv_list, emit, flag_overrides,
                                run_guarded, shared_flags)

FLAGS = (
    Flag("--embeddings", "embeddings", short="-e"),
    *shared_flags(),
    Flag("--generator", "generator"),
    Flag("--granularity", "granularity"),
    Flag("--classes", "classes", csv_list),
)

METRIC_COLUMNS = (("generator", "FD learned"), ("copy_train", "FD copy-train"), ("gaussian_all", "FD 1 Gaussian"),
                  ("gaussian_class", "FD Gaussian/class"))


def _fmt(v: Any) -> str:
    return "-" if not isinstance(v, (int, float)) or v != v else f"{v:.3g}"


def _table(s: dict[str, Any]) -> Any:
    from rich.console import Group
    from rich.table import Table

    gens = Table(title=f"{s['generator']} generators ({s['granularity']}) -> {s['out']}")
    for col in ("generator", "classes", "params", "sample params", "epochs", "best epoch", "best val loss"):
        gens.add_column(col, justify="left" if col in ("generator", "classes") else "right")
    for g in s["generators"]:
        classes = ", ".join(g["classes"]) if len(g["classes"]) <= 4 else f"{len(g['classes'])} classes"
        gens.add_row(g["name"], classes, f"{g['params']:,}", f"{g['sampler_params']:,}",
                     f"{g['epochs_run']}{' (early stop)' if g['stopped_early'] else ''}", str(g["best_epoch"]),
                     _fmt(g["best_val_loss"]))
    gens.caption = (f"models {s['training_sequence_length']} x {s['token_dim']} tokens; the cache has "
                    f"{s['cache_tokens']}" + (" (samples are interpolated up to that length)"
                                              if s['training_sequence_length'] != s['cache_tokens'] else ""))
    m = s["metrics"]
    qual = Table(title=f"quality vs held-out clips (feature: {m['feature_space']}; lower FD is better)")
    qual.add_column("class")
    for _, name in METRIC_COLUMNS:
        qual.add_column(name, justify="right")
    for col in ("precision", "recall", "diversity ratio"):
        qual.add_column(col, justify="right")
    rows = [(c, v) for c, v in m["classes"].items()] + [("mean", m["summary"])]
    for c, v in rows:
        gen = v["generator"]
        qual.add_row(c, *[_fmt(v[k]["fd"]) for k, _ in METRIC_COLUMNS], _fmt(gen["precision"]), _fmt(gen["recall"]),
                     _fmt(gen["diversity_ratio"]), end_section=c == rows[-2][0])
    qual.caption = m["summary"].get("verdict", "")
    return Group(gens, qual)


def register(app: typer.Typer) -> None:
    @config_command(app, "train-generator", "train-generator", FLAGS)
    def train_generator(
        flags: Any = None,
        config: ConfigOpt = None,
        set_: SetOpt = None,
        as_json: JsonOpt = False,
        debug: DebugOpt = False,
    ) -> None:
        """Learn the distribution of cached audio embeddings (VAE, conditioned VAE or GAN) per class, group or all."""

        def go() -> dict[str, Any]:
            from a2vtool.config import load_config
            from a2vtool.stages.train_generator import TrainGeneratorConfig, run

            return run(load_config(TrainGeneratorConfig, config, set_, flag_overrides(TrainGeneratorConfig, flags)))

        emit(run_guarded(go, debug=debug, as_json=as_json), as_json, _table)
