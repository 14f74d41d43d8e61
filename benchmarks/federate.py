"""Federate benchmarks, measured side by side in one run.

  round_overhead   round wall time / summed node training compute (LocalEngine.run_round: "wall"/"compute")
  rss_growth       process RSS growth between an early and a late round, after gc.collect()
  adapter_params   default adapter parameters / prototype-sized adapter parameters, at the real FLUX sizes
  adapter_acc      zero-shot accuracy of the default adapter minus that of the prototype-sized one

Prints `BENCH <name> <value> <unit> target <op><number> PASS|FAIL` lines; '#' lines state the settings.
Usage: python benchmarks/federate.py [--quick]
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from a2vtool import tiny, ui  # noqa: E402
from a2vtool.config import validate  # noqa: E402
from a2vtool.embeddings import import_tensors  # noqa: E402
from a2vtool.federated.config import FederateConfig  # noqa: E402
from a2vtool.federated.loop import LocalEngine  # noqa: E402
from a2vtool.models.adapters import AdapterSpec, build_adapters, count_parameters, set_target_stats  # noqa: E402
from _bench import bench  # noqa: E402  (benchmarks/ is on sys.path when a script runs)




def rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def synthetic_rows(classes: list[str], clips: int, tokens: tuple[int, int], noise: float, seed: int) -> list[Any]:
    g = torch.Generator().manual_seed(seed)
    means = {c: torch.randn(*tokens, generator=g) for c in classes}
    return [(f"{c}-{i:04d}", c, None, means[c] + noise * torch.randn(*tokens, generator=g)) for c in classes for i in range(clips)]


# -- federation: round overhead and RSS growth ---------------------------------------------------------------

def federation_benchmarks(work: Path, quick: bool) -> None:
    n_nodes, classes_per_node, clips = 4, 2, (40 if quick else 80)
    tokens = (32, 128)
    classes = [f"class_{chr(97 + i)}" for i in range(n_nodes * classes_per_node)]
    emb = import_tensors(work / "emb", synthetic_rows(classes, clips, tokens, 0.5, 0), dataset="synthetic")
    flux = tiny.build_tiny_flux(work / "flux") or work / "flux"
    rounds = 10 if quick else 20
    cfg = validate(FederateConfig, {
        "nodes": [{"classes": classes[i * classes_per_node:(i + 1) * classes_per_node]} for i in range(n_nodes)],
        "data": {"embeddings": str(emb), "ratios": [0.8, 0.1, 0.1]},
        "pipeline": {"name_or_path": str(flux), "max_sequence_length": 24, "targets_root": str(work / "tt")},
        "adapters": {"hidden": [256], "width": 64, "heads": 4, "dropout": 0.1},
        "training": {"local_epochs": 2, "batch_size": 16, "lr": 1e-3},
        "strategy": {"name": "fedavg"},
        "eval": {"every": 1, "splits": ["val"], "cross": False},
        "checkpoints": {"keep_last": 2},
        "rounds": rounds, "out": str(work / "run"), "device": "cpu", "seed": 0,
    }, "benchmark")
    print(f"# federation: {n_nodes} nodes x {classes_per_node} classes x {clips} clips, tokens {tokens}, tiny FLUX targets, "
          f"adapters hidden [256] width 64, 2 local epochs/round, fedavg, eval every round on val only (no cross eval), "
          f"checkpoint every round (keep_last 2), cpu, {torch.get_num_threads()} threads, {rounds} rounds", flush=True)
    fed = LocalEngine(cfg, work / "run")
    fed.setup()
    walls, computes, rss = [], [], {}
    try:
        for r in range(1, rounds + 1):
            res = fed.run_round(r)
            if r > 1:  # round 1 pays one-off allocator/JIT warm-up
                walls.append(res["wall"])
                computes.append(res["compute"])
            del res
            gc.collect()
            rss[r] = rss_mb()
    finally:
        fed.close()
    overhead = sum(walls) / sum(computes)
    print(f"# rounds 2..{rounds}: wall {sum(walls):.2f} s, node training compute {sum(computes):.2f} s", flush=True)
    bench("round_overhead", overhead, "x", "<=", 1.15)
    growth = 100 * (rss[rounds] - rss[3]) / rss[3]
    print(f"# RSS after round 3: {rss[3]:.1f} MiB, after round {rounds}: {rss[rounds]:.1f} MiB"
          + (" (quick: round 10 instead of 20)" if quick else ""), flush=True)
    bench("rss_growth_r3_to_r%d" % rounds, growth, "%", "<=", 1.0)


# -- adapter size and quality ---------------------------------------------------------------------------------

def default_adapters(in_dim: int, shapes: dict[str, tuple[int, ...]], spec: AdapterSpec | None = None,
                     tokens: int = 16) -> Any:
    return build_adapters(in_dim, shapes, spec or AdapterSpec(), tokens=tokens)


class PrototypeAdapters(torch.nn.Module):
    """Prototype-sized adapters (reference 3.1): per slot a token MLP 768 -> [1024, 2048(, 2048)] and an attention
    pooling whose width is the slot's own width (768 for CLIP pooled, 4096 for T5), approximated with
    our SlotAdapter (its FFN has ratio 2, the prototype's MAPBlock ratio 4 with SwiGLU: this undercounts it)."""

    def __init__(self, in_dim: int, shapes: dict[str, tuple[int, ...]], scale: int = 1) -> None:
        super().__init__()
        self.parts = torch.nn.ModuleDict()
        for name, shape in shapes.items():
            hidden = [1024 // scale, 2048 // scale] + ([2048 // scale] if len(shape) == 2 else [])
            self.parts[name] = build_adapters(in_dim, {name: shape}, AdapterSpec(hidden=hidden, width=shape[-1], heads=8, dropout=0.1, positions=0))
        self.slots = torch.nn.ModuleDict({n: p.slots[n] for n, p in self.parts.items()})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {n: m(x) for n, m in self.slots.items()}


def count_on_meta(make: Any) -> int:
    with torch.device("meta"):
        return count_parameters(make())


def train_and_score(model: Any, x_tr: torch.Tensor, y_tr: torch.Tensor, x_te: torch.Tensor, y_te: torch.Tensor,
                    targets: dict[str, torch.Tensor], epochs: int, seed: int) -> float:
    from a2vtool.federated.node import slot_losses

    torch.manual_seed(seed)
    set_target_stats(model, targets)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    scales = {k: model.slots[k].scale.detach() for k in targets}
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(len(x_tr), generator=g).split(16):
            tgt = {k: v[y_tr[idx]] for k, v in targets.items()}
            loss = sum(slot_losses(model(x_tr[idx]), tgt, 0.0, scales).values())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    model.eval()
    score = torch.zeros(len(x_te), next(iter(targets.values())).shape[0])
    with torch.no_grad():
        pred = model(x_te)
        for k, t in targets.items():
            c = t.flatten(1).mean(0)
            tn = torch.nn.functional.normalize(t.flatten(1) - c, dim=1)
            score += torch.nn.functional.normalize(pred[k].flatten(1) - c, dim=1) @ tn.T
    return float((score.argmax(1) == y_te).float().mean())


def adapter_benchmarks(quick: bool) -> None:
    real_in, real_shapes = 768, {"prompt_embeds": (17, 4096), "pooled_prompt_embeds": (768,)}
    p_default = count_on_meta(lambda: default_adapters(real_in, real_shapes, tokens=1214))  # AST full tokens
    p_proto = count_on_meta(lambda: PrototypeAdapters(real_in, real_shapes))
    d = AdapterSpec()
    print(f"# adapter sizes at the real FLUX slots (prompt_embeds 17x4096 + pooled 768, input 768): default "
          f"AdapterSpec(hidden={d.hidden}, width={d.width}, heads={d.heads}, positions=1214 AST tokens) {p_default:,} params; prototype-sized "
          f"(token MLP [1024,2048]/[1024,2048,2048], pooling width = slot width 768/4096) {p_proto:,} params", flush=True)
    bench("adapter_params_ratio", p_default / p_proto, "x", "<=", 0.1)

    # Accuracy: the prototype at full size is ~10^8 parameters, too slow to train on a CPU in a benchmark, so both
    # are trained on a scaled copy of the task: every width divided by `s` (input 768/s, slots 17x(4096/s) and 768/s,
    # prototype MLP widths /s), default adapters scaled the same way (AdapterSpec() hidden and width /s).
    s = 8
    in_dim, shapes = real_in // s, {"prompt_embeds": (17, 4096 // s), "pooled_prompt_embeds": (768 // s,)}
    n_cls, per_cls, tokens = 10, (24 if quick else 48), 16
    g = torch.Generator().manual_seed(1)
    common = {k: torch.randn(*v, generator=g) * 3 for k, v in shapes.items()}  # prompts share the template
    targets = {k: common[k] + torch.randn(n_cls, *v, generator=g) for k, v in shapes.items()}
    means = torch.randn(n_cls, tokens, in_dim, generator=g)
    y = torch.arange(n_cls).repeat_interleave(per_cls)
    x = means[y] + 2.0 * torch.randn(len(y), tokens, in_dim, generator=g)  # noisy: the task is not trivial
    perm = torch.randperm(len(y), generator=g)
    cut = int(0.75 * len(y))
    tr, te = perm[:cut], perm[cut:]
    epochs = 15 if quick else 30
    torch.manual_seed(0)
    dflt = default_adapters(in_dim, shapes, AdapterSpec(hidden=[h // s for h in d.hidden], width=d.width // s,
                                                         heads=d.heads, dropout=d.dropout))
    torch.manual_seed(0)
    proto = PrototypeAdapters(in_dim, shapes, scale=s)
    print(f"# accuracy on a scaled synthetic task (widths /{s}): {n_cls} classes, {per_cls} clips each "
          f"({len(tr)} train / {len(te)} test), tokens {tokens}x{in_dim}, noise std 2, {epochs} epochs AdamW lr 1e-3; "
          f"params default {count_parameters(dflt):,}, prototype {count_parameters(proto):,}", flush=True)
    t0 = time.perf_counter()
    acc_d = train_and_score(dflt, x[tr], y[tr], x[te], y[te], targets, epochs, 0)
    t1 = time.perf_counter()
    acc_p = train_and_score(proto, x[tr], y[tr], x[te], y[te], targets, epochs, 0)
    t2 = time.perf_counter()
    print(f"# zero-shot accuracy (chance {1 / n_cls:.2f}): default {acc_d:.3f} ({t1 - t0:.1f} s), "
          f"prototype-sized {acc_p:.3f} ({t2 - t1:.1f} s)", flush=True)
    print(f"BENCH adapter_acc_default {acc_d:.4g} acc target >={acc_p - 0.05:.4g} {'PASS' if acc_d >= acc_p - 0.05 else 'FAIL'}")
    print(f"BENCH adapter_acc_prototype {acc_p:.4g} acc target >={1 / n_cls:.4g} {'PASS' if acc_p >= 1 / n_cls else 'FAIL'}")
    bench("adapter_acc_default_minus_prototype", acc_d - acc_p, "acc", ">=", -0.05)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer rounds, clips and epochs (about 1-2 minutes)")
    args = ap.parse_args()
    ui.set_quiet(True)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="a2v-bench-") as tmp:
        federation_benchmarks(Path(tmp), args.quick)
    adapter_benchmarks(args.quick)
    print(f"# total {time.perf_counter() - t0:.1f} s", flush=True)


if __name__ == "__main__":
    main()
