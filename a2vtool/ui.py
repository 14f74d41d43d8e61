"""Terminal output for stages: Rich progress bars and notices on stderr, silenced by the CLI when asked."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import Any, Callable

_state: dict[str, Any] = {"console": None, "quiet": False}


def console() -> Any:
    """The shared stderr console (stdout is kept clean for `--json`)."""
    if _state["console"] is None:
        from rich.console import Console

        _state["console"] = Console(stderr=True, highlight=False)
    return _state["console"]


def set_quiet(quiet: bool) -> None:
    _state["quiet"] = quiet


def info(message: str) -> None:
    if not _state["quiet"]:
        console().print(message)


def warn(message: str) -> None:
    console().print(f"[yellow]warning:[/yellow] {message}", soft_wrap=True)


def print_table(table: Any) -> None:
    if not _state["quiet"]:
        console().print(table)


@contextlib.contextmanager
def progress(description: str, total: int | None) -> Iterator[Callable[..., None]]:
    """A Rich progress bar; yields `advance(n=1, **fields)`. Transient and invisible when quiet or not a TTY."""
    if _state["quiet"] or not (total or total is None):
        yield lambda n=1, **kw: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[status]}")]
    with Progress(*columns, console=console(), transient=True, disable=not sys.stderr.isatty()) as bar:
        task = bar.add_task(description, total=total, status="")

        def advance(n: int = 1, status: str | None = None) -> None:
            bar.update(task, advance=n, **({"status": status} if status is not None else {}))

        yield advance
