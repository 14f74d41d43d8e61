"""Benchmark of the federate engines side by side in one run: local, flower-sim (Ray) and flower (loopback deployment).

    FLWR_TELEMETRY_ENABLED=0 HF_HUB_OFFLINE=1 python benchmarks/engines.py [--quick]

Prints `BENCH <name> <value> <unit> target <op><number> PASS|FAIL` lines:
  engines.sim_round_ratio     flower-sim mean round time / local mean round time (same tiny 4-node config)
  engines.flower_round_ratio  flower (SuperLink + 4 SuperNodes on 127.0.0.1) mean round time / local
  engines.comm_bytes          array-record bytes sent + received by the server per round (flower); target: what the
                              protocol needs (adapters down twice, adapters + two AdamW moments up, per node) +25%
                              (Flower serialises each tensor as .npy: a ~128-byte header per array)
Round times exclude round 1 (warm-up: Ray actors, first imports); every engine is measured the same way.
Needs the flower extra: pip install -e '.[flower]'.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from _bench import bench  # noqa: E402  (benchmarks/ is on sys.path when a script runs)

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["FLWR_TELEMETRY_ENABLED"] = "0"
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")




def world(root: Path, classes: list[str], clips: int) -> dict:
    import torch

    from a2vtool import tiny
    from a2vtool.embeddings import import_tensors

    tiny.build_tiny_flux(root / "flux")
    g = torch.Generator().manual_seed(0)
    means = {c: torch.randn(8, 32, generator=g) for c in classes}
    rows = [(f"{c}-{i:03d}", c, None, means[c] + 0.1 * torch.randn(8, 32, generator=g)) for c in classes for i in range(clips)]
    import_tensors(root / "emb", rows, dataset="synthetic")
    return {"flux": root / "flux", "emb": root / "emb", "targets": root / "text-targets"}


def config(w: dict, out: Path, classes: list[str], rounds: int) -> object:
    from a2vtool.config import validate
    from a2vtool.federated.config import FederateConfig

    nodes = [{"classes": classes[i::4]} for i in range(4)]
    return validate(FederateConfig, {
        "name": "bench", "nodes": nodes, "rounds": rounds, "out": str(out), "device": "cpu", "seed": 0,
        "data": {"embeddings": str(w["emb"]), "dataset": "synthetic", "ratios": [0.7, 0.15, 0.15]},
        "pipeline": {"name_or_path": str(w["flux"]), "max_sequence_length": 24, "targets_root": str(w["targets"])},
        "adapters": {"hidden": [32], "width": 16, "heads": 2, "dropout": 0.0},
        "training": {"local_epochs": 1, "batch_size": 8}, "eval": {"cross": False}}, "bench")


def local_rounds(cfg: object, out: Path) -> list[float]:
    from a2vtool.federated.loop import LocalEngine

    fed = LocalEngine(cfg, out)
    fed.setup()
    walls = []
    try:
        for r in range(1, cfg.rounds + 1):
            t0 = time.perf_counter()
            fed.run_round(r)
            walls.append(time.perf_counter() - t0)
        fed.finish()
    finally:
        fed.close()
    return walls


def engine_log(out: Path) -> list[dict]:
    return [json.loads(ln) for ln in (out / "engine.jsonl").read_text().splitlines() if ln.strip()]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    rounds, clips = (3, 12) if a.quick else (5, 24)
    import torch

    from a2vtool.federated.flower_engine import EngineOptions
    from a2vtool.stages.federate import run

    torch.set_num_threads(1)  # the same threads per node as the Flower engines give each node
    os.environ["OMP_NUM_THREADS"] = "1"
    classes = [f"c{i}" for i in range(8)]
    with tempfile.TemporaryDirectory(prefix="a2v-bench-engines-") as d:
        root = Path(d)
        w = world(root, classes, clips)
        local = statistics.mean(local_rounds(config(w, root / "local", classes, rounds), root / "local")[1:])
        run(config(w, root / "sim", classes, rounds), engine="flower-sim",
            options=EngineOptions(cpus_per_node=1, round_timeout=600))
        sim = engine_log(root / "sim")
        man = run(config(w, root / "dep", classes, rounds), engine="flower",
            options=EngineOptions(launch_local=True, round_timeout=600))
        dep = engine_log(root / "dep")
        from safetensors.torch import load_file

        state_bytes = sum(t.numel() * t.element_size() for t in load_file(str(root / "dep/final/adapters-global.safetensors")).values())
    # per node and round: adapters down twice (train, evaluate), adapters up, two AdamW moments (parameter-sized) up;
    # plus each node's own starting adapters once per run (the priming), spread over the rounds
    expected = 4 * (3 * state_bytes + 2 * 4 * man["parameters"]) + 4 * state_bytes / rounds
    sim_t = statistics.mean(x["wall"] for x in sim[1:])
    dep_t = statistics.mean(x["wall"] for x in dep[1:])
    comm = statistics.mean(x["bytes_down"] + x["bytes_up"] for x in dep)
    print(f"# local {local:.3f}s/round, flower-sim {sim_t:.3f}s/round, flower {dep_t:.3f}s/round "
          f"(4 nodes, {rounds} rounds, {os.cpu_count()} CPUs)", flush=True)
    ok = [bench("engines.sim_round_ratio", sim_t / local, "ratio", "<=", 1.5),
          bench("engines.flower_round_ratio", dep_t / local, "ratio", "<=", 1.5),
          bench("engines.comm_bytes", comm, "bytes/round", "<=", expected * 1.25)]  # + npy header per array
    return 0 if all(ok) else 1


if __name__ == "__main__":
    sys.exit(main())
