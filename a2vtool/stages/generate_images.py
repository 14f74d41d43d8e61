"""`generate-images` stage: adapters + embeddings (or generator samples, or oracle targets) -> PNGs, grids, manifest."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from a2vtool.errors import InputError
from a2vtool.imaging.config import GenerateConfig

KIND = "a2v.images"


def check_inputs(cfg: GenerateConfig) -> None:
    """File-system errors, raised before any model loads."""
    for what, p in (("adapters", cfg.adapters), ("embeddings", cfg.embeddings), ("from_generators", cfg.from_generators)):
        if p is not None and not Path(p).exists():
            raise InputError(f"{what} not found: {p}", hint="check the path")


def _select(cfg: GenerateConfig, cache: Any) -> tuple[list[Any], list[str]]:
    """The jobs to draw and the label set (the selected classes, in a fixed sorted order)."""
    import torch

    from a2vtool.imaging.generate import clip_jobs, image_seed, make_job

    if cache is not None:
        entries = cache.entries(cfg.dataset, cfg.classes, cfg.splits)
        if cfg.splits and not entries:
            entries = _run_split_entries(cfg, cache)
        jobs = clip_jobs(cache, entries, cfg.seed, cfg.max_per_class, cfg.count)
        if not jobs:
            raise InputError(f"no clips in {cfg.embeddings} match classes {cfg.classes or 'all'} and splits "
                             f"{cfg.splits or 'all'}", hint="check --split / --classes")
        return jobs, sorted(cfg.classes or {e.label for e in cache.entries(cfg.dataset, None, None)})
    n = min(cfg.samples_per_class, cfg.max_per_class or cfg.samples_per_class)
    if cfg.from_generators is not None:
        from a2vtool.models.generator_store import load_generator_set

        gs = load_generator_set(cfg.from_generators)
        classes = list(cfg.classes or gs.classes)
        unknown = [c for c in classes if c not in gs.classes]
        if unknown:
            raise InputError(f"unknown class {unknown[0]!r} for generators {cfg.from_generators}; valid: {', '.join(gs.classes)}")
        jobs = []
        for c in classes:
            g = torch.Generator().manual_seed(image_seed(cfg.seed, f"generator:{c}"))
            x = gs.sample(c, n, generator=g).detach().float().cpu()
            jobs += [make_job(f"gen-{c}-{i:04d}", c, None, "generator", cfg.seed, x[i].clone()) for i in range(n)]
            del x
    else:
        classes = list(cfg.classes or [])
        jobs = [make_job(f"oracle-{c}-{i:04d}", c, None, "oracle", cfg.seed) for c in classes for i in range(n)]
    return jobs[: cfg.count] if cfg.count else jobs, sorted(classes)


def _run_split_entries(cfg: GenerateConfig, cache: Any) -> list[Any]:
    """When the dataset itself has no such split, take the split from the federate run that trained the
    adapters: its run.json records every node's train/val/test clip ids."""
    from a2vtool.artifacts import read_json_file

    run_json = Path(cfg.adapters) / "run.json" if cfg.adapters is not None else None
    if run_json is None or not run_json.is_file():
        return []
    nodes = read_json_file(run_json, "run record").get("nodes", {})
    wanted = {cid for nd in nodes.values() for sp in cfg.splits or [] for cid in nd.get("splits", {}).get(sp, [])}
    return [e for e in cache.entries(cfg.dataset, cfg.classes, None) if e.clip_id in wanted]


