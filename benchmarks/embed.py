"""Benchmark of the `embed` stage and the embedding-cache reader, figures measured side by side in one run.

    HF_HUB_OFFLINE=1 python benchmarks/embed.py [--quick]

Prints `BENCH <name> <value> <unit> target <op><number> PASS|FAIL` lines:
  embed.efficiency   embed-stage clips/s / bare-model clips/s on pre-computed features (same batch size)
  embed.cache_hit    cold run time / re-run time over the same clips
  embed.load_time    legacy torch.load(.pt dict) wall time / reader wall time to make every embedding addressable
                     (zero-copy memory-mapped views, one element of each touched)
  embed.load_rss     reader peak RSS / legacy peak RSS for that (each in a fresh process, baseline after imports removed)
  embed.scan_time    legacy wall time / reader wall time for a full scan (every row read, running sum)
  embed.scan_rss     reader peak RSS / legacy peak RSS for the full scan
The audio model is the FULL-SIZE AST architecture (transformers ASTConfig defaults: hidden 768, 1214 tokens) with
random weights; --quick keeps hidden 768 / 1214 tokens but uses fewer layers, clips and a smaller load test.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from _bench import bench  # noqa: E402  (benchmarks/ is on sys.path when a script runs)

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")




def build_model(out: Path, layers: int) -> Path:
    import torch
    from transformers import ASTConfig, ASTFeatureExtractor, ASTModel

    torch.manual_seed(0)
    ASTModel(ASTConfig(num_hidden_layers=layers)).eval().save_pretrained(out)
    ASTFeatureExtractor().save_pretrained(out)
    return out


def embed_figures(work: Path, layers: int, n_clips: int, batch: int, duration: float) -> list[bool]:
    import numpy as np
    import torch

    from a2vtool.audio.demo import make_demo_dataset
    from a2vtool.audio.io import load_clip
    from a2vtool.config import load_config
    from a2vtool.models.ast import features, load_audio_model, load_feature_extractor
    from a2vtool.stages.embed import EmbedConfig, run

    model_dir = build_model(work / "ast", layers)
    data = make_demo_dataset(work / "data", classes=4, clips_per_class=n_clips // 4, duration=duration)
    warm_data = make_demo_dataset(work / "warm", classes=1, clips_per_class=2, duration=duration)

    def cfg(root: Path, d: Path) -> EmbedConfig:
        return load_config(EmbedConfig, None, [], {
            "dataset.root": str(d), "model.name_or_path": str(model_dir), "cache_root": str(root), "device": "cpu",
            "duration": duration, "batch_size": batch, "token_mode": "full"})

    run(cfg(work / "warm-cache", warm_data))  # imports, oneDNN kernels, page cache: excluded from every figure

    t0 = time.perf_counter()
    model = load_audio_model(str(model_dir), None, "cpu", torch.float32)
    t_load = time.perf_counter() - t0
    del model

    t0 = time.perf_counter()
    cold = run(cfg(work / "cache", data))
    t_cold = time.perf_counter() - t0
    assert cold["computed"] == n_clips, cold
    t0 = time.perf_counter()
    hit = run(cfg(work / "cache", data))
    t_hit = time.perf_counter() - t0
    assert hit["computed"] == 0 and hit["reused"] == n_clips, hit

    # bare model: the same clips' features computed beforehand, same batch size, dtype and threads
    fe = load_feature_extractor(str(model_dir), None, None)
    sr = int(fe.sampling_rate)
    feats = [features(fe, load_clip(p, sr, duration), sr) for p in sorted(data.glob("*/*.wav"))]
    model = load_audio_model(str(model_dir), None, "cpu", torch.float32)
    with torch.inference_mode():
        model(input_values=torch.from_numpy(np.stack(feats[:1])))
        t0 = time.perf_counter()
        for i in range(0, len(feats), batch):
            h = model(input_values=torch.from_numpy(np.stack(feats[i : i + batch]))).last_hidden_state
            float(h[:, 0].sum())
        t_bare = time.perf_counter() - t0
    del model

    embed_rate = n_clips / (t_cold - t_load)
    bare_rate = n_clips / t_bare
    print(f"# embed: {n_clips} clips of {duration:g} s, AST hidden 768, {layers} layer(s), 1214 tokens, batch {batch}, "
          f"fp32, token_mode full; cold run {t_cold:.2f} s incl. one-off model load {t_load:.2f} s (measured separately "
          f"and subtracted), re-run {t_hit * 1000:.1f} ms, bare model {t_bare:.2f} s", flush=True)
    print(f"# efficiency = (clips / (cold run - model load)) / (clips / bare forward time); the cold run includes file "
          f"hashing, decoding, resampling, fbank features, forward, shard writes and manifest commits: "
          f"{embed_rate:.3f} vs {bare_rate:.3f} clips/s", flush=True)
    return [
        bench(f"embed.efficiency[{layers}layer]", embed_rate / bare_rate, "ratio", ">=", 0.90),
        bench(f"embed.cache_hit[{n_clips}clips]", t_cold / t_hit, "x", ">=", 100),
    ]


# Peak RSS after the imports: reset the kernel's high-water mark (clear_refs 5), then read VmHWM at the end;
# falls back to ru_maxrss where clear_refs is not writable. File-backed pages of memory maps count, as they should.
PEAK = r"""
import resource
def _status(field):
    for line in open('/proc/self/status'):
        if line.startswith(field):
            return int(line.split()[1])
