"""Verdict rules of a2vtool.memory.analysis on hand-made series (pure, no torch)."""

from __future__ import annotations

import random
from typing import Any

import pytest

from a2vtool.memory.analysis import analyse, fit, t_critical


def rows(values: dict[str, list[float]], **nested: list[dict[str, Any]]) -> list[dict[str, Any]]:
    n = len(next(iter(values.values())))
    out = []
    for i in range(n):
        s: dict[str, Any] = {"step": i, "round": i, "phase": "round"}
        s.update({k: v[i] for k, v in values.items()})
        for part, per_row in nested.items():
            s[part] = per_row[i]
        out.append(s)
    return out


def noisy(base: float, n: int, rel: float, seed: int, slope: float = 0.0) -> list[float]:
    rng = random.Random(seed)
    return [base + slope * i + rng.uniform(-rel, rel) * base for i in range(n)]


@pytest.mark.parametrize("seed", range(10))
def test_flat_noisy_rss_passes_at_one_percent(seed: int) -> None:
    v = analyse(rows({"rss_mb": noisy(500, 10, 0.003, seed)}), 2, 1.0, 0.25)
    assert v["verdict"] == "clean", v["reasons"]
    assert v["rounds_measured"] == 8


def test_linear_growth_is_caught_by_the_threshold() -> None:
    v = analyse(rows({"rss_mb": [500 + 8 * i for i in range(10)]}), 2, 5.0, 0.25)
    st = v["probes"]["rss_mb"]
    assert v["verdict"] == "leak"
    assert st["leak"] and st["growth_pct"] == pytest.approx(100 * 56 / 516)
    assert st["slope_per_round"] == pytest.approx(8.0)
    assert "above the 5% threshold" in st["reason"]


def test_small_but_steady_growth_is_caught_by_the_slope() -> None:
    # 2 MB/round on ~500 MB with 0.1 % jitter: 2.4 % over the window, below 5 %, but steady
    ys = noisy(500, 8, 0.001, 3, slope=2.0)
    v = analyse(rows({"rss_mb": ys}), 2, 5.0, 0.25)
    st = v["probes"]["rss_mb"]
    assert st["growth_pct"] < 5.0
    assert v["verdict"] == "leak" and "grows steadily" in st["reason"]


def test_slow_creep_below_tolerance_passes() -> None:
    v = analyse(rows({"rss_mb": [500 + 0.5 * i for i in range(10)]}), 2, 5.0, 0.25)
    assert v["verdict"] == "clean"


def test_step_within_warmup_passes_but_not_without_warmup() -> None:
    ys = [400, 600, 600.3, 599.8, 600.1, 600.0, 600.2, 599.9]
    assert analyse(rows({"rss_mb": ys}), 2, 1.0, 0.25)["verdict"] == "clean"
    assert analyse(rows({"rss_mb": ys}), 0, 1.0, 0.25)["verdict"] == "leak"


def test_single_spike_at_the_last_round_is_not_a_leak() -> None:
    ys = [500.0] * 7 + [530.0]  # 6 % on the last sample only
    v = analyse(rows({"rss_mb": ys}), 2, 5.0, 0.25)
    assert v["probes"]["rss_mb"]["growth_pct"] > 5.0
    assert v["verdict"] == "clean", v["reasons"]


def test_growth_below_one_megabyte_is_never_a_leak() -> None:
    v = analyse(rows({"cuda_allocated_mb": [0.0, 0.0, 0.1, 0.2, 0.3, 0.4]}), 1, 1.0, 0.25)
    assert v["verdict"] == "clean"


def test_tensor_count_rising_every_round_is_a_leak_even_with_flat_rss() -> None:
    v = analyse(rows({"rss_mb": [500.0] * 8, "tensor_count": [100, 100, 101, 102, 103, 104, 105, 106]}), 2, 5.0, 0.25)
    assert v["verdict"] == "leak"
    assert v["probes"]["tensor_count"]["leak"] and not v["probes"]["rss_mb"]["leak"]
    flat_then_up = rows({"tensor_count": [100, 100, 101, 101, 102, 102, 103, 103]})
    assert analyse(flat_then_up, 2, 5.0, 0.25)["verdict"] == "clean"


