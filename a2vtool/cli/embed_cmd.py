"""`a2vtool embed`: thin wrapper over stages.embed."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from a2vtool.cli.common import ConfigOpt, DebugOpt, DeviceOpt, JsonOpt, SeedOpt, SetOpt, emit, overrides, run_guarded


def _table(s: dict[str, Any]) -> Any:
    from rich.table import Table

    t = Table(title=f"embedding cache {s['cache']}")
    t.add_column("class")
    t.add_column("clips", justify="right")
    for label, n in s["classes"].items():
        t.add_row(label, str(n))
    from rich.console import Group
    from rich.text import Text

    return Group(t, Text(f"{s['clips']} clips: {s['computed']} computed, {s['reused']} from cache, "
                         f"{len(s['skipped'])} skipped; tokens x dim {s['shape']}"))


def register(app: typer.Typer) -> None:
    @app.command("embed")
    def embed(
        config: ConfigOpt = None,
        set_: SetOpt = None,
        out: Annotated[Path | None, typer.Option("--out", "-o", help="Cache root (one sub-folder per cache key).", show_default=False)] = None,
        device: DeviceOpt = None,
        seed: SeedOpt = None,
        data: Annotated[Path | None, typer.Option("--data", help="Dataset root folder (dataset.root).", show_default=False)] = None,
        kind: Annotated[str | None, typer.Option("--kind", help="Dataset layout: folder, csv, esc50, vegas, vggsound.", show_default=False)] = None,
        model: Annotated[str | None, typer.Option("--model", help="Audio model hub id or folder (model.name_or_path).", show_default=False)] = None,
        classes: Annotated[str | None, typer.Option("--classes", help="Comma-separated class names to embed.", show_default=False)] = None,
        token_mode: Annotated[str | None, typer.Option("--token-mode", help="full, cls, mean or pool:N.", show_default=False)] = None,
        strict: Annotated[bool, typer.Option("--strict", help="Fail if any clip cannot be read.")] = False,
        verify: Annotated[bool, typer.Option("--verify", help="Re-hash the cache's shards after embedding.")] = False,
        as_json: JsonOpt = False,
        debug: DebugOpt = False,
    ) -> None:
        """Embed labelled audio clips with a frozen AST into an on-disk cache; cached clips are never recomputed."""

        def go() -> dict[str, Any]:
            from a2vtool.config import load_config
            from a2vtool.stages.embed import EmbedConfig, run

            o = overrides("cache_root", out, device, seed)
            o.update({k: v for k, v in {
                "dataset.root": str(data) if data else None, "dataset.kind": kind, "model.name_or_path": model,
                "dataset.classes": [c.strip() for c in classes.split(",") if c.strip()] if classes else None,
                "token_mode": token_mode, "strict": True if strict else None}.items() if v is not None})
            cfg = load_config(EmbedConfig, config, set_, o)
            summary = run(cfg)
            if verify:
                from a2vtool.embeddings import verify_cache

                summary["verify"] = verify_cache(Path(summary["cache"]))
            return summary

        emit(run_guarded(go, debug=debug, as_json=as_json), as_json, _table)
