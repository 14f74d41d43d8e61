"""Reading one audio clip: soundfile decode, mono mixdown, torchaudio resampling, pad/trim to a fixed length."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from a2vtool.errors import InputError

__all__ = ["AudioReadError", "load_clip", "pad_or_trim", "target_length"]


class AudioReadError(InputError):
    """An audio file is missing, empty, corrupt, unreadable or holds non-finite samples."""


def target_length(sample_rate: int, duration: float) -> int:
    """Number of samples a clip of `duration` seconds has at `sample_rate`."""
    return int(round(duration * sample_rate))


def _check_args(path: Path, sample_rate: int, duration: float | None) -> None:
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, np.integer)) or sample_rate <= 0:
        raise InputError(f"sample rate must be a positive integer, got {sample_rate!r} (reading {path})")
    if duration is not None and not (math.isfinite(duration) and duration > 0):
        raise InputError(f"clip duration must be a positive number of seconds, got {duration!r} (reading {path})")


def _frames_to_read(sr_in: int, sample_rate: int, duration: float | None) -> int:
    """Input frames needed for `duration` seconds of output (-1 = all); a margin covers the resampling filter."""
    if duration is None:
        return -1
    need_out = target_length(sample_rate, duration)
    if sr_in == sample_rate:
        return need_out
    # torchaudio's sinc kernel reaches ~6 zero crossings (~6 * max(1, sr_in/sr_out) input samples) each side;
    # reading this much past the last kept output sample makes the result identical to a full read.
    margin = 16 + 8 * math.ceil(max(1.0, sr_in / sample_rate))
    return math.ceil(need_out * sr_in / sample_rate) + margin


def _read(path: Path, sample_rate: int, duration: float | None) -> tuple[np.ndarray, int]:
    """Decode (frames, channels) float32 samples and the file's sample rate; every failure -> AudioReadError."""
    import soundfile as sf

    try:
        with sf.SoundFile(str(path)) as f:
            sr_in = int(f.samplerate)
            frames = _frames_to_read(sr_in, sample_rate, duration)
            data = f.read(frames=frames, dtype="float32", always_2d=True)
    except (RuntimeError, OSError, ValueError, TypeError, EOFError) as e:
        reason = " ".join(str(e).split()) or type(e).__name__
        raise AudioReadError(
            f"cannot read audio file {path}: {reason}",
            hint="re-download or re-encode it as wav/flac/ogg, or remove it from the dataset",
        ) from None
    if sr_in <= 0:
        raise AudioReadError(f"audio file {path} reports an invalid sample rate {sr_in}", hint="re-encode it")
    return data, sr_in


def load_clip(path: Path, sample_rate: int, duration: float | None = None) -> np.ndarray:
    """Read `path` as a mono float32 1-D array at `sample_rate`, zero-padded/trimmed to `duration` seconds.

    wav/flac/ogg are decoded with soundfile (which releases the GIL, so threads read in parallel);
    channels are averaged; a different native rate is resampled with torchaudio.functional.resample.
    With `duration=None` the clip keeps its (resampled) length. Raises AudioReadError for a missing,
    empty, corrupt or unreadable file, or one holding NaN/inf samples.
    """
    path = Path(path)
    _check_args(path, sample_rate, duration)
    sample_rate = int(sample_rate)
    if not path.is_file():
        what = "is a directory, not an audio file" if path.is_dir() else "not found"
        raise AudioReadError(f"audio file {what}: {path}", hint="check the dataset root and file list")
    data, sr_in = _read(path, sample_rate, duration)
    if data.shape[0] == 0 or data.shape[1] == 0:
        raise AudioReadError(f"audio file {path} is empty (0 frames)", hint="remove it from the dataset")
    if data.shape[1] == 1:
        wave = np.ascontiguousarray(data[:, 0])
    else:
        wave = data.mean(axis=1, dtype=np.float32)
    if not np.isfinite(wave).all():
        raise AudioReadError(f"audio file {path} holds NaN or infinite samples", hint="re-encode or remove it")
    if sr_in != sample_rate:
        wave = _resample(wave, sr_in, sample_rate)
    if duration is not None:
        wave = pad_or_trim(wave, target_length(sample_rate, duration))
    return wave


def _resample(wave: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    import torch
    import torchaudio

    with torch.no_grad():
        out = torchaudio.functional.resample(torch.from_numpy(wave), sr_in, sr_out)
    return out.numpy().astype(np.float32, copy=False)


def pad_or_trim(wave: np.ndarray, length: int) -> np.ndarray:
    """`wave` cut to `length` samples, or zero-padded at the end up to it."""
    n = wave.shape[0]
    if n == length:
        return wave
    if n > length:
        return np.ascontiguousarray(wave[:length])
    out = np.zeros(length, dtype=np.float32)
    out[:n] = wave
    return out
