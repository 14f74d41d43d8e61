"""memcheck outputs: memreport.json, memory.csv (one row per sample) and memory.png (one subplot per probe family)."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from a2vtool.artifacts import write_bytes_atomic, write_json_atomic
from a2vtool.memory.probes import PROBES, flat

REPORT_JSON = "memreport.json"
MEMORY_CSV = "memory.csv"
MEMORY_PNG = "memory.png"

FAMILIES: list[tuple[str, str, tuple[str, ...]]] = [
    ("host", "process memory (MB)", ("rss_mb", "uss_mb")),
    ("cuda", "CUDA memory (MB)", ("cuda_allocated_mb", "cuda_reserved_mb", "cuda_peak_mb")),
    ("tensors", "live tensors", ("tensor_count", "tensor_mb")),
    ("autograd", "tensors with autograd history", ("graph_tensors", "requires_grad_tensors")),
    ("python", "Python heap (tracemalloc, MB)", ("traced_mb",)),
    ("fds", "open file descriptors", ("fds",)),
]


def positions(samples: list[dict[str, Any]]) -> list[float]:
    """x of each sample: setup at 0, the end of round r at r+1, its step samples evenly inside (r, r+1)."""
    per_round: dict[int, int] = {}
    for s in samples:
        if s.get("phase") == "step":
            per_round[int(s["round"])] = per_round.get(int(s["round"]), 0) + 1
    seen: dict[int, int] = {}
    xs = []
    for s in samples:
        r = int(s.get("round", 0))
        if s.get("phase") == "setup":
            xs.append(0.0)
        elif s.get("phase") == "step":
            seen[r] = seen.get(r, 0) + 1
            xs.append(r + seen[r] / (per_round[r] + 1))
        else:
            xs.append(float(r + 1))
    return xs


def probe_columns(samples: list[dict[str, Any]]) -> list[str]:
    """Numeric probe names present in any sample, in PROBES order, then any others."""
    present: list[str] = []
    for s in samples:
        present.extend(k for k in flat(s) if k not in present)
    return [k for k in PROBES if k in present] + [k for k in present if k not in PROBES]


def write_csv(path: Path, samples: list[dict[str, Any]]) -> None:
    """One row per sample: step, round, phase, label, t, x, then one column per probe (blank where absent)."""
    cols = probe_columns(samples)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["step", "round", "phase", "label", "t", "x", *cols])
    for s, x in zip(samples, positions(samples)):
        f = flat(s)
        w.writerow([s.get("step", ""), s.get("round", ""), s.get("phase", ""), s.get("label", ""),
                    f"{float(s.get('t', 0.0)):.3f}", f"{x:.3f}", *(_num(f.get(c)) for c in cols)])
    write_bytes_atomic(path, buf.getvalue().encode())


def _num(v: float | None) -> str:
    if v is None:
        return ""
    return str(int(v)) if float(v).is_integer() else f"{v:.4f}"


def plot(path: Path, samples: list[dict[str, Any]], verdict: dict[str, Any], title: str = "") -> None:
    """memory.png: every probe against rounds, warm-up shaded, the threshold drawn above each MB probe's
    first measured value; a family with a leaking probe gets a red title."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    cols = set(probe_columns(samples))
    fams = [(key, label, [p for p in names if p in cols]) for key, label, names in FAMILIES]
    fams = [f for f in fams if f[2]]
    probes = verdict.get("probes", {})
    warmup = int(verdict.get("warmup", 0))
    thr = float(verdict.get("threshold_pct", 5.0))
    xs = positions(samples)
    fig, axes = plt.subplots(max(len(fams), 1), 1, figsize=(10, 2.4 * max(len(fams), 1) + 0.6), sharex=True,
                             squeeze=False)
    try:
        for ax, (key, label, names) in zip(axes[:, 0], fams):
            if warmup:
                ax.axvspan(0, warmup, color="0.85", label="warm-up")
            leak = False
            twin = ax.twinx() if key == "tensors" and len(names) == 2 else None
            for i, name in enumerate(names):
                target = twin if (twin is not None and name == "tensor_mb") else ax
                pts = [(x, flat(s).get(name)) for x, s in zip(xs, samples)]
                pts = [(x, y) for x, y in pts if y is not None]
                color = f"C{i}"
                st = probes.get(name, {})
                leak = leak or bool(st.get("leak"))
                mark = " LEAK" if st.get("leak") else ""
                target.plot([p[0] for p in pts], [p[1] for p in pts], marker=".", color=color,
                            label=f"{name}{mark}")
                if st and st.get("unit") == "MB" and st.get("role") == "memory":
                    target.axhline(st["first"] * (1 + thr / 100), color=color, linestyle="--", linewidth=0.8,
                                   label=f"{name} +{thr:g}%")
            ax.set_title(label + ("  — growing" if leak else ""), color="red" if leak else "black", fontsize=10)
            handles, labels = ax.get_legend_handles_labels()
            if twin is not None:
                h2, l2 = twin.get_legend_handles_labels()
                handles, labels = handles + h2, labels + l2
                twin.set_ylabel("MB", fontsize=8)
            ax.legend(handles, labels, fontsize=7, loc="upper left")
            ax.grid(alpha=0.3)
        axes[-1, 0].set_xlabel("round (x = end of round; warm-up shaded)")
        fig.suptitle(f"memcheck {title}: {verdict.get('verdict', '?').upper()}", fontsize=12,
                     color="red" if verdict.get("verdict") == "leak" else "green")
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=90)
    finally:
        plt.close(fig)
    write_bytes_atomic(path, buf.getvalue())


def write_report(out: Path, report: dict[str, Any], samples: list[dict[str, Any]], *, png: bool = True) -> dict[str, str]:
    """Write memreport.json (the report plus every sample's numeric probes), memory.csv and memory.png."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = {"report": str(out / REPORT_JSON), "csv": str(out / MEMORY_CSV)}
    write_csv(out / MEMORY_CSV, samples)
    if png:
        plot(out / MEMORY_PNG, samples, report, str(report.get("workload", "")))
        files["plot"] = str(out / MEMORY_PNG)
    report["files"] = {**report.get("files", {}), **files}
    rows = [{k: s.get(k) for k in ("step", "round", "phase", "label", "t") if k in s} | flat(s) for s in samples]
    write_json_atomic(out / REPORT_JSON, {**report, "samples": rows})
    return files
