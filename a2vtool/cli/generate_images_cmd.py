"""`a2vtool generate-images`: thin wrapper over stages.generate_images."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from a2vtool.cli.common import ConfigOpt, DebugOpt, DeviceOpt, JsonOpt, OutOpt, SeedOpt, SetOpt, emit, overrides, run_guarded


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
    @app.command("generate-images")
    def generate_images(
        config: ConfigOpt = None,
        set_: SetOpt = None,
        adapters: Annotated[Path | None, typer.Option("--adapters", help="Federate run dir (final adapters) or an adapters .safetensors file.", show_default=False)] = None,
        which: Annotated[str | None, typer.Option("--which", help="Adapters of a run dir: global or node-NN.", show_default=False)] = None,
        embeddings: Annotated[Path | None, typer.Option("--embeddings", help="Embedding cache to render clips from.", show_default=False)] = None,
        from_generators: Annotated[Path | None, typer.Option("--from-generators", help="Generators folder: render synthetic embeddings (no audio).", show_default=False)] = None,
        pipeline: Annotated[str | None, typer.Option("--pipeline", help="Diffusion pipeline: hub id or folder.", show_default=False)] = None,
        classes: Annotated[str | None, typer.Option("--classes", help="Comma-separated classes to render.", show_default=False)] = None,
        split: Annotated[str | None, typer.Option("--split", help="Comma-separated splits (or 'all').", show_default=False)] = None,
        count: Annotated[int | None, typer.Option("--count", help="At most this many images.", show_default=False)] = None,
        oracle: Annotated[bool, typer.Option("--oracle", help="Render from the classes' ground-truth text targets.")] = False,
        eval_clip: Annotated[str | None, typer.Option("--eval-clip", help="CLIP model for zero-shot evaluation.", show_default=False)] = None,
        steps: Annotated[int | None, typer.Option("--steps", help="Denoising steps.", show_default=False)] = None,
        guidance: Annotated[float | None, typer.Option("--guidance", help="Guidance scale.", show_default=False)] = None,
        height: Annotated[int | None, typer.Option("--height", help="Image height (px).", show_default=False)] = None,
        width: Annotated[int | None, typer.Option("--width", help="Image width (px).", show_default=False)] = None,
        batch_size: Annotated[int | None, typer.Option("--batch-size", help="Images per pipeline call.", show_default=False)] = None,
        out: OutOpt = None,
        device: DeviceOpt = None,
        seed: SeedOpt = None,
        as_json: JsonOpt = False,
        debug: DebugOpt = False,
    ) -> None:
        """Render images from sound: adapters turn audio (or generator) embeddings into diffusion conditioning."""

        def go() -> dict[str, Any]:
            from a2vtool.config import load_config
            from a2vtool.stages.generate_images import run
            from a2vtool.imaging.config import GenerateConfig

            splits: Any = None
            if split is not None:
                splits = [] if split == "all" else [s.strip() for s in split.split(",") if s.strip()]
            o = overrides("out", out, device, seed)
            o.update({k: v for k, v in {
                "adapters": str(adapters) if adapters else None, "which": which,
                "embeddings": str(embeddings) if embeddings else None,
                "from_generators": str(from_generators) if from_generators else None, "pipeline": pipeline,
                "classes": [c.strip() for c in classes.split(",") if c.strip()] if classes else None,
                "splits": splits, "count": count, "oracle": True if oracle else None, "eval_clip": eval_clip,
                "steps": steps, "guidance": guidance, "height": height, "width": width, "batch_size": batch_size,
            }.items() if v is not None})
            cfg = load_config(GenerateConfig, config, set_, o)
            if cfg.splits == []:
                cfg.splits = None
            s = run(cfg)
            keep = ("out", "family", "pipeline", "counts", "classes", "grids", "eval", "adapters", "settings", "cache_key")
            return {k: s.get(k) for k in keep}

        emit(run_guarded(go, debug=debug, as_json=as_json), as_json, _table)
