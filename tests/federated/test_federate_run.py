"""End-to-end federate runs on tiny pipelines and a synthetic, well-separated embedding cache."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import copy
import gc
import json
import math
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from a2vtool import tiny
from a2vtool.config import validate
from a2vtool.embeddings import import_tensors
from a2vtool.errors import ConfigError, InputError
from a2vtool.federated import checkpoint as ck
from a2vtool.federated.config import FederateConfig

CLASSES = ["dog", "rain", "siren", "piano", "engine", "rooster"]
CLIPS = 20
TOKENS = (8, 32)
REPO = Path(__file__).resolve().parents[2]


def _separable_rows(classes: list[str], clips: int, tokens: tuple[int, int], seed: int = 0) -> list[tuple[str, str, None, Any]]:
    """Each class: a fixed random mean pattern plus small noise (well separated)."""
    g = torch.Generator().manual_seed(seed)
    means = {c: torch.randn(*tokens, generator=g) for c in classes}
    return [(f"{c}-{i:03d}", c, None, means[c] + 0.1 * torch.randn(*tokens, generator=g)) for c in classes for i in range(clips)]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("fedworld")
    tiny.build_tiny_flux(root / "flux")
    tiny.build_tiny_sd(root / "sd")
    import_tensors(root / "emb", _separable_rows(CLASSES, CLIPS, TOKENS), dataset="synthetic")
    return {"root": root, "flux": root / "flux", "sd": root / "sd", "emb": root / "emb", "targets": root / "text-targets"}


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def config_dict(world: dict[str, Path], out: Path, **over: Any) -> dict[str, Any]:
    base = {
        "name": "test",
        "nodes": [{"classes": [c]} for c in CLASSES],
        "data": {"embeddings": str(world["emb"]), "dataset": "synthetic", "ratios": [0.7, 0.15, 0.15]},
        "pipeline": {"name_or_path": str(world["flux"]), "max_sequence_length": 24, "targets_root": str(world["targets"])},
        "adapters": {"hidden": [32], "width": 16, "heads": 2, "dropout": 0.0},
        "training": {"local_epochs": 2, "batch_size": 8, "lr": 0.003},
        "strategy": {"name": "fedavg"},
        "eval": {"splits": ["val", "test"], "cross": True},
        "rounds": 3,
        "out": str(out),
        "device": "cpu",
        "seed": 0,
    }
    return _merge(base, over)


def make_cfg(world: dict[str, Path], out: Path, **over: Any) -> FederateConfig:
    return validate(FederateConfig, config_dict(world, out, **over), "test")


def federate(cfg: FederateConfig, **kw: Any) -> dict[str, Any]:
    from a2vtool.stages.federate import run

    return run(cfg, **kw)


def metrics(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(ln) for ln in (Path(run_dir) / "metrics.jsonl").read_text().splitlines() if ln.strip()]


def global_acc(rows: list[dict[str, Any]], r: int, split: str = "test") -> float:
    return next(x for x in rows if x["round"] == r and x["node"] == "global")["eval"][split]["acc"]


def final_tensors(run_dir: Path) -> dict[str, dict[str, torch.Tensor]]:
    from safetensors.torch import load_file

    return {p.name: load_file(str(p)) for p in sorted((Path(run_dir) / "final").glob("*.safetensors"))}


def assert_same_tensors(a: dict[str, dict[str, torch.Tensor]], b: dict[str, dict[str, torch.Tensor]]) -> None:
    assert a.keys() == b.keys() and a
    for f in a:
        assert a[f].keys() == b[f].keys(), f
        for k in a[f]:
            assert torch.equal(a[f][k], b[f][k]), f"{f}:{k} differs"


def _strip_timing(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _strip_timing(v) for k, v in x.items() if k != "seconds"}
    return x


# -- learning ---------------------------------------------------------------------------------------------

def test_fedavg_learns_the_separable_task(world: dict[str, Path], tmp_path: Path) -> None:
    cfg = make_cfg(world, tmp_path / "run", nodes=None, rounds=3,
                   data={"partition": {"kind": "iid", "num_nodes": 3}})
    manifest = federate(cfg)
    rows = metrics(tmp_path / "run")
    chance = 1 / len(CLASSES)
    acc = global_acc(rows, 3)
    assert acc > 2 * chance, rows[-1]
    assert manifest["final"]["metrics"]["global"]["test"]["acc"] == acc
    assert {x["round"] for x in rows} == {1, 2, 3}


def test_standalone_single_class_nodes_vs_fedavg(world: dict[str, Path], tmp_path: Path) -> None:
    over = {"rounds": 4, "training": {"local_epochs": 2, "lr": 0.003}}
    federate(make_cfg(world, tmp_path / "none", strategy={"name": "none"}, **over))
    federate(make_cfg(world, tmp_path / "avg", **over))
    none_rows, avg_rows = metrics(tmp_path / "none"), metrics(tmp_path / "avg")
    chance = 1 / len(CLASSES)
    last = [x for x in none_rows if x["round"] == 4]
    assert len(last) == len(CLASSES) and all(x["node"] != "global" for x in last)
    for x in last:
        # a node that saw one class predicts that class: right on its own test clips, chance on the federation's
        assert x["eval"]["test"]["acc"] == 1.0
        assert x["eval"]["federation_test"]["acc"] <= chance + 0.05, x
    g = global_acc(avg_rows, 4)
    assert g > 0.5, g
    assert not (tmp_path / "none" / "final" / "adapters-global.safetensors").exists()


# -- resume, determinism ----------------------------------------------------------------------------------

def _cli(*args: str, **kw: Any) -> subprocess.Popen[bytes]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-m", "a2vtool", "federate", *args], cwd=str(REPO), env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **kw)


def test_kill_and_resume_gives_identical_adapters(world: dict[str, Path], tmp_path: Path) -> None:
    rounds = 6
    # a separate targets root so the subprocess computes nothing shared with in-process runs concurrently
    d = config_dict(world, tmp_path / "unused", rounds=rounds, training={"local_epochs": 2, "batch_size": 4},
                    strategy={"name": "fedadam", "server_lr": 0.01})
    cfg_path = tmp_path / "cfg.json"
    cfg_path.write_text(json.dumps(d))
    killed, ref = tmp_path / "killed", tmp_path / "ref"

    proc = _cli("-c", str(cfg_path), "--out", str(killed))
    marker = ck.round_dir(killed, 2) / "state.json"
    deadline = time.monotonic() + 400
    while not marker.exists():
        assert proc.poll() is None, proc.stdout.read().decode()  # type: ignore[union-attr]
        assert time.monotonic() < deadline, "round 2 never completed"
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = ck.complete_rounds(killed)
    assert 2 <= done[-1] < rounds, f"the kill came too late: {done}"
    assert not (killed / "manifest.json").exists()

    res = _cli("--resume", str(killed))
    out, _ = res.communicate(timeout=300)
    assert res.returncode == 0, out.decode()
    ref_proc = _cli("-c", str(cfg_path), "--out", str(ref))
    out, _ = ref_proc.communicate(timeout=300)
    assert ref_proc.returncode == 0, out.decode()

    assert_same_tensors(final_tensors(killed), final_tensors(ref))
    rows = metrics(killed)
    keys = [(x["round"], x["node"]) for x in rows]
    assert len(keys) == len(set(keys)), "duplicate metrics lines after resume"
    assert sorted({r for r, _ in keys}) == list(range(1, rounds + 1))
    assert [_strip_timing(x) for x in rows] == [_strip_timing(x) for x in metrics(ref)]
    # resuming a finished run does nothing and succeeds
    again = _cli("--resume", str(killed))
    out, _ = again.communicate(timeout=300)
    assert again.returncode == 0, out.decode()
    assert len(metrics(killed)) == len(rows)


def test_resume_with_more_rounds_matches_a_longer_run(world: dict[str, Path], tmp_path: Path) -> None:
    from a2vtool.federated.loop import load_run_config

    federate(make_cfg(world, tmp_path / "a", rounds=2, strategy={"name": "fedavgm"}))
    cfg = load_run_config(tmp_path / "a").model_copy(update={"rounds": 4})
    federate(cfg, resume=tmp_path / "a")
    federate(make_cfg(world, tmp_path / "b", rounds=4, strategy={"name": "fedavgm"}))
    assert_same_tensors(final_tensors(tmp_path / "a"), final_tensors(tmp_path / "b"))
    # (cosine schedules depend on the total rounds, so only the adapters of equal-length runs are compared)


def test_same_seed_same_results(world: dict[str, Path], tmp_path: Path) -> None:
    over = {"rounds": 2, "adapters": {"dropout": 0.1}, "training": {"schedule": "cosine"}}
    federate(make_cfg(world, tmp_path / "a", **over))
    federate(make_cfg(world, tmp_path / "b", **over))
    assert [_strip_timing(x) for x in metrics(tmp_path / "a")] == [_strip_timing(x) for x in metrics(tmp_path / "b")]
    assert_same_tensors(final_tensors(tmp_path / "a"), final_tensors(tmp_path / "b"))
    federate(make_cfg(world, tmp_path / "c", seed=1, **over))
    assert [_strip_timing(x) for x in metrics(tmp_path / "a")] != [_strip_timing(x) for x in metrics(tmp_path / "c")]


def _round_tensors(run_dir: Path) -> dict[str, dict[str, torch.Tensor]]:
    from safetensors.torch import load_file

    return {str(p.relative_to(run_dir)): load_file(str(p)) for p in sorted((run_dir / "rounds").rglob("*.safetensors"))}


def test_background_checkpoints_equal_inline_ones(world: dict[str, Path], tmp_path: Path) -> None:
    # fedavgm: server state too; the background writer snapshots states that the next round then changes
    over = {"rounds": 3, "strategy": {"name": "fedavgm"}, "eval": {"cross": False}}
    federate(make_cfg(world, tmp_path / "bg", **over))
    federate(make_cfg(world, tmp_path / "inline", checkpoints={"background": False}, **over))
    bg, inline = _round_tensors(tmp_path / "bg"), _round_tensors(tmp_path / "inline")
    assert len(bg) == 3 * (len(CLASSES) + 2)  # per round: every node, the global, the server state
    assert_same_tensors(bg, inline)
    assert ck.complete_rounds(tmp_path / "bg") == [1, 2, 3]
    for r in (1, 2, 3):
        a, b = ck.read_state(tmp_path / "bg", r), ck.read_state(tmp_path / "inline", r)
        assert a == b and a["round"] == r  # the RNG state is the one of the round's end, not of the write


def test_a_failed_background_write_is_raised_not_lost(tmp_path: Path) -> None:
    w = ck.CheckpointWriter(background=True)
    done: list[int] = []

    def bad() -> None:
        raise OSError("disk full")

    w.submit(lambda: done.append(1))
    w.submit(bad)  # waits for the first write, then starts this one
    assert done == [1]
    with pytest.raises(OSError, match="disk full"):
        w.wait()
    w.submit(lambda: done.append(2))
    w.submit(bad)
    with pytest.raises(OSError, match="disk full"):
        w.close()
    assert done == [1, 2]


# -- strategies -------------------------------------------------------------------------------------------

def _finite(x: Any) -> bool:
    if isinstance(x, dict):
        return all(_finite(v) for v in x.values())
    if isinstance(x, float):
        return math.isfinite(x)
    return True


@pytest.mark.parametrize("strategy", [{"name": "fedprox", "mu": 0.1}, {"name": "fedavgm"}, {"name": "fedadam", "server_lr": 0.01},
                                      {"name": "median"}, {"name": "trimmed_mean", "trim_ratio": 0.2}])
def test_strategies_smoke(world: dict[str, Path], tmp_path: Path, strategy: dict[str, Any]) -> None:
    manifest = federate(make_cfg(world, tmp_path / "run", rounds=2, strategy=strategy, eval={"cross": False}))
    rows = metrics(tmp_path / "run")
    assert {x["round"] for x in rows} == {1, 2}
    assert all(_finite(x) for x in rows)
    g = [x for x in rows if x["node"] == "global"]
    assert len(g) == 2 and all(x["eval"]["test"]["n"] > 0 for x in g)
    assert manifest["config"]["strategy"]["name"] == strategy["name"]
    state = final_tensors(tmp_path / "run")["adapters-global.safetensors"]
    assert all(torch.isfinite(v).all() for v in state.values())


def test_kd_with_generators(world: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("a2vtool.models.generator_store")
    tg = pytest.importorskip("a2vtool.stages.train_generator")
    cfg_cls = getattr(tg, "TrainGeneratorConfig", None) or getattr(tg, "GeneratorConfig", None)
    if cfg_cls is None:
        pytest.skip("a2vtool.stages.train_generator has no TrainGeneratorConfig")
    gen_out = tmp_path / "gen"
    fields = cfg_cls.model_fields
    data: dict[str, Any] = {"out": str(gen_out), "seed": 0}
    for k, v in (("embeddings", str(world["emb"])), ("dataset", "synthetic"), ("epochs", 2), ("device", "cpu"),
                 ("hidden_dim", 16), ("latent_dim", 4), ("depth", 1), ("batch_size", 16), ("eval_samples", 8),
                 ("training_sequence_length", 4)):
        if k in fields:
            data[k] = v
    gcfg = validate(cfg_cls, data, "test")
    tg.run(gcfg)
    from a2vtool import ui
    from a2vtool.models.generator_store import load_generator_set

    warned: list[str] = []
    monkeypatch.setattr(ui, "warn", warned.append)
    manifest = federate(make_cfg(world, tmp_path / "run", rounds=2,
                                 strategy={"name": "kd", "generators": str(gen_out), "samples_per_class": 4,
                                                           "epochs": 1, "batch_size": 8}))
    rows = metrics(tmp_path / "run")
    assert {x["round"] for x in rows} == {1, 2} and all(_finite(x) for x in rows)
    assert manifest["final"]["adapters"]["global"]
    # KD says so when the generators' own quality report recommends another generator (and only then)
    rec = load_generator_set(gen_out).recommended_for_kd
    assert any(str(gen_out) in w and "KD: use" in w for w in warned) == (not rec["use_this_artifact"]), (rec, warned)


_KILL_MID_CHECKPOINT = """
import os, sys
from a2vtool.federated import checkpoint as ck
real, seen = ck.save_node_state, []
def dying(path, *a, **kw):
    real(path, *a, **kw)
    seen.append(path)
    if ".round-0002." in str(path.parent):  # one node file of round 2 is in its staging folder: die like SIGKILL
        os._exit(137)
