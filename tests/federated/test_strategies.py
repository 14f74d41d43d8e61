"""Aggregation strategies checked against hand-computed numbers."""

from __future__ import annotations

import pytest
import torch

from a2vtool.errors import InputError
from a2vtool.federated.strategies import (
    STRATEGIES,
    aggregate,
    aggregation_weights,
    params_for,
    proximal_term,
)

F64 = torch.float64


def t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=F64)


def states(*rows: tuple[float, ...]) -> list[dict[str, torch.Tensor]]:
    return [{"w": t(*row)} for row in rows]


def run(name: str, global_w: torch.Tensor, nodes: list[dict[str, torch.Tensor]], samples: list[int],
        server: dict[str, torch.Tensor] | None = None, **kw: object) -> tuple[dict, dict]:
    return aggregate(name, {"w": global_w}, nodes, samples, server or {}, params_for(name, **kw))


def test_strategy_names() -> None:
    assert STRATEGIES == ("none", "fedavg", "fedprox", "fedavgm", "fedadam", "median", "trimmed_mean", "kd")


def test_aggregation_weights() -> None:
    assert aggregation_weights([1, 1, 2], "samples") == [0.25, 0.25, 0.5]
    assert aggregation_weights([1, 1, 2], "uniform") == pytest.approx([1 / 3] * 3)
    with pytest.raises(ValueError):
        aggregation_weights([], "samples")
    with pytest.raises(ValueError):
        aggregation_weights([0, 0], "samples")
    with pytest.raises(InputError, match="strategy.weighting"):
        aggregation_weights([1], "bogus")


def test_fedavg_weighted_and_uniform() -> None:
    nodes = states((1, 2), (3, 4), (5, 6))
    # weights 1/4, 1/4, 1/2: [0.25*1 + 0.25*3 + 0.5*5, 0.25*2 + 0.25*4 + 0.5*6] = [3.5, 4.5]
    new, _ = run("fedavg", t(0, 0), nodes, [1, 1, 2])
    assert torch.equal(new["w"], t(3.5, 4.5))
    # uniform: [(1+3+5)/3, (2+4+6)/3] = [3, 4]
    new, _ = run("fedavg", t(0, 0), nodes, [1, 1, 2], weighting="uniform")
    assert torch.allclose(new["w"], t(3, 4), rtol=0, atol=1e-12)


def test_fedavg_keeps_dtype_and_copies_int_buffers_from_first_node() -> None:
    nodes = [
        {"w": torch.tensor([1.0, 2.0]), "n": torch.tensor(7)},
        {"w": torch.tensor([3.0, 5.0]), "n": torch.tensor(9)},
    ]
    glob = {"w": torch.zeros(2), "n": torch.tensor(0)}
    new, server = aggregate("fedavg", glob, nodes, [1, 1], {}, params_for("fedavg"))
    assert new["w"].dtype == torch.float32 and torch.equal(new["w"], torch.tensor([2.0, 3.5]))
    assert new["n"].dtype == torch.int64 and int(new["n"]) == 7
    assert server == {}


def test_fedprox_aggregates_like_fedavg() -> None:
    nodes = states((1, 2), (3, 4), (5, 6))
    new, _ = run("fedprox", t(0, 0), nodes, [1, 1, 2], mu=0.5)
    assert torch.equal(new["w"], t(3.5, 4.5))


def test_none_returns_global_unchanged() -> None:
    glob = t(7, 8)
    new, server = run("none", glob, states((1, 2)), [1], server={"m.w": t(1, 1)})
    assert torch.equal(new["w"], t(7, 8))
    assert torch.equal(server["m.w"], t(1, 1))


