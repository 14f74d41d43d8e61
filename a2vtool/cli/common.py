"""Shared CLI plumbing: the common options, the error boundary (exit codes), and `--json` / table output."""

from __future__ import annotations

import json
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from a2vtool.errors import A2VError

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="JSON config file.", show_default=False)]
SetOpt = Annotated[list[str] | None, typer.Option("--set", "-s", help="Override a config key: key.path=value (repeatable).", show_default=False)]
OutOpt = Annotated[Path | None, typer.Option("--out", "-o", help="Output directory.", show_default=False)]
DeviceOpt = Annotated[str | None, typer.Option("--device", help="auto, cpu, cuda or cuda:N.", show_default=False)]
SeedOpt = Annotated[int | None, typer.Option("--seed", help="Seed for everything random.", show_default=False)]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print a machine-readable summary on stdout.")]
DebugOpt = Annotated[bool, typer.Option("--debug", help="Show tracebacks.")]

EXIT_CODES = """Exit codes: 0 ok, 1 runtime failure, 2 bad input or config, 3 memory leak detected (memcheck),
4 verification failed (cache verify), 130 interrupted."""


def fail(message: str, code: int, debug: bool) -> None:
    from a2vtool import ui

    if debug:
        traceback.print_exc()
    ui.console().print(f"[bold red]error:[/bold red] {message}", soft_wrap=True, markup=True, highlight=False)
    raise typer.Exit(code)


def run_guarded(fn: Callable[[], Any], *, debug: bool, as_json: bool) -> Any:
    """Call `fn` inside the error boundary: A2VError -> its exit code and one red line; a bug -> exit 1."""
    from a2vtool import ui

    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    if not debug:  # library chatter (weight-loading bars, advisory warnings) would drown the one-line contract
        for k, v in (("TRANSFORMERS_VERBOSITY", "error"), ("DIFFUSERS_VERBOSITY", "error"),
                     ("HF_HUB_DISABLE_PROGRESS_BARS", "1"), ("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")):
            os.environ.setdefault(k, v)
    if as_json:
        ui.set_quiet(True)
    try:
        return fn()
    except typer.Exit:
        raise
    except A2VError as e:
        fail(_escape(str(e)), e.exit_code, debug)
    except KeyboardInterrupt:
        fail("interrupted; completed work is kept and a re-run resumes it", 130, debug)
    except MemoryError:
        fail("out of memory (host RAM); lower the batch size or the number of workers", 1, debug)
    except Exception as e:  # noqa: BLE001 - the boundary: anything else is a bug or an environment failure
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        fail(_escape(f"{type(e).__name__}: {first} (re-run with --debug for the traceback)"), 1, debug)


def _escape(s: str) -> str:
    from rich.markup import escape

    return escape(s)


def emit(summary: dict[str, Any], as_json: bool, table: Callable[[dict[str, Any]], Any] | None = None) -> None:
    """`--json`: the summary on stdout, one object. Otherwise a Rich table (or key/value lines) on stdout."""
    if as_json:
        sys.stdout.write(json.dumps(summary, default=str) + "\n")
        sys.stdout.flush()
        return
    from rich.console import Console

    import shutil

    out = Console(highlight=False, width=shutil.get_terminal_size((120, 24)).columns)
    if table is not None:
        out.print(table(summary))
    else:
        for k, v in summary.items():
            if not isinstance(v, (dict, list)):
                out.print(f"[bold]{k}[/bold]: {v}")


def overrides(out_key: str | None, out: Path | None, device: str | None, seed: int | None) -> dict[str, Any]:
    """Map the shared flags onto config keys (flags win over the file, `--set` wins over flags)."""
    o: dict[str, Any] = {}
    if out is not None and out_key:
        o[out_key] = str(out)
    if device is not None:
        o["device"] = device
    if seed is not None:
        o["seed"] = seed
    return o
