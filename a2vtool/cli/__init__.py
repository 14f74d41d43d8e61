"""The `a2vtool` Typer app: registers every subcommand; nothing heavy is imported at start-up."""

from __future__ import annotations

import typer

from a2vtool import __version__
from a2vtool.cli import (
    cache_cmd,
    embed_cmd,
    federate_cmd,
    generate_images_cmd,
    memcheck_cmd,
    misc_cmd,
    strategies_cmd,
    train_generator_cmd,
)
from a2vtool.cli.common import EXIT_CODES

app = typer.Typer(
    name="a2vtool",
    help=f"Federated audio-to-image generation in composable stages.\n\n{EXIT_CODES}",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"a2vtool {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Show the version.")) -> None:
    """a2vtool: embed, train-generator, federate, generate-images, memcheck."""


embed_cmd.register(app)
train_generator_cmd.register(app)
federate_cmd.register(app)
generate_images_cmd.register(app)
memcheck_cmd.register(app)
app.add_typer(cache_cmd.app, name="cache", help="List, verify and clear embedding caches.")
app.add_typer(misc_cmd.models_app, name="models", help="Build the tiny offline models.")
misc_cmd.register(app)
strategies_cmd.register(app)


def main() -> None:
    app()
