"""Generator artifacts: one safetensors file per generator plus a manifest; all-or-nothing loading (GeneratorSet)."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from a2vtool.artifacts import MANIFEST, base_manifest, load_tensors, read_manifest, save_tensors, sha256_file, staged_dir, write_json_atomic
from a2vtool.errors import ArtifactError, InputError
from a2vtool.models.generators import TokenGenerator, build_generator, param_count

KIND = "a2v.generators"
FILE_KIND = "a2v.generator"
ENTRY_KEYS = ("name", "file", "sha256", "arch", "classes")


@dataclass
class StoredGenerator:
    """One trained generator to save: its name, the classes it samples, and (cvae) one condition row per class."""

    name: str
    classes: list[str]
    model: TokenGenerator
    group: str | None = None
    condition: Tensor | None = None  # (len(classes), S, Dc) from build_condition, rows in `classes` order
    info: dict[str, Any] = field(default_factory=dict)  # training metrics etc., copied into the manifest entry


def file_name(name: str) -> str:
    """`gen-<safe name>.safetensors`; a short hash keeps names that differ only in unsafe characters apart."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "generator"
    if slug != name:
        slug = f"{slug[:60]}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"
    return f"gen-{slug}.safetensors"


def save_generator_set(directory: Path, generators: list[StoredGenerator], *, key: str, config: dict[str, Any],
                       **extra: Any) -> Path:
    """Write the artifact atomically (staging dir, manifest last); an existing `directory` is replaced on success."""
    names = [g.name for g in generators]
    if len(set(names)) != len(names) or len({file_name(n) for n in names}) != len(names):
        raise InputError(f"generator names must be unique: {names}")
    with staged_dir(Path(directory)) as stage:
        entries = []
        for g in generators:
            tensors = {f"model.{k}": v for k, v in g.model.state_dict().items()}
            if g.condition is not None:
                tensors["condition"] = g.condition.float()
            fname = file_name(g.name)
            digest = save_tensors(stage / fname, tensors, FILE_KIND, key, name=g.name, arch=g.model.arch)
            entries.append({"name": g.name, "file": fname, "sha256": digest, "bytes": (stage / fname).stat().st_size,
                            "group": g.group, "classes": list(g.classes), "arch": g.model.arch,
                            "has_condition": g.condition is not None, "params": param_count(g.model), **g.info})
        write_json_atomic(stage / MANIFEST, base_manifest(KIND, key, config, generators=entries, **extra))
    return Path(directory)


