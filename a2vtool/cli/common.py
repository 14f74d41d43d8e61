"""Shared CLI plumbing: the common options, config-key flags built from the config models, the error boundary
(exit codes), and `--json` / table output."""

from __future__ import annotations

import inspect
import json
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import typer
from typer.core import TyperCommand

from a2vtool.errors import A2VError

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="JSON config file.", show_default=False)]
SetOpt = Annotated[list[str] | None, typer.Option("--set", "-s", help="Override a config key: key.path=value (repeatable).", show_default=False)]
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




# ------------------------------------------------------------------------------------- config-key flags
# A stage command's config flags are one table of Flag entries: flag -> config key path (-> parser). The
# `config_command` decorator turns the table into Typer options; `--help` takes each option's text, metavar and
# default from the pydantic field the key names (imported only when help is shown, so start-up stays light), and
# `flag_overrides` validates the given values against those fields. `check_flags` (run by the tests) proves that
# every key names a real field, so renaming a field fails a test instead of silently breaking a flag.


@dataclass(frozen=True)
class Flag:
    """One config-key flag: `flag` (and `short`) sets the config key `key` (a dotted path, as files spell it)."""

    flag: str
    key: str
    parse: Callable[[str], Any] | None = None  # CLI text -> config value (e.g. comma-separated -> list)
    short: str | None = None
    switch: bool | None = None  # a flag without a value that sets the (bool) key to this value
    multiple: bool = False  # repeatable; the key gets the list of values
    metavar: str | None = None  # shown in --help; default: the parser's `metavar`, else from the field's type

    @property
    def dest(self) -> str:
        """The Python parameter name Typer sees (never clashes with a command's own parameters)."""
        return "flag_" + self.flag.lstrip("-").replace("-", "_")


def csv_list(text: str) -> list[str]:
    """`a, b,c` -> ["a", "b", "c"] (empty items dropped)."""
    return [t.strip() for t in text.split(",") if t.strip()]


csv_list.metavar = "A,B,..."  # type: ignore[attr-defined]


def shared_flags(out_key: str = "out") -> tuple[Flag, ...]:
    """`--out/-o`, `--device`, `--seed`: StageConfig's fields, in every stage command."""
    return (Flag("--out", out_key, short="-o"), Flag("--device", "device"), Flag("--seed", "seed"))


# command name -> (stage whose config model the flags set, the flag table); filled by `config_command`
COMMAND_FLAGS: dict[str, tuple[str, tuple[Flag, ...]]] = {}


def _models_in(annotation: Any) -> list[Any]:
    """The pydantic model classes an annotation is made of (`Spec`, `Spec | None`, ...)."""
    from pydantic import BaseModel

    args = get_args(annotation) if get_origin(annotation) is not None else (annotation,)
    return [a for a in args if isinstance(a, type) and issubclass(a, BaseModel)]


def _non_none(annotation: Any) -> list[Any]:
    if get_origin(annotation) in (Union, type(int | None)):
        return [a for a in get_args(annotation) if a is not type(None)]
    return [annotation]


def field_at(model: Any, key: str) -> Any:
    """The pydantic FieldInfo that a dotted config key names; KeyError (naming the broken part) if there is none."""
    node, parts = model, key.split(".")
    for i, part in enumerate(parts):
        fields = {(info.alias or name): info for name, info in node.model_fields.items()}
        if part not in fields:
            raise KeyError(f"{key}: {'.'.join(parts[: i + 1])} is not a field of {node.__name__} "
                           f"(fields: {', '.join(fields)})")
        info = fields[part]
        if i == len(parts) - 1:
            return info
        models = _models_in(info.annotation)
        if len(models) != 1:
            raise KeyError(f"{key}: {'.'.join(parts[: i + 1])} is a value, not a section")
        node = models[0]
    raise KeyError(key)


def check_flags(model: Any, flags: Sequence[Flag]) -> list[str]:
    """Every problem of a flag table against its config model (empty = the table is sound)."""
    problems: list[str] = []
    names = [n for f in flags for n in (f.flag, f.short) if n]
    problems += [f"{n}: given twice" for n in sorted({n for n in names if names.count(n) > 1})]
    keys = [f.key for f in flags]
    problems += [f"{k}: set by two flags" for k in sorted({k for k in keys if keys.count(k) > 1})]
    for f in flags:
        try:
            info = field_at(model, f.key)
        except KeyError as e:
            problems.append(f"{f.flag}: {e.args[0]}")
            continue
        kinds = _non_none(info.annotation)
        lists = [a for a in kinds if get_origin(a) in (list, tuple, set)]
        if not info.description:
            problems.append(f"{f.flag}: field {f.key} has no description (the help text)")
        if _models_in(info.annotation):
            problems.append(f"{f.flag}: {f.key} is a section, not a value")
        elif f.switch is not None and kinds != [bool]:
            problems.append(f"{f.flag}: a switch, but {f.key} is not a bool field")
        elif f.multiple and not lists:
            problems.append(f"{f.flag}: repeatable, but {f.key} is not a list field")
        elif f.switch is None and not f.multiple and f.parse is None and (lists or get_origin(kinds[0]) is dict):
            problems.append(f"{f.flag}: {f.key} takes a list or mapping; give the flag a parser")
    return problems


