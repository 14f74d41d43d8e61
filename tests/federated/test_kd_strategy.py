"""The kd strategy (FedDF): start from the average, distil the class owners, keep the result only if it is better."""

from __future__ import annotations

import pytest
import torch

from a2vtool.federated import strategies as reg
from a2vtool.federated.strategies import ServerEnv, ServerInputs
from a2vtool.models.adapters import AdapterSpec, build_adapters, set_target_stats
from a2vtool.models.text_targets import TextTargets

CLASSES = ["a", "b"]
TOKENS, DIM, OUT = 2, 4, 6
SPEC = AdapterSpec(hidden=[16], width=8, heads=1, dropout=0.0)


class Gens:
    """Stand-in generator set: class a around +1, class b around -1 (well separated)."""

    classes = CLASSES

    def sample(self, c: str, n: int, sequence_length: int, generator: torch.Generator) -> torch.Tensor:
        sign = 1.0 if c == "a" else -1.0
        return sign + 0.3 * torch.randn(n, sequence_length, DIM, generator=generator)


def _targets() -> TextTargets:
    g = torch.Generator().manual_seed(0)
    return TextTargets(family="flux", classes=CLASSES, prompts=CLASSES,
                       slots={"pooled_prompt_embeds": torch.randn(2, OUT, generator=g) * 3})


def _build(tt: TextTargets, state=None):  # noqa: ANN001, ANN202
    torch.manual_seed(1)
    m = build_adapters(DIM, tt.slot_shapes(), SPEC, tokens=TOKENS)
    set_target_stats(m, tt.slots)
    if state is not None:
        m.load_state_dict(state)
    return m


def _trained(tt: TextTargets, swap: bool) -> dict[str, torch.Tensor]:
    """Adapters trained to map class a -> target a (or, swapped, -> target b), and b likewise."""
    m = _build(tt)
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(2)
    gens = Gens()
    for _ in range(150):
        x = torch.cat([gens.sample(c, 16, TOKENS, g) for c in CLASSES])
        y = torch.tensor([0] * 16 + [1] * 16)
        if swap:
            y = 1 - y
        t = tt.slots["pooled_prompt_embeds"][y]
        loss = ((m(x)["pooled_prompt_embeds"] - t) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return {k: v.detach().clone() for k, v in m.state_dict().items()}


@pytest.fixture(scope="module")
def world() -> dict:
    tt = _targets()
    return {"tt": tt, "good": _trained(tt, swap=False), "bad": _trained(tt, swap=True)}


def _step(world: dict, node_states: list, samples: list[int], owners: dict, **params):  # noqa: ANN003, ANN202
    tt = world["tt"]
    env = ServerEnv(round=1, seed=0, build_model=lambda s: _build(tt, s), class_owners=owners, tokens=TOKENS,
                    generators=Gens(), targets=tt)
    p = reg.params_for("kd", generators="unused", samples_per_class=32, holdout_per_class=32, epochs=30, lr=1e-2,
                       batch_size=16, **params)
    glob = _build(tt).state_dict()
    return reg.get("kd").step(ServerInputs(glob, node_states, samples, {}, p, None, env))


def test_distillation_toward_wrong_teachers_is_rejected(world: dict) -> None:
    # The average is (almost) the good node; the only owner of both classes is the swapped node, so distilling
    # its outputs teaches the global the wrong classes. Keep-best must keep the average.
    out = _step(world, [world["good"], world["bad"]], [1000, 1], {"a": [1], "b": [1]})
    d = out.diagnostics
    assert d["kept"] == "average", d
    assert d["teacher_synthetic_acc"] < 0.1  # the owners call every a a b
    assert d["after"]["acc"] < d["before"]["acc"]
    assert d["after"]["agreement"] > 0.9  # the student did learn its teachers
    average = reg.aggregate("fedavg", world["good"], [world["good"], world["bad"]], [1000, 1], {})[0]
    for k, v in out.global_state.items():
        assert torch.equal(v, average[k]), k


def test_distillation_toward_good_teachers_is_kept(world: dict) -> None:
    out = _step(world, [world["good"], world["bad"]], [1, 1000], {"a": [0], "b": [0]})
    d = out.diagnostics
    assert d["kept"] == "distilled", d
    assert d["teacher_synthetic_acc"] > 0.9
    assert d["after"]["acc"] > d["before"]["acc"]
    assert d["after"]["loss"] < d["before"]["loss"]  # closer to the teachers after distilling
    assert len(d["distill_epoch_losses"]) == 30


def test_keep_best_off_always_takes_the_distilled_model(world: dict) -> None:
    out = _step(world, [world["good"], world["bad"]], [1000, 1], {"a": [1], "b": [1]}, keep_best=False)
    assert out.diagnostics["kept"] == "distilled"


def test_kd_without_a_federation_names_what_it_needs() -> None:
    with pytest.raises(ValueError, match="distill"):
        reg.aggregate("kd", {"w": torch.zeros(1)}, [{"w": torch.zeros(1)}], [1], {}, reg.params_for("kd", generators="g"))
