"""generate-images core: tiny SD and FLUX renders, seeds, manifest, skipping, shape errors, flat memory."""

from __future__ import annotations

import gc
import json
from pathlib import Path
from typing import Any

import pytest

D = 16
SPEC = {"hidden": [16], "width": 16, "heads": 2, "dropout": 0.0}
SHAPES = {"sd": {"prompt_embeds": (77, 32)}, "flux": {"prompt_embeds": (8, 48), "pooled_prompt_embeds": (32,)}}


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Any:
    import torch

    from a2vtool.embeddings import import_tensors
    from a2vtool.federated.checkpoint import save_adapters
    from a2vtool.models.adapters import AdapterSpec, build_adapters
    from a2vtool.tiny import build_tiny_flux, build_tiny_sd

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny kernels: extra threads only add contention on a 2-core machine
    root = tmp_path_factory.mktemp("gen")
    paths = {"sd": build_tiny_sd(root / "sd"), "flux": build_tiny_flux(root / "flux")}
    g = torch.Generator().manual_seed(0)
    rows = [(f"c{c}-{i}", f"cls{c}", "test" if i < 3 else "train", torch.randn(6, D, generator=g))
            for c in range(2) for i in range(4)]
    paths["cache"] = import_tensors(root / "cache", rows, dataset="synthetic")
    spec = AdapterSpec(**SPEC)
    for fam, shapes in SHAPES.items():
        torch.manual_seed(1)
        m = build_adapters(D, shapes, spec, tokens=6)
        arch = {"in_dim": D, "slot_shapes": {k: list(v) for k, v in shapes.items()}, "spec": spec.resolved(6).model_dump(), "family": fam}
        save_adapters(root / f"adapters-{fam}.safetensors", m.state_dict(), "k", arch, round="3")
        paths[f"adapters-{fam}"] = root / f"adapters-{fam}.safetensors"
    paths["root"] = root
    yield paths
    torch.set_num_threads(threads)


def _cfg(env: dict[str, Path], fam: str, out: Path, **kw: Any) -> Any:
    from a2vtool.imaging.config import GenerateConfig

    base = dict(adapters=env[f"adapters-{fam}"], embeddings=env["cache"], pipeline=str(env[fam]), steps=2, height=32,
                width=32, batch_size=4, negative="zeros", out=out, device="cpu", seed=7)
    base.update(kw)
    return GenerateConfig(**base)


@pytest.mark.parametrize("fam", ["sd", "flux"])
def test_renders_pngs_of_configured_size_with_manifest(env: dict[str, Path], tmp_path: Path, fam: str) -> None:
    from PIL import Image

    from a2vtool.stages.generate_images import run

    s = run(_cfg(env, fam, tmp_path / "out"))
    m = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert m["counts"]["images"] == 6 and len(m["images"]) == 6  # 3 test clips x 2 classes
    assert {r["clip_id"] for r in m["images"]} == {f"c{c}-{i}" for c in range(2) for i in range(3)}
    for r in m["images"]:
        with Image.open(tmp_path / "out" / r["file"]) as im:
            assert im.size == (32, 32) and im.format == "PNG"
        assert r["class"] == r["clip_id"].split("-")[0].replace("c", "cls") and r["split"] == "test"
        assert r["pipeline"] == str(env[fam]) and r["round"] == 3 and r["steps"] == 2 and isinstance(r["seed"], int)
    assert set(m["grids"]) == {"cls0", "cls1"} and all((tmp_path / "out" / p).is_file() for p in m["grids"].values())
    assert s["family"] == fam


def test_same_seed_byte_identical_and_clips_differ(env: dict[str, Path], tmp_path: Path) -> None:
    from a2vtool.stages.generate_images import run

    a = run(_cfg(env, "flux", tmp_path / "a", steps=1, count=4))
    run(_cfg(env, "flux", tmp_path / "b", steps=1, count=4, batch_size=1))
    c = run(_cfg(env, "flux", tmp_path / "c", steps=1, count=4, seed=8))
    blobs = {r["file"]: (tmp_path / "a" / r["file"]).read_bytes() for r in a["images"]}
    for f, data in blobs.items():
        assert (tmp_path / "b" / f).read_bytes() == data or _close(tmp_path / "b" / f, tmp_path / "a" / f)
    assert len(set(blobs.values())) == len(blobs)  # different clips -> different images
    again = run(_cfg(env, "flux", tmp_path / "d", steps=1, count=4))
    assert all((tmp_path / "d" / f).read_bytes() == data for f, data in blobs.items())  # same seed, same bytes
    assert again["cache_key"] == a["cache_key"] and c["cache_key"] != a["cache_key"]
    assert any((tmp_path / "c" / f).read_bytes() != data for f, data in blobs.items())


def _close(p: Path, q: Path) -> bool:
    """Batch 1 vs batch 4 may differ by float rounding in batched kernels; pixels stay within 2/255."""
    import numpy as np
    from PIL import Image

    return bool(np.abs(np.asarray(Image.open(p), dtype=int) - np.asarray(Image.open(q), dtype=int)).max() <= 2)