def test_fedavgm_two_rounds() -> None:
    p = {"momentum": 0.9, "server_lr": 0.5, "weighting": "uniform"}
    # round 1: global [1, 2], avg of [2, 4] and [4, 6] = [3, 5]
    #   d = global - avg = [-2, -3]; v = 0.9*0 + d = [-2, -3]
    #   new = [1, 2] - 0.5*[-2, -3] = [2, 3.5]
    new, server = run("fedavgm", t(1, 2), states((2, 4), (4, 6)), [1, 1], **p)
    assert torch.allclose(new["w"], t(2, 3.5), atol=1e-12)
    assert torch.allclose(server["m.w"], t(-2, -3), atol=1e-12)
    # round 2: global [2, 3.5], avg of [3, 6] and [5, 6] = [4, 6]
    #   d = [-2, -2.5]; v = 0.9*[-2, -3] + [-2, -2.5] = [-3.8, -5.2]
    #   new = [2, 3.5] - 0.5*[-3.8, -5.2] = [3.9, 6.1]
    new, server = run("fedavgm", new["w"], states((3, 6), (5, 6)), [1, 1], server=server, **p)
    assert torch.allclose(new["w"], t(3.9, 6.1), atol=1e-12)
    assert torch.allclose(server["m.w"], t(-3.8, -5.2), atol=1e-12)


def test_fedadam_one_step_default_params() -> None:
    # b1=0.9, b2=0.99, tau=1e-3, lr=0.01; global [0, 1], avg [1, 1] -> d = avg - global = [1, 0]
    #   m = 0.1*d = [0.1, 0]; v = 0.01*d^2 = [0.01, 0]
    #   new = global + lr * m / (sqrt(v) + tau) = [0.01*0.1/0.101, 1 + 0/0.001] = [0.00990099009..., 1]
    new, server = run("fedadam", t(0, 1), states((1, 1), (1, 1)), [3, 5])
    assert torch.allclose(new["w"], t(0.00990099009900990, 1.0), atol=1e-12)
    assert torch.allclose(server["m.w"], t(0.1, 0), atol=1e-12)
    assert torch.allclose(server["v.w"], t(0.01, 0), atol=1e-12)


def test_fedadam_two_steps() -> None:
    p = {"beta1": 0.75, "beta2": 0.75, "tau": 0.5, "server_lr": 1.0}
    # step 1: global [0, 10], avg [4, 6] -> d = [4, -4]
    #   m = 0.25*d = [1, -1]; v = 0.25*16 = [4, 4]; new = global + m/(2 + 0.5) = [0.4, 9.6]
    new, server = run("fedadam", t(0, 10), states((4, 6)), [1], **p)
    assert torch.allclose(new["w"], t(0.4, 9.6), atol=1e-12)
    assert torch.allclose(server["m.w"], t(1, -1), atol=1e-12)
    assert torch.allclose(server["v.w"], t(4, 4), atol=1e-12)
    # step 2: global [0.4, 9.6], avg [2.4, 7.6] -> d = [2, -2]
    #   m = 0.75*[1, -1] + 0.25*[2, -2] = [1.25, -1.25]; v = 0.75*4 + 0.25*4 = [4, 4]
    #   new = [0.4, 9.6] + [1.25, -1.25]/2.5 = [0.9, 9.1]
    new, server = run("fedadam", new["w"], states((2.4, 7.6)), [1], server=server, **p)
    assert torch.allclose(new["w"], t(0.9, 9.1), atol=1e-12)
    assert torch.allclose(server["m.w"], t(1.25, -1.25), atol=1e-12)
    assert torch.allclose(server["v.w"], t(4, 4), atol=1e-12)


def test_median_odd_and_even() -> None:
    # odd: column 0 {1, 3, 2} -> 2; column 1 {5, 0, 9} -> 5
    new, _ = run("median", t(0, 0), states((1, 5), (3, 0), (2, 9)), [1, 1, 1])
    assert torch.equal(new["w"], t(2, 5))
    # even = mean of the two middle values: column 0 sorted 1,2,4,100 -> 3; column 1 0,3,5,10 -> 4
    new, _ = run("median", t(0, 0), states((1, 10), (4, 0), (2, 3), (100, 5)), [1, 1, 1, 1])
    assert torch.equal(new["w"], t(3, 4))


def test_trimmed_mean_drops_outlier() -> None:
    nodes = states((1,), (2,), (3,), (100,))
    # n=4, trim 0.25 -> drop 1 from each end -> mean(2, 3) = 2.5
    new, _ = run("trimmed_mean", t(0), nodes, [1, 1, 1, 1], trim_ratio=0.25)
    assert torch.equal(new["w"], t(2.5))
    # trim 0.1 -> floor(0.4) = 0 dropped -> mean(1, 2, 3, 100) = 26.5
    new, _ = run("trimmed_mean", t(0), nodes, [1, 1, 1, 1], trim_ratio=0.1)
    assert torch.equal(new["w"], t(26.5))


