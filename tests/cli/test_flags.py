"""Config-key flags come from one table per command: every key names a real field, help is the field's text, and
flags sit between the file and `--set`."""

from __future__ import annotations

import json
import os

os.environ["HF_HUB_OFFLINE"] = "1"

from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from a2vtool.cli import app
from a2vtool.cli.common import (COMMAND_FLAGS, Flag, check_flags, config_command, csv_list, describe_flags, field_at,
                                flag_help, flag_overrides, shared_flags)
from a2vtool.config import StageConfig, load_config
from a2vtool.errors import InputError
from a2vtool.stages import CONFIGS, config_model

STAGE_COMMANDS = ("embed", "train-generator", "federate", "generate-images", "memcheck")


def click_command(name: str) -> Any:
    return typer.main.get_command(app).commands[name]  # type: ignore[attr-defined]


# ------------------------------------------------------------------------------------------ the tables
def test_every_stage_command_has_a_table() -> None:
    assert set(COMMAND_FLAGS) == set(STAGE_COMMANDS)
    assert {stage for stage, _ in COMMAND_FLAGS.values()} == set(CONFIGS)


@pytest.mark.parametrize("command", STAGE_COMMANDS)
def test_every_flag_maps_to_a_field_of_its_config(command: str) -> None:
    stage, flags = COMMAND_FLAGS[command]
    model = config_model(stage)
    assert check_flags(model, flags) == []
    for f in flags:
        assert field_at(model, f.key).description
    # the shared options are in every stage command and land on StageConfig's fields
    flag_names = {f.flag for f in flags}
    assert {"--out", "--device", "--seed"} <= flag_names
    assert issubclass(model, StageConfig)


@pytest.mark.parametrize("command", STAGE_COMMANDS)
def test_help_text_is_the_field_description(command: str) -> None:
    stage, flags = COMMAND_FLAGS[command]
    model = config_model(stage)
    cmd = click_command(command)
    describe_flags(cmd, model, flags)
    by_dest = {p.name: p for p in cmd.params}
    for f in flags:
        param = by_dest[f.dest]
        assert f.flag in param.opts and (f.short is None or f.short in param.opts)
        description = field_at(model, f.key).description
        assert param.help == flag_help(model, f)
        assert param.help.startswith(description + " [")
        assert f.key in param.help


def test_help_shows_description_key_and_default() -> None:
    r = CliRunner().invoke(app, ["generate-images", "--help"], terminal_width=400)
    assert r.exit_code == 0
    from a2vtool.imaging.config import GenerateConfig

    line = next(ln for ln in r.stdout.splitlines() if ln.strip().startswith("--steps"))
    assert GenerateConfig.model_fields["steps"].description in line and "[key: steps; default: 4]" in line
    r = CliRunner().invoke(app, ["embed", "--help"], terminal_width=400)
    line = next(ln for ln in r.stdout.splitlines() if ln.strip().startswith("-o, --out"))
    assert "[key: cache_root; default: cache/embeddings]" in line


def test_existing_flag_names_are_kept() -> None:
    expected = {
        "embed": {"-o", "--out", "--device", "--seed", "--data", "--kind", "--model", "--classes", "--token-mode", "--strict"},
        "federate": {"-o", "--out", "--device", "--seed"},
        "train-generator": {"-e", "--embeddings", "-o", "--out", "--generator", "--granularity", "--classes", "--device",
                            "--seed"},
        "generate-images": {"--adapters", "--which", "--embeddings", "--from-generators", "--pipeline", "--classes",
                            "--split", "--count", "--oracle", "--eval-clip", "--steps", "--guidance", "--height",
                            "--width", "--batch-size", "-o", "--out", "--device", "--seed"},
        "memcheck": {"-c", "--config", "-w", "--workload", "-r", "--rounds", "--warmup", "--threshold",
                     "--slope-tolerance", "--per-step", "--trace", "--no-tensors", "--inject-leak", "--cuda-snapshot",
                     "-s", "--set", "-o", "--out", "--device", "--seed"},
    }
    for command, names in expected.items():
        _, flags = COMMAND_FLAGS[command]
        assert {n for f in flags for n in (f.flag, f.short) if n} == names
        opts = {o for p in click_command(command).params for o in p.opts}
        assert names <= opts
    assert {"--config", "--set", "--verify", "--json", "--debug"} <= {o for p in click_command("embed").params for o in p.opts}
    assert {"--resume", "--engine", "--cpus-per-node", "--superlink"} <= {
        o for p in click_command("federate").params for o in p.opts}


# ---------------------------------------------------------------------------------------- the checker
def test_checker_catches_a_renamed_or_wrong_key() -> None:
    from a2vtool.imaging.config import GenerateConfig

    good = Flag("--steps", "steps")
    assert check_flags(GenerateConfig, [good]) == []
    renamed = Flag("--steps", "num_steps")
    problems = check_flags(GenerateConfig, [renamed])
    assert len(problems) == 1 and "num_steps" in problems[0] and "--steps" in problems[0]
    from a2vtool.stages.embed import EmbedConfig

    nested = check_flags(EmbedConfig, [Flag("--data", "dataset.rooot"), Flag("--x", "duration.sub")])
    assert any("dataset.rooot" in p for p in nested) and any("not a section" in p for p in nested)
    with pytest.raises(KeyError):
        field_at(EmbedConfig, "out")  # the file key of embed's output is cache_root
    assert field_at(EmbedConfig, "cache_root").default == Path("cache/embeddings")


