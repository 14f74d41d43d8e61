"""A run's metrics: metrics.jsonl lines, merging per-node evaluations, the per-node summary of the last round."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def round_of(line: str) -> float:
    """The round of a metrics line; a blank or torn line (a kill mid-write) counts as beyond every round."""
    try:
        return json.loads(line)["round"]
    except (ValueError, KeyError, TypeError):
        return float("inf")


def round_floats(d: dict[str, Any]) -> dict[str, Any]:
    return {k: (round(v, 8) if isinstance(v, float) else round_floats(v) if isinstance(v, dict)
                else [round(x, 8) if isinstance(x, float) else x for x in v] if isinstance(v, list) else v)
            for k, v in d.items()}


def read_metrics(path: Path, r: int | None = None) -> list[dict[str, Any]]:
    if not Path(path).exists():
        return []
    rows = [json.loads(ln) for ln in Path(path).read_text().splitlines() if ln.strip()]
    return [x for x in rows if r is None or x["round"] == r]


def merge_evals(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """evaluate() results of one model on disjoint groups of clips -> the figures over all of them (n-weighted)."""
    parts = [p for p in parts if p.get("n")]
    n = sum(p["n"] for p in parts)
    if not n:
        return {"n": 0}
    out: dict[str, Any] = {"n": n}
    for k in ("mse", "cos"):
        out[k] = {s: sum(p[k][s] * p["n"] for p in parts) / n for s in parts[0][k]}
    out["acc"] = sum(round(p["acc"] * p["n"]) for p in parts) / n
    out["chance"] = parts[0]["chance"]
    return out


def summarise(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Per node (and global): the last round's test accuracy figures, for tables and manifests."""
    out: dict[str, Any] = {}
    for rec in records:
        ev = rec.get("eval") or {}
        row: dict[str, Any] = {}
        for split, m in ev.items():
            if m.get("n"):
                row[split] = {k: m[k] for k in ("acc", "chance", "acc_own", "chance_own", "n") if k in m}
                row[split]["cos"] = sum(m["cos"].values()) / len(m["cos"])
        out[rec["node"]] = row
    return out
