"""kd: FedDF-style ensemble distillation (Lin et al. 2020) on generator samples, kept only when it beats the average.

Each round the server (1) averages the node adapters (as fedavg), (2) distils the ensemble of each class's owners
into a copy of that average on synthetic embeddings drawn from the generators, and (3) keeps the distilled model
only if it scores better than the average on a held-out synthetic split (accuracy of the generator's class by
nearest class target, then the standardised MSE to the class targets). Diagnostics per round go to metrics.jsonl.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from a2vtool.federated.strategies.base import (
    ServerInputs,
    ServerOutput,
    Strategy,
    WeightedParams,
    register,
    weighted_average,
)


class KDParams(WeightedParams):
    name: Literal["kd"] = "kd"
    generators: Path = Field(description="train-generator output folder providing synthetic embeddings per class.")
    samples_per_class: int = Field(64, ge=1, description="Synthetic embeddings per class per round to distil on.")
    holdout_per_class: int = Field(32, ge=1, description="Held-out synthetic embeddings per class that decide whether the distilled model is kept.")
    epochs: int = Field(5, ge=1, description="Distillation epochs per round.")
    lr: float = Field(1e-3, gt=0, description="Server AdamW learning rate (a fresh optimizer every round, as in FedDF).")
    batch_size: int = Field(32, ge=1, description="Distillation batch size.")
    keep_best: bool = Field(True, description="Keep the distilled model only if it beats the average on the held-out synthetic split.")


def synthetic_scores(model: Any, samples: dict[str, Any], ensemble: dict[str, dict[str, Any]], env: Any,
                     batch_size: int) -> dict[str, float]:
    """A model on held-out synthetic samples: accuracy of the generator's class (nearest class target), agreement
    with the teacher ensemble's class, standardised MSE to the class targets and to the ensemble's outputs."""
    import torch

    from a2vtool.federated.scoring import class_scores, class_space

    classes = env.targets.classes
    center, tnorm = class_space(env.targets, "cpu")
    scale = {k: float(model.slots[k].scale) for k in tnorm}
    n = correct = agree = 0
    mse_class = mse_ens = 0.0
    was = model.training
    model.eval()
    with torch.no_grad():
        for c in sorted(samples):
            y = classes.index(c)
            for start in range(0, int(samples[c].shape[0]), batch_size):
                x = samples[c][start:start + batch_size]
                pred = model(x)
                ens = {k: v[start:start + batch_size] for k, v in ensemble[c].items()}
                got = class_scores(pred, center, tnorm).argmax(1)
                correct += int((got == y).sum())
                agree += int((got == class_scores(ens, center, tnorm).argmax(1)).sum())
                for k in tnorm:
                    t = env.targets.slots[k][y].unsqueeze(0).to(pred[k].dtype)
                    mse_class += float(((pred[k] - t) ** 2).flatten(1).mean(1).sum()) / scale[k] ** 2
                    mse_ens += float(((pred[k] - ens[k]) ** 2).flatten(1).mean(1).sum()) / scale[k] ** 2
                n += int(x.shape[0])
    model.train(was)
    return {"acc": correct / n, "agreement": agree / n, "mse_class": mse_class / n, "loss": mse_ens / n}


def teacher_accuracy(teachers: list[Any], owners: dict[str, list[int]], samples: dict[str, Any], env: Any) -> float:
    """How often a class's owners recognise the generator's class in its synthetic samples (mean over owners)."""
    import torch

    from a2vtool.federated.scoring import class_scores, class_space

    center, tnorm = class_space(env.targets, "cpu")
    hits = total = 0
    with torch.no_grad():
        for c in sorted(samples):
            y = env.targets.classes.index(c)
            for o in owners[c]:
                was = teachers[o].training
                teachers[o].eval()
                hits += int((class_scores(teachers[o](samples[c]), center, tnorm).argmax(1) == y).sum())
                teachers[o].train(was)
                total += int(samples[c].shape[0])
    return hits / max(total, 1)


def _better(a: dict[str, float], b: dict[str, float]) -> bool:
    """a beats b: higher held-out accuracy, or the same accuracy and a lower MSE to the class targets."""
    return a["acc"] > b["acc"] or (a["acc"] == b["acc"] and a["mse_class"] < b["mse_class"])


def _kd(inp: ServerInputs) -> ServerOutput:
    import torch

    from a2vtool.federated.kd import class_targets, distill
    from a2vtool.federated.seeds import derive_seed

    env, p = inp.env, inp.params
    if env is None or env.generators is None or env.targets is None:
        raise ValueError("aggregate: strategy 'kd' needs the models, generators and text targets, not state dicts "
                         "alone; run it in a federation (or call a2vtool.federated.kd.distill)")
    owners = env.class_owners
    g = torch.Generator().manual_seed(derive_seed(env.seed, env.round, 10_000))
    train = {c: env.generators.sample(c, p.samples_per_class, sequence_length=env.tokens, generator=g).float()
             for c in sorted(owners)}
    held = {c: env.generators.sample(c, p.holdout_per_class, sequence_length=env.tokens, generator=g).float()
            for c in sorted(owners)}
    teachers = [env.build_model(s) for s in inp.node_states]
    average = weighted_average(inp)
    student = env.build_model(average)
    scales = {k: float(student.slots[k].scale) for k in student.slots}
    ens_train = class_targets(teachers, owners, train, p.batch_size, "cpu")
    ens_held = class_targets(teachers, owners, held, p.batch_size, "cpu")
    before = synthetic_scores(student, held, ens_held, env, p.batch_size)
    out = distill(student, teachers, owners, train, epochs=p.epochs, lr=p.lr, batch_size=p.batch_size,
                  seed=derive_seed(env.seed, env.round, 10_001), scales=scales, targets=ens_train)
    after = synthetic_scores(student, held, ens_held, env, p.batch_size)
    keep = _better(after, before) or not p.keep_best
    diag = {"kept": "distilled" if keep else "average", "teacher_synthetic_acc": teacher_accuracy(teachers, owners, held, env),
            "before": before, "after": after, "distill_epoch_losses": out["epoch_losses"]}
    state = {k: v.detach().clone() for k, v in student.state_dict().items()} if keep else average
    return ServerOutput(state, {}, None, diag)


register(Strategy("kd", "FedDF ensemble distillation on generator samples, started from the average and kept only "
                  "when it beats the average on held-out synthetic samples.", KDParams, _kd, order=70,
                  needs_generators=True))
