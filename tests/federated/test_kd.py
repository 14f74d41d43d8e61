"""Server-side knowledge distillation: owner-only targets, every slot trained, nodes untouched."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from a2vtool.federated.kd import distill

T, D, SEQ, EMB, POOLED = 4, 8, 3, 6, 5


class TinyAdapters(nn.Module):
    """Two slots, each a Linear on mean-pooled tokens (like the FLUX prompt/pooled adapters)."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.prompt = nn.Linear(D, SEQ * EMB)
        self.pooled = nn.Linear(D, POOLED)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = x.mean(dim=1)
        return {"prompt_embeds": self.prompt(h).view(-1, SEQ, EMB), "pooled_prompt_embeds": self.pooled(h)}


class ConstAdapters(nn.Module):
    """Outputs a huge constant for every input; records how many rows it was shown."""

    def __init__(self, value: float = 1e3) -> None:
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1))
        self.value = value
        self.rows_seen = 0

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        self.rows_seen += int(x.shape[0])
        b = x.shape[0]
        return {"prompt_embeds": torch.full((b, SEQ, EMB), self.value) + self.dummy,
                "pooled_prompt_embeds": torch.full((b, POOLED), self.value) + self.dummy}


class Recorder(nn.Module):
    """Wraps a node model and records the rows it was shown."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        self.seen.append(x.clone())
        return self.inner(x)


def samples_for(n: int, seed: int, offset: float = 0.0) -> torch.Tensor:
    return torch.randn(n, T, D, generator=torch.Generator().manual_seed(seed)) + offset


def mean_target(models: list[nn.Module], x: torch.Tensor) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        outs = [m(x) for m in models]
    return {s: sum(o[s] for o in outs) / len(outs) for s in outs[0]}


def slot_mse(model: nn.Module, x: torch.Tensor, target: dict[str, torch.Tensor]) -> dict[str, float]:
    with torch.no_grad():
        pred = model(x)
    return {s: float(((pred[s] - target[s]) ** 2).mean()) for s in target}


def test_targets_use_only_class_owners_and_every_slot_learns() -> None:
    nodes: list[nn.Module] = [TinyAdapters(1), TinyAdapters(2), ConstAdapters(1e3)]
    nodes[1].eval()
    nodes[1].pooled.bias.requires_grad_(False)  # mixed flags that must come back as they were
    before_nodes = [copy.deepcopy(m.state_dict()) for m in nodes]
    flags = [[p.requires_grad for p in m.parameters()] for m in nodes]
    modes = [m.training for m in nodes]

    glob = TinyAdapters(99)
    glob_before = copy.deepcopy(glob.state_dict())
    xa = samples_for(32, 0)
    owners_mean = mean_target(nodes[:2], xa)  # what the target must be: nodes 0 and 1 only
    all_mean = mean_target(nodes, xa)  # upstream bug: including node 2, which never saw "a"
    err_before = slot_mse(glob, xa, owners_mean)

    rng_before = torch.get_rng_state()
    out = distill(glob, nodes, {"a": [0, 1], "b": [2]}, {"a": xa},
                  epochs=150, lr=0.05, batch_size=8, seed=0)
    assert torch.equal(torch.get_rng_state(), rng_before)  # the caller's RNG is left alone

    err_after = slot_mse(glob, xa, owners_mean)
    for slot in ("prompt_embeds", "pooled_prompt_embeds"):
        assert err_after[slot] < 1e-3 < err_before[slot], (slot, err_before, err_after)
    with torch.no_grad():
        pred = glob(xa)
    assert float((pred["pooled_prompt_embeds"] - all_mean["pooled_prompt_embeds"]).abs().min()) > 100
    # every slot's parameters changed
    after = glob.state_dict()
    for key in ("prompt.weight", "prompt.bias", "pooled.weight", "pooled.bias"):
        assert not torch.equal(after[key], glob_before[key]), key
    # reported losses: per slot, decreasing over epochs
    assert set(out["loss_per_slot"]) == {"prompt_embeds", "pooled_prompt_embeds"}
    assert out["loss"] == pytest.approx(sum(out["loss_per_slot"].values()))
    assert len(out["epoch_losses"]) == 150 and out["epoch_losses"][-1] < 0.01 * out["epoch_losses"][0]
    assert out["loss"] == out["epoch_losses"][-1]
    # node models untouched: parameters, requires_grad and train/eval flags
    for m, sd, fl, mode in zip(nodes, before_nodes, flags, modes):
        now = m.state_dict()
        assert all(torch.equal(sd[k], now[k]) for k in sd)
        assert [p.requires_grad for p in m.parameters()] == fl
        assert m.training == mode
        assert all(p.grad is None for p in m.parameters())


def test_each_class_only_reaches_its_owners() -> None:
    rec = [Recorder(TinyAdapters(1)), Recorder(TinyAdapters(2)), Recorder(ConstAdapters(5.0))]
    xa, xb = samples_for(10, 1), samples_for(6, 2, offset=3.0)
    distill(TinyAdapters(5), list(rec), {"a": [0, 1], "b": [2]}, {"a": xa, "b": xb},
            epochs=2, lr=0.01, batch_size=4, seed=0)
    assert torch.equal(torch.cat(rec[0].seen), xa) and torch.equal(torch.cat(rec[1].seen), xa)
    assert torch.equal(torch.cat(rec[2].seen), xb)  # computed once per class, not per epoch


def test_deterministic_for_same_seed() -> None:
    nodes = [TinyAdapters(1), TinyAdapters(2)]
    smp = {"a": samples_for(12, 3), "b": samples_for(9, 4)}
    owners = {"a": [0], "b": [0, 1]}
    g1, g2, g3 = TinyAdapters(7), TinyAdapters(7), TinyAdapters(7)
    o1 = distill(g1, nodes, owners, smp, epochs=3, lr=0.01, batch_size=5, seed=11)
    o2 = distill(g2, nodes, owners, smp, epochs=3, lr=0.01, batch_size=5, seed=11)
    o3 = distill(g3, nodes, owners, smp, epochs=3, lr=0.01, batch_size=5, seed=12)
    s1, s2, s3 = g1.state_dict(), g2.state_dict(), g3.state_dict()
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    assert o1["epoch_losses"] == o2["epoch_losses"]
    assert any(not torch.equal(s1[k], s3[k]) for k in s1)  # another seed shuffles differently
    assert o3["epoch_losses"] != o1["epoch_losses"]


def test_optimizer_state_is_returned_and_accepted() -> None:
    nodes = [TinyAdapters(1)]
    smp = {"a": samples_for(8, 5)}
    glob = TinyAdapters(3)
    out = distill(glob, nodes, {"a": [0]}, smp, epochs=2, lr=0.01, batch_size=4)
    steps = [float(s["step"]) for s in out["optimizer_state"]["state"].values()]
    assert steps and all(s == 4 for s in steps)  # 2 epochs x 2 batches
    out2 = distill(glob, nodes, {"a": [0]}, smp, epochs=1, lr=0.01, batch_size=4,
                   optimizer_state=out["optimizer_state"])
    assert all(float(s["step"]) == 6 for s in out2["optimizer_state"]["state"].values())


def test_class_without_owner_is_an_error() -> None:
    nodes = [TinyAdapters(1)]
    with pytest.raises(ValueError, match="'b'"):
        distill(TinyAdapters(2), nodes, {"a": [0]}, {"a": samples_for(4, 0), "b": samples_for(4, 1)},
                epochs=1, lr=0.01, batch_size=2)
    with pytest.raises(ValueError, match="'a'"):
        distill(TinyAdapters(2), nodes, {"a": []}, {"a": samples_for(4, 0)}, epochs=1, lr=0.01, batch_size=2)


def test_shape_mismatch_names_the_slot() -> None:
    class Wrong(TinyAdapters):
        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            out = super().forward(x)
            out["pooled_prompt_embeds"] = out["pooled_prompt_embeds"][:, None, :]
            return out

    with pytest.raises(ValueError, match=r"pooled_prompt_embeds.*\(2, 1, 5\).*\(2, 5\)"):
        distill(Wrong(2), [TinyAdapters(1)], {"a": [0]}, {"a": samples_for(4, 0)},
                epochs=1, lr=0.01, batch_size=2)
