"""Synthetic labelled audio datasets (distinct sound per class) in folder/csv/ESC-50/VEGAS/VGGSound layouts."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from a2vtool.audio.datasets import VEGAS_CLASSES
from a2vtool.errors import InputError

__all__ = ["DEMO_CLASSES", "LAYOUTS", "MARKER", "demo_class_names", "make_demo_dataset", "synth_clip"]

MARKER = ".a2v-demo.json"
MISSING_VGGSOUND_ID = "MISSINGclip"  # the vggsound layout lists this row without writing its audio
DEMO_CLASSES: dict[str, tuple[str, ...]] = {
    "folder": ("dog", "rain", "siren", "bell", "engine", "bird", "clock", "drum"),
    "esc50": ("dog", "rain", "siren", "church_bells", "engine", "crow", "clock_tick", "hand_saw"),
    "vegas": VEGAS_CLASSES,
    "vggsound": (
        "dog barking", "raining", "ambulance siren", "church bell ringing",
        "engine accelerating, revving, vroom", "bird chirping, tweeting", "clock tick", "playing drum kit",
    ),  # fmt: skip
}
DEMO_CLASSES["csv"] = DEMO_CLASSES["folder"]
LAYOUTS: tuple[str, ...] = ("folder", "csv", "esc50", "vegas", "vggsound")


def demo_class_names(classes: int | list[str], layout: str = "folder") -> list[str]:
    """`classes` names as given, or the first N default names of `layout` (extended with class_N)."""
    if isinstance(classes, int) and not isinstance(classes, bool):
        if classes < 1:
            raise InputError(f"demo dataset needs at least 1 class, got {classes}")
        base = DEMO_CLASSES[layout]
        return [base[i] if i < len(base) else f"class_{i}" for i in range(classes)]
    names = [str(c) for c in classes]
    if not names:
        raise InputError("demo dataset needs at least 1 class name")
    for n in names:
        if not n.strip() or n != n.strip() or n.startswith(".") or "/" in n or "\\" in n:
            raise InputError(f"demo class name {n!r} cannot be used as a folder name", hint="use e.g. 'dog_bark'")
    if len(set(names)) != len(names):
        raise InputError(f"demo class names repeat: {', '.join(names)}", hint="give each class once")
    return names


def _centre(k: int, n: int, sample_rate: int) -> float:
    """Centre frequency of class k of n: log-spaced from 250 Hz up to 0.3 * sample rate."""
    lo, hi = 250.0, 0.3 * sample_rate
    return lo if n == 1 else lo * (hi / lo) ** (k / (n - 1))


def synth_clip(k: int, n_classes: int, sample_rate: int, duration: float, rng: np.random.Generator) -> np.ndarray:
    """One clip of class k: family k % 4 (tone, chirp up, band noise, AM tone with clicks) at a class-specific
    centre frequency; amplitude, phase, pitch (+-3 %) and a little noise vary per clip."""
    n = int(round(duration * sample_rate))
    t = np.arange(n, dtype=np.float64) / sample_rate
    f = _centre(k, n_classes, sample_rate) * (1.0 + rng.uniform(-0.03, 0.03))
    phase = rng.uniform(0, 2 * np.pi)
    family = k % 4
    if family == 0:  # harmonic tone; more harmonics for later classes of this family
        x = sum(np.sin(2 * np.pi * f * h * t + phase * h) / h for h in range(1, 2 + k // 4) if f * h < sample_rate / 2)
    elif family == 1:  # exponential chirp up from f/2 to 2f
        f0, f1 = f / 2, min(2 * f, 0.45 * sample_rate)
        rate = np.log(f1 / f0) / max(duration, 1e-9)
        x = np.sin(phase + 2 * np.pi * f0 * (np.exp(rate * t) - 1) / rate)
    elif family == 2:  # noise band-limited to f +- 20 %
        spec = np.fft.rfft(rng.standard_normal(n))
        freqs = np.fft.rfftfreq(n, 1 / sample_rate)
        spec[(freqs < 0.8 * f) | (freqs > 1.2 * f)] = 0
        x = np.fft.irfft(spec, n)
        x = x / (np.abs(x).max() + 1e-12)
    else:  # tone amplitude-modulated at 4-8 Hz plus a click train
        x = np.sin(2 * np.pi * f * t + phase) * (0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(4, 8) * t))
        step = max(1, int(sample_rate / rng.uniform(8, 12)))
        x[int(rng.integers(0, step)) :: step] += 0.8
    x = np.asarray(x, dtype=np.float64)
    x = x / (np.abs(x).max() + 1e-12) * rng.uniform(0.3, 0.8)
    x += rng.standard_normal(n) * 0.005
    fade = min(n // 2, int(0.01 * sample_rate))
    if fade:
        ramp = np.linspace(0.0, 1.0, fade)
        x[:fade] *= ramp
        x[n - fade :] *= ramp[::-1]
    return np.clip(x, -1.0, 1.0).astype(np.float32)


def _wav(path: Path, wave: np.ndarray, sample_rate: int) -> None:
    import soundfile as sf

    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), wave, sample_rate, subtype="PCM_16", format="WAV")


def _csv(path: Path, rows: list[list[str]]) -> None:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(buf.getvalue(), encoding="utf-8")


def _split_of(i: int, order: np.ndarray, n: int) -> str:
    """Stratified split of clip i of a class with n clips: ~20 % test, ~10 % val, rest train (>= 1 train)."""
    n_test = int(round(0.2 * n)) if n >= 3 else 0
    n_val = int(round(0.1 * n)) if n >= 3 else 0
    pos = int(np.where(order == i)[0][0])
    return "test" if pos < n_test else "val" if pos < n_test + n_val else "train"


@dataclass(frozen=True)
class _Demo:
    """The resolved arguments of one demo dataset (what the marker records)."""

    layout: str
    classes: list[str]
    clips_per_class: int
    sample_rate: int
    duration: float
    seed: int

    def marker(self) -> dict[str, object]:
        return {"kind": "a2v-demo", "version": 1, **asdict(self)}

    def clip(self, k: int, i: int) -> np.ndarray:
        """Clip i of class k, from its own seeded generator (independent of the other classes and clips)."""
        rng = np.random.default_rng([self.seed, k, i])
        return synth_clip(k, len(self.classes), self.sample_rate, self.duration, rng)

    def wav(self, path: Path, k: int, i: int) -> None:
        _wav(path, self.clip(k, i), self.sample_rate)


Writer = Callable[[Path, _Demo], None]


def _write_folder(out: Path, d: _Demo) -> None:
    for k, name in enumerate(d.classes):
        for i in range(d.clips_per_class):
            d.wav(out / name / f"{name}_{i:03d}.wav", k, i)


def _write_csv(out: Path, d: _Demo) -> None:
    _write_folder(out, d)
    rows, per = [["path", "label", "split"]], d.clips_per_class
    for k, name in enumerate(d.classes):
        order = np.random.default_rng([d.seed, k, 7]).permutation(per)
        rows += [[f"{name}/{name}_{i:03d}.wav", name, _split_of(i, order, per)] for i in range(per)]
    _csv(out / "manifest.csv", rows)


def _write_esc50(out: Path, d: _Demo) -> None:
    rows = []
    for k, name in enumerate(d.classes):
        for i in range(d.clips_per_class):
            fold, src, take = 1 + i % 5, 100000 + 37 * k + i, "ABCDEFGH"[(i // 5) % 8]
            filename = f"{fold}-{src}-{take}-{k}.wav"
            d.wav(out / "audio" / filename, k, i)
            rows.append([filename, str(fold), str(k), name, str(k < 2), str(src), take])
    _csv(out / "meta" / "esc50.csv", [["filename", "fold", "target", "category", "esc10", "src_file", "take"]]
         + sorted(rows))  # fmt: skip


def _ytid(rng: np.random.Generator) -> str:
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    return "".join(alphabet[j] for j in rng.integers(0, len(alphabet), 11))


def _write_vegas(out: Path, d: _Demo) -> None:
    for k, name in enumerate(d.classes):
        rng = np.random.default_rng([d.seed, k, 11])
        info = [["YTID", "start_second", "end_second"]]
        for i in range(d.clips_per_class):
            d.wav(out / name / "audios" / f"video_{i:05d}.wav", k, i)
            start = int(rng.integers(0, 300))
            info.append([_ytid(rng), f"{start}.0", f"{start + 10}.0"])
        _csv(out / name / "video_info.csv", info)


def _write_vggsound(out: Path, d: _Demo) -> None:
    rows = []
    for k, name in enumerate(d.classes):
        rng = np.random.default_rng([d.seed, k, 13])
        for i in range(d.clips_per_class):
            ytid, start = _ytid(rng), int(rng.integers(0, 300))
            split = "test" if i % 5 == 4 else "train"
            stem = f"{ytid}_{start:06d}" if i % 3 else f"{ytid}_{start}"  # both spellings occur in the wild
            d.wav(out / split / "audios" / f"{stem}.wav", k, i)
            rows.append([ytid, str(start), name, split])
    rows.append([MISSING_VGGSOUND_ID, "0", d.classes[0], "train"])  # listed, but its audio was never downloaded
    _csv(out / "vggsound.csv", rows)


WRITERS: dict[str, Writer] = {
    "folder": _write_folder,
    "csv": _write_csv,
    "esc50": _write_esc50,
    "vegas": _write_vegas,
    "vggsound": _write_vggsound,
}


def make_demo_dataset(
    out: Path,
    *,
    classes: int | list[str] = 4,
    clips_per_class: int = 12,
    sample_rate: int = 16000,
    duration: float = 1.0,
    seed: int = 0,
    layout: str = "folder",
) -> Path:
    """Write a synthetic dataset to `out` (16-bit wav) and return `out`; the same args give identical bytes.

    Layouts: folder `out/<class>/<class>_<i:03d>.wav`; csv = folder + `out/manifest.csv` (path,label,split,
    stratified); esc50 `meta/esc50.csv` + `audio/` (folds 1..5); vegas `<class>/audios/video_<i:05d>.wav` +
    `video_info.csv`; vggsound headerless `vggsound.csv` + `{train,test}/audios/` with one row lacking audio.
    Written into a temporary sibling and renamed into place, the marker `out/.a2v-demo.json` last; an
    existing complete dataset with the same args is kept; different args -> InputError.
    """
    out = Path(out)
    if layout not in WRITERS:
        raise InputError(f"unknown demo layout {layout!r}; valid: {', '.join(LAYOUTS)}")
    if clips_per_class < 1 or sample_rate < 1000 or not duration > 0:
        raise InputError(
            f"demo dataset needs clips_per_class >= 1, sample_rate >= 1000 and duration > 0 "
            f"(got {clips_per_class}, {sample_rate}, {duration})"
        )
    names = demo_class_names(classes, layout)
    demo = _Demo(layout, names, int(clips_per_class), int(sample_rate), float(duration), int(seed))
    args = demo.marker()
    if _existing_matches(out, args):
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        WRITERS[layout](tmp, demo)
        (tmp / MARKER).write_text(json.dumps(args, sort_keys=True, indent=1) + "\n", encoding="utf-8")
        os.chmod(tmp, 0o755)  # mkdtemp makes it 0700
        if out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        try:
            os.replace(tmp, out)
        except OSError:
            if _existing_matches(out, args):  # another process finished the same dataset first
                return out
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _existing_matches(out: Path, args: dict[str, object]) -> bool:
    """True when `out` holds a complete demo dataset made with `args`; InputError when it holds anything else."""
    if not out.exists():
        return False
    if not out.is_dir():
        raise InputError(f"demo output {out} exists and is not a folder", hint="choose another --out")
    marker = out / MARKER
    if not marker.is_file():
        if any(out.iterdir()):
            raise InputError(f"demo output {out} exists and is not a demo dataset", hint="choose another --out")
        return False
    try:
        old = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        old = None
    if old == json.loads(json.dumps(args)):
        return True
    raise InputError(
        f"demo output {out} already holds a demo dataset made with other settings ({marker})",
        hint="choose another --out or delete that folder",
    )
