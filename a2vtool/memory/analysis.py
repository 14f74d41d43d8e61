"""Leak verdicts from memory samples: growth and slope per probe, count growth, and the culprits that explain it.

The rule (documented in docs and `RULE` below). Only samples with phase "round" whose round >= warmup count;
call them y_0..y_{n-1} (n = rounds - warmup). For a memory probe (MB) with base = max(y_0, 1 MB):

* growth_pct      = 100 * (y_{n-1} - y_0) / base                 (first to last measured round)
* slope           = least-squares slope of y against the round number (units per round)
* slope_pct       = 100 * slope / base                            (per round)
* fit_growth_pct  = slope_pct * (n - 1)                           (growth the fitted line implies)
* t               = slope / standard error of the slope           (n >= 3)

A memory probe leaks when its fitted growth is at least MIN_GROWTH_MB and
  (G) growth_pct > threshold_pct and fit_growth_pct > threshold_pct        (grew past the threshold), or
  (S) slope_pct > slope_tolerance_pct and t >= the one-sided 99 % critical value of Student's t with n-2
      degrees of freedom                                                    (grows steadily, even if slowly).
A count probe (live tensors, tensors with autograd history, tensors requiring grad, open fds) leaks when it
strictly increases at every measured round (n >= 3). Python objects leak when a container's length or the
number of objects of one type strictly increases at every measured round by PY_MIN_PER_ROUND or more on average.
"""

from __future__ import annotations

import math
from typing import Any

from a2vtool.memory.probes import PROBES, flat

MIN_GROWTH_MB = 1.0      # growth below this (over the whole measured window) is never a leak
PY_MIN_PER_ROUND = 1000  # Python containers / types must grow by at least this many items per round
TRACE_MIN_MB = 0.1       # tracemalloc sites that grew less are not named as culprits
MIN_COUNT_ROUNDS = 3     # the strictly-increasing rules need this many measured rounds
# one-sided 99 % critical values of Student's t by degrees of freedom (n - 2); 2.33 beyond the table
T_CRIT = {1: 31.82, 2: 6.965, 3: 4.541, 4: 3.747, 5: 3.365, 6: 3.143, 7: 2.998, 8: 2.896, 9: 2.821, 10: 2.764,
          12: 2.681, 15: 2.602, 20: 2.528, 30: 2.457, 60: 2.390}

RULE = ("memory probe leaks when it grew >= 1 MB and either (G) first->last growth and the least-squares fitted "
        "growth both exceed threshold_pct, or (S) the slope exceeds slope_tolerance_pct per round and is "
        "significantly positive (one-sided t-test, p<0.01); a tensor/autograd/fd count leaks when it rises at "
        "every measured round; Python objects leak when a container or object type grows at every measured "
        "round by >= 1000 items/round")


def t_critical(dof: int) -> float:
    """One-sided 99 % critical value of Student's t (the next smaller tabulated dof is used: conservative)."""
    if dof < 1:
        return math.inf
    if dof > 60:
        return 2.33
    return T_CRIT[max(d for d in T_CRIT if d <= dof)]


def fit(ys: list[float]) -> tuple[float, float]:
    """Least-squares slope of ys against 0..n-1 and its t statistic (inf for a perfect positive line, 0 if n < 3)."""
    n = len(ys)
    if n < 2:
        return 0.0, 0.0
    xm = (n - 1) / 2
    ym = sum(ys) / n
    sxx = sum((i - xm) ** 2 for i in range(n))
    slope = sum((i - xm) * (y - ym) for i, y in enumerate(ys)) / sxx
    if n < 3:
        return slope, 0.0
    resid = sum((y - (ym + slope * (i - xm))) ** 2 for i, y in enumerate(ys))
    se = math.sqrt(resid / (n - 2) / sxx)
    scale = max(abs(ym), 1e-12)
    if se <= 1e-9 * scale:
        return slope, (math.inf if slope > 1e-9 * scale else 0.0)
    return slope, slope / se


def strictly_increasing(ys: list[float]) -> bool:
    return len(ys) >= 2 and all(b > a for a, b in zip(ys, ys[1:]))


def measured(samples: list[dict[str, Any]], warmup: int) -> list[dict[str, Any]]:
    """The end-of-round samples after warm-up, in round order."""
    rows = [s for s in samples if s.get("phase", "round") == "round" and int(s.get("round", 0)) >= warmup]
    return sorted(rows, key=lambda s: int(s.get("round", 0)))