ck.save_node_state = dying
from a2vtool.cli import main
sys.argv = ["a2vtool", "federate", "-c", sys.argv[1]]
main()
"""


def test_kill_mid_checkpoint_leaves_no_partial_after_resume(world: dict[str, Path], tmp_path: Path) -> None:
    killed, ref = tmp_path / "killed", tmp_path / "ref"
    cfg_path = tmp_path / "cfg.json"
    cfg_path.write_text(json.dumps(config_dict(world, killed, rounds=3)))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    p = subprocess.run([sys.executable, "-c", _KILL_MID_CHECKPOINT, str(cfg_path)], env=env, cwd=str(REPO),
                       capture_output=True, timeout=300)
    assert p.returncode == 137, p.stdout.decode() + p.stderr.decode()
    partials = list((killed / "rounds").glob(".round-0002.*.partial"))
    assert partials, sorted(x.name for x in (killed / "rounds").iterdir())
    assert ck.complete_rounds(killed) == [1]
    res = _cli("--resume", str(killed))
    out, _ = res.communicate(timeout=300)
    assert res.returncode == 0, out.decode()
    assert not [x for x in (killed / "rounds").iterdir() if x.name.startswith(".")], "staging leftovers after --resume"
    assert ck.complete_rounds(killed) == [1, 2, 3]
    federate(make_cfg(world, ref, rounds=3))
    assert_same_tensors(final_tensors(killed), final_tensors(ref))


# -- input errors before any model loads ------------------------------------------------------------------

def _bad_cases(world: dict[str, Path]) -> list[tuple[str, dict[str, Any], str]]:
    return [
        ("unknown_class", {"nodes": [{"classes": ["dog"]}, {"classes": ["unicorn"]}]}, "unicorn"),
        ("empty_node", {"nodes": [{"classes": ["dog"], "samples_per_class": 10, "slice": 5}]}, "no samples"),
        ("bad_slot", {"pipeline": {"name_or_path": str(world["sd"]), "slots": ["pooled_prompt_embeds"]}}, "pooled_prompt_embeds"),
        ("ratios", {"data": {"ratios": [0.5, 0.2, 0.2]}}, "sum to 1"),
    ]


@pytest.mark.parametrize("case", ["unknown_class", "empty_node", "bad_slot", "ratios"])
def test_bad_config_fails_before_models_load(world: dict[str, Path], tmp_path: Path, case: str) -> None:
    name, over, needle = next(c for c in _bad_cases(world) if c[0] == case)
    targets = tmp_path / "tt"
    over = _merge(over, {"pipeline": {"targets_root": str(targets)}})
    with pytest.raises(InputError, match=needle) as info:
        federate(make_cfg(world, tmp_path / "run", **over))
    if case == "ratios":
        assert isinstance(info.value, ConfigError)
    assert not targets.exists(), "text targets were computed before the config was checked"
    assert not (tmp_path / "run" / "rounds").exists()


def test_bad_config_via_cli_exits_2(world: dict[str, Path], tmp_path: Path) -> None:
    targets = tmp_path / "tt"
    d = config_dict(world, tmp_path / "run", nodes=[{"classes": ["unicorn"]}], pipeline={"targets_root": str(targets)})
    (tmp_path / "cfg.json").write_text(json.dumps(d))
    p = _cli("-c", str(tmp_path / "cfg.json"))
    out, _ = p.communicate(timeout=120)
    assert p.returncode == 2, out.decode()
    assert b"unicorn" in out
    assert not targets.exists()


def test_existing_run_dir_needs_resume(world: dict[str, Path], tmp_path: Path) -> None:
    federate(make_cfg(world, tmp_path / "run", rounds=1))
    before = metrics(tmp_path / "run")
    with pytest.raises(InputError, match="--resume"):
        federate(make_cfg(world, tmp_path / "run", rounds=1))
    assert metrics(tmp_path / "run") == before
    d = config_dict(world, tmp_path / "run", rounds=1)
    (tmp_path / "cfg.json").write_text(json.dumps(d))
    p = _cli("-c", str(tmp_path / "cfg.json"))
    out, _ = p.communicate(timeout=120)
    assert p.returncode == 2, out.decode()


# -- artifacts --------------------------------------------------------------------------------------------

def test_manifest_final_adapters_and_pruning(world: dict[str, Path], tmp_path: Path) -> None:
    from a2vtool.federated.loop import LocalEngine

    run_dir = tmp_path / "run"
    cfg = make_cfg(world, run_dir, rounds=4, seed=7, checkpoints={"keep_last": 2})
    fed = LocalEngine(cfg, run_dir)
    fed.setup()
    try:
        for r in range(1, 5):
            fed.run_round(r)
        manifest = fed.finish()
        m = json.loads((run_dir / "manifest.json").read_text())
        assert m == json.loads(json.dumps(manifest))
        assert m["seed"] == 7 and m["rounds"] == 4
        assert m["config"]["seed"] == 7 and m["config"]["checkpoints"]["keep_last"] == 2
        assert m["config"]["adapters"] == {"hidden": [32], "width": 16, "heads": 2, "dropout": 0.0, "positions": None}
        text = json.dumps(m)
        assert "torch" in text and "a2vtool" in text.lower()  # versions are recorded
        assert ck.complete_rounds(run_dir) == [3, 4]
        assert not ck.round_dir(run_dir, 1).exists()

        model, info = ck.load_adapters(run_dir, "global")
        assert info["round"] == 4 and info["which"] == "global"
        x = torch.randn(5, *TOKENS)
        fed.global_model.eval()
        with torch.no_grad():
            want, got = fed.global_model(x), model(x)
        assert want.keys() == got.keys() == {"prompt_embeds", "pooled_prompt_embeds"}
        for k in want:
            assert torch.equal(want[k], got[k]), k
        assert got["prompt_embeds"].shape == (5, 24, tiny.T5_HIDDEN)
        assert got["pooled_prompt_embeds"].shape == (5, tiny.CLIP_HIDDEN)
        node_model, _ = ck.load_adapters(run_dir, "node-00")
        with torch.no_grad():
            assert torch.equal(node_model(x)["pooled_prompt_embeds"], fed.models[0].eval()(x)["pooled_prompt_embeds"])
        with pytest.raises(InputError, match="node-99"):
            ck.load_adapters(run_dir, "node-99")
    finally:
        fed.close()


def test_sd_family(world: dict[str, Path], tmp_path: Path) -> None:
    manifest = federate(make_cfg(world, tmp_path / "run", rounds=2, pipeline={"name_or_path": str(world["sd"])}))
    assert manifest["family"] == "sd" and manifest["slots"] == ["prompt_embeds"]
    assert manifest["arch"]["slot_shapes"] == {"prompt_embeds": [77, tiny.CLIP_HIDDEN]}
    rows = metrics(tmp_path / "run")
    assert all(_finite(x) for x in rows) and {x["round"] for x in rows} == {1, 2}
    model, _ = ck.load_adapters(tmp_path / "run")
    with torch.no_grad():
        assert model(torch.randn(2, *TOKENS))["prompt_embeds"].shape == (2, 77, 32)


def test_slot_losses_shape_mismatch_names_both_shapes() -> None:
    from a2vtool.federated.node import slot_losses

    pred = {"prompt_embeds": torch.zeros(2, 17, 8)}
    target = {"prompt_embeds": torch.zeros(2, 16, 8)}
    with pytest.raises(ValueError, match=r"\(2, 17, 8\).*\(2, 16, 8\)"):
        slot_losses(pred, target, 0.0)
    # a batch-broadcastable target is still an error (no silent broadcasting)
    with pytest.raises(ValueError, match=r"\(1, 17, 8\)"):
        slot_losses({"prompt_embeds": torch.zeros(2, 17, 8)}, {"prompt_embeds": torch.zeros(1, 17, 8)}, 0.0)
    ok = slot_losses({"p": torch.ones(2, 3)}, {"p": torch.zeros(2, 3)}, 0.5)
    assert float(ok["p"]) == pytest.approx(1.0 + 0.5 * 1.0)  # mse 1, cosine with a zero target is 0


# -- memory and scale -------------------------------------------------------------------------------------

def _live_tensors() -> int:
    gc.collect()
    n = 0
    for o in gc.get_objects():
        try:
            if torch.is_tensor(o):
                n += 1
        except ReferenceError:
            pass
    return n


def test_tensor_count_does_not_grow(world: dict[str, Path], tmp_path: Path) -> None:
    from a2vtool.federated.loop import LocalEngine

    cfg = make_cfg(world, tmp_path / "run", rounds=10, training={"local_epochs": 1}, strategy={"name": "fedadam", "server_lr": 0.01},
                   checkpoints={"keep_last": 1})
    fed = LocalEngine(cfg, tmp_path / "run")
    fed.setup()
    try:
        counts = {}
        for r in range(1, 11):
            res = fed.run_round(r)
            del res
            counts[r] = _live_tensors()
        assert counts[10] <= counts[3], counts
    finally:
        fed.close()


@pytest.mark.slow
def test_fifty_nodes_one_round(tmp_path: Path, world: dict[str, Path]) -> None:
    classes = [f"sound_{i:02d}" for i in range(50)]
    emb = import_tensors(tmp_path / "emb50", _separable_rows(classes, 8, (4, 32), seed=1), dataset="esc50like")
    cfg = make_cfg(world, tmp_path / "run", rounds=1, nodes=[{"classes": [c]} for c in classes],
                   data={"embeddings": str(emb), "dataset": "esc50like", "ratios": [0.75, 0.125, 0.125]},
                   pipeline={"targets_root": str(tmp_path / "tt")}, training={"local_epochs": 1})
    t0 = time.perf_counter()
    manifest = federate(cfg)
    elapsed = time.perf_counter() - t0
    assert elapsed < 300, elapsed  # 3 s alone on 2 cores; the bound only catches a blow-up, not noise
    assert len(manifest["nodes"]) == 50
    rows = metrics(tmp_path / "run")
    assert len(rows) == 51 and all(_finite(x) for x in rows)
