"""Tiny random AST, Stable Diffusion, FLUX and CLIP models saved in Hugging Face layout (offline default)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:  # pragma: no cover - typing only
    from transformers import CLIPTextConfig, CLIPTokenizer, T5Tokenizer

TINY_NAMES: tuple[str, ...] = ("ast", "sd", "flux", "clip")
MARKER_NAME = ".a2v-tiny.json"

# Shapes of the tiny models, exported so callers and tests need not hard-code them.
AST_HIDDEN = 32
AST_MAX_LENGTH = 256  # frames of 10 ms: 2.56 s of 16 kHz audio
AST_NUM_MEL_BINS = 128
AST_TOKENS = 12 * 25 + 2  # ((128-16)//10+1) * ((256-16)//10+1) patches + cls + distillation token = 302
CLIP_HIDDEN = 32  # tiny CLIP text encoder width: SD cross-attention dim, FLUX pooled dim
CLIP_MAX_LENGTH = 77
CLIP_PROJECTION = 16
T5_HIDDEN = 48  # tiny T5 encoder width: FLUX joint attention dim (differs from CLIP on purpose)
SD_SIZE = 32  # default SD render (unet sample_size 16 * vae scale factor 2); sizes must be multiples of 8
FLUX_SIZE = 32  # FLUX needs height/width divisible by 2 * vae scale factor = 4
VAE_SCALE_FACTOR = 2
CLIP_IMAGE_SIZE = 32


def _seed(seed: int) -> None:
    import torch

    torch.manual_seed(seed)


def _clip_tokenizer() -> CLIPTokenizer:
    """Byte-level CLIP BPE tokenizer built offline: 256 bytes, their end-of-word forms, start/end tokens."""
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import CLIPTokenizer

    chars = sorted(ByteLevel.alphabet())
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=CLIP_MAX_LENGTH)


def _t5_tokenizer() -> T5Tokenizer:
    """Character-level T5 (Unigram) tokenizer built offline: every printable ASCII character, no sentinels."""
    from transformers import T5Tokenizer

    pieces: list[tuple[str, float]] = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    pieces += [(chr(c), -3.0) for c in range(33, 127)]
    pieces += [("\u2581" + chr(c), -3.5) for c in range(33, 127)]
    return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=512)


def _clip_text_config(tokenizer: CLIPTokenizer) -> CLIPTextConfig:
    """Tiny CLIP text-encoder config whose vocabulary and special ids match `tokenizer`."""
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=CLIP_HIDDEN,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=CLIP_MAX_LENGTH,
        projection_dim=CLIP_PROJECTION,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def build_tiny_ast(out: Path, *, seed: int = 0) -> Path:
    """Save a tiny random `ASTModel` + `ASTFeatureExtractor` (16 kHz, 128 mel bins, 256 frames) into `out`.

    `model(fe(wave, sampling_rate=16000, return_tensors="pt").input_values).last_hidden_state` has shape
    (batch, 302, 32): 12 frequency x 25 time patches plus the cls and distillation tokens.
    """
    from transformers import ASTConfig, ASTFeatureExtractor, ASTModel

    out = Path(out)
    config = ASTConfig(
        hidden_size=AST_HIDDEN,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        num_mel_bins=AST_NUM_MEL_BINS,
        max_length=AST_MAX_LENGTH,
    )
    _seed(seed)
    ASTModel(config).eval().save_pretrained(out)
    ASTFeatureExtractor(
        sampling_rate=16000, num_mel_bins=AST_NUM_MEL_BINS, max_length=AST_MAX_LENGTH
    ).save_pretrained(out)
    return out


def _tiny_vae(seed: int, *, flux: bool) -> Any:
    """Two-block `AutoencoderKL` with 4 latent channels (scale factor 2); FLUX style has a shift, no quant convs."""
    from diffusers import AutoencoderKL

    _seed(seed)
    extra: dict[str, Any] = (
        dict(shift_factor=0.0609, scaling_factor=1.5035, use_quant_conv=False, use_post_quant_conv=False)
        if flux
        else dict(scaling_factor=0.18215)
    )
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(8, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=SD_SIZE,
        **extra,
    )


def build_tiny_sd(out: Path, *, seed: int = 0) -> Path:
    """Save a tiny random `StableDiffusionPipeline` (no safety checker) into `out`.

    Text: tiny CLIP, prompt_embeds (1, 77, 32). UNet: blocks (8, 16), 4 latent channels, sample_size 16;
    VAE scale factor 2, so the default render is 32x32 (the pipeline needs height/width multiples of 8).
    Scheduler: DDIM with SD 1.5 betas.
    """
    from diffusers import DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    out = Path(out)
    tokenizer = _clip_tokenizer()
    _seed(seed)
    text_encoder = CLIPTextModel(_clip_text_config(tokenizer)).eval()
    _seed(seed)
    unet = UNet2DConditionModel(
        sample_size=SD_SIZE // VAE_SCALE_FACTOR,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(8, 16),
        layers_per_block=1,
        norm_num_groups=4,
        cross_attention_dim=CLIP_HIDDEN,
        attention_head_dim=4,
    )
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    pipe = StableDiffusionPipeline(
        vae=_tiny_vae(seed, flux=False),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(out)
    return out


def build_tiny_flux(out: Path, *, seed: int = 0) -> Path:
    """Save a tiny random `FluxPipeline` (schnell-like: no guidance embedding) into `out`.

    prompt_embeds (1, N, 48) from a tiny T5 (N = max_sequence_length), pooled_prompt_embeds (1, 32) from a
    tiny CLIP. VAE scale factor 2 with 4 latent channels packed 2x2 into 16 transformer channels, so
    height/width must be multiples of 4; pass them explicitly (the pipeline default would be 256x256).
    """
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextModel, T5Config, T5EncoderModel

    out = Path(out)
    tokenizer = _clip_tokenizer()
    tokenizer_2 = _t5_tokenizer()
    _seed(seed)
    text_encoder = CLIPTextModel(_clip_text_config(tokenizer)).eval()
    _seed(seed)
    text_encoder_2 = T5EncoderModel(
        T5Config(
            vocab_size=len(tokenizer_2),
            d_model=T5_HIDDEN,
            d_kv=8,
            d_ff=64,
            num_layers=2,
            num_heads=4,
            relative_attention_num_buckets=8,
            relative_attention_max_distance=32,
            feed_forward_proj="gated-gelu",
            pad_token_id=tokenizer_2.pad_token_id,
            eos_token_id=tokenizer_2.eos_token_id,
            decoder_start_token_id=tokenizer_2.pad_token_id,
        )
    ).eval()
    _seed(seed)
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=16,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=T5_HIDDEN,
        pooled_projection_dim=CLIP_HIDDEN,
        guidance_embeds=False,
        axes_dims_rope=(4, 4, 8),
    )
    scheduler = FlowMatchEulerDiscreteScheduler(
        shift=1.0,
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=16,
        max_image_seq_len=1024,
    )
    pipe = FluxPipeline(
        scheduler=scheduler,
        vae=_tiny_vae(seed, flux=True),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
        transformer=transformer,
    )
    pipe.save_pretrained(out)
    return out


def build_tiny_clip(out: Path, *, seed: int = 0) -> Path:
    """Save a tiny random `CLIPModel` (32x32 images, patch 8, projection 16) + `CLIPProcessor` into `out`."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPVisionConfig

    out = Path(out)
    tokenizer = _clip_tokenizer()
    vision = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=CLIP_IMAGE_SIZE,
        patch_size=8,
        projection_dim=CLIP_PROJECTION,
    )
    config = CLIPConfig(
        text_config=_clip_text_config(tokenizer).to_dict(),
        vision_config=vision.to_dict(),
        projection_dim=CLIP_PROJECTION,
    )
    _seed(seed)
    CLIPModel(config).eval().save_pretrained(out)
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": CLIP_IMAGE_SIZE},
        crop_size={"height": CLIP_IMAGE_SIZE, "width": CLIP_IMAGE_SIZE},
    )
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(out)
    return out