def probe_stats(name: str, ys: list[float], threshold_pct: float, slope_tolerance_pct: float) -> dict[str, Any]:
    """Growth, slope and the leak decision for one probe series (see the module docstring for the rule)."""
    family, unit, role = PROBES.get(name, ("other", "MB" if name.endswith("_mb") else "count", "info"))
    n = len(ys)
    first, last = ys[0], ys[-1]
    base = max(first, 1.0)  # 1 MB (or 1 object): no division by ~0 for probes that start empty
    slope, t = fit(ys)
    st: dict[str, Any] = {
        "family": family, "unit": unit, "role": role, "first": first, "last": last, "min": min(ys), "max": max(ys),
        "growth_pct": 100 * (last - first) / base, "slope_per_round": slope, "slope_pct_per_round": 100 * slope / base,
        "fit_growth_pct": 100 * slope * (n - 1) / base, "t_stat": t if math.isfinite(t) else 1e9,
        "strictly_increasing": strictly_increasing(ys), "leak": False, "reason": None,
    }
    if role == "memory":
        big_enough = slope * (n - 1) >= MIN_GROWTH_MB
        if big_enough and st["growth_pct"] > threshold_pct and st["fit_growth_pct"] > threshold_pct:
            st["leak"] = True
            st["reason"] = (f"{name} grew {st['growth_pct']:.1f}% over {n} measured rounds "
                            f"({first:.1f} -> {last:.1f} {unit}), above the {threshold_pct:g}% threshold")
        elif (big_enough and n >= 3 and st["slope_pct_per_round"] > slope_tolerance_pct
              and t >= t_critical(n - 2)):
            st["leak"] = True
            st["reason"] = (f"{name} grows steadily: {slope:+.2f} {unit}/round ({st['slope_pct_per_round']:.2f}%/round "
                            f"> {slope_tolerance_pct:g}% tolerance, t={min(t, 1e9):.1f}), {first:.1f} -> {last:.1f} {unit}")
    elif role == "count" and n >= MIN_COUNT_ROUNDS and st["strictly_increasing"]:
        st["leak"] = True
        st["reason"] = f"{name} rises at every measured round: {first:.0f} -> {last:.0f} ({slope:+.1f}/round)"
    return st


def _series(rows: list[dict[str, Any]], part: str) -> dict[str, list[float]]:
    """Per key of a nested part (tensor_groups, py_types, ...), its value in every row (missing -> 0)."""
    keys: set[str] = set()
    for r in rows:
        keys.update((r.get(part) or {}).keys())
    out: dict[str, list[float]] = {}
    for k in keys:
        vals = []
        for r in rows:
            v = (r.get(part) or {}).get(k, 0)
            vals.append(float(v[0] if isinstance(v, (list, tuple)) else v))
        out[k] = vals
    return out


def _group_bytes(rows: list[dict[str, Any]], key: str) -> list[float]:
    return [float(((r.get("tensor_groups") or {}).get(key) or [0, 0])[1]) for r in rows]


def _growing(series: dict[str, list[float]], min_per_round: float) -> list[tuple[str, list[float], float]]:
    """Keys strictly increasing at every row by `min_per_round` on average, biggest growth first."""
    hits = []
    for k, ys in series.items():
        if len(ys) >= MIN_COUNT_ROUNDS and strictly_increasing(ys):
            per = (ys[-1] - ys[0]) / (len(ys) - 1)
            if per >= min_per_round:
                hits.append((k, ys, per))
    return sorted(hits, key=lambda h: -h[2])


