"""`a2vtool strategies`: the registered federated strategies, their flags and typed parameters."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from a2vtool.cli.common import DebugOpt, JsonOpt, emit, run_guarded


def _table(s: dict[str, Any]) -> Any:
    from rich.table import Table

    t = Table(title="federated strategies (strategy.name and its parameters)")
    for col in ("name", "flags", "parameters", "summary"):
        t.add_column(col)
    for d in s["strategies"]:
        params = ", ".join(f"{p['name']}" + ("" if p["required"] else f"={p['default']}") for p in d["params"])
        t.add_row(d["name"], ", ".join(d["flags"]), params or "-", d["summary"])
    return t


def register(app: typer.Typer) -> None:
    @app.command("strategies")
    def strategies(
        markdown: Annotated[bool, typer.Option("--markdown", help="Print docs/strategies.md (generated from the registry).")] = False,
        as_json: JsonOpt = False,
        debug: DebugOpt = False,
    ) -> None:
        """List the federated strategies: name, flags (exchanges, proximal, server_state, needs_generators), parameters."""

        def go() -> dict[str, Any]:
            from a2vtool.federated import strategies as reg

            return {"strategies": reg.describe(), "markdown": reg.markdown()}

        s = run_guarded(go, debug=debug, as_json=as_json)
        if markdown and not as_json:
            typer.echo(s["markdown"], nl=False)
            return
        emit({"strategies": s["strategies"]} if as_json else s, as_json, _table)
