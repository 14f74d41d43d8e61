"""`a2vtool cache list|verify|clear`: inspect and maintain embedding caches."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from a2vtool.cli.common import DebugOpt, JsonOpt, emit, run_guarded

app = typer.Typer(no_args_is_help=True, add_completion=False, rich_markup_mode=None)
RootOpt = Annotated[Path, typer.Option("--root", help="Cache root folder.")]


@app.command("list")
def list_(root: RootOpt = Path("cache/embeddings"), as_json: JsonOpt = False, debug: DebugOpt = False) -> None:
    """List the caches under a root with their model, token mode, item count and size."""
    from a2vtool.embeddings import list_caches

    rows = run_guarded(lambda: list_caches(root), debug=debug, as_json=as_json)

    def table(s: dict[str, Any]) -> Any:
        from rich.table import Table

        t = Table(title=f"caches in {root}")
        for c in ("key", "model", "tokens", "items", "datasets", "MB"):
            t.add_column(c)
        for r in s["caches"]:
            t.add_row(r["key"], str(r["model"]), r["token_mode"], str(r["items"]), ",".join(r["datasets"]), f"{r['bytes'] / 1e6:.1f}")
        return t

    emit({"root": str(root), "caches": rows}, as_json, table)


@app.command("verify")
def verify(cache: Annotated[Path, typer.Argument(help="Cache folder.")], as_json: JsonOpt = False, debug: DebugOpt = False) -> None:
    """Re-hash every shard and check the manifest; exit 4 on corruption."""
    from a2vtool.embeddings import verify_cache

    emit(run_guarded(lambda: verify_cache(cache), debug=debug, as_json=as_json), as_json)


@app.command("clear")
def clear(cache: Annotated[Path, typer.Argument(help="Cache folder to delete.")], as_json: JsonOpt = False, debug: DebugOpt = False) -> None:
    """Delete one cache folder (refuses anything that is not an a2vtool embedding cache)."""
    from a2vtool.embeddings import clear_cache

    freed = run_guarded(lambda: clear_cache(cache), debug=debug, as_json=as_json)
    emit({"cleared": str(cache), "bytes": freed}, as_json)
