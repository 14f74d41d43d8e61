"""load_clip: mono mixdown, resampling, pad/trim, and clear errors for bad files."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from a2vtool.audio.io import AudioReadError, load_clip, pad_or_trim
from a2vtool.errors import InputError


def _tone(freq: float, sr: int, seconds: float, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(round(sr * seconds))) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _peak_hz(x: np.ndarray, sr: int) -> float:
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / sr)[int(np.argmax(spec))])


def test_stereo_is_mixed_down_to_the_channel_mean(tmp_path: Path) -> None:
    left, right = _tone(440, 16000, 0.5), _tone(1000, 16000, 0.5, amp=0.25)
    path = tmp_path / "stereo.wav"
    sf.write(path, np.stack([left, right], axis=1), 16000, subtype="FLOAT")
    x = load_clip(path, 16000, None)
    assert x.dtype == np.float32 and x.ndim == 1 and x.shape == (8000,)
    np.testing.assert_allclose(x, (left + right) / 2, atol=1e-6)


def test_resample_44k1_to_16k_keeps_length_and_dominant_frequency(tmp_path: Path) -> None:
    path = tmp_path / "tone44k.wav"
    sf.write(path, _tone(440, 44100, 2.0), 44100, subtype="PCM_16")
    x = load_clip(path, 16000, None)
    assert x.dtype == np.float32 and x.shape == (32000,)
    assert abs(_peak_hz(x, 16000) - 440) < 2
    assert 0.4 < np.abs(x).max() < 0.6  # amplitude survives resampling


def test_partial_read_with_duration_equals_full_read_then_trim(tmp_path: Path) -> None:
    path = tmp_path / "long.flac"
    rng = np.random.default_rng(0)
    sf.write(path, (rng.standard_normal(44100 * 3) * 0.1).astype(np.float32), 44100)
    full = load_clip(path, 16000, None)
    part = load_clip(path, 16000, 1.0)
    assert part.shape == (16000,)
    np.testing.assert_allclose(part, full[:16000], atol=1e-6)


def test_pad_and_trim_to_duration(tmp_path: Path) -> None:
    path = tmp_path / "half.wav"
    tone = _tone(300, 16000, 0.5)
    sf.write(path, tone, 16000, subtype="FLOAT")
    padded = load_clip(path, 16000, 1.0)
    assert padded.shape == (16000,)
    np.testing.assert_allclose(padded[:8000], tone, atol=1e-7)
    assert not padded[8000:].any()
    trimmed = load_clip(path, 16000, 0.25)
    assert trimmed.shape == (4000,)
    np.testing.assert_allclose(trimmed, tone[:4000], atol=1e-7)
    assert load_clip(path, 8000, 1.0).shape == (8000,)  # resample + pad
    assert pad_or_trim(np.ones(3, np.float32), 5).tolist() == [1, 1, 1, 0, 0]


def test_ogg_is_readable(tmp_path: Path) -> None:
    path = tmp_path / "tone.ogg"
    try:
        sf.write(path, _tone(440, 16000, 1.0), 16000, format="OGG", subtype="VORBIS")
    except (sf.LibsndfileError, ValueError, TypeError):
        pytest.skip("this libsndfile cannot write ogg/vorbis")
    x = load_clip(path, 16000, 1.0)
    assert x.shape == (16000,) and abs(_peak_hz(x, 16000) - 440) < 3


def _assert_read_error(path: Path, words: str) -> None:
    with pytest.raises(AudioReadError) as info:
        load_clip(path, 16000, 1.0)
    msg = str(info.value)
    assert str(path) in msg and words in msg and "\n" not in msg
    assert isinstance(info.value, InputError) and info.value.exit_code == 2


def test_corrupt_file_raises_audio_read_error(tmp_path: Path) -> None:
    path = tmp_path / "corrupt.wav"
    path.write_bytes(np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    _assert_read_error(path, "cannot read audio file")


def test_empty_and_missing_files_raise_audio_read_error(tmp_path: Path) -> None:
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros((0, 1), np.float32), 16000)
    _assert_read_error(empty, "empty")
    _assert_read_error(tmp_path / "nope.wav", "not found")
    zero_bytes = tmp_path / "zero.wav"
    zero_bytes.touch()
    _assert_read_error(zero_bytes, "cannot read")


def test_non_finite_samples_raise_audio_read_error(tmp_path: Path) -> None:
    path = tmp_path / "nan.wav"
    x = _tone(440, 16000, 0.1)
    x[10] = np.nan
    sf.write(path, x, 16000, subtype="FLOAT")
    _assert_read_error(path, "NaN")


def test_bad_arguments_are_input_errors(tmp_path: Path) -> None:
    path = tmp_path / "t.wav"
    sf.write(path, _tone(440, 16000, 0.1), 16000)
    with pytest.raises(InputError, match="sample rate"):
        load_clip(path, 0, 1.0)
    with pytest.raises(InputError, match="duration"):
        load_clip(path, 16000, -1.0)


def test_parallel_reads_in_threads_match_serial(tmp_path: Path) -> None:
    paths = []
    for i in range(8):
        p = tmp_path / f"c{i}.wav"
        sf.write(p, _tone(200 + 50 * i, 22050, 0.5), 22050)
        paths.append(p)
    serial = [load_clip(p, 16000, 0.5) for p in paths]
    with ThreadPoolExecutor(4) as pool:
        threaded = list(pool.map(lambda p: load_clip(p, 16000, 0.5), paths))
    for a, b in zip(serial, threaded):
        np.testing.assert_array_equal(a, b)
