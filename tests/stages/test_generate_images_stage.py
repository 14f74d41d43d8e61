"""generate-images stage: config validation, the CLI with --json and --eval-clip, oracle mode, the memcheck workload."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

D = 8


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Any:
    import torch

    from a2vtool.embeddings import import_tensors
    from a2vtool.federated.checkpoint import save_adapters
    from a2vtool.models.adapters import AdapterSpec, build_adapters
    from a2vtool.tiny import build_tiny_clip, build_tiny_sd

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("stage")
    p = {"sd": build_tiny_sd(root / "sd"), "clip": build_tiny_clip(root / "clip")}
    g = torch.Generator().manual_seed(0)
    p["cache"] = import_tensors(root / "cache", [(f"{c}-{i}", c, "test", torch.randn(4, D, generator=g))
                                                 for c in ("dog", "rain") for i in range(2)], dataset="synthetic")
    spec = AdapterSpec(hidden=[8], width=8, heads=2, dropout=0.0)
    m = build_adapters(D, {"prompt_embeds": (77, 32)}, spec, tokens=4)
    arch = {"in_dim": D, "slot_shapes": {"prompt_embeds": [77, 32]}, "spec": spec.resolved(4).model_dump(), "family": "sd"}
    save_adapters(root / "adapters.safetensors", m.state_dict(), "k", arch, round="2")
    p["adapters"] = root / "adapters.safetensors"
    p["root"] = root
    yield p
    torch.set_num_threads(threads)


def test_tiny_config_validates_and_sources_are_checked() -> None:
    from a2vtool.config import load_config
    from a2vtool.errors import ConfigError
    from a2vtool.imaging.config import GenerateConfig, ImagesSpec

    cfg = load_config(GenerateConfig, Path(__file__).parents[2] / "configs" / "generate-images_tiny.json")
    assert cfg.height == 32 and cfg.steps == 2
    with pytest.raises(ConfigError, match="adapters is required"):
        load_config(GenerateConfig, None, ["embeddings=x"])
    with pytest.raises(ConfigError, match="unknown key"):
        load_config(GenerateConfig, None, ["oracle=true", "classes=[\"a\"]", "bogus=1"])
    assert ImagesSpec().splits == ["test"] and ImagesSpec().models == "global"


def _app() -> Any:
    import typer

    from a2vtool.cli.generate_images_cmd import register

    app = typer.Typer()
    register(app)
    app.command("noop")(lambda: None)
    return app


def test_cli_json_with_eval_and_class_selection(env: Any, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    args = ["generate-images", "--adapters", str(env["adapters"]), "--embeddings", str(env["cache"]),
            "--pipeline", str(env["sd"]), "--classes", "dog,rain", "--split", "test", "--count", "3",
            "--steps", "1", "--guidance", "2.0", "--height", "32", "--width", "32", "--batch-size", "2",
            "--eval-clip", str(env["clip"]), "--set", "negative=zeros", "--out", str(tmp_path / "o"),
            "--device", "cpu", "--seed", "3", "--json"]
    res = CliRunner().invoke(_app(), args)
    assert res.exit_code == 0, res.output
    s = json.loads(res.stdout.strip().splitlines()[-1])  # stdout only: progress and notices go to stderr
    assert s["counts"]["images"] == 3 and s["classes"] == ["dog", "rain"]
    ev = s["eval"]
    assert ev["chance"] == pytest.approx(0.5) and {"accuracy", "balanced_accuracy", "macro_f1", "clip_score"} <= set(ev)
    m = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert m["eval"]["n"] == 3 and m["config"]["seed"] == 3 and m["adapters"]["round"] == 2


def test_cli_unknown_class_exits_2(env: Any, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    res = CliRunner().invoke(_app(), ["generate-images", "--adapters", str(env["adapters"]), "--embeddings",
                                      str(env["cache"]), "--pipeline", str(env["sd"]), "--classes", "cat",
                                      "--out", str(tmp_path / "o"), "--device", "cpu"])
    assert res.exit_code == 2 and "cat" in res.output and "dog" in res.output


def test_oracle_renders_from_text_targets(env: Any, tmp_path: Path) -> None:
    from a2vtool.imaging.config import GenerateConfig
    from a2vtool.stages.generate_images import run

    cfg = GenerateConfig(oracle=True, classes=["dog", "rain"], samples_per_class=1, pipeline=str(env["sd"]), steps=1,
                         guidance=2.0, height=32, width=32, targets_root=env["root"] / "tt", out=tmp_path / "o",
                         device="cpu")
    s = run(cfg)  # negative "empty": the stored empty-prompt encoding from the text targets
    assert s["counts"]["per_class"] == {"dog": 1, "rain": 1} and s["settings"]["oracle"] is True
    assert all(r["source"] == "oracle" for r in s["images"])


def test_memcheck_workload_renders_every_round(env: Any, tmp_path: Path) -> None:
    from a2vtool.stages.generate_images import memcheck_workload

    conf = tmp_path / "gi.json"
    conf.write_text(json.dumps({"adapters": str(env["adapters"]), "embeddings": str(env["cache"]),
                                "pipeline": str(env["sd"]), "steps": 1, "height": 32, "width": 32, "count": 2,
                                "negative": "zeros"}))
    w = memcheck_workload(conf, ["batch_size=2"], device="cpu", seed=0)
    steps: list[str] = []
    w.setup()
    try:
        for r in range(2):
            w.run_round(r, steps.append)
    finally:
        w.close()
    assert steps == ["render", "render"] and not w.scratch.exists()
