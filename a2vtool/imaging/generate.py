"""Seeded, batched rendering: conditioning by slot name, per-image seeds, atomic PNGs, a journal, grids, round images."""

from __future__ import annotations

import hashlib
import io
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from a2vtool.artifacts import cache_key, write_bytes_atomic
from a2vtool.errors import InputError
from a2vtool.imaging.pipeline import DEFAULT_GUIDANCE, Loaded

JOURNAL = "journal.jsonl"
NEGATIVE_NAMES = {"prompt_embeds": "negative_prompt_embeds", "pooled_prompt_embeds": "negative_pooled_prompt_embeds"}


@dataclass
class Job:
    """One image to draw: its source clip (or synthetic sample), class, seed, output file and input reference."""

    clip_id: str
    label: str
    split: str | None
    source: str  # "clip" | "generator" | "oracle"
    seed: int
    file: str  # relative to the output folder
    ref: Any = None  # (cache, Entry) for clips, a (T, D) tensor for generator samples, None for oracle


def image_seed(base: int, clip_id: str) -> int:
    """Per-image seed from the base seed and the clip id (sha256): reproducible alone, whatever the batch."""
    return int.from_bytes(hashlib.sha256(f"{base}:{clip_id}".encode()).digest()[:8], "big") & (2**63 - 1)


def safe_name(text: str) -> str:
    """A file-name-safe form of a clip id or class name; a hash suffix keeps altered names unique."""
    s = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "x"
    return s if s == text else f"{s[:80]}-{hashlib.sha256(text.encode()).hexdigest()[:8]}"


def make_job(clip_id: str, label: str, split: str | None, source: str, base_seed: int, ref: Any = None) -> Job:
    return Job(clip_id, label, split, source, image_seed(base_seed, clip_id),
               f"images/{safe_name(label)}/{safe_name(clip_id)}.png", ref)


def clip_jobs(cache: Any, entries: list[Any], base_seed: int, max_per_class: int | None = None,
              count: int | None = None, seen: set[str] | None = None) -> list[Job]:
    """Jobs for cache entries (cache order), at most `max_per_class` per class and `count` in all."""
    seen = set() if seen is None else seen
    per: dict[str, int] = {}
    jobs = []
    for e in entries:
        if e.clip_id in seen or (max_per_class is not None and per.get(e.label, 0) >= max_per_class):
            continue
        if count is not None and len(jobs) >= count:
            break
        seen.add(e.clip_id)
        per[e.label] = per.get(e.label, 0) + 1
        jobs.append(make_job(e.clip_id, e.label, e.split, "clip", base_seed, (cache, e)))
    return jobs


# -- conditioning -----------------------------------------------------------------------------------
def adapter_conditioning(model: Any) -> Callable[[list[Job]], dict[str, Any]]:
    """Conditioning from adapters: inputs are read per batch (grouped by cache and token count) and mapped through
    the model; outputs keep the model's slot names (the pipeline's keyword names), never positions."""
    import torch

    def fn(batch: list[Job]) -> dict[str, Any]:
        dev = next(model.parameters()).device
        groups: dict[Any, list[int]] = {}
        for i, j in enumerate(batch):
            k = id(j.ref[0]) if isinstance(j.ref, tuple) else ("t", tuple(j.ref.shape))
            groups.setdefault(k, []).append(i)
        parts: list[tuple[list[int], dict[str, Any]]] = []
        for idx in groups.values():
            first = batch[idx[0]].ref
            if isinstance(first, tuple):
                x = first[0].load([batch[i].ref[1] for i in idx])
            else:
                x = torch.stack([batch[i].ref for i in idx])
            with torch.inference_mode():
                out = model(x.to(dev, torch.float32))
            parts.append((idx, {k: v.detach() for k, v in out.items()}))
            del x, out
        order = torch.tensor([i for idx, _ in parts for i in idx]).argsort()
        return {s: torch.cat([p[s] for _, p in parts])[order.to(parts[0][1][s].device)] for s in parts[0][1]}

    return fn


def oracle_conditioning(targets: Any, slots: list[str]) -> Callable[[list[Job]], dict[str, Any]]:
    """Ground-truth text targets of each image's class (the upper-bound baseline)."""

    def fn(batch: list[Job]) -> dict[str, Any]:
        st = targets.stack([j.label for j in batch])
        return {s: st[s] for s in slots}

    return fn


