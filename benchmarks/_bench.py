"""Shared by the benchmark scripts: the one `BENCH <name> <value> <unit> target <op><number> PASS|FAIL` line."""

from __future__ import annotations

OPS = {">=": lambda v, t: v >= t, "<=": lambda v, t: v <= t, "==": lambda v, t: v == t}


def bench(name: str, value: float, unit: str, op: str, target: float, fmt: str = "{:.4g}") -> bool:
    """Print one BENCH line and return whether the target is met."""
    ok = OPS[op](value, target)
    shown_target = int(target) if op == "==" else f"{target:g}"
    print(f"BENCH {name} {fmt.format(value)} {unit} target {op}{shown_target} {'PASS' if ok else 'FAIL'}", flush=True)
    return ok
