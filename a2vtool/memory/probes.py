"""Memory probes: process RSS/USS, CUDA allocator counters, live torch tensors and Python objects found through gc."""

from __future__ import annotations

import gc
import heapq
import os
import time
from collections import Counter
from typing import Any

MB = float(1 << 20)

# probe name -> (family, unit, role). role "memory": growth/slope rule; "count": strictly-increasing rule;
# "info": reported and plotted, never part of the verdict.
PROBES: dict[str, tuple[str, str, str]] = {
    "rss_mb": ("host", "MB", "memory"),
    "uss_mb": ("host", "MB", "memory"),
    "cuda_allocated_mb": ("cuda", "MB", "memory"),
    "cuda_reserved_mb": ("cuda", "MB", "memory"),
    "cuda_peak_mb": ("cuda", "MB", "info"),
    "tensor_count": ("tensors", "count", "count"),
    "tensor_mb": ("tensors", "MB", "memory"),
    "graph_tensors": ("autograd", "count", "count"),
    "requires_grad_tensors": ("autograd", "count", "count"),
    "py_objects": ("python", "count", "info"),
    "traced_mb": ("python", "MB", "info"),
    "fds": ("fds", "count", "count"),
}

# keys of a sample that are not probes
META_KEYS = ("step", "round", "phase", "label", "t")
# nested (non-numeric) parts of a sample
NESTED_KEYS = ("tensor_groups", "graph_groups", "py_types", "py_containers")

TOP_TYPES = 40       # gc type counts kept per sample
TOP_CONTAINERS = 20  # largest list/dict/set/deque objects kept per sample
CONTAINER_TYPES = ("list", "dict", "set", "deque", "OrderedDict", "defaultdict")

_T0 = time.monotonic()


def process_probes() -> dict[str, float]:
    """RSS and USS (MB) and open file descriptors of this process; a probe psutil cannot read is left out."""
    import psutil

    proc = psutil.Process(os.getpid())
    out: dict[str, float] = {}
    try:
        full = proc.memory_full_info()
        out["rss_mb"] = full.rss / MB
        out["uss_mb"] = full.uss / MB
    except (psutil.AccessDenied, AttributeError, OSError):
        out["rss_mb"] = proc.memory_info().rss / MB
    try:
        out["fds"] = float(proc.num_fds() if hasattr(proc, "num_fds") else proc.num_handles())
    except (psutil.AccessDenied, OSError):
        pass
    return out


def cuda_probes(reset_peak: bool = True) -> dict[str, float]:
    """CUDA allocator counters (MB) summed over devices; empty without CUDA. Never initialises CUDA itself.

    `cuda_peak_mb` is the peak allocated since the previous sample: the peak counter is reset after reading.
    """
    import torch

    if not torch.cuda.is_available():
        return {}
    out = {"cuda_allocated_mb": 0.0, "cuda_reserved_mb": 0.0, "cuda_peak_mb": 0.0}
    if not torch.cuda.is_initialized():
        return out
    for i in range(torch.cuda.device_count()):
        out["cuda_allocated_mb"] += torch.cuda.memory_allocated(i) / MB
        out["cuda_reserved_mb"] += torch.cuda.memory_reserved(i) / MB
        out["cuda_peak_mb"] += torch.cuda.max_memory_allocated(i) / MB
        if reset_peak:
            torch.cuda.reset_peak_memory_stats(i)
    return out


def group_key(device: Any, dtype: Any, shape: tuple[int, ...]) -> str:
    """'cpu float32 [1024, 1024]': how tensor groups are named in samples and reports."""
    return f"{device} {str(dtype).replace('torch.', '')} [{', '.join(str(d) for d in shape)}]"


def _container_key(o: Any, tname: str) -> str:
    """'list[int]@7f..': the container's type, the type of one item (lists/deques), and its id."""
    inner = ""
    if tname in ("list", "deque") and len(o):
        inner = f"[{type(o[-1]).__name__}]"
    return f"{tname}{inner}@{id(o):x}"


