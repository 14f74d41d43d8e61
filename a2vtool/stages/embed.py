"""`embed` stage: audio clips -> AST embedding cache (incremental, resumable, keyed by what changes the bytes)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from a2vtool import SCHEMA_VERSION, ui
from a2vtool.artifacts import HashMemo, base_manifest, cache_key
from a2vtool.audio.datasets import DatasetSpec
from a2vtool.config import StageConfig, Strict, dump_config
from a2vtool.errors import A2VError, InputError
from a2vtool.models.ast import check_token_mode

DEFAULT_AST = "MIT/ast-finetuned-audioset-10-10-0.4593"
SHARD_BYTES = 256 << 20


class AudioModelSpec(Strict):
    name_or_path: str = Field(DEFAULT_AST, description="Hugging Face hub id or local folder of the audio encoder.")
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit); ignored for folders.")


class EmbedConfig(StageConfig):
    dataset: DatasetSpec = Field(default_factory=DatasetSpec, description="Which clips to embed.")
    model: AudioModelSpec = Field(default_factory=AudioModelSpec, description="The frozen audio encoder.")
    sample_rate: int | None = Field(None, description="Resample clips to this rate; None = the model's own rate.")
    duration: float = Field(5.0, gt=0, le=600, description="Clips are padded or trimmed to this many seconds.")
    token_mode: str = Field("full", description="Tokens stored per clip: full, cls, mean or pool:N.")
    storage_dtype: Literal["fp32", "fp16"] = Field("fp32", description="dtype of the stored embeddings.")
    compute_dtype: Literal["auto", "fp32", "bf16", "fp16"] = Field("auto", description="Model dtype; auto = bf16 on CUDA, fp32 on CPU.")
    batch_size: int = Field(8, ge=1, description="Clips per model forward pass.")
    num_workers: int = Field(2, ge=1, le=64, description="Threads decoding audio and extracting features ahead of the model.")
    shard_rows: int | None = Field(None, ge=1, description="Rows per shard file; None = about 256 MB per shard.")
    out: Path = Field(Path("cache/embeddings"), alias="cache_root", description="Cache root: one sub-folder per cache key.")
    strict: bool = Field(False, description="Fail (exit 2) if any clip cannot be read, instead of skipping it.")

    @field_validator("token_mode")
    @classmethod
    def _mode(cls, v: str) -> str:
        try:
            return check_token_mode(v)
        except InputError as e:
            raise ValueError(e.message) from None


def settings_for(cfg: EmbedConfig, identity: dict[str, str], fe_settings: dict[str, Any], sr: int, compute: str) -> dict[str, Any]:
    """Everything that changes the cached bytes (and nothing else: no paths, devices or worker counts)."""
    return {
        "schema_version": SCHEMA_VERSION,
        "model": identity,
        "sample_rate": sr,
        "duration": cfg.duration,
        "feature_extractor": fe_settings,
        "token_mode": cfg.token_mode,
        "dtype": cfg.storage_dtype,
        "compute_dtype": compute,
    }


def _prefetch(pool: ThreadPoolExecutor, fn: Any, items: list[Any], depth: int) -> Iterator[tuple[Any, Future]]:
    """Yield (item, future) in order while keeping `depth` decodes in flight ahead of the consumer."""
    queue: list[tuple[Any, Future]] = []
    it = iter(items)
    for x in it:
        queue.append((x, pool.submit(fn, x)))
        if len(queue) >= depth:
            break
    while queue:
        yield queue.pop(0)
        nxt = next(it, None)
        if nxt is not None:
            queue.append((nxt, pool.submit(fn, nxt)))


def run(cfg: EmbedConfig) -> dict[str, Any]:
    """Embed every selected clip not already cached; return the run summary (the cache manifest path inside)."""
    import torch

    from a2vtool.audio.datasets import read_dataset
    from a2vtool.embeddings import CacheWriter, clip_record
    from a2vtool.models.ast import feature_settings, load_feature_extractor
    from a2vtool.runtime import model_identity, resolve_device, resolve_dtype

    t0 = time.perf_counter()
    listing = read_dataset(cfg.dataset)
    clips = list(listing.clips)
    skipped: list[dict[str, str]] = [{"clip": c, "reason": r} for c, r in listing.skipped]
    dataset_name = cfg.dataset.name or cfg.dataset.kind
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.compute_dtype, device)
    store_dtype = torch.float16 if cfg.storage_dtype == "fp16" else torch.float32

    cfg.out.mkdir(parents=True, exist_ok=True)
    memo = HashMemo(cfg.out / ".filehash-memo.json")
    fe = load_feature_extractor(cfg.model.name_or_path, cfg.model.revision, cfg.sample_rate)
    sr = int(fe.sampling_rate)
    identity = model_identity(cfg.model.name_or_path, cfg.model.revision, memo)
    settings = settings_for(cfg, identity, feature_settings(fe), sr, str(dtype).replace("torch.", ""))
    key = cache_key(settings)
    directory = cfg.out / key[:16]
    fresh = base_manifest("a2v.embeddings", key, dump_config(cfg), settings=settings, dtype=str(store_dtype).replace("torch.", ""),
                          shape=None, shards=[], items={}, clips=[])

    item_of: dict[str, str] = {}
    with ui.progress("hashing clips", len(clips)) as adv:
        for c in clips:
            try:
                item_of[c.clip_id] = memo.sha256(c.path)
            except OSError as e:
                skipped.append({"clip": str(c.path), "reason": f"unreadable: {e.strerror or e}"})
            adv()
    memo.save()

    writer = CacheWriter.open(directory, fresh)
    computed = 0
    try:
        todo: dict[str, Any] = {}
        for c in clips:
            it = item_of.get(c.clip_id)
            if it is not None and not writer.has(it) and it not in todo:
                todo[it] = c
        todo_ids = {x.clip_id for x in todo.values()}
        reused = sum(1 for c in clips if c.clip_id in item_of and c.clip_id not in todo_ids)
        if todo:
            computed = _compute(cfg, writer, todo, fe, sr, device, dtype, store_dtype, skipped)
        stored = [c for c in clips if item_of.get(c.clip_id) in writer.manifest["items"]]
        writer.upsert_clips([clip_record(dataset_name, c.clip_id, item_of[c.clip_id], c.label, c.split, c.fold,
                                         str(c.path), c.meta_dict()) for c in stored])
        writer.manifest["config"] = dump_config(cfg)
        writer.manifest["updated"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        writer.commit()
    finally:
        writer.close()

    labels = sorted({c.label for c in stored})
    summary = {
        "cache": str(directory),
        "cache_key": key,
        "dataset": dataset_name,
        "clips": len(stored),
        "computed": computed,
        "reused": reused,
        "skipped": skipped,
        "classes": {lab: sum(1 for c in stored if c.label == lab) for lab in labels},
        "shape": writer.manifest.get("shape"),
        "seconds": round(time.perf_counter() - t0, 3),
    }
    if skipped and cfg.strict:
        first = skipped[0]
        raise InputError(f"--strict: {len(skipped)} clip(s) could not be read, first {first['clip']}: {first['reason']}",
                         hint="fix or remove them; everything readable was cached")
    return summary


def _compute(cfg: EmbedConfig, writer: Any, todo: dict[str, Any], fe: Any, sr: int, device: str, dtype: Any,
             store_dtype: Any, skipped: list[dict[str, str]]) -> int:
    """Run the encoder over the clips in `todo` with decoding in parallel threads; return rows stored."""
    import numpy as np
    import torch

    from a2vtool.audio.io import AudioReadError as read_error
    from a2vtool.audio.io import load_clip
    from a2vtool.models.ast import features, load_audio_model, reduce_tokens

    model = load_audio_model(cfg.model.name_or_path, cfg.model.revision, device, dtype)
    row_bytes: int | None = None
    shard_rows = cfg.shard_rows
    done = 0

    def decode(item: str) -> Any:
        clip = todo[item]
        return features(fe, load_clip(clip.path, sr, cfg.duration), sr)

    def forward(batch: list[tuple[str, Any]]) -> None:
        nonlocal row_bytes, shard_rows, done
        x = torch.from_numpy(np.stack([f for _, f in batch])).to(device=device, dtype=dtype)
        with torch.inference_mode():
            h = model(input_values=x).last_hidden_state
            rows = reduce_tokens(h, cfg.token_mode).to(store_dtype).cpu()
        del x, h
        if shard_rows is None:
            row_bytes = rows[0].numel() * rows.element_size()
            shard_rows = max(1, SHARD_BYTES // row_bytes)
        for (item, _), row in zip(batch, rows):
            writer.add(item, row.clone())
            if len(writer.pending) >= shard_rows:
                done += writer.flush()

    try:
        with ThreadPoolExecutor(cfg.num_workers, thread_name_prefix="a2v-decode") as pool, \
                ui.progress("embedding", len(todo)) as adv:
            batch: list[tuple[str, Any]] = []
            for item, fut in _prefetch(pool, decode, list(todo), depth=max(2 * cfg.batch_size, 2 * cfg.num_workers)):
                try:
                    batch.append((item, fut.result()))
                except read_error as e:
                    skipped.append({"clip": str(todo[item].path), "reason": getattr(e, "message", str(e))})
                    ui.warn(f"skipped {todo[item].path}: {getattr(e, 'message', e)}")
                if len(batch) == cfg.batch_size:
                    forward(batch)
                    adv(len(batch))
                    batch = []
            if batch:
                forward(batch)
                adv(len(batch))
        done += writer.flush()
    except torch.cuda.OutOfMemoryError:
        raise A2VError(f"CUDA out of memory at batch size {cfg.batch_size}", hint="lower --set batch_size") from None
    return done


__all__ = ["EmbedConfig", "AudioModelSpec", "run", "settings_for"]
