"""Dataset records: Clip, DatasetListing, DatasetSpec and layout constants (a leaf: readers and datasets import it)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationInfo, field_validator

from a2vtool.config import Strict

__all__ = ["AUDIO_SUFFIXES", "VEGAS_CLASSES", "Clip", "DatasetListing", "DatasetSpec", "Skipped"]

AUDIO_SUFFIXES: tuple[str, ...] = (".wav", ".flac", ".ogg")
VEGAS_CLASSES: tuple[str, ...] = (
    "baby_cry", "chainsaw", "dog", "drum", "fireworks",
    "helicopter", "printer", "rail_transport", "snoring", "water_flowing",
)  # fmt: skip

Skipped = list[tuple[str, str]]


@dataclass(frozen=True)
class Clip:
    """One labelled audio file of a dataset."""

    clip_id: str  # unique within the dataset, stable across runs (posix path relative to the root, or the row id)
    path: Path
    label: str  # canonical class name as the dataset spells it
    split: str | None = None  # 'train'/'val'/'test' when the dataset defines it
    fold: int | None = None
    meta: tuple[tuple[str, str], ...] = ()  # extra string metadata (ytid, start, ...)

    def meta_dict(self) -> dict[str, str]:
        """`meta` as a dict."""
        return dict(self.meta)


@dataclass(frozen=True)
class DatasetListing:
    """The clips a DatasetSpec selects (in their deterministic order), its classes, and what was skipped."""

    name: str
    kind: str
    root: Path
    clips: list[Clip]
    classes: list[str]  # selected classes: in the order `classes` gave them, else sorted by name
    skipped: Skipped = field(default_factory=list)  # (id, reason) for rows/files left out, e.g. missing audio

    def __len__(self) -> int:
        return len(self.clips)

    def __iter__(self) -> Iterator[Clip]:
        return iter(self.clips)

    def __getitem__(self, i: int) -> Clip:
        return self.clips[i]

    def counts(self) -> dict[str, int]:
        """Number of clips per class, in `classes` order."""
        out = dict.fromkeys(self.classes, 0)
        for c in self.clips:
            out[c.label] = out.get(c.label, 0) + 1
        return out


class DatasetSpec(Strict):
    """Which audio dataset to read and which part of it to keep."""

    kind: Literal["folder", "csv", "esc50", "vegas", "vggsound"] = Field(
        "folder", description="layout: folder (root/<class>/*.wav), csv (manifest), esc50, vegas or vggsound"
    )
    root: Path = Field(Path("data/demo"), description="dataset root folder")
    csv: Path | None = Field(
        None, description="csv kind: the manifest (default root/manifest.csv); vggsound: its csv (root/vggsound.csv)"
    )
    name: str | None = Field(None, description="dataset name used in caches and manifests; default: the kind")
    classes: list[str] | None = Field(
        None, min_length=1, description="classes to keep, in this order (exact or normalised names); null = all"
    )
    splits: list[str] | None = Field(
        None, min_length=1, description="keep only these splits (train/val/test); null = all clips"
    )
    folds: list[int] | None = Field(None, min_length=1, description="keep only these folds (esc50: 1..5); null = all")
    max_per_class: int | None = Field(None, ge=1, description="keep the first N clips per class (stable order)")

    @field_validator("csv")
    @classmethod
    def _csv_only_where_used(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        kind = info.data.get("kind")
        if value is not None and kind not in ("csv", "vggsound", None):
            raise ValueError(f"only used by kind csv or vggsound, not {kind}; remove it")
        return value