def negatives(family: str, mode: str, shapes: dict[str, tuple[int, ...]], targets: Any | None,
              guidance: float) -> dict[str, Any]:
    """Per-sample unconditional embeddings for CFG (SD/SDXL with guidance > 1; FLUX uses none)."""
    import torch

    if family == "flux" or guidance <= 1.0:
        return {}
    out = {}
    for slot, shape in shapes.items():
        if mode == "zeros":
            t = torch.zeros(shape)
        else:
            if targets is None or slot not in targets.negative:
                raise InputError(f"negative 'empty' needs the empty prompt's {slot} from the text targets",
                                 hint="set negative to zeros, or give the pipeline's text targets")
            t = targets.negative[slot].float()
            if tuple(t.shape) != tuple(shape):
                raise InputError(f"the empty prompt's {slot} has shape {tuple(t.shape)} but the conditioning has {shape}",
                                 hint="set negative to zeros")
        out[NEGATIVE_NAMES[slot]] = t
    return out


# -- files --------------------------------------------------------------------------------------------
def png_bytes(array: Any) -> bytes:
    """(H, W, 3) float in [0, 1] -> PNG bytes (deterministic: no timestamps or text chunks)."""
    import numpy as np
    from PIL import Image

    img = Image.fromarray((np.clip(array, 0.0, 1.0) * 255.0).round().astype(np.uint8))
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def read_journal(out: Path, render_key: str) -> dict[str, dict[str, Any]]:
    """Records of images already written with these settings whose PNG still exists (file -> record)."""
    path = Path(out) / JOURNAL
    done: dict[str, dict[str, Any]] = {}
    if not path.is_file():
        return done
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue  # a line cut by a kill
        if rec.get("render_key") == render_key and (Path(out) / rec.get("file", "")).is_file():
            done[rec["file"]] = rec
    return done


