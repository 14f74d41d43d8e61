"""Quality of generated embeddings vs held-out real ones: Fréchet distance, moments, diversity, k-NN precision/recall,
next to three baselines (copy the training set, one Gaussian for all classes, one Gaussian per class)."""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np

METHODS = ("generator", "copy_train", "gaussian_all", "gaussian_class")
FEATURE_SPACE = "mean over the generator's compact tokens (one D-dim vector per clip)"


def features(tokens: Any) -> np.ndarray:
    """(n, S, D) tokens -> (n, D) float64: the mean over tokens. Metrics live in this space because a flattened
    S*D covariance (3072 dims for 4x768) needs thousands of clips per class to be estimated at all."""
    arr = tokens.detach().cpu().double().numpy() if hasattr(tokens, "detach") else np.asarray(tokens, dtype=np.float64)
    return arr.mean(axis=1) if arr.ndim == 3 else arr


def _cov(x: np.ndarray) -> np.ndarray:
    return np.cov(x, rowvar=False) if len(x) > 1 else np.zeros((x.shape[1], x.shape[1]))


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)) with scipy.linalg.sqrtm (as in FID)."""
    from scipy import linalg

    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.atleast_2d(_cov(a)), np.atleast_2d(_cov(b))
    with warnings.catch_warnings():  # singular products are expected with few clips per class
        warnings.simplefilter("ignore")
        covmean = np.asarray(linalg.sqrtm(s_a @ s_b))
        if not np.isfinite(covmean).all():  # offset the diagonals, as pytorch-fid does
            off = np.eye(len(s_a)) * 1e-6
            covmean = np.asarray(linalg.sqrtm((s_a + off) @ (s_b + off)))
    covmean = np.real(covmean)
    return float(max(0.0, ((mu_a - mu_b) ** 2).sum() + np.trace(s_a) + np.trace(s_b) - 2.0 * np.trace(covmean)))


def _pairwise(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    d2 = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    return np.sqrt(np.maximum(d2, 0.0))


def diversity(x: np.ndarray) -> float:
    """Mean pairwise Euclidean distance between distinct samples."""
    if len(x) < 2:
        return float("nan")
    d = _pairwise(x, x)
    return float(d.sum() / (len(x) * (len(x) - 1)))


def _knn_radii(x: np.ndarray, k: int) -> np.ndarray:
    d = _pairwise(x, x)
    np.fill_diagonal(d, np.inf)
    return np.sort(d, axis=1)[:, k - 1]


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3) -> tuple[float, float]:
    """Kynkäänniemi et al. 2019: each set's manifold is the union of balls reaching each sample's k-th nearest
    neighbour within its own set. Precision = share of fakes inside the real manifold; recall = share of reals
    inside the fake manifold. k is capped at n-1 for small sets."""
    if len(real) < 2 or len(fake) < 2:
        return float("nan"), float("nan")
    kr, kf = min(k, len(real) - 1), min(k, len(fake) - 1)
    r_rad, f_rad = _knn_radii(real, kr), _knn_radii(fake, kf)
    d = _pairwise(fake, real)  # (n_fake, n_real)
    precision = float((d <= r_rad[None, :]).any(axis=1).mean())
    recall = float((d.T <= f_rad[None, :]).any(axis=1).mean())
    return precision, recall


def quality(real: np.ndarray, fake: np.ndarray, k: int = 3) -> dict[str, float]:
    """Every metric of one fake set against one real set (both (n, D) features)."""
    if len(real) < 2:
        nan = float("nan")
        return {"fd": nan, "mean_error": nan, "cov_error": nan, "diversity_ratio": nan, "precision": nan, "recall": nan}
    cr, cf = _cov(real), _cov(fake)
    norm = float(np.linalg.norm(cr)) or 1.0
    sub = fake[: max(len(real), 2)]  # P/R compare sets of equal size, as in the paper
    p, r = precision_recall(real, sub, k)
    return {
        "fd": frechet_distance(real, fake),
        "mean_error": float(np.linalg.norm(real.mean(0) - fake.mean(0))),
        "cov_error": float(np.linalg.norm(cr - cf) / norm),  # relative Frobenius error
        "diversity_ratio": diversity(fake) / diversity(real) if diversity(real) > 0 else float("nan"),
        "precision": p,
        "recall": r,
    }


def gaussian_samples(x: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """n draws from N(mean(x), cov(x)) (a singular covariance is fine: eigh factorisation)."""
    return rng.multivariate_normal(x.mean(0), _cov(x), size=n, method="eigh")


def evaluate(real: dict[str, np.ndarray], generated: dict[str, np.ndarray], train: dict[str, np.ndarray], *,
             n: int, k: int = 3, seed: int = 0, kind: str = "vae") -> dict[str, Any]:
    """Per-class metrics of the generator and the three baselines against held-out `real` features.

    `train` holds each class's training features (the baselines are fitted on them only); `generated` n samples of
    the generator per class. Returns {"classes": {cls: {method: metrics}}, "summary": {...}, "feature_space": ...}.
    """
    rng = np.random.default_rng(seed)
    pooled = np.concatenate([train[c] for c in real])
    classes: dict[str, dict[str, dict[str, float]]] = {}
    for c in real:
        fakes = {"generator": generated[c], "copy_train": train[c], "gaussian_all": gaussian_samples(pooled, n, rng),
                 "gaussian_class": gaussian_samples(train[c], n, rng)}
        classes[c] = {m: quality(real[c], fakes[m], k) for m in METHODS}
    return {"feature_space": FEATURE_SPACE, "knn_k": k, "samples_per_class": n,
            "held_out": {c: int(len(v)) for c, v in real.items()}, "classes": classes, "summary": summarize(classes, kind)}


def _mean(values: list[float]) -> float:
    ok = [v for v in values if math.isfinite(v)]
    return float(np.mean(ok)) if ok else float("nan")


def summarize(classes: dict[str, dict[str, dict[str, float]]], kind: str = "vae") -> dict[str, Any]:
    """Mean of each metric per method over classes, and where the generator stands vs each baseline on FD."""
    out: dict[str, Any] = {m: {k: _mean([classes[c][m][k] for c in classes]) for k in next(iter(classes.values()))[m]}
                           for m in METHODS} if classes else {}
    for base in METHODS[1:]:
        wins = sum(1 for c in classes if classes[c]["generator"]["fd"] < classes[c][base]["fd"])
        out[f"fd_wins_vs_{base}"] = f"{wins}/{len(classes)}"
    out["verdict"] = verdict(out, len(classes), kind) if classes else ""
    return out


def verdict(summary: dict[str, Any], n_classes: int, kind: str = "vae") -> str:
    """One honest sentence on where the generator (of type `kind`) stands (the per-class Gaussian is a strong FD
    baseline; a `gaussian` generator is that baseline, saved as an artifact)."""
    g, gc, ga = (summary[m]["fd"] for m in ("generator", "gaussian_class", "gaussian_all"))
    if not all(math.isfinite(v) for v in (g, gc, ga)):
        return "too few held-out clips per class to judge (need at least 2)"
    vs_class = "beats" if g < gc else "does not beat"
    vs_all = "beats" if g < ga else "does not beat"
    gen = summary["generator"]
    spread = ""
    if math.isfinite(gen["diversity_ratio"]) and gen["diversity_ratio"] < 0.8:
        spread = (f" Its samples are less spread out than real clips (diversity ratio {gen['diversity_ratio']:.2f}, "
                  f"recall {gen['recall']:.2f}); with few held-out clips FD rewards that, so read it with recall.")
    if kind == "gaussian":
        return (f"gaussian generator: mean FD {g:.3g}, against {gc:.3g} for the reference per-class Gaussian (the same "
                f"model drawn with another seed, {summary['fd_wins_vs_gaussian_class']} class wins: sampling noise) "
                f"and {ga:.3g} for one Gaussian for all classes.{spread} It matches each class's mean and covariance "
                "by construction: the FD bar a learned generator has to clear.")
    return (f"learned {kind} generator: mean FD {g:.3g}; it {vs_class} the per-class Gaussian ({gc:.3g}, wins on "
            f"{summary['fd_wins_vs_gaussian_class']} classes) and {vs_all} one Gaussian for all classes ({ga:.3g}).{spread} "
            "A per-class Gaussian matches mean and covariance by construction, so it is the bar for FD; the "
            "generator's value is in producing full token sequences and conditioned samples.")