def find_culprits(rows: list[dict[str, Any]], probes: dict[str, dict[str, Any]],
                  trace_top: list[dict[str, Any]] | None) -> tuple[list[str], list[dict[str, Any]], bool]:
    """Human-readable culprits, their structured form, and whether Python objects grow (a leak on its own)."""
    msgs: list[str] = []
    details: list[dict[str, Any]] = []

    def add(kind: str, name: str, msg: str, ys: list[float] | None = None, per: float | None = None) -> None:
        msgs.append(msg)
        details.append({"kind": kind, "name": name, "message": msg, "first": ys[0] if ys else None,
                        "last": ys[-1] if ys else None, "per_round": per})

    graph = probes.get("graph_tensors")
    if graph and graph["leak"]:
        grads = _growing(_series(rows, "graph_groups"), 1e-9)
        where = "; ".join(f"{k} (+{per:.1f}/round)" for k, _, per in grads[:3])
        add("autograd", "graph_tensors",
            f"tensors with autograd history are growing: {graph['first']:.0f} -> {graph['last']:.0f} "
            f"({graph['slope_per_round']:+.1f}/round){': ' + where if where else ''}; something keeps outputs or "
            "losses with their graph (store loss.item() or t.detach().cpu())",
            None, graph["slope_per_round"])
    rg = probes.get("requires_grad_tensors")
    if rg and rg["leak"] and not (graph and graph["leak"]):
        add("autograd", "requires_grad_tensors",
            f"tensors that require grad are growing: {rg['first']:.0f} -> {rg['last']:.0f} "
            f"({rg['slope_per_round']:+.1f}/round): new parameters or leaves are created and kept every round")
    for key, ys, per in _growing(_series(rows, "tensor_groups"), 1e-9)[:5]:
        b = _group_bytes(rows, key)
        mb = (b[-1] - b[0]) / max(len(b) - 1, 1) / (1 << 20)
        add("tensor_group", key, f"tensor group {key} grows every round: {ys[0]:.0f} -> {ys[-1]:.0f} tensors "
            f"(+{per:.1f}/round, +{mb:.2f} MB/round)", ys, per)
    py_leak = False
    for key, ys, per in _growing(_series(rows, "py_containers"), PY_MIN_PER_ROUND)[:3]:
        tname = key.split("@")[0]
        inner = tname[tname.find("[") + 1:-1] if "[" in tname else "?"
        outer = tname.split("[")[0]
        py_leak = True
        add("python_container", key, f"Python objects growing: a {tname} (id 0x{key.split('@')[1]}) grows by "
            f"{per:,.0f} items/round ({ys[0]:,.0f} -> {ys[-1]:,.0f}); {outer}/{inner} objects growing", ys, per)
    for key, ys, per in _growing(_series(rows, "py_types"), PY_MIN_PER_ROUND)[:3]:
        py_leak = True
        add("python_type", key, f"Python objects growing: {key} objects +{per:,.0f}/round "
            f"({ys[0]:,.0f} -> {ys[-1]:,.0f})", ys, per)
    for site in [s for s in trace_top or [] if s["size_diff_mb"] >= TRACE_MIN_MB][:3]:
        add("tracemalloc", site["site"], f"allocation site {site['site']} grew +{site['size_diff_mb']:.2f} MB "
            f"({site['count_diff']:+,} blocks) since the first measured round")
    return msgs, details, py_leak


def analyse(samples: list[dict[str, Any]], warmup: int, threshold_pct: float, slope_tolerance_pct: float,
            *, trace_top: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Decide clean or leak from `samples` (see the module docstring); pure, no I/O.

    Returns {"verdict": "clean"|"leak", "rule", "warmup", "rounds_measured", "threshold_pct",
    "slope_tolerance_pct", "probes": {name: stats}, "reasons": [str], "culprits": [str],
    "culprit_details": [dict], "notes": [str], "tracemalloc_top": [...]}.
    """
    rows = measured(samples, warmup)
    notes: list[str] = []
    if len(rows) < 2:
        raise ValueError(f"need at least 2 measured rounds after a warm-up of {warmup}, got {len(rows)}")
    if len(rows) < MIN_COUNT_ROUNDS:
        notes.append(f"only {len(rows)} measured rounds: the count and slope rules need {MIN_COUNT_ROUNDS}; "
                     "run more rounds")
    names: list[str] = []
    for r in rows:
        names.extend(k for k in flat(r) if k not in names)
    probes: dict[str, dict[str, Any]] = {}
    for name in names:
        ys = [flat(r).get(name) for r in rows]
        if any(y is None for y in ys):
            notes.append(f"{name} is missing from some measured rounds: not analysed")
            continue
        probes[name] = probe_stats(name, [float(y) for y in ys], threshold_pct, slope_tolerance_pct)
    reasons = [st["reason"] for st in probes.values() if st["leak"]]
    culprits, details, py_leak = find_culprits(rows, probes, trace_top)
    if py_leak:
        reasons.append("Python objects grow at every measured round (see culprits)")
    leak = bool(reasons)
    if leak and not details:
        culprits.append("no tensor group or Python object grows: the growth is outside objects Python can see "
                        "(native allocations, the CUDA caching allocator); re-run with --trace or --cuda-snapshot")
        details.append({"kind": "unknown", "name": "", "message": culprits[-1], "first": None, "last": None,
                        "per_round": None})
    return {
        "verdict": "leak" if leak else "clean",
        "rule": RULE,
        "warmup": warmup,
        "rounds_measured": len(rows),
        "first_measured_round": int(rows[0].get("round", warmup)),
        "threshold_pct": threshold_pct,
        "slope_tolerance_pct": slope_tolerance_pct,
        "probes": probes,
        "reasons": reasons,
        "culprits": culprits if leak else [],
        "culprit_details": details if leak else [],
        "suspects": culprits if not leak else [],
        "notes": notes,
        "tracemalloc_top": trace_top or [],
    }
