"""Quality metrics against hand-computed values: Fréchet distance, moments, diversity, k-NN precision/recall, baselines."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from a2vtool.models import generator_metrics as gm


def _cloud(n: int = 200, d: int = 5, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)) @ rng.normal(size=(d, d))


def test_frechet_distance_matches_closed_forms() -> None:
    a = _cloud()
    assert gm.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    shift = np.array([1.0, -2.0, 0.5, 0.0, 3.0])
    assert gm.frechet_distance(a, a + shift) == pytest.approx(float(shift @ shift), rel=1e-6)  # same covariance
    c = a - a.mean(0)
    # cov(2c) = 4 S: Tr(S + 4S - 2 sqrt(4 S^2)) = Tr(S)
    assert gm.frechet_distance(c, 2 * c) == pytest.approx(float(np.trace(np.cov(c, rowvar=False))), rel=1e-6)
    # 1-D: (mu1-mu2)^2 + (s1-s2)^2
    x = np.array([[0.0], [2.0]])
    y = np.array([[10.0], [16.0]])
    assert gm.frechet_distance(x, y) == pytest.approx(12.0**2 + (math.sqrt(2) - math.sqrt(18)) ** 2, rel=1e-6)  # unbiased variances 2 and 18


def test_frechet_distance_with_singular_covariances_is_finite() -> None:
    few = _cloud(n=4, d=16)
    other = _cloud(n=4, d=16, seed=1)
    fd = gm.frechet_distance(few, other)
    assert math.isfinite(fd) and fd > 0


def test_precision_recall_kynkaanniemi() -> None:
    real = _cloud(n=100, d=3)
    assert gm.precision_recall(real, real.copy(), k=3) == (1.0, 1.0)
    far = real + 1000.0
    assert gm.precision_recall(real, far, k=3) == (0.0, 0.0)
    collapsed = np.repeat(real[:1], 100, axis=0) + 1e-9 * _cloud(n=100, d=3, seed=2)  # mode collapse
    p, r = gm.precision_recall(real, collapsed, k=3)
    assert p == 1.0 and r < 0.1
    # radii are each real point's k-th neighbour distance: on a 1-D grid with spacing 1 and k=2 the radius is 1
    grid = np.arange(10.0)[:, None]
    assert gm.precision_recall(grid, np.array([[4.9], [20.0]]), k=2)[0] == 0.5


def test_diversity_and_moment_errors() -> None:
    tri = np.array([[0.0, 0.0], [1.0, 0.0], [0.5, math.sqrt(3) / 2]])
    assert gm.diversity(tri) == pytest.approx(1.0)
    real = _cloud()
    q = gm.quality(real, real + np.array([3.0, 4.0, 0, 0, 0]))
    assert q["mean_error"] == pytest.approx(5.0) and q["cov_error"] == pytest.approx(0.0, abs=1e-9)
    assert q["diversity_ratio"] == pytest.approx(1.0)
    half = gm.quality(real - real.mean(0), 0.5 * (real - real.mean(0)))
    assert half["diversity_ratio"] == pytest.approx(0.5) and half["cov_error"] == pytest.approx(0.75)
    assert all(math.isnan(v) for v in gm.quality(real[:1], real).values())


def test_features_are_token_means() -> None:
    x = torch.arange(24, dtype=torch.float32).reshape(2, 3, 4)
    assert np.allclose(gm.features(x), x.mean(1).numpy())


def test_evaluate_reports_baselines_and_an_honest_verdict() -> None:
    rng = np.random.default_rng(0)
    centers = {"a": np.zeros(4), "b": np.full(4, 20.0)}
    train = {c: m + rng.normal(size=(60, 4)) for c, m in centers.items()}
    real = {c: m + rng.normal(size=(30, 4)) for c, m in centers.items()}
    perfect = {c: m + rng.normal(size=(200, 4)) for c, m in centers.items()}
    out = gm.evaluate(real, perfect, train, n=200, k=3, seed=0)
    assert set(out["classes"]["a"]) == set(gm.METHODS) and out["held_out"] == {"a": 30, "b": 30}
    for c in centers:  # one Gaussian for two far-apart classes is a poor fit for either
        per = out["classes"][c]
        assert per["gaussian_all"]["fd"] > 10 * per["gaussian_class"]["fd"]
        assert per["generator"]["fd"] < per["gaussian_all"]["fd"]
    s = out["summary"]
    assert s["fd_wins_vs_gaussian_all"] == "2/2" and "per-class Gaussian" in s["verdict"]
    assert "feature_space" in out and "mean over" in out["feature_space"]
