"""Generators of audio embeddings (VAE, conditioned VAE, GAN, Gaussian) over a compact token sequence, with one interface."""

from __future__ import annotations

import math
import warnings
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from a2vtool.errors import InputError

if TYPE_CHECKING:
    from a2vtool.models.text_targets import TextTargets

GENERATOR_TYPES = ("vae", "cvae", "gan", "gaussian")
ARCH_VERSION = 1
MAX_SEQUENCE_LENGTH = 16384  # longest output a generator will interpolate to (AST full = 1214)
UPSAMPLE_WARN_FACTOR = 64  # output/compact token ratio above which sample() warns (4 -> 1214 is 303x)
GAUSSIAN_FULL_MAX_DIM = 1024  # gaussian: full covariance up to S*D = 1024 values per clip, low-rank + diagonal above
GAUSSIAN_RANK = 32  # gaussian: principal directions kept by the low-rank + diagonal covariance


class UpsampleWarning(UserWarning):
    """sample() was asked for many more tokens than the generator models: the extra tokens are interpolated."""


# -- token sequences ---------------------------------------------------------------------------------------------
def resize_tokens(x: Tensor, length: int) -> Tensor:
    """(B, T, D) -> (B, length, D): adaptive average pooling to shrink, linear interpolation to stretch."""
    t = x.shape[1]
    if t == length:
        return x
    y = x.transpose(1, 2)
    if length < t:
        y = F.adaptive_avg_pool1d(y, length)
    else:
        y = F.interpolate(y, size=length, mode="linear", align_corners=False)
    return y.transpose(1, 2).contiguous()


def check_output_length(length: int, seq_len: int) -> None:
    """Refuse absurd output lengths; warn (UpsampleWarning) when most output tokens would be interpolated."""
    if isinstance(length, bool) or not isinstance(length, int) or length < 1 or length > MAX_SEQUENCE_LENGTH:
        raise InputError(f"sequence_length {length!r} is out of range: use an integer in 1..{MAX_SEQUENCE_LENGTH}",
                         hint="AST full-token caches have 1214 tokens")
    factor = length / seq_len
    if factor > UPSAMPLE_WARN_FACTOR:
        warnings.warn(
            f"upsampling {seq_len} generated tokens to {length} ({factor:.0f}x) by linear interpolation: the output "
            f"is smooth and carries only {seq_len} tokens of detail; train with a larger training_sequence_length "
            "(16-64) or feed consumers a pool:N cache if this matters",
            UpsampleWarning,
            stacklevel=3,
        )


def build_condition(targets: TextTargets, labels: list[str], seq_len: int) -> Tensor:
    """THE condition of a conditioned generator, (len(labels), seq_len, cond_dim), used for training and sampling.

    SD: the CLIP `prompt_embeds` tokens (77 x 768) resized to `seq_len` tokens. FLUX / SDXL: the T5 (or CLIP-L/G)
    `prompt_embeds` tokens resized to `seq_len`, each token concatenated with the pooled CLIP
    `pooled_prompt_embeds` (broadcast), so cond_dim = 4096 + 768 for FLUX. Resizing is adaptive average pooling
    when there are more text tokens than `seq_len` and linear interpolation ("stretching") when there are fewer.
    """
    slots = targets.stack(list(labels))
    if "prompt_embeds" not in slots:
        raise InputError(f"{targets.family} text targets have no prompt_embeds slot (have {', '.join(slots)})")
    parts = [resize_tokens(slots["prompt_embeds"].float(), seq_len)]
    pooled = slots.get("pooled_prompt_embeds")
    if pooled is None and targets.family in ("flux", "sdxl"):
        raise InputError(f"{targets.family} text targets lack pooled_prompt_embeds; recompute them")
    if pooled is not None:
        parts.append(pooled.float().reshape(len(labels), 1, -1).expand(-1, seq_len, -1))
    return torch.cat(parts, dim=-1).contiguous()


def condition_dim(targets: TextTargets) -> int:
    shapes = targets.slot_shapes()
    return int(shapes["prompt_embeds"][-1]) + (int(math.prod(shapes["pooled_prompt_embeds"])) if "pooled_prompt_embeds" in shapes else 0)


