"""Probes of a2vtool.memory.probes see the tensors, graphs and Python objects a test creates."""

from __future__ import annotations

import pytest
import torch

from a2vtool.memory import probes


def test_sample_has_the_process_probes_and_meta() -> None:
    s = probes.sample(3, 1, "round", tensors=False)
    assert (s["step"], s["round"], s["phase"]) == (3, 1, "round")
    assert s["rss_mb"] > 10 and s["uss_mb"] > 1 and s["fds"] >= 3
    assert "tensor_count" not in s
    if not torch.cuda.is_available():
        assert not any(k.startswith("cuda") for k in s)
    assert set(probes.flat(s)) >= {"rss_mb", "uss_mb", "fds"}
    assert "phase" not in probes.flat(s)


def test_tensors_parameters_graphs_and_containers_are_counted() -> None:
    before = probes.sample(0, 0, "round")
    kept = [torch.zeros(33, 17) for _ in range(3)]
    view = kept[0][:5]  # shares storage: bytes counted once
    param = torch.nn.Parameter(torch.ones(29, 31))
    out = (param * 2).sum()  # has autograd history
    big = list(range(10**6, 10**6 + 50_000))
    after = probes.sample(1, 0, "round")
    key = probes.group_key("cpu", torch.float32, (33, 17))
    assert after["tensor_groups"][key][0] - before["tensor_groups"].get(key, [0, 0])[0] == 3
    assert after["tensor_groups"][key][1] - before["tensor_groups"].get(key, [0, 0])[1] == 3 * 33 * 17 * 4
    assert after["tensor_count"] - before["tensor_count"] == 6
    expected_mb = (3 * 33 * 17 + 29 * 31 + 1) * 4 / probes.MB
    assert abs(after["tensor_mb"] - before["tensor_mb"] - expected_mb) < 1e-6
    assert after["requires_grad_tensors"] - before["requires_grad_tensors"] == 2
    assert after["graph_tensors"] - before["graph_tensors"] == 1
    assert any("grad_fn=SumBackward0" in k for k in after["graph_groups"])
    ours = [k for k, n in after["py_containers"].items() if k.startswith("list[int]@") and n == 50_000]
    assert ours == [f"list[int]@{id(big):x}"]
    assert after["py_types"]["list"] >= 1
    del kept, view, param, out, big


def test_trace_probes_name_the_growing_line() -> None:
    started = probes.trace_start()
    try:
        first = probes.trace_snapshot()
        grow = [str(i) * 3 for i in range(20_000)]  # this line must be the top site
        s = probes.sample(0, 0, "round", tensors=False, trace=True)
        top = probes.trace_top(first, probes.trace_snapshot())
    finally:
        if started:
            import tracemalloc

            tracemalloc.stop()
    assert s["traced_mb"] > 0
    assert top[0]["site"].endswith("test_mem_probes.py:" + str(test_trace_probes_name_the_growing_line.__code__.co_firstlineno + 4))
    assert top[0]["count_diff"] >= 20_000
    del grow


def test_short_paths() -> None:
    assert probes._short("/x/lib/python3.11/site-packages/torch/_ops.py") == "torch/_ops.py"
    assert probes._short("/work/main/a2vtool/memory/runner.py") == "a2vtool/memory/runner.py"


def test_cuda_probes_sum_devices_and_reset_the_peak(monkeypatch: pytest.MonkeyPatch) -> None:
    resets: list[int] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda i: (i + 1) << 20)
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda i: (i + 1) << 21)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda i: (i + 1) << 22)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda i: resets.append(i))
    assert probes.cuda_probes() == {"cuda_allocated_mb": 3.0, "cuda_reserved_mb": 6.0, "cuda_peak_mb": 12.0}
    assert resets == [0, 1]
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    assert probes.cuda_probes() == {"cuda_allocated_mb": 0.0, "cuda_reserved_mb": 0.0, "cuda_peak_mb": 0.0}


def test_cuda_history_is_a_no_op_without_cuda() -> None:
    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    assert probes.cuda_history_start() is False
