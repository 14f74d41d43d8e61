"""Generator training: mini-batched fit, per-component losses, β warm-up, validation and early stopping."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from a2vtool.errors import A2VError, InputError
from a2vtool.models.generators import GAN, VAE, TokenGenerator

EVAL_SEED = 1234  # fixed noise for validation, so val losses of different epochs are comparable


@dataclass(frozen=True)
class TrainSettings:
    """Every knob of generator training (the upstream code hard-coded lr, weight decay and the β ramp)."""

    epochs: int = 50
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-5
    beta: float = 1.0  # KL weight at the end of warm-up; 1.0 = ELBO with decoder variance 1/2 in standardised units
    beta_warmup_fraction: float = 0.3  # β reaches `beta` after ceil(fraction * epochs) epochs; 0 = no warm-up
    free_bits: float = 0.0  # KL floor per latent dimension, nats (0 = off)
    cosine_weight: float = 0.0  # weight of (1 - cosine(recon, x)), 0 = off
    grad_clip: float = 5.0  # max gradient norm for VAE, GAN generator and discriminator (0 = off)
    noise_std: float = 0.05  # Gaussian input noise (standardised units) during training (0 = off)
    patience: int = 8  # epochs without val improvement before stopping (0 = never stop early)
    min_delta: float = 0.0  # improvement smaller than this does not count


@dataclass
class GenData:
    """Training or validation data of one generator: standardised tokens, and per-row condition indices."""

    x: Tensor  # (n, S, D) standardised
    cls: Tensor | None = None  # (n,) long: row of `cond` for each sample
    cond: Tensor | None = None  # (C, S, Dc): one condition per class, from build_condition

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def batch(self, idx: Tensor) -> tuple[Tensor, Tensor | None]:
        c = None if self.cond is None or self.cls is None else self.cond.index_select(0, self.cls.index_select(0, idx))
        return self.x.index_select(0, idx), c

    def to(self, device: str) -> GenData:
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return GenData(self.x.to(device), move(self.cls), move(self.cond))


@dataclass
class TrainState:
    model: TokenGenerator
    settings: TrainSettings
    device: str
    opts: dict[str, torch.optim.Optimizer]


@dataclass
class FitResult:
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    best_val: float = math.inf
    stopped_early: bool = False
    epochs_run: int = 0
    seconds: float = 0.0

    def summary(self) -> dict[str, Any]:
        last = self.history[-1] if self.history else {}
        return {"epochs_run": self.epochs_run, "best_epoch": self.best_epoch, "best_val_loss": self.best_val,
                "stopped_early": self.stopped_early, "seconds": round(self.seconds, 3), "last": last}


def warmup_epochs(epochs: int, fraction: float) -> int:
    """Epochs until β reaches its target: ceil(fraction * epochs), relative to the configured epochs."""
    return 0 if fraction <= 0 else max(1, min(epochs, math.ceil(fraction * epochs)))


def beta_at(epoch: int, epochs: int, target: float, fraction: float) -> float:
    """β for 0-based `epoch`: linear ramp reaching `target` at epoch warmup_epochs-1, then constant."""
    warm = warmup_epochs(epochs, fraction)
    return target if warm == 0 else target * min(1.0, (epoch + 1) / warm)


def vae_loss(model: VAE, x: Tensor, cond: Tensor | None, *, beta: float, s: TrainSettings, train: bool,
             eps: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
    """recon (MSE per element) + β·KL/elements (KL in nats per sample) [+ cosine term]; returns (loss, parts)."""
    x_in = x + s.noise_std * torch.randn_like(x) if train and s.noise_std > 0 else x
    recon, mu, logvar = model(x_in, cond, eps)
    assert recon.shape == x.shape, f"reconstruction {tuple(recon.shape)} vs target {tuple(x.shape)}"
    rec = F.mse_loss(recon, x)
    kl_dim = 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).mean(dim=0)  # (latent,)
    kl = kl_dim.sum()
    kl_term = kl_dim.clamp_min(s.free_bits).sum() if s.free_bits > 0 else kl
    loss = rec + beta * kl_term / x[0].numel()
    parts = {"recon": rec.detach(), "kl": kl.detach()}
    if s.cosine_weight > 0:
        cos = F.cosine_similarity(recon.flatten(1), x.flatten(1), dim=1).mean()
        loss = loss + s.cosine_weight * (1.0 - cos)
        parts["cosine"] = cos.detach()
    parts["loss"] = loss.detach()
    return loss, parts


def make_state(model: TokenGenerator, settings: TrainSettings, device: str) -> TrainState:
    """Model on `device` plus its AdamW optimizer(s) (multi-tensor `foreach` updates: fewer kernel calls per step)."""
    model.to(device)

    def adamw(params: Any, **kw: Any) -> torch.optim.Optimizer:
        return torch.optim.AdamW(list(params), lr=settings.lr, weight_decay=settings.weight_decay, foreach=True, **kw)

    if isinstance(model, GAN):
        opts = {"g": adamw(model.generator.parameters(), betas=(0.5, 0.999)),
                "d": adamw(model.discriminator.parameters(), betas=(0.5, 0.999))}
    else:
        opts = {"vae": adamw(model.parameters())}
    return TrainState(model, settings, device, opts)


def _step(opt: torch.optim.Optimizer, loss: Tensor, clip: float) -> None:
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if clip > 0:
        torch.nn.utils.clip_grad_norm_(opt.param_groups[0]["params"], clip, foreach=True)
    opt.step()


def _gan_batch(state: TrainState, x: Tensor) -> dict[str, Tensor]:
    m, s = state.model, state.settings
    assert isinstance(m, GAN)
    z = torch.randn(x.shape[0], m.latent_dim, device=x.device)
    fake = m.generator(z)
    assert fake.shape == x.shape, f"generated {tuple(fake.shape)} vs real {tuple(x.shape)}"
    noisy = (lambda t: t + s.noise_std * torch.randn_like(t)) if s.noise_std > 0 else (lambda t: t)
    real_logit, fake_logit = m.discriminator(noisy(x)), m.discriminator(noisy(fake.detach()))
    d_loss = (F.binary_cross_entropy_with_logits(real_logit, torch.full_like(real_logit, 0.9))  # one-sided smoothing
              + F.binary_cross_entropy_with_logits(fake_logit, torch.zeros_like(fake_logit)))
    _step(state.opts["d"], d_loss, s.grad_clip)
    g_logit = m.discriminator(noisy(fake))
    adv = F.binary_cross_entropy_with_logits(g_logit, torch.ones_like(g_logit))  # non-saturating
    moment = moment_distance(fake, x)  # keeps the generator on the data's first two moments when D wins
    g_loss = adv + moment
    _step(state.opts["g"], g_loss, s.grad_clip)
    return {"loss": (d_loss + g_loss).detach(), "d_loss": d_loss.detach(), "g_loss": g_loss.detach(), "g_adv": adv.detach(),
            "g_moment": moment.detach(), "d_real": torch.sigmoid(real_logit).mean().detach(),
            "d_fake": torch.sigmoid(fake_logit).mean().detach()}


def moment_distance(fake: Tensor, real: Tensor) -> Tensor:
    """Mean squared difference of per-element means plus that of per-element stds (standardised units)."""
    return ((fake.mean(0) - real.mean(0)).pow(2).mean()
            + (fake.std(0, unbiased=False) - real.std(0, unbiased=False)).pow(2).mean())


def train_epoch(state: TrainState, data: GenData, *, epoch: int, generator: torch.Generator,
                on_step: Callable[[str], None] | None = None) -> dict[str, float]:
    """One shuffled pass over `data` in mini-batches; returns the epoch means of every loss component."""
    m, s = state.model, state.settings
    m.train()
    n = len(data)
    perm = torch.randperm(n, generator=generator)
    beta = beta_at(epoch, s.epochs, s.beta, s.beta_warmup_fraction)
    sums: dict[str, Tensor] = {}
    for i, start in enumerate(range(0, n, s.batch_size)):
        idx = perm[start:start + s.batch_size].to(data.x.device)
        x, c = data.batch(idx)
        if isinstance(m, GAN):
            parts = _gan_batch(state, x)
        else:
            assert isinstance(m, VAE)
            loss, parts = vae_loss(m, x, c, beta=beta, s=s, train=True)
            _step(state.opts["vae"], loss, s.grad_clip)
        for k, v in parts.items():
            sums[k] = sums.get(k, 0.0) + v * len(idx)
        if on_step is not None:
            on_step(f"epoch {epoch + 1} batch {i + 1}")
    out = {k: float(v) / n for k, v in sums.items()}
    if not isinstance(m, GAN):
        out["beta"] = beta
    return out


@torch.no_grad()
def validate(state: TrainState, data: GenData, chunk: int = 1024) -> dict[str, float]:
    """Validation loss with fixed noise: VAE: recon + β_target·KL (the objective after warm-up); GAN: a moment
    distance between generated and held-out tokens (squared differences of per-element means and stds)."""
    m, s = state.model, state.settings
    m.eval()
    g = torch.Generator().manual_seed(EVAL_SEED)
    n = len(data)
    if isinstance(m, GAN):
        fake = m.generator(torch.randn(max(n, 256), m.latent_dim, generator=g).to(data.x.device))
        return {"val_loss": float(moment_distance(fake, data.x))}
    assert isinstance(m, VAE)
    sums: dict[str, float] = {}
    for start in range(0, n, chunk):
        idx = torch.arange(start, min(n, start + chunk), device=data.x.device)
        x, c = data.batch(idx)
        eps = torch.randn(len(idx), m.latent_dim, generator=g).to(x.device)
        _, parts = vae_loss(m, x, c, beta=s.beta, s=s, train=False, eps=eps)
        for k, v in parts.items():
            sums[k] = sums.get(k, 0.0) + float(v) * len(idx)
    return {f"val_{k}": v / n for k, v in sums.items()}


def fit(model: TokenGenerator, train: GenData, val: GenData, settings: TrainSettings, *, generator: torch.Generator,
        device: str = "cpu", on_epoch: Callable[[dict[str, float]], None] | None = None,
        name: str = "generator") -> FitResult:
    """Train with shuffled mini-batches; stop when the val loss has not improved for `patience` epochs (never
    before β warm-up ends); restore the best weights. Raises A2VError on divergence or CUDA OOM."""
    if len(train) == 0 or len(val) == 0:
        raise InputError(f"generator {name}: needs at least one training and one validation sample")
    t0 = time.perf_counter()
    state = make_state(model, settings, device)
    train, val = train.to(device), val.to(device)
    res = FitResult()
    best_state: dict[str, Tensor] | None = None
    bad = 0
    warm = warmup_epochs(settings.epochs, settings.beta_warmup_fraction) if isinstance(model, VAE) else 0
    try:
        for epoch in range(settings.epochs):
            rec: dict[str, float] = {"epoch": epoch + 1, **train_epoch(state, train, epoch=epoch, generator=generator)}
            rec.update(validate(state, val))
            if not all(math.isfinite(v) for v in rec.values()):
                raise A2VError(f"generator {name} diverged at epoch {epoch + 1} (loss {rec.get('loss')})",
                               hint="lower lr, or set grad_clip / noise_std")
            res.history.append(rec)
            res.epochs_run = epoch + 1
            if rec["val_loss"] < res.best_val - settings.min_delta:
                res.best_val, res.best_epoch, bad = rec["val_loss"], epoch + 1, 0
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            else:
                bad += 1
            if on_epoch is not None:
                on_epoch(rec)
            if settings.patience > 0 and bad >= settings.patience and epoch + 1 >= warm:
                res.stopped_early = True
                break
    except torch.cuda.OutOfMemoryError:
        raise A2VError(f"CUDA out of memory training generator {name} with batch_size {settings.batch_size}",
                       hint=f"use a smaller batch, e.g. --set batch_size={max(1, settings.batch_size // 2)}, "
                            "or --device cpu") from None
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    res.seconds = time.perf_counter() - t0
    return res


def split_indices(labels: list[str], val_fraction: float, generator: torch.Generator) -> tuple[list[int], list[int]]:
    """Stratified split: per class, round(val_fraction * n) (at least 1) rows go to validation, the rest train."""
    by: dict[str, list[int]] = {}
    for i, lab in enumerate(labels):
        by.setdefault(lab, []).append(i)
    tr: list[int] = []
    va: list[int] = []
    for lab in sorted(by):
        rows = by[lab]
        if len(rows) < 2:
            raise InputError(f"class {lab!r} has {len(rows)} clip(s); a generator needs at least 2 (train + validation)")
        perm = torch.randperm(len(rows), generator=generator).tolist()
        k = min(len(rows) - 1, max(1, round(val_fraction * len(rows))))
        va += [rows[p] for p in perm[:k]]
        tr += [rows[p] for p in perm[k:]]
    return sorted(tr), sorted(va)