try:
    with open('/proc/self/clear_refs', 'w') as f:
        f.write('5')
    peak_kb = lambda: _status('VmHWM:')
    base = _status('VmRSS:')
except OSError:
    peak_kb = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    base = peak_kb()
"""

READER = r"""
import sys, time, torch
from a2vtool.embeddings import open_cache
import safetensors.torch
PEAK_SETUP
t0 = time.perf_counter()
cache = open_cache(sys.argv[1])
total = None
for x, _ in cache.iter_batches(cache.entries(), batch_size=int(sys.argv[2])):
    s = x.sum(0)
    total = s if total is None else total + s
float(total.sum())
print(time.perf_counter() - t0, peak_kb() - base)
"""

LAZY = r"""
import sys, time, torch
from a2vtool.embeddings import open_cache
PEAK_SETUP
t0 = time.perf_counter()
cache = open_cache(sys.argv[1])
views = cache.views(cache.entries())          # every embedding, addressable
total = sum(float(v[0, 0]) for v in views)    # touch each one
assert len(views) == int(sys.argv[2])
print(time.perf_counter() - t0, peak_kb() - base)
"""

LEGACY = r"""
import sys, time, torch
PEAK_SETUP
t0 = time.perf_counter()
d = torch.load(sys.argv[1], weights_only=True)
total = None
for k, v in d.items():
    total = v if total is None else total + v
float(total.sum())
print(time.perf_counter() - t0, peak_kb() - base)
"""


def load_figures(work: Path, n_rows: int, batch: int) -> list[bool]:
    import torch

    from a2vtool.embeddings import import_tensors

    g = torch.Generator().manual_seed(0)
    rows = [(f"clip{i:05d}", f"c{i % 4}", None, torch.randn(1214, 768, generator=g)) for i in range(n_rows)]
    cache = import_tensors(work / "load-cache", rows, shard_rows=64)  # the embed stage's writer and shard layout
    pt = work / "legacy.pt"
    torch.save({cid: t for cid, _, _, t in rows}, pt)
    del rows
    mb = n_rows * 1214 * 768 * 4 / 1e6

    def measure(code: str, *args: str) -> tuple[float, float]:
        best_t, best_rss = float("inf"), float("inf")
        for _ in range(2):  # the second run of each sees a warm page cache, like the first run of the other
            out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=True)
            t, rss = out.stdout.split()
            best_t, best_rss = min(best_t, float(t)), min(best_rss, max(float(rss), 1.0))
        return best_t, best_rss

    t_lazy, rss_lazy = measure(LAZY.replace("PEAK_SETUP", PEAK), str(cache), str(n_rows))
    t_new, rss_new = measure(READER.replace("PEAK_SETUP", PEAK), str(cache), str(batch))
    t_old, rss_old = measure(LEGACY.replace("PEAK_SETUP", PEAK), str(pt))
    print(f"# load: {n_rows} clips x 1214 x 768 fp32 = {mb:.0f} MB; reader iter_batches(batch {batch}) + running sum: "
          f"{t_new:.3f} s, peak RSS +{rss_new / 1024:.0f} MB; legacy torch.load(.pt dict) + sum: {t_old:.3f} s, "
          f"peak RSS +{rss_old / 1024:.0f} MB (each in a fresh process, best of 2, baseline after imports removed)",
          flush=True)
    print(f"# load (lazy): reader views of all {n_rows} embeddings, one element of each touched: {t_lazy:.3f} s, "
          f"peak RSS +{rss_lazy / 1024:.0f} MB", flush=True)
    return [
        bench("embed.load_time", t_old / t_lazy, "x_faster", ">=", 5),
        bench("embed.load_rss", rss_lazy / rss_old, "ratio", "<=", 0.2),
        # a full scan reads every byte on both sides, so the reader can at best match torch.load here
        bench("embed.scan_time", t_old / t_new, "x_faster", ">=", 1.0),
        bench("embed.scan_rss", rss_new / rss_old, "ratio", "<=", 0.5),
    ]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="1 AST layer, 16 clips, 96-clip load test (about 1-2 min)")
    ap.add_argument("--skip-embed", action="store_true", help="only the load comparison")
    args = ap.parse_args()
    import torch

    layers, n_clips, batch, n_rows = (1, 16, 8, 96) if args.quick else (12, 64, 8, 256)
    print(f"# machine: {platform.platform()}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"torch {torch.__version__} ({torch.get_num_threads()} threads), python {platform.python_version()}, "
          f"device cpu{', --quick' if args.quick else ''}", flush=True)
    if args.quick:
        print("# --quick: AST with 1 hidden layer instead of 12 (hidden 768 and 1214 tokens kept), 16 clips, "
              "96-clip load test", flush=True)
    ok = []
    with tempfile.TemporaryDirectory(prefix="a2v-bench-") as tmp:
        work = Path(tmp)
        if not args.skip_embed:
            ok += embed_figures(work, layers, n_clips, batch, duration=5.0)
        ok += load_figures(work, n_rows, batch=batch)  # the reader streams at the embed batch size
    return 0 if all(ok) else 1


if __name__ == "__main__":
    sys.exit(main())
