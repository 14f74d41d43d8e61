"""make_demo_dataset: deterministic bytes, separable classes, layouts, marker reuse and atomic placement."""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from a2vtool.audio.datasets import DatasetSpec, read_dataset
from a2vtool.audio.demo import MARKER, make_demo_dataset
from a2vtool.audio.io import load_clip
from a2vtool.errors import InputError


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("layout", ["folder", "vggsound"])
def test_same_args_give_identical_bytes(layout: str, tmp_path: Path) -> None:
    kw = {"classes": 3, "clips_per_class": 4, "duration": 0.25, "layout": layout}
    a = _files(make_demo_dataset(tmp_path / "a", seed=5, **kw))  # type: ignore[arg-type]
    b = _files(make_demo_dataset(tmp_path / "b", seed=5, **kw))  # type: ignore[arg-type]
    c = _files(make_demo_dataset(tmp_path / "c", seed=6, **kw))  # type: ignore[arg-type]
    assert a == b and len(a) >= 13
    assert a != c and not set(a.values()) & {v for k, v in c.items() if k.endswith(".wav")}  # seed changes audio
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "c"]  # no temporary folders left behind


def test_clips_vary_but_classes_are_separable(tmp_path: Path) -> None:
    root = make_demo_dataset(tmp_path / "d", classes=8, clips_per_class=6, duration=0.5)
    listing = read_dataset(DatasetSpec(kind="folder", root=root))
    assert len(listing.classes) == 8 and listing.counts() == dict.fromkeys(listing.classes, 6)
    waves = [load_clip(c.path, 16000, 0.5) for c in listing]
    assert len({w.tobytes() for w in waves}) == len(waves)  # every clip differs
    feats = np.stack([np.log1p(np.abs(np.fft.rfft(w))[:4000].reshape(80, 50).mean(axis=1)) for w in waves])
    feats -= feats.mean(axis=1, keepdims=True)
    labels = np.array([listing.classes.index(c.label) for c in listing])
    correct = 0
    for i in range(len(waves)):  # leave-one-out nearest class mean spectrum
        others = np.arange(len(waves)) != i
        means = np.stack([feats[others & (labels == k)].mean(axis=0) for k in range(8)])
        correct += int(np.argmin(((means - feats[i]) ** 2).sum(axis=1)) == labels[i])
    assert correct == len(waves)


def test_csv_layout_is_stratified(tmp_path: Path) -> None:
    root = make_demo_dataset(tmp_path / "c", layout="csv", classes=["hum", "chirp"])
    with open(root / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert Counter((r["label"], r["split"]) for r in rows) == {
        (lab, s): n for lab in ("hum", "chirp") for s, n in (("train", 9), ("val", 1), ("test", 2))
    }
    assert all((root / r["path"]).is_file() for r in rows)


def test_marker_reuse_conflict_and_foreign_folders(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    make_demo_dataset(out, clips_per_class=2, duration=0.1)
    marker = json.loads((out / MARKER).read_text())
    assert marker["classes"] == ["dog", "rain", "siren", "bell"] and marker["seed"] == 0
    wav = out / "dog" / "dog_000.wav"
    before = wav.stat().st_mtime_ns
    (out / "dog" / "extra.txt").write_text("left alone")
    assert make_demo_dataset(out, clips_per_class=2, duration=0.1) == out
    assert wav.stat().st_mtime_ns == before and (out / "dog" / "extra.txt").exists()
    with pytest.raises(InputError, match="other settings.*another --out"):
        make_demo_dataset(out, clips_per_class=3, duration=0.1)
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("x")
    with pytest.raises(InputError, match="not a demo dataset.*another --out"):
        make_demo_dataset(foreign)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert (make_demo_dataset(empty, classes=1, clips_per_class=1, duration=0.1) / MARKER).is_file()


def test_bad_demo_arguments(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="unknown demo layout 'zip'"):
        make_demo_dataset(tmp_path / "x", layout="zip")
    with pytest.raises(InputError, match="repeat"):
        make_demo_dataset(tmp_path / "x", classes=["a", "a"])
    with pytest.raises(InputError, match="folder name"):
        make_demo_dataset(tmp_path / "x", classes=["a/b"])
    assert not (tmp_path / "x").exists()


def test_more_classes_than_names_are_numbered(tmp_path: Path) -> None:
    root = make_demo_dataset(tmp_path / "many", classes=10, clips_per_class=1, duration=0.05)
    names = {p.name for p in root.iterdir() if p.is_dir()}
    assert len(names) == 10 and {"dog", "drum", "class_8", "class_9"} <= names