# -- architecture ------------------------------------------------------------------------------------------------
def make_arch(kind: str, seq_len: int, token_dim: int, *, hidden_dim: int = 256, latent_dim: int = 32,
              cond_dim: int = 0, depth: int = 2, dropout: float = 0.1) -> dict[str, Any]:
    """The JSON-able architecture stored in the manifest; `build_generator(arch)` rebuilds the model from it.
    `gaussian` takes none of the network settings: see make_gaussian_arch (its defaults apply here)."""
    if kind == "gaussian":
        return make_gaussian_arch(seq_len, token_dim)
    arch = {"type": kind, "version": ARCH_VERSION, "seq_len": seq_len, "token_dim": token_dim, "hidden_dim": hidden_dim,
            "latent_dim": latent_dim, "cond_dim": cond_dim, "depth": depth, "dropout": dropout}
    check_arch(arch)
    return arch


def make_gaussian_arch(seq_len: int, token_dim: int, *, rank: int = GAUSSIAN_RANK,
                       full_max_dim: int = GAUSSIAN_FULL_MAX_DIM) -> dict[str, Any]:
    """Architecture of a Gaussian over the flattened S*D tokens: full covariance when S*D <= `full_max_dim`, else
    `rank` principal directions plus a residual diagonal. `latent_dim` is the number of normals drawn per sample."""
    dim = seq_len * token_dim
    full = dim <= full_max_dim
    k = 0 if full else max(1, min(rank, dim))
    arch = {"type": "gaussian", "version": ARCH_VERSION, "seq_len": seq_len, "token_dim": token_dim,
            "covariance": "full" if full else "lowrank", "rank": k, "latent_dim": dim if full else k + dim, "cond_dim": 0}
    check_arch(arch)
    return arch


def check_arch(arch: dict[str, Any]) -> None:
    if arch.get("type") == "gaussian":
        _check_gaussian_arch(arch)
        return
    need = ("type", "seq_len", "token_dim", "hidden_dim", "latent_dim", "cond_dim", "depth", "dropout")
    missing = [k for k in need if k not in arch]
    if missing:
        raise InputError(f"generator architecture lacks {', '.join(missing)}")
    if arch["type"] not in GENERATOR_TYPES:
        raise InputError(f"unknown generator type {arch['type']!r}; use one of {', '.join(GENERATOR_TYPES)}")
    if arch.get("version", ARCH_VERSION) != ARCH_VERSION:
        raise InputError(f"generator architecture version {arch.get('version')} is not {ARCH_VERSION}")
    for k in ("seq_len", "token_dim", "hidden_dim", "latent_dim"):
        if not isinstance(arch[k], int) or arch[k] < 1:
            raise InputError(f"generator architecture {k}={arch[k]!r} must be a positive integer")
    if (arch["type"] == "cvae") != (arch["cond_dim"] > 0):
        raise InputError(f"generator type {arch['type']!r} with cond_dim={arch['cond_dim']}: only cvae takes a condition")


def _check_gaussian_arch(arch: dict[str, Any]) -> None:
    missing = [k for k in ("seq_len", "token_dim", "covariance", "rank", "latent_dim", "cond_dim") if k not in arch]
    if missing:
        raise InputError(f"gaussian generator architecture lacks {', '.join(missing)}")
    if arch.get("version", ARCH_VERSION) != ARCH_VERSION:
        raise InputError(f"generator architecture version {arch.get('version')} is not {ARCH_VERSION}")
    for k in ("seq_len", "token_dim"):
        if not isinstance(arch[k], int) or isinstance(arch[k], bool) or arch[k] < 1:
            raise InputError(f"generator architecture {k}={arch[k]!r} must be a positive integer")
    dim = arch["seq_len"] * arch["token_dim"]
    cov, k = arch["covariance"], arch["rank"]
    if cov not in ("full", "lowrank") or not isinstance(k, int) or (cov == "full") != (k == 0) or not 0 <= k <= dim:
        raise InputError(f"gaussian architecture covariance={cov!r} rank={k!r}: use full with rank 0, or lowrank with "
                         f"rank 1..{dim}")
    if arch["latent_dim"] != (dim if cov == "full" else k + dim) or arch["cond_dim"] != 0:
        raise InputError(f"gaussian architecture latent_dim={arch['latent_dim']} cond_dim={arch['cond_dim']} do not "
                         f"match its covariance (a gaussian takes no condition)")


