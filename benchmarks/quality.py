"""Federated quality on real recordings: spoken-words (10 classes, 8 speakers), speaker = node, tiny AST embeddings,
tiny Stable Diffusion text targets. Every run side by side, at equal local epochs:

  central       one node holding every clip (natural partition merged into 1 node)
  none          standalone speaker nodes (no exchange)
  fedavg        FedAvg over the speaker nodes
  fedprox       FedProx
  kd            FedDF-style KD on samples of the learned generator (vae, per class)
  kd_gaussian   the same KD on samples of the per-class Gaussian generator

Generators are trained only on the train splits of the speaker nodes (never on a test clip). Accuracies are
embedding-space zero-shot accuracies (nearest class target) on the union of the nodes' test splits.

  quality.fedavg_vs_central        best global test acc of fedavg / central's           target >= 0.90
  quality.kd_vs_fedavg             best global test acc of kd / fedavg's                 target >= 1.00
  quality.fed_vs_standalone_cross  fedavg's global acc / mean standalone acc on the other speakers' test clips  >= 1.5
  quality.kd_teacher_synthetic_acc the teachers' accuracy on generator samples / their real validation accuracy >= 0.8
  quality.acc.<run>                each run's best test accuracy, target: above chance

Prints `BENCH <name> <value> <unit> target <op><number> PASS|FAIL` lines, '#' lines with settings and the
accuracy-per-round table. The work folder (default runs/bench-quality) keeps the embedding cache, so a re-run embeds
nothing. Usage: python benchmarks/quality.py [--quick] [--data ../shared/data/spoken-words] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
for _k, _v in (("TRANSFORMERS_VERBOSITY", "error"), ("DIFFUSERS_VERBOSITY", "error"), ("HF_HUB_DISABLE_PROGRESS_BARS", "1")):
    os.environ.setdefault(_k, _v)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _bench import bench  # noqa: E402  (benchmarks/ is on sys.path when a script runs)

RUNS = ("central", "none", "fedavg", "fedprox", "kd", "kd_gaussian")


def embed(data: Path, work: Path, tiny: dict[str, Path]) -> Path:
    from a2vtool.config import validate
    from a2vtool.stages.embed import EmbedConfig, run

    cfg = validate(EmbedConfig, {"dataset": {"kind": "csv", "root": str(data), "name": "spoken"},
                                 "model": {"name_or_path": str(tiny["ast"])}, "duration": 2.5, "token_mode": "pool:16",
                                 "cache_root": str(work / "emb"), "device": "cpu", "seed": 0}, "benchmark")
    s = run(cfg)
    print(f"# embed: {s['clips']} clips ({s['computed']} computed, {s['reused']} cached), tokens {s['shape']}", flush=True)
    return Path(s["cache"])


def base_config(work: Path, emb: Path, tiny: dict[str, Path], quick: bool) -> dict[str, Any]:
    return {
        "data": {"embeddings": str(emb), "partition": {"kind": "natural", "by": "speaker"}},
        "pipeline": {"name_or_path": str(tiny["sd"]), "targets_root": str(work / "text-targets")},
        "adapters": {"hidden": [128], "width": 128, "heads": 4, "dropout": 0.1},
        "training": {"local_epochs": 5, "batch_size": 16, "lr": 1e-3},
        "eval": {"splits": ["val", "test"], "cross": False},
        "checkpoints": {"keep_last": 1},
        "rounds": 6 if quick else 12, "device": "cpu", "seed": 0,
    }


def _merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = json.loads(json.dumps(a))
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def federate(work: Path, name: str, base: dict[str, Any], over: dict[str, Any]) -> tuple[list[dict[str, Any]], float]:
    from a2vtool import ui
    from a2vtool.config import validate
    from a2vtool.federated.config import FederateConfig
    from a2vtool.stages.federate import run

    out = work / "runs" / name
    shutil.rmtree(out, ignore_errors=True)
    cfg = validate(FederateConfig, _merge(base, {**over, "name": name, "out": str(out)}), f"benchmark run {name}")
    ui.set_quiet(True)
    t0 = time.perf_counter()
    run(cfg)
    ui.set_quiet(False)
    rows = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines() if ln.strip()]
    return rows, time.perf_counter() - t0


def train_only_cache(work: Path, emb: Path, base: dict[str, Any]) -> Path:
    """The speaker nodes' train clips alone, as a cache for train-generator (no val or test clip reaches KD)."""
    from a2vtool.config import validate
    from a2vtool.embeddings import import_tensors
    from a2vtool.federated.config import FederateConfig
    from a2vtool.federated.partition import build_nodes

    cfg = validate(FederateConfig, _merge(base, {"out": str(work / "unused")}), "benchmark")
    caches: dict[Path, Any] = {}
    nodes = build_nodes(cfg, caches)
    cache = next(iter(caches.values()))
    rows = []
    for nd in nodes:
        x = cache.load(nd.splits["train"])
        rows += [(e.clip_id, e.label, "train", x[i].float().clone()) for i, e in enumerate(nd.splits["train"])]
    for c in caches.values():
        c.close()
    out = work / "gen-emb"
    shutil.rmtree(out, ignore_errors=True)
    return import_tensors(out, rows, dataset="spoken_train")