def write_grids(out: Path, records: list[dict[str, Any]], columns: int = 8) -> dict[str, str]:
    """One grid PNG per class from its images (in record order), written atomically; class -> relative path."""
    from PIL import Image

    by_class: dict[str, list[str]] = {}
    for r in records:
        by_class.setdefault(r["class"], []).append(r["file"])
    grids = {}
    for label, files in sorted(by_class.items()):
        imgs = [Image.open(Path(out) / f).convert("RGB") for f in files]
        w, h = imgs[0].size
        cols = min(columns, len(imgs))
        rows = -(-len(imgs) // cols)
        grid = Image.new("RGB", (cols * w, rows * h))
        for i, im in enumerate(imgs):
            grid.paste(im.resize((w, h)), ((i % cols) * w, (i // cols) * h))
            im.close()
        buf = io.BytesIO()
        grid.save(buf, format="PNG")
        rel = f"grids/{safe_name(label)}.png"
        write_bytes_atomic(Path(out) / rel, buf.getvalue())
        grids[label] = rel
    return grids


def render_key(settings: dict[str, Any]) -> str:
    return cache_key(settings)


# -- rendering ----------------------------------------------------------------------------------------
def render(loaded: Loaded, jobs: list[Job], cond: Callable[[list[Job]], dict[str, Any]], out: Path, *,
           opts: Any, height: int, width: int, key: str, meta: dict[str, Any], negative: dict[str, Any],
           skip_existing: bool = True, desc: str = "rendering") -> tuple[list[dict[str, Any]], int]:
    """Draw `jobs` in batches, writing each PNG atomically and a journal line as it is made.

    Returns (records for every job, in job order; how many were skipped because they already existed).
    """
    import torch

    from a2vtool import ui
    from a2vtool.imaging.pipeline import free_memory

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    done = read_journal(out, key) if skip_existing else {}
    todo = [j for j in jobs if j.file not in done]
    guidance = DEFAULT_GUIDANCE[loaded.family] if opts.guidance is None else float(opts.guidance)
    pipe, dev, dtype = loaded.pipe, loaded.device, loaded.dtype
    fresh: dict[str, dict[str, Any]] = {}
    with open(out / JOURNAL, "a", encoding="utf-8") as journal, ui.progress(desc, len(todo)) as advance:
        for start in range(0, len(todo), opts.batch_size):
            batch = todo[start:start + opts.batch_size]
            kwargs: dict[str, Any] = {}
            try:
                c = cond(batch)
                for slot, t in c.items():  # by name: the adapters' slot names are the pipeline's keywords
                    kwargs[slot] = t.to(dev, dtype)
                for name, t in negative.items():
                    kwargs[name] = t.unsqueeze(0).expand(len(batch), *t.shape).to(dev, dtype)
                del c
                gens = [torch.Generator(device="cpu").manual_seed(j.seed) for j in batch]
                with torch.inference_mode():
                    result = pipe(**kwargs, num_inference_steps=opts.steps, guidance_scale=guidance,
                                  height=height, width=width, generator=gens, output_type="np")
                images = result.images
                del result
                for j, arr in zip(batch, images):
                    write_bytes_atomic(out / j.file, png_bytes(arr))
                    rec = {"file": j.file, "clip_id": j.clip_id, "class": j.label, "split": j.split,
                           "source": j.source, "seed": j.seed, "render_key": key, **meta}
                    journal.write(json.dumps(rec) + "\n")
                    fresh[j.file] = rec
                journal.flush()
                del images
            finally:
                kwargs.clear()
                if dev.startswith("cuda"):
                    free_memory()
            advance(len(batch))
    records = [fresh.get(j.file) or done[j.file] for j in jobs]
    return records, len(jobs) - len(todo)


# -- inside federate ---------------------------------------------------------------------------------------
def render_round_images(run_dir: Path, round: int, models: dict[str, Any], clips: list[tuple[Any, list[Any]]],
                        spec: Any, targets: Any, *, seed: int = 0, device: str = "auto") -> dict[str, Any]:
    """Render `spec.max_per_class` clips per class of `spec.splits` with each model into
    run_dir/images/round-NNNN/<model name>/ (PNGs, grids, manifest.json). `models` maps names ("global",
    "node-00", ...) to adapters; `targets` are the run's TextTargets (family, pipeline name, empty-prompt
    negatives). The pipeline stays cached across rounds (one); everything else is freed before returning."""
    from a2vtool.artifacts import write_json_atomic
    from a2vtool.imaging.evaluate import evaluate_records
    from a2vtool.imaging.pipeline import check_conditioning, expected_shapes, free_memory, get_pipeline
    from a2vtool.runtime import resolve_device, resolve_dtype

    dev = resolve_device(device)
    loaded = get_pipeline(targets.pipeline, targets.family, dev, resolve_dtype(spec.dtype, dev), offload=spec.offload,
                          attention_slicing=spec.attention_slicing, vae_tiling=spec.vae_tiling)
    h, w = resolve_size(loaded, spec)
    base = seed + spec.seed_offset
    jobs = select_round_jobs(clips, spec.splits, spec.max_per_class, base)
    summary: dict[str, Any] = {}
    root = Path(run_dir) / "images" / f"round-{round:04d}"
    for name, model in models.items():
        out = root / name
        was_training = model.training
        model.eval()
        try:
            shapes = _model_shapes(model)
            check_conditioning(shapes, expected_shapes(loaded.pipe, loaded.family), loaded.family, f"adapters {name}", targets.pipeline)
            guidance = DEFAULT_GUIDANCE[loaded.family] if spec.guidance is None else spec.guidance
            neg = negatives(loaded.family, spec.negative, shapes, targets, guidance)
            meta = {"pipeline": targets.pipeline, "adapters": name, "round": round, "steps": spec.steps,
                    "guidance": guidance, "height": h, "width": w}
            records, _ = render(loaded, jobs, adapter_conditioning(model), out, opts=spec, height=h, width=w,
                                key=render_key({**meta, "seed": base, "dtype": spec.dtype, "negative": spec.negative}),
                                meta=meta, negative=neg, skip_existing=False, desc=f"images r{round} {name}")
            grids = write_grids(out, records) if records else {}
            ev = evaluate_records(out, records, sorted({j.label for j in jobs}), spec.eval_clip, dev, spec.template) \
                if spec.eval_clip and records else None
            write_json_atomic(out / "manifest.json", {"kind": "a2v.round_images", "round": round, "model": name,
                                                      "images": records, "grids": grids, "eval": ev})
            summary[name] = {"images": len(records), "dir": str(out), "eval": ev}
        finally:
            model.train(was_training)
            free_memory()
    return summary


def select_round_jobs(clips: list[tuple[Any, list[Any]]], splits: list[str], max_per_class: int,
                      base_seed: int) -> list[Job]:
    """At most `max_per_class` clips per class over every (cache, entries) pair, each clip once. The entries
    are already those of the wanted splits (federate's node splits are its own partition, not the dataset's
    split field), so `splits` is recorded only."""
    seen: set[str] = set()
    per: dict[str, int] = {}
    jobs: list[Job] = []
    for cache, entries in clips:
        for j in clip_jobs(cache, list(entries), base_seed, None, None, seen):
            if per.get(j.label, 0) < max_per_class:
                per[j.label] = per.get(j.label, 0) + 1
                jobs.append(j)
    return jobs


def _model_shapes(model: Any) -> dict[str, tuple[int, ...]]:
    """Per-sample output shapes of adapters, from their centre buffers (shape = slot shape)."""
    return {name: tuple(m.center.shape) for name, m in model.slots.items()}


def resolve_size(loaded: Loaded, opts: Any) -> tuple[int, int]:
    from a2vtool.imaging.pipeline import check_size, default_size

    dh, dw = default_size(loaded.pipe, loaded.family)
    h, w = opts.height or dh, opts.width or dw
    check_size(loaded.family, h, w, int(getattr(loaded.pipe, "vae_scale_factor", 8)))
    return h, w
