"""Datasets: class selection and `read_dataset` (records live in records.py, one reader per layout in readers.py)."""

from __future__ import annotations

import difflib
import logging
import re

from a2vtool.audio.readers import (
    READERS,
    read_esc50,
    read_folder,
    read_manifest_csv,
    read_vegas,
    read_vggsound,
)
from a2vtool.audio.records import AUDIO_SUFFIXES, VEGAS_CLASSES, Clip, DatasetListing, DatasetSpec, Skipped
from a2vtool.errors import InputError

__all__ = [
    "AUDIO_SUFFIXES", "READERS", "VEGAS_CLASSES", "Clip", "DatasetListing", "DatasetSpec", "list_classes",
    "normalise_class", "read_dataset", "read_esc50", "read_folder", "read_manifest_csv", "read_vegas",
    "read_vggsound", "resolve_classes", "select_classes",
]  # fmt: skip

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------- helpers


def normalise_class(name: str) -> str:
    """Lower-case, spaces/hyphens -> underscore: 'Dog Barking' and 'dog-barking' both give 'dog_barking'."""
    return re.sub(r"[\s\-]+", "_", name.strip().lower())


def list_classes(clips: list[Clip] | DatasetListing) -> list[str]:
    """The distinct labels of `clips`, sorted."""
    return sorted({c.label for c in clips})


# ----------------------------------------------------------------------------------------------- selection


def resolve_classes(available: list[str], requested: list[str], source: str) -> list[str]:
    """Map requested names (exact or normalised) onto the dataset's spelling, in the order given, de-duplicated.

    Unknown names raise one InputError listing them all with the valid names (never 'select everything').
    """
    valid = sorted(set(available))
    by_norm: dict[str, list[str]] = {}
    for name in valid:
        by_norm.setdefault(normalise_class(name), []).append(name)
    out: list[str] = []
    unknown: list[str] = []
    for req in requested:
        if req in valid:
            name = req
        else:
            matches = by_norm.get(normalise_class(req), [])
            if len(matches) > 1:
                raise InputError(
                    f"class '{req}' is ambiguous in {source}: it matches {', '.join(matches)}",
                    hint="give the exact name",
                )
            if not matches:
                unknown.append(req)
                continue
            name = matches[0]
        if name not in out:
            out.append(name)
    if unknown:
        guesses = []
        for req in unknown:
            close = difflib.get_close_matches(normalise_class(req), list(by_norm), n=1, cutoff=0.75)
            if close:
                guesses.append(f"'{req}' -> '{by_norm[close[0]][0]}'")
        names = ", ".join(f"'{u}'" for u in unknown)
        raise InputError(
            f"unknown class{'es' if len(unknown) > 1 else ''} {names} in {source}; valid: {', '.join(valid)}",
            hint=f"did you mean {', '.join(guesses)}?" if guesses else None,
        )
    return out


def select_classes(clips: list[Clip], classes: list[str], source: str) -> list[Clip]:
    """The clips of `classes` (exact or normalised names), grouped in the order given, each group in input order."""
    wanted = resolve_classes(list_classes(clips), classes, source)
    groups: dict[str, list[Clip]] = {name: [] for name in wanted}
    for c in clips:
        if c.label in groups:
            groups[c.label].append(c)
    return [c for name in wanted for c in groups[name]]


def _filter_values(
    clips: list[Clip], universe: list[Clip], attr: str, wanted: list[str] | list[int], source: str, what: str
) -> list[Clip]:
    """Keep clips whose `attr` is in `wanted`; a value `universe` never uses is an InputError listing valid ones."""
    present = sorted({v for c in universe if (v := getattr(c, attr)) is not None})
    if not present:
        raise InputError(f"{source} defines no {what}s", hint=f"remove the {what}s selection")
    unknown = [w for w in wanted if w not in present]
    if unknown:
        raise InputError(
            f"unknown {what} {', '.join(repr(u) for u in unknown)} in {source}; valid: {', '.join(map(str, present))}"
        )
    keep = set(wanted)
    return [c for c in clips if getattr(c, attr) in keep]


def _selection(spec: DatasetSpec, *, classes: bool = True) -> str:
    parts = [f"{k}={v}" for k, v in (("classes", spec.classes if classes else None), ("folds", spec.folds),
                                    ("splits", spec.splits)) if v is not None]  # fmt: skip
    return ", ".join(parts) or "everything"


def read_dataset(spec: DatasetSpec) -> DatasetListing:
    """Read the dataset `spec` describes and apply its class/fold/split/max_per_class selection.

    Order (deterministic): by class -- in the order `spec.classes` lists them, else sorted by name --
    then by clip_id (plain string order). `max_per_class` keeps the first N of each class in that order.
    Rows or files that were left out (missing audio, duplicates) are in `.skipped` with a reason.
    """
    source = f"{spec.kind} dataset at {spec.csv if spec.kind == 'csv' and spec.csv is not None else spec.root}"
    clips, skipped = READERS[spec.kind](spec)
    if not clips:
        why = f" ({len(skipped)} rows skipped: {skipped[0][1]})" if skipped else ""
        raise InputError(f"no audio clips found in {source}{why}", hint=f"check root and the {spec.kind} layout")
    clips.sort(key=lambda c: (c.label, c.clip_id))
    ids: set[str] = set()
    for c in clips:
        if c.clip_id in ids:
            raise InputError(f"duplicate clip id {c.clip_id!r} in {source}", hint="list each file once")
        ids.add(c.clip_id)
    universe = clips
    if spec.classes is not None:
        classes = resolve_classes(list_classes(clips), spec.classes, source)
        clips = select_classes(clips, classes, source)
    else:
        classes = list_classes(clips)
    if spec.folds is not None:
        clips = _filter_values(clips, universe, "fold", list(spec.folds), source, "fold")
    if spec.splits is not None:
        splits = [s.strip().lower() for s in spec.splits]
        clips = _filter_values(clips, universe, "split", splits, source, "split")
    left = {c.label for c in clips}
    if not left:
        raise InputError(f"no clips left in {source} after selecting {_selection(spec)}", hint="widen the selection")
    if spec.classes is not None and (empty := [c for c in classes if c not in left]):
        raise InputError(
            f"class{'es' if len(empty) > 1 else ''} {', '.join(empty)} of {source} "
            f"{'have' if len(empty) > 1 else 'has'} no clips in {_selection(spec, classes=False)}",
            hint="drop them from classes or widen the split/fold selection",
        )
    classes = [c for c in classes if c in left]
    if spec.max_per_class is not None:
        taken: dict[str, int] = {}
        kept = []
        for c in clips:
            if taken.get(c.label, 0) < spec.max_per_class:
                taken[c.label] = taken.get(c.label, 0) + 1
                kept.append(c)
        clips = kept
    if skipped:
        log.warning("%s: skipped %d of %d rows/files (first: %s: %s)", source, len(skipped),
                    len(skipped) + len(ids), skipped[0][0], skipped[0][1])  # fmt: skip
    return DatasetListing(spec.name or spec.kind, spec.kind, spec.root, clips, classes, skipped)
