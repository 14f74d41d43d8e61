"""`a2vtool embed`: thin wrapper over stages.embed."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from a2vtool.cli.common import (ConfigOpt, DebugOpt, Flag, JsonOpt, SetOpt, config_command, csv_list, emit, flag_overrides,
                                run_guarded, shared_flags)

FLAGS = (
    *shared_flags("cache_root"),
    Flag("--data", "dataset.root"),
    Flag("--kind", "dataset.kind"),
    Flag("--model", "model.name_or_path"),
    Flag("--classes", "dataset.classes", csv_list),
    Flag("--token-mode", "token_mode"),
    Flag("--strict", "strict", switch=True),
)


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
    @config_command(app, "embed", "embed", FLAGS)
    def embed(
        config: ConfigOpt = None,
        set_: SetOpt = None,
        flags: Any = None,
        verify: Annotated[bool, typer.Option("--verify", help="Re-hash the cache's shards after embedding.")] = False,
        as_json: JsonOpt = False,
        debug: DebugOpt = False,
    ) -> None:
        """Embed labelled audio clips with a frozen AST into an on-disk cache; cached clips are never recomputed."""

        def go() -> dict[str, Any]:
            from a2vtool.config import load_config
            from a2vtool.stages.embed import EmbedConfig, run

            cfg = load_config(EmbedConfig, config, set_, flag_overrides(EmbedConfig, flags))
            summary = run(cfg)
            if verify:
                from a2vtool.embeddings import verify_cache

                summary["verify"] = verify_cache(Path(summary["cache"]))
            return summary

        emit(run_guarded(go, debug=debug, as_json=as_json), as_json, _table)
