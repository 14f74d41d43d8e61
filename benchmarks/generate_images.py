"""Benchmark generate-images on the tiny pipeline: batch speed-up and RSS growth over consecutive renders.

Prints `BENCH <name> <value> <unit> target <op><number> PASS|FAIL` lines. `--quick` keeps it under a minute.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from _bench import bench  # noqa: E402  (benchmarks/ is on sys.path when a script runs)

os.environ.setdefault("HF_HUB_OFFLINE", "1")




def setup(root: Path, family: str, clips: int) -> dict[str, Any]:
    import torch

    from a2vtool.embeddings import import_tensors
    from a2vtool.federated.checkpoint import save_adapters
    from a2vtool.models.adapters import AdapterSpec, build_adapters
    from a2vtool.tiny import build_tiny_flux, build_tiny_sd

    pipe = (build_tiny_flux if family == "flux" else build_tiny_sd)(root / family)
    d = 16
    g = torch.Generator().manual_seed(0)
    cache = import_tensors(root / "cache", [(f"c{i}", f"cls{i % 2}", "test", torch.randn(8, d, generator=g))
                                            for i in range(clips)], dataset="bench")
    shapes = {"prompt_embeds": (77, 32)} if family == "sd" else {"prompt_embeds": (8, 48), "pooled_prompt_embeds": (32,)}
    spec = AdapterSpec(hidden=[16], width=16, heads=2, dropout=0.0)
    m = build_adapters(d, shapes, spec, tokens=8)
    arch = {"in_dim": d, "slot_shapes": {k: list(v) for k, v in shapes.items()}, "spec": spec.resolved(8).model_dump(), "family": family}
    save_adapters(root / "adapters.safetensors", m.state_dict(), "bench", arch)
    return {"pipeline": str(pipe), "cache": cache, "adapters": root / "adapters.safetensors"}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="Smaller sizes (under a minute).")
    ap.add_argument("--family", choices=["sd", "flux"], default="sd")
    args = ap.parse_args()
    import psutil
    import torch

    from a2vtool.imaging.config import GenerateConfig
    from a2vtool.imaging.pipeline import release_pipeline
    from a2vtool.stages.generate_images import run

    torch.set_num_threads(1 if args.quick else torch.get_num_threads())
    n = 16 if args.quick else 48
    steps = 2 if args.quick else 4
    ok = True
    with tempfile.TemporaryDirectory(prefix="a2v-bench-images-") as tmp:
        root = Path(tmp)
        s = setup(root, args.family, n)

        def cfg(out: str, **kw: Any) -> GenerateConfig:
            base = dict(adapters=s["adapters"], embeddings=s["cache"], pipeline=s["pipeline"], splits=["test"], steps=steps,
                        height=32, width=32, negative="zeros", guidance=1.0, dtype="fp32", device="cpu", out=root / out)
            base.update(kw)
            return GenerateConfig(**base)

        try:
            run(cfg("warm", batch_size=8, count=8), keep_pipeline=True)  # load the pipeline once, warm kernels
            rates = {}
            for bs in (1, 8, 1, 8):  # interleaved, best of two, so machine noise hits both sides alike
                t = time.perf_counter()
                run(cfg(f"b{bs}-{time.perf_counter_ns()}", batch_size=bs), keep_pipeline=True)
                rates[bs] = max(rates.get(bs, 0.0), n / (time.perf_counter() - t))
            print(f"# images/s: batch 1 {rates[1]:.2f}, batch 8 {rates[8]:.2f} ({n} images of 32x32, {steps} steps, "
                  f"{args.family})", flush=True)
            ok &= bench("generate_images.batch_speedup", rates[8] / rates[1], "ratio", ">=", 1.0)
            proc = psutil.Process()
            rss = []
            for i in range(10):
                run(cfg(f"m{i}", batch_size=4, count=8), keep_pipeline=True)
                rss.append(proc.memory_info().rss)
            growth = 100.0 * (rss[-1] - rss[0]) / rss[0]
            print(f"# RSS after call 1 {rss[0] / 2**20:.1f} MiB, after call 10 {rss[-1] / 2**20:.1f} MiB", flush=True)
            ok &= bench("generate_images.rss_growth_10_calls", growth, "%", "<=", 2.0)
        finally:
            release_pipeline()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