def test_checker_catches_wrong_kinds_and_duplicates() -> None:
    from a2vtool.imaging.config import GenerateConfig
    from a2vtool.stages.memcheck import MemcheckConfig

    assert any("not a bool" in p for p in check_flags(GenerateConfig, [Flag("--steps", "steps", switch=True)]))
    assert any("parser" in p for p in check_flags(GenerateConfig, [Flag("--classes", "classes")]))
    assert any("not a list" in p for p in check_flags(MemcheckConfig, [Flag("--rounds", "rounds", multiple=True)]))
    dup = check_flags(GenerateConfig, [Flag("--steps", "steps"), Flag("--steps", "width"), Flag("--w", "width")])
    assert any("--steps: given twice" in p for p in dup) and any("width: set by two flags" in p for p in dup)
    assert any("section" in p for p in check_flags(config_model("federate"), [Flag("--training", "training")]))


def test_a_table_with_a_broken_key_fails_the_table_walk() -> None:
    """What the table test above does when a field is renamed under a registered command."""
    sub = typer.Typer()
    broken = (*shared_flags(), Flag("--stepz", "stepz"))

    @config_command(sub, "tmp-broken", "generate-images", broken)
    def _cmd(flags: Any = None) -> None:
        pass

    try:
        stage, flags = COMMAND_FLAGS["tmp-broken"]
        problems = check_flags(config_model(stage), flags)
        assert len(problems) == 1 and problems[0].startswith("--stepz: stepz: stepz is not a field of GenerateConfig")
    finally:
        del COMMAND_FLAGS["tmp-broken"]


# ------------------------------------------------------------------------------------- values and order
def test_flag_values_are_parsed_and_validated() -> None:
    from a2vtool.imaging.config import GenerateConfig

    _, flags = COMMAND_FLAGS["generate-images"]
    by = {f.flag: f for f in flags}
    o = flag_overrides(GenerateConfig, {by["--steps"]: "3", by["--guidance"]: "1.5", by["--classes"]: "dog, rain,",
                                        by["--split"]: "all", by["--oracle"]: True, by["--out"]: "x/y"})
    assert o == {"steps": 3, "guidance": 1.5, "classes": ["dog", "rain"], "splits": [], "oracle": True, "out": Path("x/y")}
    assert flag_overrides(GenerateConfig, {by["--split"]: "test,val"})["splits"] == ["test", "val"]
    with pytest.raises(InputError, match="--steps 'many'.*valid integer"):
        flag_overrides(GenerateConfig, {by["--steps"]: "many"})
    assert csv_list(" a,,b ") == ["a", "b"]


def test_cli_flag_wins_over_file_and_set_wins_over_flag(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Through the real command: capture the config `load_config` builds from file, flags and --set."""
    import a2vtool.stages.memcheck as stage

    seen: list[Any] = []

    def fake_run(cfg: Any) -> dict[str, Any]:
        seen.append(cfg)
        raise InputError("stop here")

    monkeypatch.setattr(stage, "run", fake_run)
    f = tmp_path / "memcheck.json"
    f.write_text(json.dumps({"workload": "synthetic", "rounds": 7, "warmup": 1, "tensors": True, "device": "cpu"}))
    r = CliRunner().invoke(app, ["memcheck", "--memcheck-config", str(f), "--rounds", "9", "--no-tensors",
                                 "-s", "a=1", "--set", "b=2", "--seed", "5"])
    assert r.exit_code == 2 and "stop here" in r.stderr
    cfg = seen[-1]
    assert (cfg.workload, cfg.rounds, cfg.warmup, cfg.tensors, cfg.seed, cfg.device) == ("synthetic", 9, 1, False, 5, "cpu")
    assert cfg.set == ["a=1", "b=2"]

    # the stage commands with --set: the file < the flag < --set
    from a2vtool.imaging.config import GenerateConfig

    _, flags = COMMAND_FLAGS["generate-images"]
    by = {fl.flag: fl for fl in flags}
    g = tmp_path / "gen.json"
    g.write_text(json.dumps({"oracle": True, "classes": ["dog"], "steps": 2, "width": 16}))
    o = flag_overrides(GenerateConfig, {by["--steps"]: "3", by["--width"]: "32"})
    cfg2 = load_config(GenerateConfig, g, ["steps=5"], o)
    assert (cfg2.steps, cfg2.width, cfg2.classes) == (5, 32, ["dog"])


def test_generate_images_cli_applies_flags_then_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import a2vtool.stages.generate_images as stage

    seen: list[Any] = []

    def fake_run(cfg: Any, **_: Any) -> dict[str, Any]:
        seen.append(cfg)
        raise InputError("stop here")

    monkeypatch.setattr(stage, "run", fake_run)
    g = tmp_path / "gen.json"
    g.write_text(json.dumps({"oracle": True, "classes": ["dog"], "steps": 2, "width": 16, "height": 16}))
    r = CliRunner().invoke(app, ["generate-images", "-c", str(g), "--steps", "3", "--width", "32", "--set", "steps=5",
                                 "--split", "all", "-o", str(tmp_path / "imgs"), "--device", "cpu"])
    assert r.exit_code == 2 and "stop here" in r.stderr
    cfg = seen[-1]
    assert (cfg.steps, cfg.width, cfg.height, cfg.splits, cfg.out, cfg.device) == (5, 32, 16, None, tmp_path / "imgs", "cpu")


def test_bad_flag_value_is_one_error_line_naming_the_flag() -> None:
    r = CliRunner().invoke(app, ["memcheck", "--workload", "synthetic", "--rounds", "ten"])
    assert r.exit_code == 2
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "--rounds" in lines[0] and "rounds" in lines[0]
    r = CliRunner().invoke(app, ["memcheck", "--workload", "everything"])
    assert r.exit_code == 2 and "--workload" in r.stderr and "synthetic" in r.stderr
