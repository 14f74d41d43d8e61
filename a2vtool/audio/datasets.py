"""Dataset readers (folder, csv, ESC-50, VEGAS, VGGSound) turning a DatasetSpec into an ordered list of clips."""

from __future__ import annotations

import csv
import difflib
import logging
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationInfo, field_validator

from a2vtool.config import Strict
from a2vtool.errors import InputError

__all__ = [
    "AUDIO_SUFFIXES", "READERS", "VEGAS_CLASSES", "Clip", "DatasetListing", "DatasetSpec", "list_classes",
    "normalise_class", "read_dataset", "read_esc50", "read_folder", "read_manifest_csv", "read_vegas",
    "read_vggsound", "resolve_classes", "select_classes",
]  # fmt: skip

log = logging.getLogger(__name__)

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


# ----------------------------------------------------------------------------------------------- helpers


def normalise_class(name: str) -> str:
    """Lower-case, spaces/hyphens -> underscore: 'Dog Barking' and 'dog-barking' both give 'dog_barking'."""
    return re.sub(r"[\s\-]+", "_", name.strip().lower())


def list_classes(clips: list[Clip] | DatasetListing) -> list[str]:
    """The distinct labels of `clips`, sorted."""
    return sorted({c.label for c in clips})


def _need_dir(path: Path, what: str, hint: str) -> Path:
    if not path.exists():
        raise InputError(f"{what} not found: {path}", hint=hint)
    if not path.is_dir():
        raise InputError(f"{what} is not a folder: {path}", hint=hint)
    return path


def _need_file(path: Path, what: str, hint: str) -> Path:
    if not path.is_file():
        raise InputError(f"{what} {'is a folder' if path.is_dir() else 'not found'}: {path}", hint=hint)
    return path


def _read_rows(path: Path, what: str) -> list[list[str]]:
    """All rows of a csv file; decoding errors become one-line InputErrors naming the file."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            return [row for row in csv.reader(f)]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise InputError(f"cannot read {what} {path}: {' '.join(str(e).split())}", hint="fix or re-export it") from None


def _is_audio(name: str) -> bool:
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in AUDIO_SUFFIXES


def _walk_audio(folder: Path) -> list[Path]:
    """Audio files under `folder` (recursive, hidden entries skipped), in sorted path order."""
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found.extend(Path(dirpath, f) for f in filenames if _is_audio(f))
    return sorted(found)


def _rel(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def _header_index(header: list[str], path: Path, required: tuple[str, ...]) -> dict[str, int]:
    cols = {h.strip().lower(): i for i, h in enumerate(header)}
    missing = [c for c in required if c not in cols]
    if missing:
        raise InputError(
            f"{path} lacks column{'s' if len(missing) > 1 else ''} {', '.join(missing)} in its header "
            f"(has: {', '.join(h.strip() for h in header) or 'nothing'})",
            hint=f"the first line must name the columns {','.join(required)}",
        )
    return cols


def _cell(row: list[str], i: int | None) -> str:
    return row[i].strip() if i is not None and i < len(row) else ""


# ----------------------------------------------------------------------------------------------- readers


def read_folder(spec: DatasetSpec) -> tuple[list[Clip], Skipped]:
    """`root/<class>/**/*.{wav,flac,ogg}`; the class is the top-level folder name; clip_id = posix path under root."""
    root = _need_dir(spec.root, "dataset root", "set root to a folder holding one sub-folder of wav/flac/ogg per class")
    clips: list[Clip] = []
    skipped: Skipped = []
    for entry in sorted(root.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            clips.extend(Clip(_rel(p, root), p, entry.name) for p in _walk_audio(entry))
        elif _is_audio(entry.name):
            skipped.append((entry.name, "audio file outside a class folder"))
    return clips, skipped


def read_manifest_csv(spec: DatasetSpec) -> tuple[list[Clip], Skipped]:
    """A csv with header `path,label[,split][,fold]`; paths relative to the csv's folder; other columns -> meta."""
    csv_path = spec.csv if spec.csv is not None else spec.root / "manifest.csv"
    hint = "set csv (or root) to a manifest with header path,label[,split]"
    rows = _read_rows(_need_file(csv_path, "dataset manifest", hint), "dataset manifest")
    if not rows:
        raise InputError(f"dataset manifest {csv_path} is empty", hint=hint)
    cols = _header_index(rows[0], csv_path, ("path", "label"))
    extra = [(name, i) for name, i in cols.items() if name not in ("path", "label", "split", "fold") and name]
    clips: list[Clip] = []
    skipped: Skipped = []
    for line, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        raw, label = _cell(row, cols["path"]), _cell(row, cols["label"])
        if not raw or not label:
            raise InputError(f"{csv_path} line {line}: empty path or label", hint="fill in or delete the row")
        fold_s = _cell(row, cols.get("fold"))
        try:
            fold = int(fold_s) if fold_s else None
        except ValueError:
            raise InputError(f"{csv_path} line {line}: fold {fold_s!r} is not an integer") from None
        p = Path(raw)
        path = p if p.is_absolute() else csv_path.parent / p
        clip_id = raw.replace("\\", "/")
        if not path.is_file():
            skipped.append((clip_id, "missing audio file"))
            continue
        split = _cell(row, cols.get("split")).lower() or None
        meta = tuple((k, v) for k, i in extra if (v := _cell(row, i)))
        clips.append(Clip(clip_id, path, label, split=split, fold=fold, meta=meta))
    return clips, skipped


