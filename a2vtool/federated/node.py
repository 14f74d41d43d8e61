"""Local training and evaluation of adapters on one node's embeddings: per-sample targets, shape-checked losses."""

from __future__ import annotations

import math
import time
from typing import Any

from a2vtool.federated.config import EvalSpec, TrainingSpec
from a2vtool.federated.scoring import class_scores, class_space

PRELOAD_BYTES = 512 << 20


def make_optimizer(model: Any, training: TrainingSpec) -> Any:
    """One AdamW with a parameter group per slot, so each slot has its own lr and weight decay."""
    import torch

    groups = [{"params": list(m.parameters()), "lr": training.slot_lr.get(name, training.lr),
               "weight_decay": training.slot_weight_decay.get(name, training.weight_decay), "base_lr": training.slot_lr.get(name, training.lr)}
              for name, m in model.slots.items()]
    return torch.optim.AdamW(groups)


def set_epoch_lr(opt: Any, training: TrainingSpec, epoch: int, total_epochs: int) -> None:
    """Cosine decay indexed by the run's global epoch (round-1)*E+e, a pure function: resume needs no state."""
    for g in opt.param_groups:
        base = g["base_lr"]
        if training.schedule == "cosine" and total_epochs > 1:
            g["lr"] = training.min_lr + 0.5 * (base - training.min_lr) * (1 + math.cos(math.pi * epoch / (total_epochs - 1)))
        else:
            g["lr"] = base


def slot_losses(pred: dict[str, Any], target: dict[str, Any], cosine_weight: float,
                scale: dict[str, Any] | None = None) -> dict[str, Any]:
    """MSE (+ cosine_weight * (1 - cos)) per slot; the shapes must match exactly (no broadcasting). With
    `scale`, the MSE is taken in the standardised target space (divided by scale**2)."""
    import torch.nn.functional as F

    losses = {}
    for slot, t in target.items():
        p = pred[slot]
        if p.shape != t.shape:
            raise ValueError(f"slot {slot}: prediction shape {tuple(p.shape)} != target shape {tuple(t.shape)}")
        loss = F.mse_loss(p, t) if scale is None else F.mse_loss(p, t) / scale[slot] ** 2
        if cosine_weight:
            loss = loss + cosine_weight * (1 - F.cosine_similarity(p.flatten(1), t.flatten(1), dim=1).mean())
        losses[slot] = loss
    return losses


def _batches(cache: Any, entries: list[Any], order: list[int], batch_size: int, preloaded: Any) -> Any:
    for i in range(0, len(order), batch_size):
        idx = order[i : i + batch_size]
        chunk = [entries[j] for j in idx]
        x = preloaded[idx] if preloaded is not None else cache.load(chunk)
        yield x, [e.label for e in chunk]


def train_node(model: Any, opt: Any, cache: Any, entries: list[Any], targets: Any, training: TrainingSpec, *,
               device: str, seed: int, first_epoch: int, total_epochs: int,
               global_params: list[Any] | None = None, mu: float = 0.0) -> dict[str, Any]:
    """Train `model` in place for training.local_epochs; returns loss figures of the last epoch and timings."""
    import torch

    from a2vtool.federated.strategies import proximal_term

    t0 = time.perf_counter()
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # dropout
    row_bytes = math.prod(cache.shape) * 4
    preloaded = cache.load(entries).float() if row_bytes * len(entries) <= PRELOAD_BYTES else None
    model.train()
    slot_targets = {k: v.to(device) for k, v in targets.slots.items()}
    scales = {k: model.slots[k].scale.detach() for k in slot_targets}
    label_index = {c: i for i, c in enumerate(targets.classes)}
    sums: dict[str, float] = {}
    n_seen = 0
    steps = 0
    for e in range(training.local_epochs):
        set_epoch_lr(opt, training, first_epoch + e, total_epochs)
        order = torch.randperm(len(entries), generator=g).tolist()
        sums, n_seen = {}, 0
        for x, labels in _batches(cache, entries, order, training.batch_size, preloaded):
            x = x.to(device=device, dtype=torch.float32)
            idx = torch.tensor([label_index[lab] for lab in labels], device=device)
            target = {k: v.index_select(0, idx) for k, v in slot_targets.items()}
            losses = slot_losses(model(x), target, training.cosine_weight, scales)
            loss = sum(losses.values())
            if global_params is not None and mu > 0:
                loss = loss + proximal_term(model.parameters(), global_params, mu)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if training.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), training.grad_clip)
            opt.step()
            steps += 1
            b = len(labels)
            n_seen += b
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach()) * b
            del x, target, losses, loss
    del preloaded, slot_targets
    per_slot = {k: v / max(n_seen, 1) for k, v in sums.items()}
    return {"loss": sum(per_slot.values()), "loss_per_slot": per_slot, "samples": len(entries), "steps": steps,
            "seconds": time.perf_counter() - t0}


def evaluate(model: Any, groups: list[tuple[Any, list[Any]]], targets: Any, own_classes: list[str] | None,
             spec: EvalSpec, device: str) -> dict[str, Any]:
    """MSE and cosine per slot, and embedding-space zero-shot accuracy: the nearest class target (mean cosine
    over slots) over the federation's classes and over `own_classes`, with chance levels beside them."""
    import torch
    import torch.nn.functional as F

    model.eval()
    classes = targets.classes
    center, tnorm = class_space(targets, device)
    own_idx = torch.tensor([classes.index(c) for c in own_classes], device=device) if own_classes else None
    mse = {k: 0.0 for k in tnorm}
    cos = {k: 0.0 for k in tnorm}
    n = correct = correct_own = 0
    with torch.inference_mode():
        for cache, entries in groups:
            for x, labels in _batches(cache, entries, list(range(len(entries))), spec.batch_size, None):
                pred = model(x.to(device=device, dtype=torch.float32))
                y = torch.tensor([classes.index(lab) for lab in labels], device=device)
                for k in tnorm:
                    p = pred[k].flatten(1)
                    t = targets.slots[k].to(device).flatten(1).index_select(0, y)
                    if p.shape != t.shape:
                        raise ValueError(f"slot {k}: prediction shape {tuple(p.shape)} != target shape {tuple(t.shape)}")
                    mse[k] += float(((p - t) ** 2).mean(dim=1).sum())
                    cos[k] += float(F.cosine_similarity(p, t, dim=1).sum())
                score = class_scores(pred, center, tnorm)
                correct += int((score.argmax(1) == y).sum())
                if own_idx is not None:
                    sub = score.index_select(1, own_idx).argmax(1)
                    correct_own += int((own_idx[sub] == y).sum())
                n += len(labels)
    if n == 0:
        return {"n": 0}
    out: dict[str, Any] = {
        "n": n,
        "mse": {k: v / n for k, v in mse.items()},
        "cos": {k: v / n for k, v in cos.items()},
        "acc": correct / n,
        "chance": 1 / len(classes),
    }
    if own_idx is not None:
        out["acc_own"] = correct_own / n
        out["chance_own"] = 1 / len(own_classes or [1])
    return out
