"""Tests for a2vtool.tiny: tiny random models load offline, have the documented shapes, and build reproducibly."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from a2vtool import tiny


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tiny")
    tiny.build_all(out, seed=0)
    return out


def _tensors(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    tensors: dict[str, torch.Tensor] = {}
    for f in sorted(folder.rglob("*.safetensors")):
        for key, value in load_file(f).items():
            tensors[f"{f.relative_to(folder)}:{key}"] = value
    return tensors


def _mtimes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*")}


def test_module_imports_without_heavy_libraries() -> None:
    code = "import sys, a2vtool.tiny; assert not {'torch', 'transformers', 'diffusers'} & set(sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])


def test_build_all_layout(tiny_dir: Path) -> None:
    assert tiny.TINY_NAMES == ("ast", "sd", "flux", "clip")
    for name in tiny.TINY_NAMES:
        marker = json.loads((tiny_dir / name / tiny.MARKER_NAME).read_text())
        assert marker["name"] == name and marker["seed"] == 0 and marker["a2vtool_version"]
    assert sorted(p.name for p in tiny_dir.iterdir()) == sorted(tiny.TINY_NAMES)  # no temp dirs left


def test_ast_loads_and_gives_documented_tokens(tiny_dir: Path) -> None:
    from transformers import ASTFeatureExtractor, ASTModel

    model = ASTModel.from_pretrained(tiny_dir / "ast").eval()
    fe = ASTFeatureExtractor.from_pretrained(tiny_dir / "ast")
    wave = np.sin(2 * np.pi * 440 * np.arange(16000) / 16000).astype(np.float32)
    x = fe([wave, wave[:8000]], sampling_rate=16000, return_tensors="pt").input_values
    assert x.shape == (2, tiny.AST_MAX_LENGTH, tiny.AST_NUM_MEL_BINS)
    with torch.no_grad():
        hidden = model(x).last_hidden_state
    assert hidden.shape == (2, tiny.AST_TOKENS, tiny.AST_HIDDEN) == (2, 302, 32)


def test_sd_encodes_and_renders_from_embeds(tiny_dir: Path) -> None:
    from diffusers import DiffusionPipeline, StableDiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(tiny_dir / "sd")
    assert isinstance(pipe, StableDiffusionPipeline) and pipe.vae_scale_factor == tiny.VAE_SCALE_FACTOR
    pipe.set_progress_bar_config(disable=True)
    embeds, negative = pipe.encode_prompt(
        "a photo of dog", device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=True, negative_prompt=""
    )
    assert embeds.shape == negative.shape == (1, tiny.CLIP_MAX_LENGTH, tiny.CLIP_HIDDEN) == (1, 77, 32)
    image = pipe(
        prompt_embeds=embeds, negative_prompt_embeds=negative, height=24, width=40, num_inference_steps=2,
        output_type="pil", generator=torch.Generator().manual_seed(0),
    ).images[0]
    assert image.size == (40, 24)
    image = pipe("a photo of dog", num_inference_steps=2, output_type="pil").images[0]
    assert image.size == (tiny.SD_SIZE, tiny.SD_SIZE)


def test_flux_encodes_and_renders_from_embeds(tiny_dir: Path) -> None:
    from diffusers import DiffusionPipeline, FluxPipeline

    assert isinstance(DiffusionPipeline.from_pretrained(tiny_dir / "flux"), FluxPipeline)
    pipe = FluxPipeline.from_pretrained(tiny_dir / "flux")
    pipe.set_progress_bar_config(disable=True)
    embeds, pooled, _ = pipe.encode_prompt(
        prompt="a photo of dog", prompt_2="A photo of a Dog!", max_sequence_length=24
    )
    assert embeds.shape == (1, 24, tiny.T5_HIDDEN) and pooled.shape == (1, tiny.CLIP_HIDDEN)
    image = pipe(
        prompt_embeds=embeds, pooled_prompt_embeds=pooled, height=16, width=tiny.FLUX_SIZE, num_inference_steps=2,
        output_type="pil", generator=torch.Generator().manual_seed(0),
    ).images[0]
    assert image.size == (tiny.FLUX_SIZE, 16)


def test_clip_zero_shot(tiny_dir: Path) -> None:
    from PIL import Image
    from transformers import CLIPModel, CLIPProcessor

    model = CLIPModel.from_pretrained(tiny_dir / "clip").eval()
    processor = CLIPProcessor.from_pretrained(tiny_dir / "clip")
    images = [Image.new("RGB", (50, 40), (255, 0, 0)), Image.new("RGB", (20, 30), (0, 0, 255))]
    inputs = processor(text=["a dog", "a cat", "a siren"], images=images, return_tensors="pt", padding=True)
    assert inputs["pixel_values"].shape == (2, 3, tiny.CLIP_IMAGE_SIZE, tiny.CLIP_IMAGE_SIZE)
    with torch.no_grad():
        out = model(**inputs)
    assert out.logits_per_image.shape == (2, 3)
    assert out.image_embeds.shape == (2, tiny.CLIP_PROJECTION)


@pytest.mark.parametrize("name", tiny.TINY_NAMES)
def test_same_seed_same_weights(tiny_dir: Path, tmp_path: Path, name: str) -> None:
    builder = getattr(tiny, f"build_tiny_{name}")
    again = _tensors(builder(tmp_path / "same", seed=0))
    reference = _tensors(tiny_dir / name)
    assert again.keys() == reference.keys() and reference
    assert all(torch.equal(again[k], reference[k]) for k in reference)
    other = _tensors(builder(tmp_path / "other", seed=1))
    assert any(not torch.equal(other[k], reference[k]) for k in reference)


def test_build_all_skips_complete_and_rebuilds_incomplete(tiny_dir: Path) -> None:
    before = {name: _mtimes(tiny_dir / name) for name in tiny.TINY_NAMES}
    assert tiny.build_all(tiny_dir, seed=0) == {name: tiny_dir / name for name in tiny.TINY_NAMES}
    assert {name: _mtimes(tiny_dir / name) for name in tiny.TINY_NAMES} == before

    (tiny_dir / "ast" / tiny.MARKER_NAME).unlink()  # interrupted build: no marker, stray file
    (tiny_dir / "ast" / "junk.bin").write_bytes(b"half")
    (tiny_dir / "clip" / tiny.MARKER_NAME).write_text(json.dumps({"name": "clip", "seed": 1}))  # other seed
    tiny.build_all(tiny_dir, seed=0)
    assert not (tiny_dir / "ast" / "junk.bin").exists()
    for name in ("ast", "clip"):
        assert json.loads((tiny_dir / name / tiny.MARKER_NAME).read_text())["seed"] == 0
    for name in ("sd", "flux"):
        assert _mtimes(tiny_dir / name) == before[name]
    assert sorted(p.name for p in tiny_dir.iterdir()) == sorted(tiny.TINY_NAMES)


def test_failed_build_leaves_no_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(out: Path, *, seed: int = 0) -> Path:
        (out / "config.json").write_text("{}")
        raise RuntimeError("killed mid-build")

    monkeypatch.setitem(tiny._BUILDERS, "ast", broken)
    with pytest.raises(RuntimeError, match="killed"):
        tiny.build_all(tmp_path, seed=0)
    assert list(tmp_path.iterdir()) == []
