"""Server-side knowledge distillation of node adapters into the global adapters (all slots jointly)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported lazily so that the CLI starts fast
    from torch import Tensor, nn


def distill(global_model: nn.Module, node_models: list[nn.Module], class_owners: dict[str, list[int]],
            samples: dict[str, Tensor], *, epochs: int, lr: float, batch_size: int, weight_decay: float = 0.0,
            seed: int = 0, optimizer_state: dict | None = None, scales: dict[str, float] | None = None,
            targets: dict[str, dict[str, Tensor]] | None = None) -> dict[str, Any]:
    """Distil the node adapters into `global_model` on synthetic samples; returns losses + optimizer state.

    For each class c the target is the mean output of ONLY the nodes in `class_owners[c]` on
    `samples[c]` (n, T, D), computed once with the node models frozen (eval, no grad; their flags are
    restored afterwards). All slots of `global_model` are trained jointly with one AdamW on
    loss = sum over slots of MSE(pred[slot], target[slot]) (divided by scales[slot]**2 when `scales` is given: the
    standardised target space node training uses), mini-batches shuffled each epoch by a generator seeded from
    `seed`. `targets` (from class_targets) skips recomputing the teachers' outputs. Returns {"loss": final epoch mean loss, "loss_per_slot": {slot: loss},
    "epoch_losses": [loss per epoch], "optimizer_state": AdamW state dict (pass it back next round)}.
    """
    import torch

    if epochs < 1:
        raise ValueError(f"distill: epochs must be >= 1, got {epochs}")
    if batch_size < 1:
        raise ValueError(f"distill: batch_size must be >= 1, got {batch_size}")
    if not lr > 0:
        raise ValueError(f"distill: lr must be > 0, got {lr}")
    classes = _check_inputs(node_models, class_owners, samples)
    params = [p for p in global_model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("distill: the global model has no trainable parameters")
    device = params[0].device

    if targets is None:
        targets = class_targets(node_models, class_owners, samples, batch_size, device)
    slots = sorted(targets[classes[0]])

    # global position -> (class index, row): avoids concatenating (possibly huge) sample tensors
    sizes = [int(samples[c].shape[0]) for c in classes]
    class_of = torch.cat([torch.full((n,), i, dtype=torch.long) for i, n in enumerate(sizes)])
    row_of = torch.cat([torch.arange(n) for n in sizes])
    total = int(class_of.numel())

    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if optimizer_state is not None:
        opt.load_state_dict(optimizer_state)
    gen = torch.Generator().manual_seed(seed)
    epoch_losses: list[float] = []
    slot_sums: dict[str, float] = {}
    was_training = global_model.training
    global_model.train()
    try:
        with _forked_rng(seed, device):
            for _ in range(epochs):
                order = torch.randperm(total, generator=gen)
                loss_sum = 0.0
                slot_sums = {s: 0.0 for s in slots}
                for start in range(0, total, batch_size):
                    idx = order[start:start + batch_size]
                    x, tgt = _gather(idx, class_of, row_of, classes, samples, targets, device)
                    pred = global_model(x)
                    _check_slots(pred, tgt)
                    loss: Tensor | None = None
                    slot_losses: list[Tensor] = []
                    for s in slots:
                        p, t = pred[s], tgt[s]
                        if p.shape != t.shape:
                            raise ValueError(
                                f"distill: slot {s!r}: prediction shape {tuple(p.shape)} != target shape "
                                f"{tuple(t.shape)}"
                            )
                        slot_loss = torch.nn.functional.mse_loss(p, t.to(dtype=p.dtype))
                        if scales is not None:
                            slot_loss = slot_loss / float(scales[s]) ** 2
                        loss = slot_loss if loss is None else loss + slot_loss
                        slot_losses.append(slot_loss.detach().float())
                    assert loss is not None  # slots is non-empty (checked by _class_targets)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    b = int(idx.numel())
                    per_slot = torch.stack(slot_losses).tolist()  # one device sync per batch
                    loss_sum += sum(per_slot) * b
                    for s, v in zip(slots, per_slot):
                        slot_sums[s] += v * b
                    del pred, loss, slot_losses, x, tgt
                epoch_losses.append(loss_sum / total)
    finally:
        global_model.train(was_training)
        opt.zero_grad(set_to_none=True)
    return {
        "loss": epoch_losses[-1],
        "loss_per_slot": {s: v / total for s, v in slot_sums.items()},
        "epoch_losses": epoch_losses,
        "optimizer_state": opt.state_dict(),
    }


def _check_inputs(node_models: list[nn.Module], class_owners: dict[str, list[int]],
                  samples: dict[str, Tensor]) -> list[str]:
    if not node_models:
        raise ValueError("distill: no node models")
    if not samples:
        raise ValueError("distill: no synthetic samples (samples is empty)")
    classes = sorted(samples)  # sorted: the data order must not depend on dict insertion order
    for c in classes:
        owners = class_owners.get(c, [])
        if not owners:
            raise ValueError(
                f"distill: class {c!r} has no owner in class_owners; every class with samples needs at "
                "least one node that trained on it"
            )
        bad = [o for o in owners if not 0 <= o < len(node_models)]
        if bad:
            raise ValueError(f"distill: class {c!r} lists owners {bad} outside 0..{len(node_models) - 1}")
        if samples[c].dim() < 1 or samples[c].shape[0] == 0:
            raise ValueError(f"distill: class {c!r} has no samples (shape {tuple(samples[c].shape)})")
    return classes


@contextlib.contextmanager
def _frozen(models: list[nn.Module]) -> Iterator[None]:
    """Eval mode and requires_grad=False for `models`; the previous flags are restored on exit."""
    saved = [(m, m.training, [(p, p.requires_grad) for p in m.parameters()]) for m in models]
    try:
        for m in models:
            m.eval()
            for p in m.parameters():
                p.requires_grad_(False)
        yield
    finally:
        for m, training, flags in saved:
            m.train(training)
            for p, rg in flags:
                p.requires_grad_(rg)


def class_targets(node_models: list[nn.Module], class_owners: dict[str, list[int]], samples: dict[str, Tensor],
                  batch_size: int, device: Any) -> dict[str, dict[str, Tensor]]:
    """class -> slot -> (n, ...) mean output of the class's owners on its samples, detached, on `device`."""
    import torch

    classes = sorted(samples)
    out: dict[str, dict[str, Tensor]] = {}
    slots: list[str] | None = None
    with _frozen(node_models), torch.no_grad():
        for c in classes:
            owners = sorted(set(class_owners[c]))
            x_all = samples[c]
            chunks: dict[str, list[Tensor]] = {}
            for start in range(0, int(x_all.shape[0]), batch_size):
                x = x_all[start:start + batch_size]
                acc: dict[str, Tensor] = {}
                for o in owners:
                    model = node_models[o]
                    y = model(x.to(_device_of(model, device)))
                    if not isinstance(y, dict) or not y:
                        raise ValueError(f"distill: node {o} must return a non-empty dict of slot outputs")
                    if slots is None:
                        slots = sorted(y)
                    if sorted(y) != slots:
                        raise ValueError(
                            f"distill: node {o} returns slots {sorted(y)}, expected {slots}"
                        )
                    for s in slots:
                        v = y[s].detach().to(device=device, dtype=torch.float32)
                        acc[s] = v if s not in acc else acc[s] + v
                for s, v in acc.items():
                    chunks.setdefault(s, []).append(v / len(owners))
            out[c] = {s: torch.cat(v) for s, v in chunks.items()}
    return out


