"""train-generator stage and command: every type x granularity on a synthetic cache, conditions, checks, errors."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import typer
from typer.testing import CliRunner

from a2vtool.config import load_config
from a2vtool.embeddings import import_tensors
from a2vtool.errors import ConfigError, InputError
from a2vtool.models.generator_store import load_generator_set
from a2vtool.models.generators import build_condition
from a2vtool.models.text_targets import TextTargets, save_text_targets
from a2vtool.stages.train_generator import TrainGeneratorConfig, memcheck_workload, run

T, D = 8, 32
CLASSES = ["bell", "dog", "rain"]
FAST = {"hidden_dim": 32, "latent_dim": 8, "depth": 1, "epochs": 6, "batch_size": 32, "eval_samples": 32, "patience": 0}
GROUPS = {"animals": ["dog"], "things": ["bell", "rain"]}


@pytest.fixture(autouse=True)
def _one_thread() -> Any:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three well-separated classes: each a low-rank cloud around its own centre; 30 train + 4 test clips."""
    g = torch.Generator().manual_seed(0)
    rows = []
    for ci, c in enumerate(CLASSES):
        centre = 4.0 * torch.randn(T, D, generator=g)
        basis = 0.7 * torch.randn(3, T * D, generator=g)
        for i in range(34):
            x = centre + (torch.randn(3, generator=g) @ basis).reshape(T, D) + 0.2 * torch.randn(T, D, generator=g)
            rows.append((f"{c}/{i}", c, "train" if i < 30 else "test", x))
    return import_tensors(tmp_path_factory.mktemp("cache") / "emb", rows, dataset="syn")


def _targets(family: str, directory: Path) -> Path:
    g = torch.Generator().manual_seed(1)
    c = len(CLASSES)
    slots = {"prompt_embeds": torch.randn(c, 77, 32, generator=g)} if family == "sd" else {
        "prompt_embeds": torch.randn(c, 16, 48, generator=g), "pooled_prompt_embeds": torch.randn(c, 32, generator=g)}
    tt = TextTargets(family, CLASSES, [f"a photo of {x}" for x in CLASSES], slots, key=f"{family}-targets-key")
    return save_text_targets(tt, directory)


def _cfg(cache: Path, out: Path, **kw: Any) -> TrainGeneratorConfig:
    return load_config(TrainGeneratorConfig, None, None, {"embeddings": str(cache), "out": str(out), **FAST, **kw})


COMBOS = [("vae", "unified"), ("vae", "per_class"), ("vae", "per_group"), ("gan", "unified"), ("gan", "per_class"),
          ("gan", "per_group"), ("cvae", "unified"), ("cvae", "per_group")]


@pytest.mark.parametrize(("kind", "gran"), COMBOS)
def test_every_type_and_granularity_trains_samples_and_reloads(cache: Path, tmp_path: Path, kind: str, gran: str) -> None:
    extra: dict[str, Any] = {"groups": GROUPS} if gran == "per_group" else {}
    if kind == "cvae":
        extra["text_targets"] = {"artifact": str(_targets("flux" if gran == "unified" else "sd", tmp_path / "tt"))}
    summary = run(_cfg(cache, tmp_path / "gen", generator=kind, granularity=gran, **extra))
    names = {"unified": ["unified"], "per_class": CLASSES, "per_group": ["group-animals", "group-things"]}[gran]
    assert [g["name"] for g in summary["generators"]] == names
    assert all(g["params"] > 0 and g["epochs_run"] == 6 for g in summary["generators"])
    assert summary["class_specific"] == (kind == "cvae" or gran == "per_class")
    assert set(summary["metrics"]["classes"]) == set(CLASSES)
    m = json.loads(Path(summary["manifest"]).read_text())
    assert m["training_sequence_length"] == T and m["cache_tokens"] == T and m["embedding_key"]  # default: T <= 64
    assert (m["targets_key"] is not None) == (kind == "cvae")
    for e in m["generators"]:
        assert e["arch"]["type"] == kind and (tmp_path / "gen" / e["file"]).is_file() and e["training"]["epochs_run"] == 6
        assert e["group"] == (e["name"][len("group-"):] if gran == "per_group" else None)
    gs = load_generator_set(tmp_path / "gen")
    assert gs.classes == CLASSES
    for c in CLASSES:
        assert gs.sample(c, 3).shape == (3, T, D)
        with pytest.warns(UserWarning, match="1214"):
            assert gs.sample(c, 2, sequence_length=1214).shape == (2, 1214, D)
        a = gs.sample(c, 4, generator=torch.Generator().manual_seed(5))
        assert torch.equal(a, load_generator_set(tmp_path / "gen").sample(c, 4, generator=torch.Generator().manual_seed(5)))


@pytest.mark.parametrize("family", ["sd", "flux"])
def test_conditioned_sampling_uses_the_training_condition(cache: Path, tmp_path: Path, family: str) -> None:
    tt_dir = _targets(family, tmp_path / "tt")
    run(_cfg(cache, tmp_path / "gen", generator="cvae", granularity="unified", text_targets={"artifact": str(tt_dir)},
             training_sequence_length=4))
    from a2vtool.models.text_targets import load_text_targets

    tt = load_text_targets(tt_dir)
    gs = load_generator_set(tmp_path / "gen")
    model = gs.generator_for("dog")
    cond = build_condition(tt, CLASSES, 4)  # the very function training used
    assert cond.shape == (3, 4, 32 if family == "sd" else 48 + 32) and model.cond_dim == cond.shape[-1]
    want = model.sample(3, cond[1], sequence_length=T, generator=torch.Generator().manual_seed(2))
    assert torch.equal(gs.sample("dog", 3, generator=torch.Generator().manual_seed(2)), want)
    assert gs.targets_key == f"{family}-targets-key"


@pytest.mark.slow
def test_conditioned_generator_from_a_tiny_flux_pipeline(cache: Path, tmp_path: Path) -> None:
    from a2vtool.tiny import build_tiny_flux

    pipe = build_tiny_flux(tmp_path / "flux")
    s = run(_cfg(cache, tmp_path / "gen", generator="cvae", granularity="unified",
                 text_targets={"pipeline": str(pipe), "root": str(tmp_path / "tt"), "max_sequence_length": 16}))
    gs = load_generator_set(Path(s["out"]))
    assert gs.generator_for("rain").cond_dim == 48 + 32 and gs.sample("rain", 2).shape == (2, T, D)


def test_per_class_generators_beat_one_gaussian_for_all(cache: Path, tmp_path: Path) -> None:
    s = run(_cfg(cache, tmp_path / "gen", epochs=40, hidden_dim=64, latent_dim=8, batch_size=16, eval_samples=128))
    for c, per in s["metrics"]["classes"].items():
        assert per["generator"]["fd"] < per["gaussian_all"]["fd"], c
    assert s["metrics"]["summary"]["fd_wins_vs_gaussian_all"] == "3/3"
    assert "per-class Gaussian" in s["metrics"]["summary"]["verdict"]
    assert s["metrics"]["summary"]["verdict"].startswith("learned vae generator:")


def test_training_uses_the_train_split_and_beta_reaches_its_target(cache: Path, tmp_path: Path) -> None:
    s = run(_cfg(cache, tmp_path / "gen", granularity="unified", epochs=5, beta=0.5, beta_warmup_fraction=0.6))
    g = s["generators"][0]
    m = json.loads((tmp_path / "gen" / "manifest.json").read_text())
    entry = m["generators"][0]
    assert entry["train_clips"] + entry["val_clips"] == 90  # the 12 "test" clips are not used
    betas = [h["beta"] for h in entry["history"]]
    assert betas[2] == pytest.approx(0.5) and betas[1] < 0.5 and g["last"]["beta"] == 0.5
    assert {"recon", "kl", "loss", "val_loss"} <= set(entry["history"][0])


def test_same_seed_gives_identical_weights(cache: Path, tmp_path: Path) -> None:
    a = run(_cfg(cache, tmp_path / "a", granularity="unified", epochs=3))
    b = run(_cfg(cache, tmp_path / "b", granularity="unified", epochs=3))
    assert a["key"] == b["key"]
    from a2vtool.artifacts import load_tensors

    (ta, ma), (tb, mb) = (load_tensors(tmp_path / d / "gen-unified.safetensors") for d in "ab")
    assert ma == mb and ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)  # bit-identical tensors


