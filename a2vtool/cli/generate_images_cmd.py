"""`a2vtool generate-images`: thin wrapper over stages.generate_images."""

from __future__ import annotations

from typing import Any

import typer

from a2vtool.cli.common import (ConfigOpt, DebugOpt, Flag, JsonOpt, SetOpt, config_command, csv_list, emit, flag_overrides,
                                run_guarded, shared_flags)


def splits_or_all(text: str) -> list[str]:
    """`--split test,val`; `all` -> [] (every split, turned into None after loading)."""
    return [] if text.strip() == "all" else csv_list(text)


splits_or_all.metavar = "SPLIT,...|all"  # type: ignore[attr-defined]

FLAGS = (
    Flag("--adapters", "adapters"),
    Flag("--which", "which"),
    Flag("--embeddings", "embeddings"),
    Flag("--from-generators", "from_generators"),
    Flag("--pipeline", "pipeline"),
    Flag("--classes", "classes", csv_list),
    Flag("--split", "splits", splits_or_all),
    Flag("--count", "count"),
    Flag("--oracle", "oracle", switch=True),
    Flag("--eval-clip", "eval_clip"),
    Flag("--steps", "steps"),
    Flag("--guidance", "guidance"),
    Flag("--height", "height"),
    Flag("--width", "width"),
    Flag("--batch-size", "batch_size"),
    *shared_flags(),
)


def _table(s: dict[str, Any]) -> Any:
    from rich.table import Table

    ev = s.get("eval") or {}
    t = Table(title=f"images in {s['out']}")
    t.add_column("class")
    t.add_column("images", justify="right")
    if ev:
        for col in ("recall", "F1"):
            t.add_column(col, justify="right")
    for label, n in s["counts"]["per_class"].items():
        extra = []
        if ev:
            pc = ev["per_class"].get(label, {})
            extra = [f"{pc.get('recall', 0):.3f}", f"{pc.get('f1', 0):.3f}"]
        t.add_row(label, str(n), *extra)
    c = s["counts"]
    cap = f"{c['images']} images ({c['rendered']} rendered, {c['skipped']} already there); {s['family']} pipeline {s['pipeline']}"
    if ev:
        cap += (f"\nzero-shot: accuracy {ev['accuracy']:.3f}, balanced {ev['balanced_accuracy']:.3f}, macro-F1 "
                f"{ev['macro_f1']:.3f} (chance {ev['chance']:.3f}); CLIP score {ev['clip_score']:.2f}")
    from rich.console import Group
    from rich.text import Text

    return Group(t, Text(cap))  # a caption would wrap to the narrow table's width


def register(app: typer.Typer) -> None:
    @config_command(app, "generate-images", "generate-images", FLAGS)
    def generate_images(
        config: ConfigOpt = None,
        set_: SetOpt = None,
        flags: Any = None,
        as_json: JsonOpt = False,
        debug: DebugOpt = False,
    ) -> None:
        """Render images from sound: adapters turn audio (or generator) embeddings into diffusion conditioning."""

        def go() -> dict[str, Any]:
            from a2vtool.config import load_config
            from a2vtool.stages.generate_images import run
            from a2vtool.imaging.config import GenerateConfig

            cfg = load_config(GenerateConfig, config, set_, flag_overrides(GenerateConfig, flags))
            if cfg.splits == []:
                cfg.splits = None
            s = run(cfg)
            keep = ("out", "family", "pipeline", "counts", "classes", "grids", "eval", "adapters", "settings", "cache_key")
            return {k: s.get(k) for k in keep}

        emit(run_guarded(go, debug=debug, as_json=as_json), as_json, _table)