def test_autograd_growth_names_the_graph() -> None:
    graph = [{"cpu float32 [] grad_fn=MeanBackward0": i} for i in range(8)]
    groups = [{"cpu float32 []": [i + 3, 4 * (i + 3)], "cpu float32 [8, 8]": [5, 1280]} for i in range(8)]
    v = analyse(rows({"graph_tensors": list(range(8)), "tensor_count": [8 + i for i in range(8)]},
                     graph_groups=graph, tensor_groups=groups), 2, 5.0, 0.25)
    assert v["verdict"] == "leak"
    assert "tensors with autograd history are growing" in v["culprits"][0]
    assert "MeanBackward0" in v["culprits"][0]
    assert any("tensor group cpu float32 []" in c for c in v["culprits"])
    assert not any("[8, 8]" in c for c in v["culprits"])
    assert v["culprit_details"][0]["kind"] == "autograd"


def test_python_container_growth_is_named_and_small_growth_ignored() -> None:
    conts = [{"list[int]@abc": 200_000 * (i + 1), "list[dict]@def": 10 + i} for i in range(8)]
    v = analyse(rows({"rss_mb": [500.0] * 8}, py_containers=conts), 2, 5.0, 0.25)
    assert v["verdict"] == "leak"
    assert len(v["culprits"]) == 1
    assert "Python objects growing" in v["culprits"][0] and "list/int objects growing" in v["culprits"][0]
    small = [{"list[dict]@def": 10 + i} for i in range(8)]
    assert analyse(rows({"rss_mb": [500.0] * 8}, py_containers=small), 2, 5.0, 0.25)["verdict"] == "clean"


def test_memory_leak_without_visible_objects_gets_a_hint() -> None:
    v = analyse(rows({"rss_mb": [500 + 10 * i for i in range(8)]}), 2, 5.0, 0.25)
    assert v["verdict"] == "leak" and "--trace" in v["culprits"][0]


def test_tracemalloc_sites_become_culprits_on_a_leak() -> None:
    top = [{"site": "pkg/mod.py:12", "size_diff_mb": 30.0, "count_diff": 900_000, "size_mb": 40.0},
           {"site": "pkg/other.py:3", "size_diff_mb": 0.001, "count_diff": 2, "size_mb": 0.01}]
    v = analyse(rows({"rss_mb": [500 + 10 * i for i in range(8)]}), 2, 5.0, 0.25, trace_top=top)
    assert any("pkg/mod.py:12" in c for c in v["culprits"])
    assert not any("pkg/other.py" in c for c in v["culprits"])


def test_two_measured_rounds_use_only_the_growth_rule() -> None:
    v = analyse(rows({"rss_mb": [500, 500, 501, 502], "tensor_count": [1, 2, 3, 4]}), 2, 5.0, 0.25)
    assert v["rounds_measured"] == 2 and v["verdict"] == "clean" and v["notes"]
    with pytest.raises(ValueError):
        analyse(rows({"rss_mb": [500, 500, 501]}), 2, 5.0, 0.25)


def test_step_samples_do_not_enter_the_verdict() -> None:
    samples = rows({"rss_mb": [500.0] * 8})
    samples += [{"step": 100 + i, "round": i, "phase": "step", "rss_mb": 900.0 + i} for i in range(8)]
    assert analyse(samples, 2, 1.0, 0.25)["verdict"] == "clean"


def test_fit_and_t_table() -> None:
    slope, t = fit([1.0, 2.0, 3.0, 4.0])
    assert slope == pytest.approx(1.0) and t == float("inf")
    assert fit([5.0, 5.0, 5.0]) == (0.0, 0.0)
    assert t_critical(1) > t_critical(4) > t_critical(100) == 2.33
    assert t_critical(11) == t_critical(10)