def scan_objects() -> dict[str, Any]:
    """One pass over gc.get_objects(): live tensors (nn.Parameter included) and Python object counts.

    Returns flat probes (tensor_count, tensor_mb with shared storages counted once, graph_tensors with
    grad_fn set, requires_grad_tensors, py_objects) and nested groups: tensor_groups {group: [count, bytes]},
    graph_groups {group grad_fn=Name: count}, py_types {type: count} (the most common) and py_containers
    {list[int]@id: len} (the largest containers). Holds no reference to any object after it returns.
    """
    import torch

    groups: dict[str, list[int]] = {}
    graph_groups: Counter[str] = Counter()
    storages: dict[tuple[str, int], int] = {}
    n_tensors = n_graph = n_grad = 0
    objs = gc.get_objects()
    try:
        by_type = Counter(map(type, objs))  # C speed; the per-object work below only touches a few types
        tensor_types = {t for t in by_type if issubclass(t, torch.Tensor)}
        container_types = {t for t in by_type if t.__name__ in CONTAINER_TYPES}
        tensors_found = [o for o in objs if type(o) in tensor_types]
        conts = [o for o in objs if type(o) in container_types]
    finally:
        del objs
    types: Counter[str] = Counter()
    for t, n in by_type.items():
        types[t.__name__] += n
    sized: list[tuple[int, str]] = []
    for o in conts:
        try:
            size = len(o)
        except Exception:  # noqa: BLE001 - a broken __len__ must not break the probe
            continue
        if size >= 1000:
            sized.append((size, _container_key(o, type(o).__name__)))
    del conts
    containers = heapq.nlargest(TOP_CONTAINERS, sized)
    for o in tensors_found:
        try:
            n_tensors += 1
            nbytes = o.nelement() * o.element_size()
            key = group_key(o.device, o.dtype, tuple(o.shape))
            g = groups.setdefault(key, [0, 0])
            g[0] += 1
            g[1] += nbytes
            if o.requires_grad:
                n_grad += 1
            if o.grad_fn is not None:
                n_graph += 1
                graph_groups[f"{key} grad_fn={type(o.grad_fn).__name__}"] += 1
            if o.layout == torch.strided and o.device.type != "meta":
                st = o.untyped_storage()
                storages[(str(o.device), st.data_ptr())] = st.nbytes()
        except Exception:  # noqa: BLE001 - sparse, fake or otherwise exotic tensors
            continue
    del tensors_found
    return {
        "tensor_count": float(n_tensors),
        "tensor_mb": sum(storages.values()) / MB,
        "graph_tensors": float(n_graph),
        "requires_grad_tensors": float(n_grad),
        "py_objects": float(sum(types.values())),
        "tensor_groups": groups,
        "graph_groups": dict(graph_groups),
        "py_types": dict(types.most_common(TOP_TYPES)),
        "py_containers": {k: n for n, k in containers},
    }


def sample(step: int, round: int, phase: str, *, tensors: bool = True, trace: bool = False) -> dict[str, Any]:
    """Collect garbage, then read every probe. `step` is the sample's sequence number, `round` the round it
    follows (-1 for the baseline after setup), `phase` one of "setup", "step", "round".

    The result holds flat numeric probes (see PROBES) plus, with `tensors`, the nested groups of scan_objects;
    with `trace` (tracemalloc running) `traced_mb` is the Python heap traced since tracing started.
    """
    gc.collect()
    s: dict[str, Any] = {"step": step, "round": round, "phase": phase, "t": round_t()}
    s.update(process_probes())
    s.update(cuda_probes())
    if tensors:
        s.update(scan_objects())
    if trace:
        import tracemalloc

        if tracemalloc.is_tracing():
            s["traced_mb"] = tracemalloc.get_traced_memory()[0] / MB
    return s


def round_t() -> float:
    return time.monotonic() - _T0


def flat(s: dict[str, Any]) -> dict[str, float]:
    """The numeric probes of a sample (no meta keys, no nested groups)."""
    return {k: float(v) for k, v in s.items() if k not in META_KEYS and k not in NESTED_KEYS
            and isinstance(v, (int, float)) and not isinstance(v, bool)}


def trace_start(frames: int = 1) -> bool:
    """Start tracemalloc unless it already runs; returns whether this call started it."""
    import tracemalloc

    if tracemalloc.is_tracing():
        return False
    tracemalloc.start(frames)
    return True


def trace_snapshot() -> Any:
    """A tracemalloc snapshot (filtering happens on the per-line statistics: filtering millions of traces is slow)."""
    import tracemalloc

    return tracemalloc.take_snapshot()


def _ignored_site(filename: str) -> bool:
    import tracemalloc

    return (filename in (tracemalloc.__file__, __file__) or filename.startswith("<frozen importlib")
            or filename == "<unknown>")


def trace_top(first: Any, last: Any, limit: int = 10) -> list[dict[str, Any]]:
    """Allocation sites ('lineno') that grew most from snapshot `first` to `last`, largest first; the frames of
    tracemalloc, of this module and of the import machinery are left out."""
    out: list[dict[str, Any]] = []
    for st in last.compare_to(first, "lineno"):
        if st.size_diff <= 0:  # sorted by |size_diff|: shrinking sites are mixed in
            continue
        frame = st.traceback[0]
        if _ignored_site(frame.filename):
            continue
        out.append({"site": f"{_short(frame.filename)}:{frame.lineno}", "size_diff_mb": st.size_diff / MB,
                    "count_diff": st.count_diff, "size_mb": st.size / MB})
        if len(out) >= limit:
            break
    return out


def _short(path: str) -> str:
    """Shorten a file path to start at its package folder (…/a2vtool/memory/runner.py -> a2vtool/memory/runner.py)."""
    parts = path.replace("\\", "/").split("/")
    for marker in ("site-packages", "dist-packages"):
        if marker in parts:
            return "/".join(parts[parts.index(marker) + 1:])
    if "a2vtool" in parts:
        return "/".join(parts[len(parts) - 1 - parts[::-1].index("a2vtool"):])
    return path


def cuda_history_start(max_entries: int = 100_000) -> bool:
    """Start recording CUDA allocator history for a snapshot; False (and nothing done) without CUDA."""
    import torch

    if not torch.cuda.is_available():
        return False
    torch.cuda.memory._record_memory_history(max_entries=max_entries)
    return True


def cuda_history_dump(path: str) -> None:
    """Write the recorded allocator history (PyTorch's pickle format for pytorch.org/memory_viz) and stop recording."""
    import torch

    try:
        torch.cuda.memory._dump_snapshot(path)
    finally:
        torch.cuda.memory._record_memory_history(enabled=None)
