"""Subcommands for the stages that are registered but not built yet: they say so and exit 1."""

from __future__ import annotations

import typer

from a2vtool.cli.common import DebugOpt, fail

PENDING = {
    "train-generator": "Train per-class generators of audio embeddings.",
    "generate-images": "Render images from sound through a diffusion pipeline.",
    "memcheck": "Prove that training rounds do not leak memory.",
}


def register(app: typer.Typer) -> None:
    for name, help_ in PENDING.items():
        def cmd(debug: DebugOpt = False, _name: str = name) -> None:
            fail(f"`a2vtool {_name}` is not built yet in this version", 1, False)

        cmd.__doc__ = f"{help_} (not built yet)"
        app.command(name, context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(cmd)