def _shown(value: Any) -> str:
    from pydantic_core import to_jsonable_python

    v = to_jsonable_python(value)
    return v if isinstance(v, str) else json.dumps(v)


def flag_help(model: Any, flag: Flag) -> str:
    """The help text of a flag: its field's description, then the key it sets and the key's default."""
    from pydantic_core import PydanticUndefined

    info = field_at(model, flag.key)
    text = info.description or ""
    if flag.switch is not None:
        return f"{text} [sets {flag.key}={json.dumps(flag.switch)}]"
    key = f"key: {flag.key}" + ("; repeatable" if flag.multiple else "")
    default = info.get_default(call_default_factory=True)
    if default is None or default is PydanticUndefined:
        return f"{text} [{key}]"
    return f"{text} [{key}; default: {_shown(default)}]"


def flag_metavar(model: Any, flag: Flag) -> str:
    if flag.metavar or getattr(flag.parse, "metavar", None):
        return flag.metavar or flag.parse.metavar  # type: ignore[union-attr]
    kinds = _non_none(field_at(model, flag.key).annotation)
    kind = kinds[0] if len(kinds) == 1 else None
    if get_origin(kind) is Literal:
        return "[" + "|".join(str(a) for a in get_args(kind)) + "]"
    if get_origin(kind) in (list, tuple, set):
        kind = (get_args(kind) or (str,))[0]
    return {int: "INTEGER", float: "FLOAT", Path: "PATH", bool: "BOOLEAN"}.get(kind, "TEXT")  # type: ignore[arg-type]


def describe_flags(command: Any, model: Any, flags: Sequence[Flag]) -> None:
    """Fill the help text and metavar of a built click command's config-key options from the model's fields."""
    by_dest = {f.dest: f for f in flags}
    for param in command.params:
        f = by_dest.get(param.name)
        if f is not None:
            param.help = flag_help(model, f)
            if f.switch is None:
                param.metavar = flag_metavar(model, f)


def flag_overrides(model: Any, given: dict[Flag, Any]) -> dict[str, Any]:
    """The given flags as config overrides {key path: value}, each value validated against its field's type.

    `load_config` applies them over the file and under `--set` (flags win over the file, `--set` over flags).
    """
    from pydantic import TypeAdapter, ValidationError

    from a2vtool.errors import InputError

    out: dict[str, Any] = {}
    for f, raw in given.items():
        info = field_at(model, f.key)
        value = f.parse(raw) if f.parse is not None and f.switch is None else raw
        try:
            out[f.key] = TypeAdapter(info.annotation).validate_python(value)
        except ValidationError as e:
            msg = "; ".join(err["msg"] for err in e.errors()[:2])
            raise InputError(f"{f.flag} {raw!r}: {msg}", hint=f"it sets {f.key}; see --help") from None
    return out


def _option(f: Flag) -> tuple[Any, Any]:
    names = (f.flag, f.short) if f.short else (f.flag,)
    if f.switch is not None:
        return Annotated[bool, typer.Option(*names)], False
    if f.multiple:
        return Annotated[list[str] | None, typer.Option(*names, show_default=False)], None
    return Annotated[str | None, typer.Option(*names, show_default=False)], None


def config_command(app: typer.Typer, name: str, stage: str, flags: Sequence[Flag]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register `fn` as command `name` with the table's flags in place of its `flags` parameter.

    `fn` receives `flags`: {Flag: value} for the flags given on the command line (switches only when set).
    `stage` names the config model in `a2vtool.stages.CONFIGS` that the keys belong to.
    """
    table = tuple(flags)
    COMMAND_FLAGS[name] = (stage, table)

    class StageCommand(TyperCommand):
        def format_help(self, ctx: Any, formatter: Any) -> None:
            from a2vtool.stages import config_model

            describe_flags(self, config_model(stage), table)
            super().format_help(ctx, formatter)

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        sig = inspect.signature(fn, eval_str=True)
        if "flags" not in sig.parameters:
            raise TypeError(f"{fn.__name__} needs a `flags` parameter where the config flags go")
        params: list[inspect.Parameter] = []
        for p in sig.parameters.values():
            if p.name == "flags":
                for f in table:
                    annotation, default = _option(f)
                    params.append(inspect.Parameter(f.dest, inspect.Parameter.KEYWORD_ONLY, default=default,
                                                    annotation=annotation))
            else:
                params.append(p.replace(kind=inspect.Parameter.KEYWORD_ONLY))

        def command(**kwargs: Any) -> Any:
            given: dict[Flag, Any] = {}
            for f in table:
                v = kwargs.pop(f.dest)
                if f.switch is not None:
                    if v:
                        given[f] = f.switch
                elif f.multiple:
                    if v:
                        given[f] = list(v)
                elif v is not None:
                    given[f] = v
            return fn(**kwargs, flags=given)

        command.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in params}
        for attr in ("__name__", "__qualname__", "__doc__", "__module__"):
            setattr(command, attr, getattr(fn, attr))
        app.command(name, cls=StageCommand)(command)
        return fn

    return decorate
