"""Every file in configs/ validates against its stage's model; `load_config` / `--set` semantics and errors."""

from __future__ import annotations

import json
import os

os.environ["HF_HUB_OFFLINE"] = "1"

from pathlib import Path

import pytest

from a2vtool.config import Strict, load_config, parse_set, validate
from a2vtool.errors import ConfigError, InputError
from a2vtool.stages import CONFIGS, config_model

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
CONFIG_FILES = sorted(CONFIG_DIR.glob("*.json"))


def stage_of(path: Path) -> str:
    """The stage a config file is for: its name up to the first underscore (train-generator_tiny.json -> train-generator)."""
    return path.stem.split("_", 1)[0]


def test_there_are_configs() -> None:
    assert CONFIG_FILES, f"no JSON configs in {CONFIG_DIR}"


@pytest.mark.parametrize("path", CONFIG_FILES, ids=[p.name for p in CONFIG_FILES])
def test_config_file_validates_for_its_stage(path: Path) -> None:
    stage = stage_of(path)
    assert stage in CONFIGS, f"{path.name}: unknown stage prefix {stage!r}; known: {', '.join(sorted(CONFIGS))}"
    model = config_model(stage)
    data = json.loads(path.read_text(encoding="utf-8"))
    cfg = validate(model, data, str(path))
    assert isinstance(cfg, model)
    assert load_config(model, path) == cfg  # the CLI path reads it the same way


def test_stage_prefix_rule() -> None:
    assert stage_of(Path("federate_tiny.json")) == "federate"
    assert stage_of(Path("train-generator_tiny.json")) == "train-generator"
    assert stage_of(Path("embed.json")) == "embed"
    with pytest.raises(KeyError):
        config_model("no-such-stage")


# ------------------------------------------------------------------------------------------- load_config
class Inner(Strict):
    rate: float = 1.0
    names: list[str] = []
    label: str = "x"


class Outer(Strict):
    rounds: int = 1
    inner: Inner = Inner()
    flags: list[int] = [0, 0, 0]


def test_set_overrides_numbers_lists_strings(tmp_path: Path) -> None:
    f = tmp_path / "c.json"
    f.write_text(json.dumps({"rounds": 2, "inner": {"label": "file"}, "flags": [0, 0, 0]}))
    cfg = load_config(Outer, f, ["rounds=5", "inner.rate=0.25", 'inner.names=["a","b"]', "inner.label=hello world",
                                 "flags.1=7"])
    assert cfg.rounds == 5 and isinstance(cfg.rounds, int)
    assert cfg.inner.rate == 0.25
    assert cfg.inner.names == ["a", "b"]
    assert cfg.inner.label == "hello world"
    assert cfg.flags == [0, 7, 0]
    # the file is used where --set says nothing; --set wins over overrides; overrides win over the file
    cfg2 = load_config(Outer, f, ["inner.rate=3"], {"rounds": 9, "inner.label": "flag"})
    assert (cfg2.rounds, cfg2.inner.label, cfg2.inner.rate) == (9, "flag", 3.0)
    cfg3 = load_config(Outer, f, ["rounds=4"], {"rounds": 9})
    assert cfg3.rounds == 4
    assert load_config(Outer).rounds == 1


def test_all_errors_reported_at_once() -> None:
    with pytest.raises(ConfigError) as e:
        load_config(Outer, None, ["inner.colour=red", "rounds=many", "speed=3"])
    msg = str(e.value)
    assert "inner.colour" in msg and "rounds" in msg and "speed" in msg
    assert len(e.value.problems) == 3
    assert "\n" not in msg
    assert e.value.exit_code == 2


def test_unknown_key_in_file_named_with_its_path(tmp_path: Path) -> None:
    f = tmp_path / "c.json"
    f.write_text(json.dumps({"inner": {"colour": 1}, "round": 3}))
    with pytest.raises(ConfigError) as e:
        load_config(Outer, f)
    paths = {p for p, _ in e.value.problems}
    assert paths == {"inner.colour", "round"}
    assert str(f) in str(e.value)


def test_parse_set() -> None:
    assert parse_set("a.b=3") == (["a", "b"], 3)
    assert parse_set("a=1.5") == (["a"], 1.5)
    assert parse_set("a=[1,2]") == (["a"], [1, 2])
    assert parse_set("a=true") == (["a"], True)
    assert parse_set("a=null") == (["a"], None)
    assert parse_set("a=plain text") == (["a"], "plain text")
    assert parse_set("a=x=y") == (["a"], "x=y")
    assert parse_set("a=") == (["a"], "")
    with pytest.raises(InputError, match="key.path=value"):
        parse_set("novalue")
    with pytest.raises(InputError, match="empty key path"):
        parse_set("=3")


def test_set_errors(tmp_path: Path) -> None:
    f = tmp_path / "c.json"
    f.write_text(json.dumps({"flags": [0, 0, 0]}))
    with pytest.raises(InputError, match="flags.9 is not an index"):
        load_config(Outer, f, ["flags.9=1"])
    with pytest.raises(InputError, match="is a value, not a section"):
        load_config(Outer, None, ["rounds=2", "rounds.x=1"])


def test_bad_json_file(tmp_path: Path) -> None:
    f = tmp_path / "bad.json"
    f.write_text("{\"rounds\": 2,,}")
    with pytest.raises(InputError, match="not valid JSON: line 1"):
        load_config(Outer, f)
    with pytest.raises(InputError, match="not found"):
        load_config(Outer, tmp_path / "missing.json")
    f.write_text("[1, 2]")
    with pytest.raises(InputError, match="JSON object"):
        load_config(Outer, f)
