"""Text targets: each class prompt through the diffusion pipeline's own text encoders, cached as a keyed artifact."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from a2vtool import SCHEMA_VERSION
from a2vtool.artifacts import base_manifest, cache_key, load_tensors, read_manifest, save_tensors, staged_dir, write_json_atomic
from a2vtool.errors import InputError, ModelLoadError
from a2vtool.runtime import is_local, load_pretrained, model_identity

KIND = "a2v.text_targets"
DEFAULT_TEMPLATE = "a photo of {label}"
# pipeline class name -> family
FAMILY_OF = {
    "StableDiffusionPipeline": "sd",
    "StableDiffusionXLPipeline": "sdxl",
    "FluxPipeline": "flux",
}
# family -> target slots (the pipeline's own keyword names)
SLOTS = {
    "sd": ("prompt_embeds",),
    "sdxl": ("prompt_embeds", "pooled_prompt_embeds"),
    "flux": ("prompt_embeds", "pooled_prompt_embeds"),
}


@dataclass
class TextTargets:
    """Per-class regression targets, one tensor per slot of shape (C, *slot_shape), plus the empty prompt's."""

    family: str
    classes: list[str]
    prompts: list[str]
    slots: dict[str, Any]
    negative: dict[str, Any] = field(default_factory=dict)
    key: str = ""
    pipeline: str = ""

    def slot_shapes(self) -> dict[str, tuple[int, ...]]:
        return {k: tuple(v.shape[1:]) for k, v in self.slots.items()}

    def index(self, label: str) -> int:
        try:
            return self.classes.index(label)
        except ValueError:
            raise InputError(f"class {label!r} has no text target; targets cover: {', '.join(self.classes)}") from None

    def stack(self, labels: list[str]) -> dict[str, Any]:
        """Per-sample targets stacked along the batch: {slot: (B, *slot_shape)} (never one sample's reused)."""
        import torch

        idx = torch.tensor([self.index(lab) for lab in labels], dtype=torch.long)
        return {k: v.index_select(0, idx) for k, v in self.slots.items()}


def prompt_for(label: str, template: str) -> str:
    return template.format(label=label.replace("_", " "))


def pipeline_family(name_or_path: str) -> str:
    """Read the pipeline class from model_index.json (local folder or hub) and map it to a family."""
    if is_local(name_or_path):
        idx = Path(name_or_path).expanduser() / "model_index.json"
        if not idx.is_file():
            raise ModelLoadError(f"{name_or_path} has no model_index.json; it is not a diffusers pipeline folder")
        cls = json.loads(idx.read_text()).get("_class_name", "")
    else:
        from diffusers import DiffusionPipeline

        cls = load_pretrained(DiffusionPipeline.load_config, name_or_path, "diffusion pipeline config").get("_class_name", "")
    family = FAMILY_OF.get(cls)
    if family is None:
        raise InputError(f"pipeline {name_or_path} is a {cls or 'unknown'} pipeline; supported: {', '.join(FAMILY_OF)}")
    return family


def targets_key(pipeline: str, family: str, classes: list[str], template: str, max_sequence_length: int,
                identity: dict[str, str] | None = None) -> str:
    return cache_key({
        "schema_version": SCHEMA_VERSION, "kind": KIND, "pipeline": identity or model_identity(pipeline),
        "family": family, "classes": list(classes), "template": template,
        "max_sequence_length": max_sequence_length if family == "flux" else None,
    })