def _cli(*args: str) -> Any:
    from a2vtool.cli.train_generator_cmd import register

    app = typer.Typer()
    register(app)
    app.command("noop")(lambda: None)  # two commands: typer keeps the subcommand name
    return CliRunner().invoke(app, ["train-generator", *args])


@pytest.mark.parametrize(("args", "needle"), [
    (["--generator", "cvae", "--granularity", "per_class", "--set", "text_targets.pipeline=x"], "constant"),
    (["--generator", "cvae", "--granularity", "unified"], "text_targets.pipeline"),
    (["--granularity", "per_group"], "needs groups"),
    (["--granularity", "per_group", "--set", 'groups={"a":["dog"]}', "--classes", "dog,rain"], "'rain' is in no group"),
    (["--granularity", "per_group", "--set", 'groups={"a":["dog","cat"]}'], "unknown class 'cat'"),
    (["--classes", "dog,cat"], "unknown class 'cat'"),
    (["--generator", "diffusion"], "generator"),
    (["--generator", "gaussian", "--granularity", "unified"], "fitted per class"),
    (["--set", 'groups={"a":["dog"],"b":["dog"]}', "--granularity", "per_group"], "one group"),
])
def test_invalid_combinations_exit_2_with_one_line(cache: Path, tmp_path: Path, args: list[str], needle: str) -> None:
    r = _cli("--embeddings", str(cache), "--out", str(tmp_path / "o"), *args)
    assert r.exit_code == 2, r.output
    lines = [x for x in r.output.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], r.output
    assert not (tmp_path / "o").exists()


def test_missing_cache_and_too_few_clips_are_input_errors(cache: Path, tmp_path: Path) -> None:
    r = _cli("--embeddings", str(tmp_path / "nope"), "--out", str(tmp_path / "o"))
    assert r.exit_code == 2 and "not found" in r.output
    with pytest.raises(InputError, match="dog \\(0\\); each class needs at least 2"):
        run(_cfg(cache, tmp_path / "o", splits=["nosuch"], classes=["dog"]))
    with pytest.raises(InputError, match="no clips"):
        run(_cfg(cache, tmp_path / "o", splits=["nosuch"]))
    with pytest.raises(ConfigError, match="one group"):
        _cfg(cache, tmp_path / "o", granularity="per_group", groups={"a": ["dog"], "b": ["dog"]})


def test_cli_json_and_table(cache: Path, tmp_path: Path) -> None:
    r = _cli("--embeddings", str(cache), "--out", str(tmp_path / "o"), "--json", "--classes", "dog,rain",
             "--set", "epochs=2", "--set", "hidden_dim=16", "--set", "depth=1", "--set", "eval_samples=8")
    assert r.exit_code == 0, r.output
    s = json.loads(r.output)
    assert s["classes"] == ["dog", "rain"] and [g["name"] for g in s["generators"]] == ["dog", "rain"]
    r = _cli("--embeddings", str(cache), "--out", str(tmp_path / "o"), "--generator", "gan", "--granularity", "unified",
             "--set", "epochs=2", "--set", "hidden_dim=16", "--set", "depth=1", "--set", "eval_samples=8")
    assert r.exit_code == 0, r.output
    assert "params" in r.output and "FD Gaussian/class" in r.output and "per-class Gaussian" in r.output


def test_memcheck_workload_runs_epochs(cache: Path, tmp_path: Path) -> None:
    w = memcheck_workload(_cfg(cache, tmp_path / "o", epochs=3), [], "cpu", 0)
    assert w.name == "train-generator"
    steps: list[str] = []
    w.setup()
    for r in range(3):
        w.run_round(r, steps.append)
    w.close()
    assert len(steps) == 3 * 3 and steps[0].startswith("bell ")  # 3 generators x 1 batch of 24 per epoch
    cfg_file = tmp_path / "c.json"
    cfg_file.write_text(json.dumps({"embeddings": str(cache), **FAST}))
    assert memcheck_workload(cfg_file, ["epochs=2"], "cpu", 3).cfg.seed == 3


def test_example_config_validates() -> None:
    path = Path(__file__).resolve().parents[2] / "configs" / "train-generator_tiny.json"
    cfg = load_config(TrainGeneratorConfig, path)
    assert cfg.generator == "vae" and cfg.training_sequence_length is None  # the cache's token count (pool:16)