def _load_one(directory: Path, entry: dict[str, Any], key: str, device: str) -> tuple[TokenGenerator, Tensor | None]:
    """Validate one generator file completely (checksum, header, keys, shapes) and return a fresh model."""
    path = directory / str(entry["file"])
    if not path.is_file():
        raise ArtifactError(f"generator file {path} is missing", hint="the artifact is incomplete; re-run train-generator")
    if sha256_file(path) != entry["sha256"]:
        raise ArtifactError(f"generator file {path} fails its checksum (corrupt or modified)", hint="re-run train-generator")
    tensors, meta = load_tensors(path, FILE_KIND)
    if meta.get("cache_key") != key:
        raise ArtifactError(f"generator file {path} belongs to artifact {str(meta.get('cache_key'))[:16]}…, not {key[:16]}…")
    try:
        model = build_generator(entry["arch"])
    except InputError as e:
        raise ArtifactError(f"generator file {path}: bad architecture in the manifest: {e}") from None
    want = model.state_dict()
    got = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    missing, unexpected = sorted(set(want) - set(got)), sorted(set(got) - set(want))
    if missing or unexpected:
        raise ArtifactError(f"generator file {path}: tensors do not match its architecture "
                            f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    for k, v in want.items():
        if tuple(got[k].shape) != tuple(v.shape) or got[k].dtype != v.dtype:
            raise ArtifactError(f"generator file {path}: tensor {k} is {tuple(got[k].shape)} {got[k].dtype}, "
                                f"expected {tuple(v.shape)} {v.dtype}")
    model.load_state_dict(got, strict=True)
    cond = tensors.get("condition")
    if model.cond_dim:
        shape = (len(entry["classes"]), model.seq_len, model.cond_dim)
        if cond is None or tuple(cond.shape) != shape:
            raise ArtifactError(f"generator file {path}: condition {None if cond is None else tuple(cond.shape)}, expected {shape}")
    elif cond is not None:
        raise ArtifactError(f"generator file {path}: an unconditioned generator must not store a condition")
    return model.to(device).eval(), cond


class GeneratorSet:
    """Every generator of one artifact, ready to sample per class; built only when every file validated."""

    def __init__(self, directory: Path, manifest: dict[str, Any], models: dict[str, TokenGenerator],
                 conditions: dict[str, Tensor | None]) -> None:
        self.directory = Path(directory)
        self.manifest = manifest
        self._models = models
        self._conditions = conditions
        self._route: dict[str, tuple[str, int]] = {}
        for e in manifest["generators"]:
            for i, c in enumerate(e["classes"]):
                self._route.setdefault(c, (e["name"], i))
        self.classes: list[str] = list(manifest.get("classes") or self._route)
        self.embedding_key: str = manifest.get("embedding_key", "")
        self.targets_key: str | None = manifest.get("targets_key")
        self.token_dim: int = int(manifest.get("token_dim", 0))
        self.cache_tokens: int = int(manifest.get("cache_tokens", 0))
        self.training_sequence_length: int = int(manifest.get("training_sequence_length", 0))
        self.generator_type: str = manifest.get("generator", "")
        self.granularity: str = manifest.get("granularity", "")
        # False for unconditioned unified / per_group generators: their samples come from a mixture of classes
        self.class_specific: bool = bool(manifest.get("class_specific", True))
        # which generator KD should use, from the quality report ({} for artifacts made before it was recorded)
        self.recommended_for_kd: dict[str, Any] = dict(manifest.get("recommended_for_kd") or {})

    def generator_for(self, class_name: str) -> TokenGenerator:
        return self._models[self._lookup(class_name)[0]]

    def _lookup(self, class_name: str) -> tuple[str, int]:
        hit = self._route.get(class_name)
        if hit is None:
            raise InputError(f"class {class_name!r} has no generator in {self.directory}; it covers: {', '.join(self.classes)}")
        return hit

    def sample(self, class_name: str, n: int, *, sequence_length: int | None = None,
               generator: torch.Generator | None = None) -> Tensor:
        """(n, L, D) float32 CPU synthetic embeddings of `class_name`; L defaults to the source cache's token count.
        Conditioned generators use the condition stored for that class at training time."""
        name, row = self._lookup(class_name)
        model, cond = self._models[name], self._conditions[name]
        c = None if cond is None else cond[row : row + 1]
        length = sequence_length if sequence_length is not None else (self.cache_tokens or model.seq_len)
        return model.sample(n, c, sequence_length=length, generator=generator).float().cpu()

    def reload(self, directory: Path, device: str = "cpu") -> None:
        """Replace every generator with those of `directory`, or (on any failure) none: the error names the file."""
        fresh = load_generator_set(directory, device)
        self.__dict__.update(fresh.__dict__)


def load_generator_set(directory: Path, device: str = "cpu") -> GeneratorSet:
    """Load a generator artifact. Every file is validated (checksum, header, tensor keys and shapes, conditions)
    before the set is built, so a failure leaves the caller's current generators untouched."""
    directory = Path(directory)
    m = read_manifest(directory, KIND)
    entries = m.get("generators")
    if not isinstance(entries, list) or not entries:
        raise ArtifactError(f"{directory / MANIFEST} lists no generators")
    for e in entries:
        lacking = [k for k in ENTRY_KEYS if not isinstance(e, dict) or k not in e]
        if lacking:
            raise ArtifactError(f"{directory / MANIFEST}: a generator entry lacks {', '.join(lacking)}")
    models: dict[str, TokenGenerator] = {}
    conditions: dict[str, Tensor | None] = {}
    for e in entries:
        models[e["name"]], conditions[e["name"]] = _load_one(directory, e, m["cache_key"], device)
    return GeneratorSet(directory, m, models, conditions)