def run(cfg: GenerateConfig, *, keep_pipeline: bool = False) -> dict[str, Any]:
    """Render every selected image (skipping ones a previous run with the same settings wrote), then grids, optional
    CLIP evaluation and the manifest (written last). Returns the manifest plus a few summary fields.
    The pipeline is freed at the end unless `keep_pipeline` (memcheck rounds reuse the one cached pipeline)."""
    from a2vtool.artifacts import base_manifest, write_json_atomic
    from a2vtool.config import dump_config
    from a2vtool.imaging import generate as gen
    from a2vtool.imaging.pipeline import (DEFAULT_GUIDANCE, check_conditioning, denoiser_config, expected_from_config,
                                          get_pipeline, release_pipeline)
    from a2vtool.models.text_targets import ensure_text_targets, pipeline_family
    from a2vtool.runtime import resolve_device, resolve_dtype

    check_inputs(cfg)
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    family = pipeline_family(cfg.pipeline)
    expected = expected_from_config(family, denoiser_config(cfg.pipeline, family))
    model, info = None, {}
    if not cfg.oracle:
        from a2vtool.federated.checkpoint import load_adapters

        model, info = load_adapters(cfg.adapters, cfg.which, device)  # type: ignore[arg-type]
        shapes = {k: tuple(v) for k, v in info["arch"]["slot_shapes"].items()}
        check_conditioning(shapes, expected, family, f"adapters {info['path']} (trained for {info.get('family')})", cfg.pipeline)
    cache = None
    try:
        if cfg.embeddings is not None:
            from a2vtool.embeddings import open_cache

            cache = open_cache(cfg.embeddings)
        jobs, classes = _select(cfg, cache)
        guidance = DEFAULT_GUIDANCE[family] if cfg.guidance is None else cfg.guidance
        msl = cfg.max_sequence_length or (shapes["prompt_embeds"][0] if model is not None and family == "flux"
                                          else 17 if family == "flux" else 77)  # 17: federate's FLUX default
        need_targets = cfg.oracle or (cfg.negative == "empty" and family != "flux" and guidance > 1.0)
        targets = None
        if need_targets:
            _, targets = ensure_text_targets(cfg.targets_root, cfg.pipeline, classes, cfg.template, msl, device)
        if cfg.oracle:
            assert targets is not None
            shapes = targets.slot_shapes()
            check_conditioning(shapes, expected, family, "oracle text targets", cfg.pipeline)
            cond = gen.oracle_conditioning(targets, list(expected))
        else:
            cond = gen.adapter_conditioning(model)
        neg = gen.negatives(family, cfg.negative, shapes, targets, guidance)
        loaded = get_pipeline(cfg.pipeline, family, device, dtype, offload=cfg.offload,
                              attention_slicing=cfg.attention_slicing, vae_tiling=cfg.vae_tiling)
        h, w = gen.resolve_size(loaded, cfg)
        meta = {"pipeline": cfg.pipeline, "family": family, "oracle": cfg.oracle, "adapters": info.get("path"),
                "which": info.get("which"), "round": info.get("round"), "steps": cfg.steps, "guidance": guidance,
                "height": h, "width": w, "dtype": str(dtype).replace("torch.", ""), "negative": cfg.negative}
        key = gen.render_key({**meta, "seed": cfg.seed, "template": cfg.template if cfg.oracle else None})
        out = Path(cfg.out)
        records, skipped = gen.render(loaded, jobs, cond, out, opts=cfg, height=h, width=w, key=key, meta=meta,
                                      negative=neg, desc="generate-images")
        grids = gen.write_grids(out, records, cfg.grid_columns)
        ev = None
        if cfg.eval_clip:
            from a2vtool.imaging.evaluate import evaluate_records

            ev = evaluate_records(out, records, classes, cfg.eval_clip, device, cfg.template)
        per_class: dict[str, int] = {}
        for r in records:
            per_class[r["class"]] = per_class.get(r["class"], 0) + 1
        manifest = base_manifest(KIND, key, dump_config(cfg), seed=cfg.seed, family=family, pipeline=cfg.pipeline,
                                 adapters={k: info.get(k) for k in ("path", "which", "round", "targets_key")} if info else None,
                                 settings=meta, classes=classes, counts={"images": len(records), "rendered": len(records) - skipped,
                                                                         "skipped": skipped, "per_class": per_class},
                                 images=records, grids=grids, eval=ev)
        write_json_atomic(out / "manifest.json", manifest)
        return {**manifest, "out": str(out)}
    finally:
        if cache is not None:
            cache.close()
        del model
        if not keep_pipeline:
            release_pipeline()


# -- memcheck ---------------------------------------------------------------------------------------
class GenerateImagesWorkload:
    """memcheck workload: round r renders every selected image afresh (no skipping) into scratch/round-r, then
    deletes it. The one pipeline stays cached across rounds (as in federate); everything else must be freed."""

    name = "generate-images"

    def __init__(self, cfg: GenerateConfig, scratch: Path) -> None:
        self.cfg, self.scratch = cfg, scratch

    def setup(self) -> None:
        check_inputs(self.cfg)

    def run_round(self, r: int, on_step: Callable[[str], None]) -> None:
        out = self.scratch / f"round-{r:04d}"
        run(self.cfg.model_copy(update={"out": out}), keep_pipeline=True)
        shutil.rmtree(out, ignore_errors=True)
        on_step("render")

    def close(self) -> None:
        from a2vtool.imaging.pipeline import release_pipeline

        release_pipeline()
        shutil.rmtree(self.scratch, ignore_errors=True)


def memcheck_workload(config: Path | None = None, sets: list[str] | None = None, device: str = "auto",
                      seed: int = 0) -> GenerateImagesWorkload:
    """The workload memcheck drives; `config` is a generate-images config file, `sets` are --set overrides."""
    from a2vtool.config import load_config

    scratch = Path(tempfile.mkdtemp(prefix="a2v-memcheck-images-"))
    try:
        cfg = load_config(GenerateConfig, config, list(sets or []),
                          {"device": device, "seed": seed, "out": str(scratch / "round")})
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    return GenerateImagesWorkload(cfg, scratch)