def _device_of(model: nn.Module, default: Any) -> Any:
    for p in model.parameters():
        return p.device
    return default


def _gather(idx: Tensor, class_of: Tensor, row_of: Tensor, classes: list[str], samples: dict[str, Tensor],
            targets: dict[str, dict[str, Tensor]], device: Any) -> tuple[Tensor, dict[str, Tensor]]:
    """Inputs and per-sample stacked targets for the global positions `idx` (grouped by class)."""
    import torch

    xs: list[Tensor] = []
    ts: dict[str, list[Tensor]] = {}
    cls = class_of[idx]
    for ci in torch.unique(cls).tolist():
        rows = row_of[idx[cls == ci]]
        c = classes[ci]
        xs.append(samples[c][rows.to(samples[c].device)].to(device))
        for s, t in targets[c].items():
            ts.setdefault(s, []).append(t[rows.to(t.device)])
    return torch.cat(xs), {s: torch.cat(v) for s, v in ts.items()}


def _check_slots(pred: dict[str, Tensor], tgt: dict[str, Tensor]) -> None:
    if not isinstance(pred, dict):
        raise ValueError(f"distill: the global model must return a dict of slot outputs, got {type(pred)}")
    if sorted(pred) != sorted(tgt):
        raise ValueError(f"distill: global model returns slots {sorted(pred)}, node targets have {sorted(tgt)}")


@contextlib.contextmanager
def _forked_rng(seed: int, device: Any) -> Iterator[None]:
    """Seed torch's global RNG (dropout etc.) for the block without disturbing the caller's RNG state."""
    import torch

    devices = [device] if getattr(device, "type", "cpu") == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield
