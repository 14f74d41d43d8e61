"""kd: server-side knowledge distillation of the node adapters into the global on generator samples."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from a2vtool.federated.strategies.base import ServerInputs, ServerOutput, Strategy, WeightedParams, register


class KDParams(WeightedParams):
    name: Literal["kd"] = "kd"
    generators: Path = Field(description="train-generator output folder providing synthetic embeddings per class.")
    samples_per_class: int = Field(32, ge=1, description="Synthetic embeddings per class per round.")
    epochs: int = Field(2, ge=1, description="Distillation epochs per round.")
    lr: float = Field(1e-3, gt=0, description="Server AdamW learning rate.")
    batch_size: int = Field(32, ge=1, description="Distillation batch size.")


def _kd(inp: ServerInputs) -> ServerOutput:
    import torch

    from a2vtool.federated.kd import distill
    from a2vtool.federated.seeds import derive_seed

    env, p = inp.env, inp.params
    if env is None or env.generators is None:
        raise ValueError("aggregate: strategy 'kd' needs the models and generators, not state dicts alone; "
                         "run it in a federation (or call a2vtool.federated.kd.distill)")
    g = torch.Generator().manual_seed(derive_seed(env.seed, env.round, 10_000))
    samples = {c: env.generators.sample(c, p.samples_per_class, sequence_length=env.tokens, generator=g)
               for c in sorted(env.class_owners)}
    student = env.build_model(inp.global_state)
    teachers = [env.build_model(s) for s in inp.node_states]
    out = distill(student, teachers, env.class_owners, samples, epochs=p.epochs, lr=p.lr, batch_size=p.batch_size,
                  seed=derive_seed(env.seed, env.round, 10_001), optimizer_state=inp.optimizer_state)
    diag = {"loss": out["loss"], "epoch_losses": out["epoch_losses"]}
    return ServerOutput({k: v.detach().clone() for k, v in student.state_dict().items()}, {},
                        out["optimizer_state"], diag)


register(Strategy("kd", "Knowledge distillation of the class owners' outputs on generator samples into the global.",
                  KDParams, _kd, order=70, server_state=True, needs_generators=True))