def generators(work: Path, train_cache: Path, kind: str, quick: bool) -> tuple[Path, dict[str, Any]]:
    from a2vtool import ui
    from a2vtool.config import validate
    from a2vtool.stages.train_generator import TrainGeneratorConfig, run

    out = work / f"gen-{kind}"
    shutil.rmtree(out, ignore_errors=True)
    over = {"epochs": 60 if quick else 200} if kind != "gaussian" else {}
    cfg = validate(TrainGeneratorConfig, {"embeddings": str(train_cache), "generator": kind, "granularity": "per_class",
                                          "out": str(out), "device": "cpu", "seed": 0, **over}, "benchmark")
    ui.set_quiet(True)
    s = run(cfg)
    ui.set_quiet(False)
    return out, s


# -- figures -----------------------------------------------------------------------------------------------------
def global_acc(rows: list[dict[str, Any]], split: str = "test") -> dict[int, float]:
    return {x["round"]: x["eval"][split]["acc"] for x in rows if x["node"] == "global" and x.get("eval")}


def node_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [x for x in rows if x["node"] != "global" and x.get("eval")]


def standalone(rows: list[dict[str, Any]]) -> tuple[dict[int, float], dict[int, float]]:
    """Per round: mean over nodes of the accuracy on the node's own test clips, and on the other nodes' test clips."""
    own: dict[int, list[float]] = {}
    cross: dict[int, list[float]] = {}
    for x in node_rows(rows):
        t, f = x["eval"]["test"], x["eval"]["federation_test"]
        own.setdefault(x["round"], []).append(t["acc"])
        others = f["n"] - t["n"]
        cross.setdefault(x["round"], []).append((f["acc"] * f["n"] - t["acc"] * t["n"]) / others)
    return ({r: sum(v) / len(v) for r, v in own.items()}, {r: sum(v) / len(v) for r, v in cross.items()})


