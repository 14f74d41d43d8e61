"""Generator models and training: shapes, upsampling, conditions (SD and FLUX), β schedule, fit, early stopping."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import nn

from a2vtool.errors import InputError
from a2vtool.models import generator_train as gt
from a2vtool.models.generators import (
    UpsampleWarning,
    build_condition,
    build_generator,
    condition_dim,
    make_arch,
    param_count,
    resize_tokens,
)
from a2vtool.models.text_targets import TextTargets

S, D = 4, 32


@pytest.fixture(autouse=True)
def _one_thread() -> object:
    """Tiny models run fastest (and steadiest on a busy 2-core box) on one thread; restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(before)


def _arch(kind: str, seq: int = S, cond_dim: int = 0, **kw: object) -> dict:
    return make_arch(kind, seq, D, hidden_dim=32, latent_dim=8, cond_dim=cond_dim if kind == "cvae" else 0, depth=1, **kw)


def _targets(family: str, classes: list[str], n_tokens: int) -> TextTargets:
    g = torch.Generator().manual_seed(1)
    c = len(classes)
    if family == "sd":
        slots = {"prompt_embeds": torch.randn(c, n_tokens, 32, generator=g)}
    else:
        slots = {"prompt_embeds": torch.randn(c, n_tokens, 48, generator=g), "pooled_prompt_embeds": torch.randn(c, 32, generator=g)}
    return TextTargets(family, classes, [f"a photo of {x}" for x in classes], slots, key=f"{family}-key")