def test_trimmed_mean_that_drops_everything_is_an_input_error() -> None:
    with pytest.raises(InputError, match="strategy.trim_ratio"):
        run("trimmed_mean", t(0), states((1,), (2,)), [1, 1], trim_ratio=0.5)


@pytest.mark.parametrize("name", [s for s in STRATEGIES if s != "kd"])
def test_inputs_are_not_mutated(name: str) -> None:
    glob = {"w": t(1, 2), "n": torch.tensor(3)}
    nodes = [{"w": t(2, 4), "n": torch.tensor(1)}, {"w": t(5, 0), "n": torch.tensor(2)},
             {"w": t(-1, 1), "n": torch.tensor(4)}]
    server = {"m.w": t(0.5, 0.5), "v.w": t(1, 1)}
    snapshot = ({k: v.clone() for k, v in glob.items()}, [{k: v.clone() for k, v in s.items()} for s in nodes],
                {k: v.clone() for k, v in server.items()})
    new, new_server = aggregate(name, glob, nodes, [1, 2, 3], server, params_for(name, **({"trim_ratio": 0.2} if name == "trimmed_mean" else {})))
    for before, after in zip([snapshot[0], *snapshot[1], snapshot[2]], [glob, *nodes, server]):
        assert before.keys() == after.keys()
        assert all(torch.equal(before[k], after[k]) for k in before)
    # outputs do not alias the inputs
    new["w"].add_(100)
    for v in new_server.values():
        v.add_(100)
    assert torch.equal(glob["w"], t(1, 2)) and torch.equal(nodes[0]["w"], t(2, 4))
    assert torch.equal(server["m.w"], t(0.5, 0.5))


def test_mismatched_shapes_and_keys() -> None:
    nodes = [{"a": torch.zeros(2), "b": torch.zeros(3)}, {"a": torch.zeros(2), "b": torch.zeros(4)}]
    glob = {"a": torch.zeros(2), "b": torch.zeros(3)}
    with pytest.raises(ValueError, match=r"'b'.*\(3,\).*\(4,\)"):
        aggregate("fedavg", glob, nodes, [1, 1], {}, params_for("fedavg"))
    nodes[1] = {"a": torch.zeros(2)}
    with pytest.raises(ValueError, match="'b'"):
        aggregate("fedavg", glob, nodes, [1, 1], {}, params_for("fedavg"))
    with pytest.raises(ValueError, match="empty"):
        aggregate("fedavg", glob, [], [], {}, params_for("fedavg"))


def test_unknown_strategy_lists_valid_names() -> None:
    with pytest.raises(InputError, match="fedavg.*trimmed_mean") as exc:
        aggregate("fedavgx", {"w": t(0)}, states((1,)), [1], {})
    assert exc.value.exit_code == 2 and "fedavgx" in str(exc.value)


def test_kd_needs_models() -> None:
    with pytest.raises(ValueError, match="distill"):
        aggregate("kd", {"w": t(0)}, states((1,)), [1], {}, params_for("kd", generators="gens"))


def test_proximal_term_value_and_gradient() -> None:
    w = torch.tensor([1.0, 2.0], requires_grad=True)
    v = torch.tensor([[3.0]], requires_grad=True)
    wg = torch.tensor([0.0, 4.0], requires_grad=True)
    vg = torch.tensor([[1.0]])
    # (0.5/2) * ((1-0)^2 + (2-4)^2 + (3-1)^2) = 0.25 * 9 = 2.25
    term = proximal_term([w, v], [wg, vg], mu=0.5)
    assert term.item() == pytest.approx(2.25)
    term.backward()
    # d/dw = mu * (w - wg) = 0.5*[1, -2] = [0.5, -1]; d/dv = 0.5*2 = 1
    assert torch.equal(w.grad, torch.tensor([0.5, -1.0]))
    assert torch.equal(v.grad, torch.tensor([[1.0]]))
    assert wg.grad is None  # the global parameters are detached
    with pytest.raises(ValueError):
        proximal_term([w], [wg, vg], mu=0.5)