class MixerBlock(nn.Module):
    """Token mixing (a Linear over the seq_len axis) then a per-token MLP; cost is independent of output length."""

    def __init__(self, seq_len: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden)
        self.token = nn.Linear(seq_len, seq_len)
        self.norm2 = nn.LayerNorm(hidden)
        self.mlp = nn.Sequential(nn.Linear(hidden, 2 * hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(2 * hidden, hidden))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.token(self.norm1(x).transpose(1, 2)).transpose(1, 2)
        return x + self.mlp(self.norm2(x))


def _cond_proj(cond_dim: int, hidden: int) -> nn.Module | None:
    return nn.Sequential(nn.LayerNorm(cond_dim, elementwise_affine=False), nn.Linear(cond_dim, hidden)) if cond_dim else None


class TokenEncoder(nn.Module):
    """(B, S, D) tokens [+ (B, S, C) condition] -> (B, out_dim): per-token projection, mixer blocks, mean pooling."""

    def __init__(self, seq_len: int, dim: int, hidden: int, out_dim: int, cond_dim: int, depth: int, dropout: float) -> None:
        super().__init__()
        self.inp = nn.Linear(dim, hidden)
        self.pos = nn.Parameter(torch.randn(seq_len, hidden) * 0.02)
        self.cond = _cond_proj(cond_dim, hidden)
        self.blocks = nn.Sequential(*[MixerBlock(seq_len, hidden, dropout) for _ in range(depth)])
        self.norm = nn.LayerNorm(hidden)
        self.out = nn.Linear(hidden, out_dim)

    def forward(self, x: Tensor, cond: Tensor | None = None) -> Tensor:
        t = self.inp(x) + self.pos
        if self.cond is not None:
            t = t + self.cond(cond)
        return self.out(self.norm(self.blocks(t)).mean(dim=1))


class TokenDecoder(nn.Module):
    """(B, latent) [+ (B, S, C) condition] -> (B, S, D): broadcast over S positions, mixer blocks, linear head."""

    def __init__(self, seq_len: int, dim: int, hidden: int, latent: int, cond_dim: int, depth: int, dropout: float) -> None:
        super().__init__()
        self.inp = nn.Linear(latent, hidden)
        self.pos = nn.Parameter(torch.randn(seq_len, hidden) * 0.02)
        self.cond = _cond_proj(cond_dim, hidden)
        self.blocks = nn.Sequential(*[MixerBlock(seq_len, hidden, dropout) for _ in range(depth)])
        self.norm = nn.LayerNorm(hidden)
        self.out = nn.Linear(hidden, dim)  # unbounded head (no tanh): outputs live in standardised units

    def forward(self, z: Tensor, cond: Tensor | None = None) -> Tensor:
        t = self.inp(z).unsqueeze(1) + self.pos
        if self.cond is not None:
            t = t + self.cond(cond)
        return self.out(self.norm(self.blocks(t)))


class TokenGenerator(nn.Module):
    """Shared part of every generator: standardisation statistics (buffers) and `sample()`."""

    def __init__(self, arch: dict[str, Any]) -> None:
        super().__init__()
        check_arch(arch)
        self.arch = dict(arch)
        self.seq_len, self.token_dim = arch["seq_len"], arch["token_dim"]
        self.latent_dim, self.cond_dim = arch["latent_dim"], arch["cond_dim"]
        self.register_buffer("mean", torch.zeros(self.seq_len, self.token_dim))
        self.register_buffer("std", torch.ones(self.seq_len, self.token_dim))

    def set_stats(self, x: Tensor) -> None:
        """Per-(token, dim) mean and std of the training tokens (B, S, D); the model works in standardised units."""
        if tuple(x.shape[1:]) != (self.seq_len, self.token_dim):
            raise InputError(f"training tokens {tuple(x.shape[1:])} do not match the generator's {(self.seq_len, self.token_dim)}")
        x = x.float()
        std = x.std(dim=0, unbiased=False) if len(x) > 1 else torch.ones_like(x[0])
        floor = 1e-3 * float(std.mean()) if float(std.mean()) > 0 else 1.0
        self.mean.copy_(x.mean(dim=0))
        self.std.copy_(std.clamp_min(floor))

    def standardize(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std

    def decode(self, z: Tensor, cond: Tensor | None = None) -> Tensor:
        raise NotImplementedError

    def check_condition(self, condition: Tensor | None, n: int) -> Tensor | None:
        """None for unconditioned models; a (n, S, C) float tensor on the model's device for conditioned ones."""
        want = (self.seq_len, self.cond_dim)
        if self.cond_dim == 0:
            if condition is not None:
                raise InputError(f"this {self.arch['type']} generator is unconditioned; pass condition=None")
            return None
        if condition is None:
            raise InputError(f"a conditioned generator needs its condition {want}: use build_condition(targets, labels, {self.seq_len})")
        c = condition if condition.dim() == 3 else condition.unsqueeze(0)
        if tuple(c.shape[1:]) != want or c.shape[0] not in (1, n):
            raise InputError(f"condition shape {tuple(condition.shape)} does not match (n, {want[0]}, {want[1]}) or {want}")
        return c.expand(n, -1, -1).to(device=self.mean.device, dtype=torch.float32)

    def sample(self, n: int, condition: Tensor | None = None, sequence_length: int | None = None,
               generator: torch.Generator | None = None) -> Tensor:
        """n synthetic embeddings (n, L, D) in the original units; L = sequence_length or the training length.

        Latents are drawn on the CPU from `generator`, so a seed gives the same samples on any device. Sampling runs
        in eval mode (no dropout) and restores the previous mode afterwards.
        """
        length = self.seq_len if sequence_length is None else sequence_length
        check_output_length(length, self.seq_len)
        cond = self.check_condition(condition, n)
        z = torch.randn(n, self.latent_dim, generator=generator, device=generator.device if generator else "cpu")
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                y = self.decode(z.to(self.mean.device), cond) * self.std + self.mean
        finally:
            self.train(was_training)
        return resize_tokens(y, length)


class VAE(TokenGenerator):
    """Variational autoencoder over (S, D) tokens; with cond_dim > 0 it is the conditioned VAE (type 'cvae').

    One class serves every granularity (the upstream code used two different conditioned classes).
    """

    def __init__(self, arch: dict[str, Any]) -> None:
        super().__init__(arch)
        a = arch
        self.encoder = TokenEncoder(a["seq_len"], a["token_dim"], a["hidden_dim"], 2 * a["latent_dim"], a["cond_dim"], a["depth"], a["dropout"])
        self.decoder = TokenDecoder(a["seq_len"], a["token_dim"], a["hidden_dim"], a["latent_dim"], a["cond_dim"], a["depth"], a["dropout"])

    def encode(self, x_std: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        mu, logvar = self.encoder(x_std, cond).chunk(2, dim=-1)
        return mu, logvar.clamp(-12.0, 8.0)

    def decode(self, z: Tensor, cond: Tensor | None = None) -> Tensor:
        return self.decoder(z, cond)

    def forward(self, x_std: Tensor, cond: Tensor | None = None, eps: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Standardised tokens -> (reconstruction, mu, logvar); `eps` fixes the reparameterisation noise."""
        mu, logvar = self.encode(x_std, cond)
        noise = torch.randn_like(mu) if eps is None else eps
        return self.decode(mu + noise * torch.exp(0.5 * logvar), cond), mu, logvar


def CondVAE(arch: dict[str, Any]) -> VAE:  # noqa: N802 - named like the model it builds
    """The conditioned VAE: a VAE whose arch has type 'cvae' and cond_dim > 0."""
    if arch.get("type") != "cvae":
        raise InputError("CondVAE needs an arch of type 'cvae'")
    return VAE(arch)


class GAN(TokenGenerator):
    """GAN over (S, D) tokens: `generator` has the VAE decoder's shape, `discriminator` the encoder's (1 logit)."""

    def __init__(self, arch: dict[str, Any]) -> None:
        super().__init__(arch)
        a = arch
        self.generator = TokenDecoder(a["seq_len"], a["token_dim"], a["hidden_dim"], a["latent_dim"], 0, a["depth"], 0.0)
        self.discriminator = TokenEncoder(a["seq_len"], a["token_dim"], a["hidden_dim"], 1, 0, a["depth"], a["dropout"])

    def decode(self, z: Tensor, cond: Tensor | None = None) -> Tensor:
        return self.generator(z)

    def forward(self, z: Tensor) -> Tensor:
        return self.generator(z)


class Gaussian(TokenGenerator):
    """A Gaussian over the flattened (S, D) tokens, fitted in closed form (`fit`): the baseline and the fallback.

    Works in standardised units (the shared mean/std buffers). Full covariance: `factor` (S*D, S*D) with
    factor @ factor.T = the sample covariance (symmetric square root from eigh, fine when singular). Low rank:
    `factor` (S*D, rank) = the top principal directions scaled by their standard deviations, plus `residual` (S*D,),
    the standard deviation left on each element, so the covariance is exact on its diagonal and on those directions.
    A sample is factor @ z (+ residual * e) with z, e ~ N(0, I) drawn from the caller's torch.Generator.
    """

    def __init__(self, arch: dict[str, Any]) -> None:
        super().__init__(arch)
        dim = self.seq_len * self.token_dim
        self.rank = int(arch["rank"])
        self.register_buffer("factor", torch.zeros(dim, self.rank or dim))
        if self.rank:
            self.register_buffer("residual", torch.zeros(dim))

    @torch.no_grad()
    def fit(self, x: Tensor) -> None:
        """Fit mean and covariance to raw training tokens (n, S, D), n >= 1 (unbiased covariance, as numpy.cov)."""
        self.set_stats(x)
        z = self.standardize(x.float()).reshape(len(x), -1).double()
        z = z - z.mean(dim=0)
        n = max(len(x) - 1, 1)
        if self.rank == 0:
            evals, evecs = torch.linalg.eigh(z.T @ z / n)
            self.factor.copy_((evecs * evals.clamp_min(0).sqrt()).float())
        else:
            _, sv, vh = torch.linalg.svd(z / math.sqrt(n), full_matrices=False)
            k = min(self.rank, len(sv))
            top = vh[:k].T * sv[:k]  # (dim, k)
            self.factor.zero_()
            self.factor[:, :k] = top.float()
            left = (z.pow(2).sum(dim=0) / n - top.pow(2).sum(dim=1)).clamp_min(0)
            self.residual.copy_(left.sqrt().float())

    def covariance(self) -> Tensor:
        """The fitted covariance of the flattened tokens in original units, (S*D, S*D)."""
        c = self.factor.double() @ self.factor.double().T
        if self.rank:
            c = c + torch.diag(self.residual.double().pow(2))
        s = self.std.reshape(-1).double()
        return c * s[:, None] * s[None, :]

    def decode(self, z: Tensor, cond: Tensor | None = None) -> Tensor:
        if self.rank:
            y = z[:, : self.rank] @ self.factor.T + z[:, self.rank :] * self.residual
        else:
            y = z @ self.factor.T
        return y.reshape(len(z), self.seq_len, self.token_dim)


def build_generator(arch: dict[str, Any]) -> TokenGenerator:
    """Rebuild a generator from its manifest architecture (weights are random, Gaussians empty, until loaded)."""
    check_arch(arch)
    if arch["type"] == "gaussian":
        return Gaussian(arch)
    return GAN(arch) if arch["type"] == "gan" else VAE(arch)


def param_count(model: nn.Module) -> dict[str, int]:
    """Trainable parameters: `total` (everything trained) and `sampler` (what sample() runs: decoder / G).
    A Gaussian trains nothing: its counts are the fitted statistics it stores (mean, std, factor, residual)."""
    if isinstance(model, Gaussian):
        stats = sum(b.numel() for b in model.buffers())
        return {"total": stats, "sampler": stats}
    total = sum(p.numel() for p in model.parameters())
    part = getattr(model, "decoder", None) or getattr(model, "generator", None)
    sampler = sum(p.numel() for p in part.parameters()) if isinstance(part, nn.Module) else total
    return {"total": total, "sampler": sampler}
