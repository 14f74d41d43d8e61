"""`a2vtool models tiny` and `a2vtool demo-data`: offline models and synthetic data for trials and tests."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from a2vtool.cli.common import DebugOpt, JsonOpt, emit, run_guarded

models_app = typer.Typer(no_args_is_help=True, add_completion=False, rich_markup_mode=None)


@models_app.command("tiny")
def tiny(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the tiny models.")] = Path("models/tiny"),
    seed: Annotated[int, typer.Option("--seed")] = 0,
    force: Annotated[bool, typer.Option("--force", help="Rebuild even if complete.")] = False,
    as_json: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Build tiny random AST, Stable Diffusion, FLUX and CLIP models in Hugging Face layout (no download)."""

    def go() -> dict[str, Any]:
        from a2vtool.tiny import build_all

        return {name: str(p) for name, p in build_all(out, seed=seed, force=force).items()}

    emit(run_guarded(go, debug=debug, as_json=as_json), as_json)


def register(app: typer.Typer) -> None:
    @app.command("demo-data")
    def demo_data(
        out: Annotated[Path, typer.Option("--out", "-o", help="Dataset folder to write.")] = Path("data/demo"),
        classes: Annotated[int, typer.Option("--classes", help="Number of classes.")] = 4,
        clips: Annotated[int, typer.Option("--clips", help="Clips per class.")] = 12,
        duration: Annotated[float, typer.Option("--duration", help="Seconds per clip.")] = 1.0,
        layout: Annotated[str, typer.Option("--layout", help="folder, csv, esc50, vegas or vggsound.")] = "folder",
        seed: Annotated[int, typer.Option("--seed")] = 0,
        as_json: JsonOpt = False,
        debug: DebugOpt = False,
    ) -> None:
        """Synthesise a small labelled audio dataset with a distinct sound per class."""

        def go() -> dict[str, Any]:
            from a2vtool.audio.demo import make_demo_dataset

            path = make_demo_dataset(out, classes=classes, clips_per_class=clips, duration=duration, seed=seed, layout=layout)
            return {"dataset": str(path), "classes": classes, "clips_per_class": clips, "layout": layout}

        emit(run_guarded(go, debug=debug, as_json=as_json), as_json)
