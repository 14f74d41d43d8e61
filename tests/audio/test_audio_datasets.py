"""Dataset readers on demo fixtures in their real layouts: counts, labels, splits/folds, class selection, errors."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from a2vtool.audio.datasets import (
    DatasetSpec,
    list_classes,
    normalise_class,
    read_dataset,
    select_classes,
)
from a2vtool.audio.demo import MISSING_VGGSOUND_ID, make_demo_dataset
from a2vtool.config import validate
from a2vtool.errors import ConfigError, InputError

PER = 10
SMALL = {"clips_per_class": PER, "sample_rate": 8000, "duration": 0.1}


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("datasets")
    for layout in ("folder", "csv", "esc50", "vegas"):
        make_demo_dataset(base / layout, classes=3, layout=layout, **SMALL)
    make_demo_dataset(base / "vggsound", classes=5, layout="vggsound", **SMALL)
    return base


def _spec(kind: str, root: Path, **kw: object) -> DatasetSpec:
    return DatasetSpec(kind=kind, root=root, **kw)  # type: ignore[arg-type]


def test_folder_reader_counts_labels_and_order(data: Path, tmp_path: Path) -> None:
    listing = read_dataset(_spec("folder", data / "folder"))
    assert listing.name == "folder" and listing.classes == ["dog", "rain", "siren"]
    assert listing.counts() == {"dog": PER, "rain": PER, "siren": PER}
    assert [c.clip_id for c in listing][:2] == ["dog/dog_000.wav", "dog/dog_001.wav"]
    assert all(c.path.parent.name == c.label and c.clip_id.startswith(c.label + "/") for c in listing)
    assert [(c.label, c.clip_id) for c in listing] == sorted((c.label, c.clip_id) for c in listing)
    assert list_classes(listing.clips) == ["dog", "rain", "siren"]
    # nested files count for their top-level class; audio outside any class folder is reported as skipped
    root = tmp_path / "f"
    shutil.copytree(data / "folder", root)
    (root / "dog" / "nested").mkdir()
    shutil.copy(root / "dog" / "dog_000.wav", root / "dog" / "nested" / "x.flac")
    shutil.copy(root / "dog" / "dog_000.wav", root / "stray.wav")
    listing = read_dataset(_spec("folder", root, name="mine"))
    assert listing.name == "mine" and listing.counts()["dog"] == PER + 1
    assert listing.skipped == [("stray.wav", "audio file outside a class folder")]


def test_csv_reader_splits_and_paths(data: Path, tmp_path: Path) -> None:
    listing = read_dataset(_spec("csv", data / "csv"))
    assert listing.counts() == {"dog": PER, "rain": PER, "siren": PER}
    per_split = {(c.label, c.split) for c in listing}
    assert {s for _, s in per_split} == {"train", "val", "test"}
    test = read_dataset(_spec("csv", data / "csv", splits=["test"]))
    assert test.counts() == {"dog": 2, "rain": 2, "siren": 2} and all(c.split == "test" for c in test)
    both = read_dataset(_spec("csv", data / "csv", splits=["train", "VAL"]))
    assert len(both) == 3 * (PER - 2)
    with pytest.raises(InputError, match="unknown split 'valid'.*valid: test, train, val"):
        read_dataset(_spec("csv", data / "csv", splits=["valid"]))
    # explicit csv elsewhere: paths relative to the csv's folder, absolute paths, missing rows skipped
    manifest = tmp_path / "m.csv"
    dog = data / "csv" / "dog" / "dog_000.wav"
    rows = [["path", "label", "split", "speaker"], [str(dog), "dog", "train", "a"],
            [str(Path("..") / "nope.wav"), "dog", "", ""]]  # fmt: skip
    shutil.copy(dog, tmp_path / "rel.wav")
    rows.append(["rel.wav", "cat", "test", "b"])
    with manifest.open("w", newline="") as f:
        csv.writer(f).writerows(rows)
    listing = read_dataset(_spec("csv", tmp_path / "unused", csv=manifest))
    assert [(c.label, c.split, c.meta) for c in listing] == [("cat", "test", (("speaker", "b"),)),
                                                             ("dog", "train", (("speaker", "a"),))]  # fmt: skip
    assert listing.skipped == [("../nope.wav", "missing audio file")]
    no_splits = tmp_path / "n.csv"
    no_splits.write_text(f"path,label\n{dog},dog\n")
    with pytest.raises(InputError, match="defines no splits"):
        read_dataset(_spec("csv", tmp_path, csv=no_splits, splits=["train"]))
    bad = tmp_path / "bad.csv"
    bad.write_text("file,class\nx.wav,dog\n")
    with pytest.raises(InputError, match="lacks columns path, label"):
        read_dataset(_spec("csv", tmp_path, csv=bad))


def test_esc50_reader_labels_and_fold_selection(data: Path) -> None:
    listing = read_dataset(_spec("esc50", data / "esc50"))
    assert listing.classes == ["dog", "rain", "siren"]
    assert listing.counts() == {"dog": PER, "rain": PER, "siren": PER}
    assert {c.fold for c in listing} == {1, 2, 3, 4, 5}
    with open(data / "esc50" / "meta" / "esc50.csv") as f:
        truth = {r["filename"]: (r["category"], int(r["fold"])) for r in csv.DictReader(f)}
    assert all(truth[c.clip_id] == (c.label, c.fold) for c in listing)
    assert all(c.meta_dict()["target"] == c.clip_id.rsplit("-", 1)[1][:-4] for c in listing)
    two = read_dataset(_spec("esc50", data / "esc50", folds=[1, 2]))
    assert two.counts() == {"dog": 4, "rain": 4, "siren": 4} and {c.fold for c in two} == {1, 2}
    with pytest.raises(InputError, match="unknown fold 7 .*valid: 1, 2, 3, 4, 5"):
        read_dataset(_spec("esc50", data / "esc50", folds=[7]))


def test_vegas_reader_meta_from_video_info(data: Path, tmp_path: Path) -> None:
    listing = read_dataset(_spec("vegas", data / "vegas"))
    assert listing.classes == ["baby_cry", "chainsaw", "dog"]
    assert listing.counts() == {"baby_cry": PER, "chainsaw": PER, "dog": PER}
    with open(data / "vegas" / "dog" / "video_info.csv") as f:
        info = list(csv.DictReader(f))
    dog = [c for c in listing if c.label == "dog"]
    assert dog[3].clip_id == "dog/audios/video_00003.wav"
    assert dog[3].meta_dict() == {"ytid": info[3]["YTID"], "start_second": info[3]["start_second"],
                                  "end_second": info[3]["end_second"]}  # fmt: skip
    # video_info.csv is optional; a class folder outside the 10 VEGAS classes is accepted
    root = tmp_path / "v"
    shutil.copytree(data / "vegas", root)
    (root / "dog" / "video_info.csv").unlink()
    shutil.copytree(root / "dog", root / "cat")
    listing = read_dataset(_spec("vegas", root, classes=["cat", "chainsaw"]))
    assert listing.classes == ["cat", "chainsaw"] and [c.label for c in listing][:1] == ["cat"]
    assert all(c.meta == () for c in listing if c.label == "cat")


def test_vggsound_each_file_gets_its_own_row_label(data: Path) -> None:
    root = data / "vggsound"
    listing = read_dataset(_spec("vggsound", root))
    with open(root / "vggsound.csv", newline="") as f:
        rows = list(csv.reader(f))
    truth = {f"{r[0]}_{int(r[1]):06d}": (r[2], r[3]) for r in rows}
    assert len(listing) == 5 * PER and len(set(c.label for c in listing)) == 5
    assert all(truth[c.clip_id] == (c.label, c.split) for c in listing)
    assert all(c.path.stem in (c.clip_id, f"{c.meta_dict()['ytid']}_{c.meta_dict()['start']}") for c in listing)
    assert "engine accelerating, revving, vroom" in listing.classes and "dog barking" in listing.classes
    assert listing.skipped == [(f"{MISSING_VGGSOUND_ID}_000000", "missing audio file")]
    wanted = ["dog_barking", "Engine-Accelerating, revving, vroom"]
    test = read_dataset(_spec("vggsound", root, splits=["test"], classes=wanted))
    assert test.classes == ["dog barking", "engine accelerating, revving, vroom"]
    assert test.counts() == {"dog barking": 2, "engine accelerating, revving, vroom": 2}


def test_class_selection_order_normalised_names_and_max_per_class(data: Path) -> None:
    listing = read_dataset(_spec("vegas", data / "vegas", classes=["DOG", "baby-cry", "dog"], max_per_class=3))
    assert listing.classes == ["dog", "baby_cry"]
    assert [c.label for c in listing] == ["dog"] * 3 + ["baby_cry"] * 3
    assert [c.clip_id for c in listing][:3] == [f"dog/audios/video_{i:05d}.wav" for i in range(3)]
    clips = read_dataset(_spec("vggsound", data / "vggsound")).clips
    picked = select_classes(clips, ["dog_barking"], "test")
    assert {c.label for c in picked} == {"dog barking"} and len(picked) == PER
    assert normalise_class(" Dog  Barking ") == normalise_class("dog-barking") == "dog_barking"


def test_unknown_class_is_an_error_listing_valid_names(data: Path) -> None:
    with pytest.raises(InputError) as info:
        read_dataset(_spec("vegas", data / "vegas", classes=["dog", "drums", "babycry"]))
    msg = str(info.value)
    assert "unknown classes 'drums', 'babycry' in vegas dataset at" in msg
    assert "valid: baby_cry, chainsaw, dog" in msg and "did you mean" in msg and "'babycry' -> 'baby_cry'" in msg
    with pytest.raises(InputError, match=r"unknown class 'cat' in test; valid: baby_cry, chainsaw, dog$"):
        select_classes(read_dataset(_spec("vegas", data / "vegas")).clips, ["cat"], "test")


@pytest.mark.parametrize("kind", ["folder", "csv", "esc50", "vegas", "vggsound"])
def test_missing_root_names_the_path(kind: str, tmp_path: Path) -> None:
    root = tmp_path / "absent"
    with pytest.raises(InputError) as info:
        read_dataset(_spec(kind, root))
    assert str(root) in str(info.value) and "not found" in str(info.value)


def test_missing_csv_and_empty_dataset_errors(data: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"VGGSound csv not found: .*nope\.csv"):
        read_dataset(_spec("vggsound", data / "vggsound", csv=tmp_path / "nope.csv"))
    with pytest.raises(InputError, match="ESC-50 metadata not found"):
        read_dataset(_spec("esc50", tmp_path))
    (tmp_path / "empty_class").mkdir()
    with pytest.raises(InputError, match="no audio clips found in folder dataset"):
        read_dataset(_spec("folder", tmp_path))
    root = tmp_path / "e"
    shutil.copytree(data / "esc50", root)
    for p in (root / "audio").glob("1-*-2.wav"):  # siren (target 2) loses its fold-1 clips: listed, then skipped
        p.unlink()
    with pytest.raises(InputError, match="class siren of .* has no clips in folds=\\[1\\]"):
        read_dataset(_spec("esc50", root, folds=[1], classes=["rain", "siren"]))
    assert len(read_dataset(_spec("esc50", root)).skipped) == 2


def test_spec_is_strict_and_validated() -> None:
    with pytest.raises(ConfigError, match="csv: .*only used by kind csv or vggsound"):
        validate(DatasetSpec, {"kind": "folder", "csv": "x.csv"}, "test")
    with pytest.raises(ConfigError, match="unknown key"):
        validate(DatasetSpec, {"kind": "folder", "clases": ["dog"]}, "test")
    with pytest.raises(ConfigError, match="classes"):
        validate(DatasetSpec, {"classes": []}, "test")
    assert all(f.description for f in DatasetSpec.model_fields.values())


def test_unreadable_audio_is_not_opened_by_listing(tmp_path: Path) -> None:
    (tmp_path / "dog").mkdir()
    (tmp_path / "dog" / "broken.wav").write_bytes(b"not audio")
    sf.write(tmp_path / "dog" / "ok.wav", np.zeros(800, np.float32), 8000)
    assert [c.clip_id for c in read_dataset(_spec("folder", tmp_path))] == ["dog/broken.wav", "dog/ok.wav"]
