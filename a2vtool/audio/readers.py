"""Readers of each dataset layout (folder, csv, ESC-50, VEGAS, VGGSound): a DatasetSpec -> (clips, skipped)."""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Callable
from pathlib import Path

from a2vtool.audio.records import AUDIO_SUFFIXES, Clip, DatasetSpec, Skipped
from a2vtool.errors import InputError


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