@pytest.mark.parametrize("kind", ["vae", "cvae", "gan"])
def test_sample_shapes_and_upsampling(kind: str) -> None:
    model = build_generator(_arch(kind, cond_dim=40))
    cond = torch.randn(S, 40) if kind == "cvae" else None
    g = torch.Generator().manual_seed(0)
    assert model.sample(3, cond, generator=g).shape == (3, S, D)
    with pytest.warns(UpsampleWarning, match="4 generated tokens to 1214"):
        up = model.sample(3, cond, sequence_length=1214, generator=torch.Generator().manual_seed(0))
    assert up.shape == (3, 1214, D) and up.dtype == torch.float32
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a modest factor does not warn
        assert model.sample(2, cond, sequence_length=64, generator=g).shape == (2, 64, D)
        assert model.sample(2, cond, sequence_length=2, generator=g).shape == (2, 2, D)
    # the upsampled sequence is the interpolation of the compact one (same seed, same latents)
    base = model.sample(3, cond, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(resize_tokens(base, 1214), up)


@pytest.mark.parametrize("bad", [0, -3, 10**6, 2.5, True])
def test_absurd_sequence_length_is_an_error(bad: object) -> None:
    model = build_generator(_arch("vae"))
    with pytest.raises(InputError, match="sequence_length"):
        model.sample(2, sequence_length=bad)  # type: ignore[arg-type]


def test_parameters_do_not_grow_with_output_length_and_little_with_training_length() -> None:
    small = build_generator(make_arch("vae", 4, 768))
    big = build_generator(make_arch("vae", 64, 768))
    p4, p64 = param_count(small)["total"], param_count(big)["total"]
    assert p64 / p4 < 1.1  # no flatten(S*768) MLP: the upstream design had 9.2 M at S=4 and 1.9 B at S=1214
    assert max(p.numel() for p in big.parameters()) <= 2 * 768 * 256
    before = [p.clone() for p in small.parameters()]
    with pytest.warns(UpsampleWarning):
        small.sample(1, sequence_length=1214)
    assert param_count(small)["total"] == p4 and all(torch.equal(a, b) for a, b in zip(before, small.parameters()))


def test_outputs_are_unbounded_and_standardised_with_stored_statistics() -> None:
    model = build_generator(_arch("vae"))
    assert not any(isinstance(m, nn.Tanh) for m in model.modules())
    x = 50.0 + 10.0 * torch.randn(64, S, D, generator=torch.Generator().manual_seed(0))
    model.set_stats(x)
    assert torch.allclose(model.mean, x.mean(0)) and "mean" in model.state_dict() and "std" in model.state_dict()
    y = model.sample(16, generator=torch.Generator().manual_seed(0))
    assert y.abs().min() > 1.0 and abs(float(y.mean()) - 50.0) < 10.0


def test_dropout_only_in_train_mode() -> None:
    model = build_generator(make_arch("vae", S, D, hidden_dim=32, latent_dim=8, depth=2, dropout=0.5))
    model.train()
    a = model.sample(4, generator=torch.Generator().manual_seed(3))
    b = model.sample(4, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and model.training  # sampling ran in eval mode and restored train mode
    x = torch.randn(4, S, D)
    eps = torch.zeros(4, 8)
    assert not torch.equal(model(x, None, eps)[0], model(x, None, eps)[0])  # dropout active in training
    model.eval()
    assert torch.equal(model(x, None, eps)[0], model(x, None, eps)[0])


def test_condition_is_checked() -> None:
    cvae = build_generator(_arch("cvae", cond_dim=40))
    with pytest.raises(InputError, match="build_condition"):
        cvae.sample(2)
    with pytest.raises(InputError, match="does not match"):
        cvae.sample(2, torch.randn(S, 41))
    with pytest.raises(InputError, match="unconditioned"):
        build_generator(_arch("vae")).sample(2, torch.randn(S, 40))
    with pytest.raises(InputError, match="only cvae"):
        make_arch("vae", S, D, cond_dim=3)


def test_build_condition_sd_is_clip_tokens_pooled() -> None:
    tt = _targets("sd", ["dog", "rain"], 77)
    cond = build_condition(tt, ["rain", "dog", "rain"], S)
    assert cond.shape == (3, S, 32) and condition_dim(tt) == 32
    expect = torch.nn.functional.adaptive_avg_pool1d(tt.slots["prompt_embeds"][1].T.unsqueeze(0), S)[0].T
    assert torch.allclose(cond[0], expect) and torch.equal(cond[0], cond[2])


def test_build_condition_flux_is_t5_tokens_plus_pooled_clip() -> None:
    tt = _targets("flux", ["dog", "rain"], 16)
    cond = build_condition(tt, ["dog"], S)
    assert cond.shape == (1, S, 48 + 32) and condition_dim(tt) == 80
    assert torch.allclose(cond[0, :, :48], resize_tokens(tt.slots["prompt_embeds"][:1], S)[0])
    assert torch.equal(cond[0, :, 48:], tt.slots["pooled_prompt_embeds"][0].expand(S, -1))
    # fewer text tokens than seq_len: stretched by linear interpolation
    short = build_condition(_targets("flux", ["dog"], 2), ["dog"], 8)
    assert short.shape == (1, 8, 80)
    broken = _targets("flux", ["dog"], 4)
    del broken.slots["pooled_prompt_embeds"]
    with pytest.raises(InputError, match="pooled"):
        build_condition(broken, ["dog"], S)
    with pytest.raises(InputError, match="no text target"):
        build_condition(tt, ["cat"], S)


@pytest.mark.parametrize(("epochs", "fraction"), [(3, 0.3), (10, 0.5), (50, 0.3), (200, 1.0), (10, 0.0)])
def test_beta_reaches_target_within_configured_epochs(epochs: int, fraction: float) -> None:
    betas = [gt.beta_at(e, epochs, 0.7, fraction) for e in range(epochs)]
    assert betas[-1] == pytest.approx(0.7) and all(a <= b for a, b in zip(betas, betas[1:]))
    warm = gt.warmup_epochs(epochs, fraction)
    assert warm == (0 if fraction == 0 else math.ceil(fraction * epochs))
    assert betas[max(warm - 1, 0)] == pytest.approx(0.7)  # reached at the configured share of training
    if warm > 1:
        assert betas[warm - 2] < 0.7


def _blobs(n: int, seed: int, shift: float = 0.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    basis = torch.randn(2, S * D, generator=torch.Generator().manual_seed(99))
    return (torch.randn(n, 2, generator=g) @ basis).reshape(n, S, D) + shift + 0.1 * torch.randn(n, S, D, generator=g)


def test_fit_logs_components_reaches_beta_and_restores_best() -> None:
    model = build_generator(_arch("vae"))
    x, xv = _blobs(96, 0), _blobs(32, 1)
    model.set_stats(x)
    s = gt.TrainSettings(epochs=12, batch_size=32, lr=3e-3, beta=0.5, beta_warmup_fraction=0.5, patience=0, cosine_weight=0.1)
    epochs_seen: list[dict] = []
    res = gt.fit(model, gt.GenData(model.standardize(x)), gt.GenData(model.standardize(xv)), s,
                 generator=torch.Generator().manual_seed(0), on_epoch=epochs_seen.append)
    assert len(res.history) == 12 == len(epochs_seen) and not res.stopped_early
    assert {"loss", "recon", "kl", "cosine", "beta", "val_loss", "val_recon", "val_kl"} <= set(res.history[0])
    assert res.history[5]["beta"] == pytest.approx(0.5) and res.history[0]["beta"] < 0.5
    assert res.history[-1]["recon"] < res.history[0]["recon"]
    state = gt.make_state(model, s, "cpu")
    assert gt.validate(state, gt.GenData(model.standardize(xv)))["val_loss"] == pytest.approx(res.best_val, rel=1e-5)


def test_early_stopping_waits_for_warmup_and_honours_patience() -> None:
    model = build_generator(_arch("vae"))
    x = _blobs(64, 0)
    model.set_stats(x)
    val = model.standardize(_blobs(16, 5, shift=40.0))  # unlike training data: val stops improving quickly
    s = gt.TrainSettings(epochs=60, batch_size=16, lr=1e-2, beta_warmup_fraction=0.1, patience=3)
    res = gt.fit(model, gt.GenData(model.standardize(x)), gt.GenData(val), s, generator=torch.Generator().manual_seed(0))
    warm = gt.warmup_epochs(60, 0.1)
    assert res.stopped_early and warm <= res.epochs_run < 60
    # stops `patience` epochs after the best one, or at the end of warm-up if that came later
    assert res.epochs_run - res.best_epoch == 3 or (res.epochs_run == warm and res.epochs_run - res.best_epoch > 3)


def test_gan_clips_both_networks_and_batches_are_shuffled(monkeypatch: pytest.MonkeyPatch) -> None:
    model = build_generator(_arch("gan"))
    x = _blobs(40, 0)
    model.set_stats(x)
    calls: list[float] = []
    real_clip = torch.nn.utils.clip_grad_norm_
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", lambda p, m, **k: calls.append(m) or real_clip(p, m, **k))
    s = gt.TrainSettings(epochs=2, batch_size=16, grad_clip=1.5)
    state = gt.make_state(model, s, "cpu")
    steps: list[str] = []
    g = torch.Generator().manual_seed(0)
    out = gt.train_epoch(state, gt.GenData(model.standardize(x)), epoch=0, generator=g, on_step=steps.append)
    assert len(steps) == 3 and calls == [1.5] * 6  # 3 mini-batches, discriminator + generator each clipped
    assert {"d_loss", "g_loss", "d_real", "d_fake"} <= set(out)
    first, second = torch.randperm(40, generator=torch.Generator().manual_seed(0)), torch.randperm(40, generator=g)
    assert not torch.equal(first, second)  # the epoch consumed the shuffling generator: next epoch differs


def test_split_is_stratified_and_needs_two_clips() -> None:
    labels = ["a"] * 10 + ["b"] * 5
    tr, va = gt.split_indices(labels, 0.2, torch.Generator().manual_seed(0))
    assert sorted(tr + va) == list(range(15)) and sum(labels[i] == "a" for i in va) == 2 and sum(labels[i] == "b" for i in va) == 1
    with pytest.raises(InputError, match="at least 2"):
        gt.split_indices(["a", "a", "b"], 0.2, torch.Generator())


# -- gaussian ------------------------------------------------------------------------------------------------------
def _known_gaussian(seq: int, dim: int, rank: int | None, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A known mean (seq*dim,) and covariance: dense, or exactly `rank` directions plus a diagonal."""
    g = torch.Generator().manual_seed(seed)
    n = seq * dim
    mean = 3.0 * torch.randn(n, generator=g, dtype=torch.float64)
    if rank is None:
        a = torch.randn(n, n, generator=g, dtype=torch.float64)
        cov = a @ a.T / n + 0.2 * torch.eye(n, dtype=torch.float64)
    else:
        w = 2.0 * torch.randn(n, rank, generator=g, dtype=torch.float64)
        cov = w @ w.T + torch.diag(0.1 + 0.2 * torch.rand(n, generator=g, dtype=torch.float64))
    return mean, cov


def _draw(mean: torch.Tensor, cov: torch.Tensor, n: int, seq: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    chol = torch.linalg.cholesky(cov)
    return (mean + torch.randn(n, len(mean), generator=g, dtype=torch.float64) @ chol.T).float().reshape(n, seq, -1)


@pytest.mark.parametrize(("seq", "dim", "rank", "full_max"), [(2, 8, None, 1024), (4, 16, 3, 32)])
def test_gaussian_matches_a_known_mean_and_covariance(seq: int, dim: int, rank: int | None, full_max: int) -> None:
    from a2vtool.models.generators import Gaussian, make_gaussian_arch

    mean, cov = _known_gaussian(seq, dim, rank)
    arch = make_gaussian_arch(seq, dim, rank=rank or 32, full_max_dim=full_max)
    assert arch["covariance"] == ("full" if rank is None else "lowrank")
    model = build_generator(arch)
    assert isinstance(model, Gaussian) and param_count(model)["total"] > 0
    model.fit(_draw(mean, cov, 20000, seq, seed=1))
    scale = float(cov.diagonal().max())
    # the fitted covariance is the (true) covariance up to sampling error; low rank: exact diagonal, top directions kept
    assert float((model.covariance() - cov).abs().max()) < 0.06 * scale
    y = model.sample(40000, generator=torch.Generator().manual_seed(2)).double().reshape(40000, -1)
    assert y.shape == (40000, seq * dim)
    assert float((y.mean(0) - mean).abs().max()) < 0.05 * scale ** 0.5
    assert float((torch.cov(y.T) - cov).abs().max()) < 0.08 * scale
    # same generator seed, same samples; sample() takes the same arguments as every generator
    a = model.sample(3, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, model.sample(3, generator=torch.Generator().manual_seed(5)))
    assert model.sample(2, sequence_length=3 * seq, generator=torch.Generator().manual_seed(5)).shape == (2, 3 * seq, dim)
    with pytest.raises(InputError, match="unconditioned"):
        model.sample(2, torch.zeros(seq, 4))


def test_gaussian_low_rank_with_few_clips_keeps_the_diagonal() -> None:
    from a2vtool.models.generators import make_gaussian_arch

    x = torch.randn(6, 4, 16, generator=torch.Generator().manual_seed(0)) * torch.linspace(0.5, 3.0, 16)
    model = build_generator(make_gaussian_arch(4, 16, rank=32, full_max_dim=8))  # rank > clips - 1: unused columns
    model.fit(x)
    emp = torch.cov(x.reshape(6, -1).double().T)
    assert torch.allclose(model.covariance().diagonal(), emp.diagonal(), rtol=1e-4)
    assert torch.allclose(model.covariance(), emp, atol=1e-4 * float(emp.abs().max()))  # 5 directions span it all
    assert torch.allclose(model.mean, x.mean(0))


def test_gaussian_saves_and_reloads_through_the_generator_artifact(tmp_path) -> None:
    from a2vtool.models.generator_store import StoredGenerator, load_generator_set, save_generator_set
    from a2vtool.models.generators import make_gaussian_arch

    gens = []
    for i, (c, full_max) in enumerate((("dog", 1024), ("rain", 16))):  # one full, one low-rank covariance
        m = build_generator(make_gaussian_arch(S, D, rank=4, full_max_dim=full_max))
        m.fit(torch.randn(20, S, D, generator=torch.Generator().manual_seed(i)) + i)
        gens.append(StoredGenerator(c, [c], m))
    save_generator_set(tmp_path / "g", gens, key="k", config={}, classes=["dog", "rain"], embedding_key="e", token_dim=D,
                       cache_tokens=S, training_sequence_length=S, generator="gaussian", granularity="per_class")
    gs = load_generator_set(tmp_path / "g")
    for g in gens:
        want = g.model.sample(4, sequence_length=S, generator=torch.Generator().manual_seed(3))
        got = gs.sample(g.name, 4, sequence_length=S, generator=torch.Generator().manual_seed(3))  # the KD call
        assert torch.equal(got, want)
    with pytest.raises(InputError, match="covariance"):
        build_generator({**make_gaussian_arch(S, D), "rank": 3})