_BUILDERS: dict[str, Callable[..., Path]] = {
    "ast": build_tiny_ast,
    "sd": build_tiny_sd,
    "flux": build_tiny_flux,
    "clip": build_tiny_clip,
}


def _is_complete(folder: Path, name: str, seed: int) -> bool:
    """True when `folder` holds a finished build of `name` with `seed` (its marker is written last)."""
    try:
        marker = json.loads((folder / MARKER_NAME).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(marker, dict) and marker.get("name") == name and marker.get("seed") == seed


def _build_one(out: Path, name: str, seed: int, *, force: bool) -> Path:
    """Build `name` in a temp sibling folder, mark it complete, then move it into `out/name`."""
    from a2vtool import __version__

    target = out / name
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=out))
    try:
        _BUILDERS[name](tmp, seed=seed)
        marker = {"name": name, "seed": seed, "a2vtool_version": __version__}
        (tmp / MARKER_NAME).write_text(json.dumps(marker, indent=2) + "\n")
        if target.exists() and (force or not _is_complete(target, name, seed)):
            shutil.rmtree(target)
        try:
            os.replace(tmp, target)
        except OSError:
            if not _is_complete(target, name, seed):  # someone else won a race with a complete build: keep it
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def build_all(out: Path, *, seed: int = 0, force: bool = False) -> dict[str, Path]:
    """Build every tiny model into `out/<name>`, skipping folders already complete for this seed.

    A folder counts as complete when its `.a2v-tiny.json` marker (written last) names the model and seed;
    a folder without one, or built with another seed, is rebuilt. `force=True` rebuilds everything.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    for name in TINY_NAMES:
        target = out / name
        skip = not force and _is_complete(target, name, seed)
        paths[name] = target if skip else _build_one(out, name, seed, force=force)
    return paths