# -- sequence length, gaussian, KD recommendation ---------------------------------------------------------------------
def test_training_sequence_length_defaults_to_a_small_caches_token_count(cache: Path, tmp_path: Path) -> None:
    from a2vtool.stages.train_generator import sequence_length_for

    assert sequence_length_for(None, 8) == 8 and sequence_length_for(None, 64) == 64  # no interpolation needed
    assert sequence_length_for(None, 65) == 4 and sequence_length_for(None, 1214) == 4  # large caches: pooled to 4
    assert sequence_length_for(4, 8) == 4 and sequence_length_for(16, 8) == 8  # explicit values honoured (capped)
    s = run(_cfg(cache, tmp_path / "a", classes=["dog"], epochs=1))
    assert s["training_sequence_length"] == T
    gs = load_generator_set(tmp_path / "a")
    assert gs.generator_for("dog").seq_len == T and gs.sample("dog", 2).shape == (2, T, D)
    s = run(_cfg(cache, tmp_path / "b", classes=["dog"], epochs=1, training_sequence_length=4))
    assert s["training_sequence_length"] == 4 and load_generator_set(tmp_path / "b").generator_for("dog").seq_len == 4


def test_gaussian_generator_per_class(cache: Path, tmp_path: Path) -> None:
    s = run(_cfg(cache, tmp_path / "g", generator="gaussian"))
    assert [g["name"] for g in s["generators"]] == CLASSES and all(g["epochs_run"] == 0 for g in s["generators"])
    m = json.loads(Path(s["manifest"]).read_text())
    assert all(e["arch"]["type"] == "gaussian" and e["arch"]["covariance"] == "full" for e in m["generators"])  # 8*32 <= 1024
    assert m["recommended_for_kd"]["generator"] == "gaussian" and m["recommended_for_kd"]["use_this_artifact"]
    assert "KD: use this artifact" in s["metrics"]["summary"]["verdict"]
    assert s["metrics"]["summary"]["verdict"].startswith("gaussian generator:")  # not called a learned generator
    gs = load_generator_set(tmp_path / "g")
    assert gs.recommended_for_kd["generator"] == "gaussian"
    # samples sit on each class's own cloud (the train split's mean), far from the other classes
    ent = __import__("a2vtool.embeddings", fromlist=["open_cache"]).open_cache(cache)
    for c in CLASSES:
        centre = ent.load(ent.entries(classes=[c], splits=["train"])).mean(0)
        others = [ent.load(ent.entries(classes=[o], splits=["train"])).mean(0) for o in CLASSES if o != c]
        x = gs.sample(c, 256, generator=torch.Generator().manual_seed(0)).mean(0)
        assert all(float((x - centre).norm()) < 0.2 * float((o - centre).norm()) for o in others), c
    low = run(_cfg(cache, tmp_path / "l", generator="gaussian", gaussian_full_max_dim=64, gaussian_rank=5, classes=["dog"]))
    arch = json.loads(Path(low["manifest"]).read_text())["generators"][0]["arch"]
    assert (arch["covariance"], arch["rank"]) == ("lowrank", 5)
    w = memcheck_workload(_cfg(cache, tmp_path / "m", generator="gaussian", classes=["dog"]), [], "cpu", 0)
    steps: list[str] = []
    w.setup()
    for r in range(2):
        w.run_round(r, steps.append)  # a closed-form fit: each round refits
    w.close()
    assert steps == ["dog fit", "dog fit"]


def test_kd_recommendation_falls_back_to_gaussian() -> None:
    from a2vtool.stages.train_generator import recommend_for_kd

    def summary(fd: float, gfd: float) -> dict[str, Any]:
        return {"generator": {"fd": fd}, "gaussian_class": {"fd": gfd}}

    win = recommend_for_kd(summary(0.5, 1.0), "vae", True)
    assert win["generator"] == "vae" and win["use_this_artifact"] and "beats" in win["line"]
    lose = recommend_for_kd(summary(0.0070, 0.0033), "vae", True)  # the spoken-words figure of issue 11
    assert lose["generator"] == "gaussian" and not lose["use_this_artifact"] and "--generator gaussian" in lose["line"]
    assert recommend_for_kd(summary(0.1, 1.0), "gan", False)["generator"] == "gaussian"  # class-agnostic samples
    assert recommend_for_kd(summary(float("nan"), 1.0), "vae", True)["generator"] == "gaussian"
