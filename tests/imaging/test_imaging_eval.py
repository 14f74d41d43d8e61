"""CLIP zero-shot evaluation: metrics against hand-computed numbers, and the tiny CLIP end to end."""

from __future__ import annotations

from pathlib import Path

import pytest


def test_classification_metrics_by_hand() -> None:
    from a2vtool.imaging.evaluate import classification_metrics

    # truth: 3 of class 0, 1 of class 1; predictions: 0,0,1,1
    m = classification_metrics([0, 0, 0, 1], [0, 0, 1, 1], 3)
    assert m["accuracy"] == pytest.approx(0.75)
    assert m["balanced_accuracy"] == pytest.approx((2 / 3 + 1.0) / 2)  # mean recall over classes present
    f1_0 = 2 * 1.0 * (2 / 3) / (1.0 + 2 / 3)
    f1_1 = 2 * 0.5 * 1.0 / 1.5
    assert m["macro_f1"] == pytest.approx((f1_0 + f1_1) / 2)
    assert m["chance"] == pytest.approx(1 / 3) and m["n"] == 4
    assert m["per_class"][2]["support"] == 0


def test_zero_shot_tiny_clip_fixed_label_set(tmp_path: Path) -> None:
    import numpy as np
    import torch
    from PIL import Image

    from a2vtool.imaging.evaluate import metrics_table, zero_shot
    from a2vtool.tiny import build_tiny_clip

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny kernels: extra threads only add contention on a 2-core machine
    clip = build_tiny_clip(tmp_path / "clip")
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)) for _ in range(4)]
    ev = zero_shot(images, ["dog", "rain", "dog", "rain"], ["dog", "rain", "siren"], str(clip), "cpu")
    assert ev["classes"] == ["dog", "rain", "siren"] and ev["template"] == "a photo of {label}"
    assert ev["chance"] == pytest.approx(1 / 3) and len(ev["predictions"]) == 4
    assert set(ev["predictions"]) <= {"dog", "rain", "siren"}
    assert 0.0 <= ev["accuracy"] <= 1.0 and 0.0 <= ev["clip_score"] <= 100.0
    assert set(ev["per_class"]) == {"dog", "rain", "siren"}
    assert metrics_table(ev).caption.count("chance") == 1
    again = zero_shot(images, ["dog", "rain", "dog", "rain"], ["dog", "rain", "siren"], str(clip), "cpu")
    assert again["predictions"] == ev["predictions"]
    torch.set_num_threads(threads)


def test_zero_shot_rejects_labels_outside_the_set(tmp_path: Path) -> None:
    from a2vtool.errors import InputError
    from a2vtool.imaging.evaluate import zero_shot

    with pytest.raises(InputError, match="outside the label set"):
        zero_shot([], ["cat"], ["dog", "rain"], str(tmp_path / "nope"), "cpu")