def test_rerun_skips_existing_images(env: dict[str, Path], tmp_path: Path) -> None:
    from a2vtool.stages.generate_images import run

    first = run(_cfg(env, "sd", tmp_path / "o", steps=1))
    assert first["counts"]["rendered"] == 6
    victim = tmp_path / "o" / first["images"][0]["file"]
    victim.unlink()  # as if the run was killed before this image
    second = run(_cfg(env, "sd", tmp_path / "o", steps=1))
    assert second["counts"] == {**first["counts"], "rendered": 1, "skipped": 5}
    assert victim.is_file() and len(second["images"]) == 6
    changed = run(_cfg(env, "sd", tmp_path / "o", steps=2, count=2))  # other settings: nothing is reused
    assert changed["counts"]["rendered"] == 2


def test_wrong_shaped_adapters_exit_2_naming_shapes(env: dict[str, Path], tmp_path: Path) -> None:
    import typer
    from typer.testing import CliRunner

    from a2vtool.cli.generate_images_cmd import register

    app = typer.Typer()
    register(app)
    app.command("noop")(lambda: None)
    args = ["generate-images", "--adapters", str(env["adapters-sd"]), "--embeddings", str(env["cache"]),
            "--pipeline", str(env["flux"]), "--height", "32", "--width", "32", "--out", str(tmp_path / "x"), "--device", "cpu"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 2, res.output
    text = " ".join(res.output.split())
    assert "77x32" in text and "Nx48" in text and "prompt_embeds" in text
    assert not (tmp_path / "x").exists()


def test_from_generators_without_embeddings(env: dict[str, Path], tmp_path: Path) -> None:
    pytest.importorskip("a2vtool.models.generator_store")
    import torch

    from a2vtool.models.generator_store import StoredGenerator, save_generator_set
    from a2vtool.models.generators import build_generator, make_arch
    from a2vtool.stages.generate_images import run

    gens = []
    for c in ("dog", "rain"):  # one small untrained VAE per class: the artifact train-generator writes
        torch.manual_seed(len(c))
        gens.append(StoredGenerator(c, [c], build_generator(make_arch("vae", 5, D, hidden_dim=16, latent_dim=4, dropout=0.0))))
    save_generator_set(tmp_path / "gens", gens, key="k", config={})
    cfg = _cfg(env, "flux", tmp_path / "o", embeddings=None, from_generators=tmp_path / "gens", samples_per_class=2, steps=1)
    s = run(cfg)
    assert s["counts"]["per_class"] == {"dog": 2, "rain": 2}
    assert all(r["source"] == "generator" and (tmp_path / "o" / r["file"]).is_file() for r in s["images"])
    again = run(cfg.model_copy(update={"out": tmp_path / "o2"}))  # samples are seeded too: same bytes
    assert all((tmp_path / "o" / r["file"]).read_bytes() == (tmp_path / "o2" / r["file"]).read_bytes() for r in again["images"])


def _live_tensors() -> int:
    import warnings

    import torch

    gc.collect()
    n = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # probing torch.distributed's deprecated aliases warns
        for o in gc.get_objects():
            try:
                n += isinstance(o, torch.Tensor)
            except Exception:  # noqa: BLE001 - some objects refuse isinstance probes
                pass
    return n


def test_ten_renders_keep_tensors_and_rss_flat(env: dict[str, Path], tmp_path: Path) -> None:
    import psutil

    from a2vtool.imaging.pipeline import release_pipeline
    from a2vtool.stages.generate_images import run

    proc = psutil.Process()
    counts, rss = [], []
    try:
        for i in range(10):
            run(_cfg(env, "sd", tmp_path / f"r{i}", batch_size=2, steps=1, count=2), keep_pipeline=True)
            counts.append(_live_tensors())
            rss.append(proc.memory_info().rss)
    finally:
        release_pipeline()
    assert max(counts[1:]) <= counts[1], counts  # no growing set of live tensors
    assert rss[-1] - rss[1] < 12 * 2**20, [r // 2**20 for r in rss]  # < 12 MiB over 9 renders


def test_render_round_images_for_federate(env: dict[str, Path], tmp_path: Path) -> None:
    import torch

    from a2vtool.embeddings import open_cache
    from a2vtool.federated.checkpoint import load_adapters
    from a2vtool.imaging.config import ImagesSpec
    from a2vtool.imaging.generate import render_round_images
    from a2vtool.imaging.pipeline import release_pipeline
    from a2vtool.models.text_targets import TextTargets

    model, _ = load_adapters(env["adapters-sd"])
    model.train()
    tt = TextTargets("sd", ["cls0", "cls1"], ["a", "b"], {"prompt_embeds": torch.randn(2, 77, 32)},
                     {"prompt_embeds": torch.zeros(77, 32)}, "k", str(env["sd"]))
    spec = ImagesSpec(every=1, max_per_class=1, steps=1, height=32, width=32, guidance=3.0)
    cache = open_cache(env["cache"])
    try:
        for r in (1, 2):
            out = render_round_images(tmp_path / "run", r, {"global": model, "node-00": model},
                                      [(cache, cache.entries())], spec, tt, seed=0, device="cpu")
            assert set(out) == {"global", "node-00"} and out["global"]["images"] == 2
        d = tmp_path / "run" / "images" / "round-0002" / "node-00"
        m = json.loads((d / "manifest.json").read_text())
        assert len(m["images"]) == 2 and all((d / r["file"]).is_file() for r in m["images"])
        assert model.training  # the caller's mode is restored
    finally:
        release_pipeline()