def _encoders(name_or_path: str, family: str, device: str) -> Any:
    """Load only the tokenizers and text encoders of a pipeline (no UNet/transformer/VAE)."""
    from diffusers import DiffusionPipeline

    skip: dict[str, Any] = {"vae": None}
    skip["transformer" if family == "flux" else "unet"] = None
    if family == "sd":
        skip.update(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe = load_pretrained(DiffusionPipeline.from_pretrained, name_or_path, "diffusion pipeline", **skip)
    return pipe.to(device)


def encode(pipe: Any, family: str, prompts: list[str], max_sequence_length: int, device: str) -> dict[str, Any]:
    """Encode prompts with the pipeline's own `encode_prompt`; returns {slot: (n, *shape)} float32 on CPU."""
    import torch

    with torch.inference_mode():
        if family == "flux":
            pe, pooled, _ = pipe.encode_prompt(prompt=prompts, prompt_2=None, device=device,
                                               num_images_per_prompt=1, max_sequence_length=max_sequence_length)
            out = {"prompt_embeds": pe, "pooled_prompt_embeds": pooled}
        elif family == "sdxl":
            pe, _, pooled, _ = pipe.encode_prompt(prompt=prompts, device=device, num_images_per_prompt=1,
                                                  do_classifier_free_guidance=False)
            out = {"prompt_embeds": pe, "pooled_prompt_embeds": pooled}
        else:
            pe, _ = pipe.encode_prompt(prompts, device, 1, False)
            out = {"prompt_embeds": pe}
    return {k: out[k].detach().float().cpu() for k in sorted(out)}


def compute_text_targets(pipeline: str, classes: list[str], template: str = DEFAULT_TEMPLATE,
                         max_sequence_length: int = 77, device: str = "cpu") -> TextTargets:
    family = pipeline_family(pipeline)
    if "{label}" not in template:
        raise InputError(f"prompt template {template!r} has no {{label}} placeholder")
    prompts = [prompt_for(c, template) for c in classes]
    pipe = _encoders(pipeline, family, device)
    try:
        slots = encode(pipe, family, prompts, max_sequence_length, device)
        neg = {k: v[0] for k, v in encode(pipe, family, [""], max_sequence_length, device).items()}
    finally:
        del pipe
    key = targets_key(pipeline, family, classes, template, max_sequence_length)
    return TextTargets(family, list(classes), prompts, slots, neg, key, pipeline)


def save_text_targets(tt: TextTargets, directory: Path, config: dict[str, Any] | None = None) -> Path:
    with staged_dir(directory) as stage:
        tensors = {f"slot.{k}": v for k, v in tt.slots.items()}
        tensors.update({f"negative.{k}": v for k, v in tt.negative.items()})
        digest = save_tensors(stage / "targets.safetensors", tensors, KIND, tt.key)
        write_json_atomic(stage / "manifest.json", base_manifest(
            KIND, tt.key, config or {}, family=tt.family, pipeline=tt.pipeline, classes=tt.classes, prompts=tt.prompts,
            slot_shapes={k: list(v) for k, v in tt.slot_shapes().items()}, files={"targets.safetensors": digest}))
    return directory


def load_text_targets(directory: Path) -> TextTargets:
    m = read_manifest(directory, KIND)
    tensors, meta = load_tensors(Path(directory) / "targets.safetensors", KIND)
    slots = {k[5:]: v for k, v in sorted(tensors.items()) if k.startswith("slot.")}
    neg = {k[9:]: v for k, v in tensors.items() if k.startswith("negative.")}
    return TextTargets(m["family"], m["classes"], m["prompts"], slots, neg, m["cache_key"], m.get("pipeline", ""))


def ensure_text_targets(root: Path, pipeline: str, classes: list[str], template: str = DEFAULT_TEMPLATE,
                        max_sequence_length: int = 77, device: str = "cpu") -> tuple[Path, TextTargets]:
    """Return the cached targets for this (pipeline, template, classes), computing them on a miss."""
    family = pipeline_family(pipeline)
    key = targets_key(pipeline, family, classes, template, max_sequence_length)
    directory = Path(root) / key[:16]
    if (directory / "manifest.json").is_file():
        return directory, load_text_targets(directory)
    tt = compute_text_targets(pipeline, classes, template, max_sequence_length, device)
    save_text_targets(tt, directory, {"pipeline": pipeline, "template": template, "classes": classes,
                                      "max_sequence_length": max_sequence_length})
    return directory, tt
