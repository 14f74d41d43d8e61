"""Typed, strict stage configs: JSON files plus `--set key.path=value` overrides, all errors at once."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from a2vtool.errors import ConfigError, InputError

M = TypeVar("M", bound=BaseModel)


class Strict(BaseModel):
    """Base for every config section: unknown keys are errors, values are validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


class StageConfig(Strict):
    """Base of every stage's config: the output location, the device and the seed (one set of shared flags).

    A stage overrides only the default (and wording) of `out`; the embed stage keeps its file key `cache_root`
    through an alias.
    """

    out: Path = Field(Path("runs"), description="Output directory.")
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N.")
    seed: int = Field(0, description="One seed for everything random: data order, initialisation, sampling, noise.")


def parse_set(item: str) -> tuple[list[str], Any]:
    """Parse one `--set a.b.0.c=value`; the value is JSON when it parses as JSON, else a plain string."""
    if "=" not in item:
        raise InputError(f"--set {item!r} is not of the form key.path=value", hint="e.g. --set federation.rounds=3")
    key, raw = item.split("=", 1)
    path = [p for p in key.strip().split(".") if p]
    if not path:
        raise InputError(f"--set {item!r} has an empty key path")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return path, value


def apply_set(data: dict[str, Any], path: list[str], value: Any, *, origin: str) -> None:
    """Set `value` at `path` inside nested dicts/lists, creating dicts for missing keys."""
    node: Any = data
    for i, part in enumerate(path):
        last = i == len(path) - 1
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise InputError(f"{origin}: {'.'.join(path[: i + 1])} is not an index of a list of {len(node)}")
            if last:
                node[int(part)] = value
            else:
                node = node[int(part)]
        elif isinstance(node, dict):
            if last:
                node[part] = value
            else:
                nxt = node.get(part)
                if nxt is None:
                    nxt = node[part] = {}
                node = nxt
        else:
            raise InputError(f"{origin}: {'.'.join(path[:i])} is a value, not a section")


def read_json(path: Path, what: str = "config") -> Any:
    """Read a JSON file, turning every failure into a one-line InputError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{what} file not found: {path}", hint="check the path")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise InputError(f"{what} {path} is not valid JSON: line {e.lineno} column {e.colno}: {e.msg}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"cannot read {what} {path}: {e}") from None


def validate(model: type[M], data: Any, source: str) -> M:
    """Validate `data` into `model`; on failure raise one ConfigError that lists every problem with its key path."""
    try:
        return model.model_validate(data)
    except ValidationError as e:
        problems = []
        for err in e.errors():
            loc = ".".join(str(p) for p in err["loc"])
            msg = err["msg"]
            if err["type"] == "extra_forbidden":
                msg = "unknown key (remove it or check its spelling)"
            elif err["type"] == "union_tag_invalid":  # a registry-backed section (strategy): its `name` is unknown
                loc = f"{loc}.name" if loc else "name"
                msg = f"unknown name {err['ctx']['tag']!r}; choose one of: {err['ctx']['expected_tags']}"
            problems.append((loc, msg))
        raise ConfigError(source, problems) from None


def load_config(
    model: type[M],
    path: Path | str | None = None,
    sets: list[str] | None = None,
    overrides: dict[str, Any] | None = None,
) -> M:
    """Build a config: defaults <- JSON file <- `overrides` (CLI flags, dotted keys) <- `--set` items."""
    data: dict[str, Any] = {}
    source = "(defaults)"
    if path is not None:
        loaded = read_json(Path(path))
        if not isinstance(loaded, dict):
            raise InputError(f"config {path} must hold a JSON object at the top level")
        data, source = loaded, str(path)
    for key, value in (overrides or {}).items():
        if value is not None:
            apply_set(data, key.split("."), value, origin="option")
    for item in sets or []:
        keys, value = parse_set(item)
        apply_set(data, keys, value, origin=f"--set {item}")
    return validate(model, data, source)


def dump_config(cfg: BaseModel) -> dict[str, Any]:
    """The resolved config as plain JSON data (paths as strings, keys as the files spell them), for manifests."""
    return json.loads(cfg.model_dump_json(by_alias=True))