def read_esc50(spec: DatasetSpec) -> tuple[list[Clip], Skipped]:
    """Official ESC-50: `root/meta/esc50.csv` + `root/audio/<filename>`; label = category, fold = fold (1..5)."""
    root = _need_dir(spec.root, "ESC-50 root", "set root to the ESC-50 folder holding meta/esc50.csv and audio/")
    meta_path = root / "meta" / "esc50.csv"
    rows = _read_rows(_need_file(meta_path, "ESC-50 metadata", "use the official ESC-50 layout"), "ESC-50 metadata")
    if not rows:
        raise InputError(f"ESC-50 metadata {meta_path} is empty", hint="re-download ESC-50")
    cols = _header_index(rows[0], meta_path, ("filename", "fold", "category"))
    extra = [(k, cols[k]) for k in ("target", "esc10", "src_file", "take") if k in cols]
    clips: list[Clip] = []
    skipped: Skipped = []
    for line, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        filename, fold_s, category = (_cell(row, cols[k]) for k in ("filename", "fold", "category"))
        if not filename or not category:
            raise InputError(f"{meta_path} line {line}: empty filename or category", hint="re-download ESC-50")
        try:
            fold = int(fold_s)
        except ValueError:
            raise InputError(f"{meta_path} line {line}: fold {fold_s!r} is not an integer") from None
        path = root / "audio" / filename
        if not path.is_file():
            skipped.append((filename, "missing audio file"))
            continue
        meta = tuple((k, v) for k, i in extra if (v := _cell(row, i)))
        clips.append(Clip(filename, path, category, fold=fold, meta=meta))
    return clips, skipped


def _vegas_info(path: Path) -> list[tuple[tuple[str, str], ...]]:
    """Rows of a VEGAS `video_info.csv` as meta tuples; row i belongs to `video_{i:05d}.wav`."""
    rows = [r for r in _read_rows(path, "VEGAS video info") if any(c.strip() for c in r)]
    names = ("ytid", "start_second", "end_second")
    if rows and any(c.strip().lower() == "ytid" for c in rows[0]):
        cols = {h.strip().lower(): i for i, h in enumerate(rows[0])}
        idx: list[int | None] = [cols.get(n) for n in names]
        rows = rows[1:]
    else:
        idx = [0, 1, 2]
    return [tuple((n, v) for n, i in zip(names, idx) if (v := _cell(r, i))) for r in rows]


def read_vegas(spec: DatasetSpec) -> tuple[list[Clip], Skipped]:
    """VEGAS: `root/<class>/audios/*.wav` (+ optional `root/<class>/video_info.csv` -> ytid/start/end in meta)."""
    root = _need_dir(spec.root, "VEGAS root", "set root to the VEGAS folder holding <class>/audios/*.wav")
    clips: list[Clip] = []
    for class_dir in sorted(root.iterdir()):
        audios = class_dir / "audios"
        if class_dir.name.startswith(".") or not audios.is_dir():
            continue
        info_path = class_dir / "video_info.csv"
        info = _vegas_info(info_path) if info_path.is_file() else []
        for p in sorted(audios.iterdir()):
            if not _is_audio(p.name) or not p.is_file():
                continue
            m = re.fullmatch(r"video_(\d+)", p.stem)
            meta = info[int(m.group(1))] if m and int(m.group(1)) < len(info) else ()
            clips.append(Clip(_rel(p, root), p, class_dir.name, meta=meta))
    return clips, []


def _vgg_start(raw: str, path: Path, line: int) -> int:
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not value.is_integer() or value < 0:
        raise InputError(f"{path} line {line}: start {raw!r} is not a whole number of seconds")
    return int(value)


def read_vggsound(spec: DatasetSpec) -> tuple[list[Clip], Skipped]:
    """VGGSound: headerless `ytid,start,label,split` csv; audio found anywhere under root as `{ytid}_{start}` or
    `{ytid}_{start:06d}`. Each file gets its own row's label; rows without audio are skipped (reason recorded)."""
    root = _need_dir(spec.root, "VGGSound root", "set root to the folder holding the VGGSound audio files")
    csv_path = spec.csv if spec.csv is not None else root / "vggsound.csv"
    rows = _read_rows(_need_file(csv_path, "VGGSound csv", "set csv to the official vggsound.csv"), "VGGSound csv")
    index: dict[str, Path] = {}
    for p in _walk_audio(root):
        index.setdefault(p.stem, p)
    clips: list[Clip] = []
    skipped: Skipped = []
    seen: set[str] = set()
    for line, row in enumerate(rows, start=1):
        if not any(cell.strip() for cell in row):
            continue
        if line == 1 and row[0].strip().lower().lstrip("# ") in ("ytid", "youtube_id"):
            continue  # tolerate a header line
        if len(row) < 4:
            raise InputError(
                f"{csv_path} line {line}: expected 4 fields ytid,start,label,split, got {len(row)}",
                hint="use the official headerless vggsound.csv",
            )
        ytid, start_raw = row[0].strip(), row[1].strip()
        label, split = ",".join(row[2:-1]).strip(), row[-1].strip().lower() or None
        start = _vgg_start(start_raw, csv_path, line)
        clip_id = f"{ytid}_{start:06d}"
        if clip_id in seen:
            skipped.append((clip_id, f"duplicate row (line {line})"))
            continue
        seen.add(clip_id)
        path = index.get(clip_id) or index.get(f"{ytid}_{start}") or index.get(f"{ytid}_{start_raw}")
        if path is None:
            skipped.append((clip_id, "missing audio file"))
            continue
        clips.append(Clip(clip_id, path, label, split=split, meta=(("ytid", ytid), ("start", str(start)))))
    return clips, skipped


READERS: dict[str, Callable[[DatasetSpec], tuple[list[Clip], Skipped]]] = {
    "folder": read_folder,
    "csv": read_manifest_csv,
    "esc50": read_esc50,
    "vegas": read_vegas,
    "vggsound": read_vggsound,
}


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
