"""Adapters: audio tokens -> one diffusion text-conditioning slot (token MLP, attention pooling, projection)."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from a2vtool.config import Strict


class AdapterSpec(Strict):
    hidden: list[int] = Field([512], description="Hidden sizes of the token-wise MLP (its depth is their count).")
    width: int = Field(512, ge=8, description="Width of the attention pooling (queries, keys, values).")
    heads: int = Field(8, ge=1, description="Attention heads in the pooling; must divide width.")
    dropout: float = Field(0.1, ge=0.0, lt=1.0, description="Dropout in the MLP and attention (train mode only).")
    positions: int | None = Field(None, ge=0, description=(
        "Learned position embeddings added to the tokens before pooling: a table of this many positions, linearly "
        "resized when a clip has another token count; null = the embedding cache's token count; 0 = order-blind "
        "pooling, which cannot tell spoken words apart by the order of their sounds."))

    def resolved(self, tokens: int) -> "AdapterSpec":
        """This spec with `positions: null` replaced by the clips' token count (what a checkpoint records)."""
        return self if self.positions is not None else self.model_copy(update={"positions": int(tokens)})


def build_adapters(in_dim: int, slot_shapes: dict[str, tuple[int, ...]], spec: AdapterSpec, tokens: int | None = None) -> Any:
    """One SlotAdapter per target slot, in a module whose forward returns {slot: (B, *slot_shape)}, for clips of
    `tokens` tokens of width `in_dim` (`tokens` sizes the position table when `spec.positions` is null)."""
    import torch
    from torch import nn

    if spec.positions is None:
        if tokens is None:
            raise ValueError("build_adapters: adapters.positions is null (the token count) but no token count was given")
        spec = spec.resolved(tokens)
    if spec.width % spec.heads:
        from a2vtool.errors import InputError

        raise InputError(f"adapters.width {spec.width} is not divisible by adapters.heads {spec.heads}")

    class SlotAdapter(nn.Module):
        """Token MLP -> learned queries cross-attend over tokens -> residual MLP -> projection to the slot width."""

        def __init__(self, shape: tuple[int, ...]) -> None:
            super().__init__()
            self.squeeze = len(shape) == 1
            n_queries, out_dim = (1, shape[0]) if self.squeeze else (shape[0], shape[1])
            layers: list[nn.Module] = []
            d = in_dim
            for h in spec.hidden:
                layers += [nn.Linear(d, h), nn.GELU(), nn.Dropout(spec.dropout)]
                d = h
            layers.append(nn.Linear(d, spec.width))
            self.mlp = nn.Sequential(*layers)
            # Attention pooling is permutation-invariant: without positions a clip is a bag of tokens.
            self.pos = nn.Parameter(torch.randn(spec.positions, spec.width) * 0.02) if spec.positions else None
            self.norm_kv = nn.LayerNorm(spec.width)
            self.queries = nn.Parameter(torch.randn(n_queries, spec.width) * spec.width**-0.5)
            self.attn = nn.MultiheadAttention(spec.width, spec.heads, dropout=spec.dropout, batch_first=True)
            self.norm_out = nn.LayerNorm(spec.width)
            self.ffn = nn.Sequential(nn.Linear(spec.width, 2 * spec.width), nn.GELU(), nn.Dropout(spec.dropout),
                                     nn.Linear(2 * spec.width, spec.width))
            self.proj = nn.Linear(spec.width, out_dim)
            # Outputs live in a standardised target space: out = center + scale * raw. Class targets share a
            # large common component; learning the residual makes the class signal dominate the loss.
            self.register_buffer("center", torch.zeros(shape))
            self.register_buffer("scale", torch.ones(()))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.mlp(x)
            if self.pos is not None:
                h = h + resize_positions(self.pos, h.shape[1])
            kv = self.norm_kv(h)
            q = self.queries.unsqueeze(0).expand(x.shape[0], -1, -1)
            pooled, _ = self.attn(q, kv, kv, need_weights=False)
            pooled = pooled + q
            pooled = pooled + self.ffn(self.norm_out(pooled))
            out = self.proj(pooled)
            out = out[:, 0] if self.squeeze else out
            return self.center + self.scale * out

    class Adapters(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            # sorted: parameter and optimizer-group order must not depend on where the shapes came from
            self.slots = nn.ModuleDict({name: SlotAdapter(tuple(shape)) for name, shape in sorted(slot_shapes.items())})

        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            return {name: m(x) for name, m in self.slots.items()}

    return Adapters()


def resize_positions(table: Any, n: int) -> Any:
    """A (P, W) position table resized linearly to (n, W) (the table itself when n == P)."""
    import torch.nn.functional as F

    if table.shape[0] == n:
        return table
    if table.shape[0] == 1:
        return table.expand(n, -1)
    return F.interpolate(table.T.unsqueeze(0), size=n, mode="linear", align_corners=True)[0].T


def set_target_stats(model: Any, slots: dict[str, Any]) -> None:
    """Set each slot's output centre (mean class target) and scale (std of the centred targets) from
    per-class targets {slot: (C, *shape)}; they are buffers, saved with the adapters and equal on every node."""
    import torch

    with torch.no_grad():
        for name, t in slots.items():
            m = model.slots[name]
            center = t.float().mean(0)
            scale = float((t.float() - center).std()) if t.shape[0] > 1 else 0.0
            m.center.copy_(center)
            m.scale.fill_(scale if scale > 1e-8 else 1.0)


def count_parameters(model: Any) -> int:
    return sum(p.numel() for p in model.parameters())


def slot_parameter_counts(model: Any) -> dict[str, int]:
    return {name: count_parameters(m) for name, m in model.slots.items()}