def kd_figures(rows: list[dict[str, Any]]) -> dict[str, Any]:
    server = {x["round"]: x["server"] for x in rows if x["node"] == "global" and x.get("server")}
    val: dict[int, list[float]] = {}
    for x in node_rows(rows):
        val.setdefault(x["round"], []).append(x["eval"]["val"]["acc"])
    synth = [s["teacher_synthetic_acc"] for s in server.values()]
    real = [sum(v) / len(v) for r, v in sorted(val.items()) if r in server]
    kept = [s["kept"] for _, s in sorted(server.items())]
    return {"synthetic": sum(synth) / len(synth), "real_val": sum(real) / len(real), "kept": kept,
            "agreement": [round(s["after"]["agreement"], 3) for _, s in sorted(server.items())]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="6 rounds and shorter generator training (a few minutes)")
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "spoken-words")
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "bench-quality")
    ap.add_argument("--only", default=",".join(RUNS), help="comma-separated runs (default: all)")
    a = ap.parse_args()
    if not (a.data / "manifest.csv").is_file():
        sys.exit(f"error: no spoken-words dataset at {a.data} (manifest.csv missing); pass --data PATH")
    import torch

    from a2vtool.tiny import build_all

    torch.set_num_threads(max(1, torch.get_num_threads()))
    a.work.mkdir(parents=True, exist_ok=True)
    tiny = build_all(a.work / "tiny", seed=0)
    emb = embed(a.data, a.work, tiny)
    base = base_config(a.work, emb, tiny, a.quick)
    print(f"# runs: speaker nodes (natural partition by speaker), {base['rounds']} rounds x "
          f"{base['training']['local_epochs']} local epochs, adapters {base['adapters']}, tiny SD targets, cpu, "
          f"{torch.get_num_threads()} threads", flush=True)
    only = set(a.only.split(","))
    results: dict[str, list[dict[str, Any]]] = {}
    gens: dict[str, Any] = {}
    if only & {"kd", "kd_gaussian"}:
        tc = train_only_cache(a.work, emb, base)
        for kind in ("vae", "gaussian"):
            t0 = time.perf_counter()
            path, s = generators(a.work, tc, kind, a.quick)
            gens[kind] = path
            fd = s.get("metrics", {}).get("summary", {})
            print(f"# generator {kind}: {time.perf_counter() - t0:.0f}s, recommended_for_kd={s.get('recommended_for_kd')}, "
                  f"summary {json.dumps(fd)[:300]}", flush=True)
    overs = {
        "central": {"data": {"partition": {"kind": "natural", "by": "speaker", "num_nodes": 1}}, "strategy": {"name": "fedavg"}},
        "none": {"strategy": {"name": "none"}, "eval": {"cross": True}},
        "fedavg": {"strategy": {"name": "fedavg"}},
        "fedprox": {"strategy": {"name": "fedprox"}},
        "kd": {"strategy": {"name": "kd", "generators": str(gens.get("vae", ""))}},
        "kd_gaussian": {"strategy": {"name": "kd", "generators": str(gens.get("gaussian", ""))}},
    }
    for name in RUNS:
        if name not in only:
            continue
        rows, secs = federate(a.work, name, base, overs[name])
        results[name] = rows
        print(f"# {name}: {secs:.0f}s", flush=True)

    chance = 1 / 10
    table: dict[str, dict[int, float]] = {}
    for name, rows in results.items():
        if name == "none":
            own, cross = standalone(rows)
            table["none (own speaker)"], table["none (other speakers)"] = own, cross
        else:
            table[name] = global_acc(rows)
    rounds = sorted({r for v in table.values() for r in v})
    print("# test accuracy per round (global model; for none: mean over standalone nodes)", flush=True)
    print("# " + f"{'run':<24}" + "".join(f"{r:>7}" for r in rounds), flush=True)
    for name, accs in table.items():
        print("# " + f"{name:<24}" + "".join(f"{accs.get(r, float('nan')):>7.3f}" for r in rounds), flush=True)
    best = {k: max(v.values()) for k, v in table.items() if v}
    if "kd" in results or "kd_gaussian" in results:
        for name in ("kd", "kd_gaussian"):
            if name in results:
                f = kd_figures(results[name])
                print(f"# {name}: kept per round {f['kept']}, student/teacher agreement {f['agreement']}, teacher "
                      f"synthetic acc {f['synthetic']:.3f} vs real val acc {f['real_val']:.3f}", flush=True)
    if "fedavg" in best and "central" in best:
        bench("quality.fedavg_vs_central", best["fedavg"] / best["central"], "ratio", ">=", 0.90)
    for name in ("kd", "kd_gaussian"):
        if name in best and "fedavg" in best:
            bench(f"quality.{name}_vs_fedavg", best[name] / best["fedavg"], "ratio", ">=", 1.00)
    if "fedavg" in best and "none (other speakers)" in best:
        bench("quality.fed_vs_standalone_cross", best["fedavg"] / best["none (other speakers)"], "ratio", ">=", 1.5)
    for name in ("kd", "kd_gaussian"):
        if name in results:
            f = kd_figures(results[name])
            bench(f"quality.{name}_teacher_synthetic_acc", f["synthetic"] / f["real_val"], "ratio", ">=", 0.8)
    for name, v in best.items():
        bench(f"quality.acc.{name.split(' ')[0]}{'_' + name.split('(')[1].split(' ')[0] if '(' in name else ''}",
              v, "acc", ">=", chance)


if __name__ == "__main__":
    main()
