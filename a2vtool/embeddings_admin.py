"""Embedding-cache maintenance: verify (re-hash shards), list, clear, and import rows computed elsewhere."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from a2vtool.artifacts import MANIFEST, read_manifest, sha256_file
from a2vtool.embeddings import KIND, TENSOR, CacheWriter
from a2vtool.errors import ArtifactError, VerifyError

# -- maintenance --------------------------------------------------------------------------------------
def verify_cache(directory: Path) -> dict[str, Any]:
    """Re-hash every shard and check the manifest's consistency; raise VerifyError listing every problem."""
    from safetensors import safe_open

    m = read_manifest(directory, KIND)
    problems: list[str] = []
    shape = m.get("shape")
    for i, s in enumerate(m["shards"]):
        p = Path(directory) / s["file"]
        if not p.is_file():
            problems.append(f"{s['file']}: missing")
            continue
        if sha256_file(p) != s["sha256"]:
            problems.append(f"{s['file']}: content hash mismatch (corrupt)")
            continue
        try:
            with safe_open(str(p), framework="pt", device="cpu") as f:
                meta = f.metadata() or {}
                rows = f.get_slice(TENSOR).get_shape()
        except Exception as e:  # noqa: BLE001
            problems.append(f"{s['file']}: unreadable ({e})")
            continue
        if meta.get("cache_key") != m["cache_key"]:
            problems.append(f"{s['file']}: header cache_key differs from manifest")
        if rows[0] != s["rows"] or (shape and list(rows[1:]) != list(shape)):
            problems.append(f"{s['file']}: shape {rows} does not match manifest ({s['rows']} rows of {shape})")
    for it, (si, r) in m["items"].items():
        if si >= len(m["shards"]) or r >= m["shards"][si]["rows"]:
            problems.append(f"item {it[:12]}…: points outside its shard")
    for c in m["clips"]:
        if c["item"] not in m["items"]:
            problems.append(f"clip {c['dataset']}/{c['clip_id']}: its item is not stored")
    if problems:
        raise VerifyError(f"cache {directory} failed verification: {len(problems)} problem(s): " + "; ".join(problems[:10]))
    return {"cache": str(directory), "shards": len(m["shards"]), "items": len(m["items"]), "clips": len(m["clips"]), "ok": True}


def list_caches(root: Path) -> list[dict[str, Any]]:
    """Every cache under `root` with its size and what it holds."""
    out = []
    if not Path(root).is_dir():
        return out
    for d in sorted(Path(root).iterdir()):
        if not (d / MANIFEST).is_file():
            continue
        try:
            m = read_manifest(d, KIND)
        except ArtifactError:
            continue
        size = sum(f.stat().st_size for f in d.iterdir() if f.is_file())
        model = m["settings"]["model"]
        out.append({
            "path": str(d), "key": m["cache_key"][:16], "model": model.get("hub_id") or model.get("local_path", "local"),
            "token_mode": m["settings"]["token_mode"], "items": len(m["items"]), "clips": len(m["clips"]),
            "datasets": sorted({c["dataset"] for c in m["clips"]}), "bytes": size,
        })
    return out


def clear_cache(directory: Path) -> int:
    """Delete a cache directory (only if it is an a2vtool embedding cache); return bytes freed."""
    directory = Path(directory)
    read_manifest(directory, KIND)
    size = sum(f.stat().st_size for f in directory.rglob("*") if f.is_file())
    tmp = directory.with_name(f".{directory.name}.deleting-{os.getpid()}")
    os.replace(directory, tmp)
    shutil.rmtree(tmp)
    return size


def import_tensors(
    directory: Path,
    rows: list[tuple[Any, ...]],
    *,
    dataset: str = "imported",
    settings: dict[str, Any] | None = None,
    shard_rows: int = 256,
) -> Path:
    """Write a cache from in-memory rows (clip_id, label, split, (T, D) tensor[, meta dict]): for embeddings computed
    elsewhere and for tests. Item ids hash the row's bytes, so identical rows are stored once."""
    import hashlib

    import torch

    from a2vtool.artifacts import base_manifest, cache_key
    from a2vtool.embeddings import clip_record

    settings = {"schema_version": 1, "source": "import", "token_mode": "imported", "model": {"imported": dataset},
                **(settings or {})}
    key = cache_key(settings)
    dtype = str(rows[0][3].dtype).replace("torch.", "") if rows else "float32"
    fresh = base_manifest(KIND, key, {"import": dataset}, settings=settings, dtype=dtype, shape=None, shards=[], items={}, clips=[])
    w = CacheWriter.open(Path(directory), fresh)
    try:
        for clip_id, label, split, t, *rest in rows:
            item = hashlib.sha256(t.contiguous().cpu().reshape(-1).view(torch.uint8).numpy().tobytes()).hexdigest()
            if not w.has(item) and item not in {i for i, _ in w.pending}:
                w.add(item, t.detach().cpu())
            if len(w.pending) >= shard_rows:
                w.flush()
            w.manifest["clips"].append(clip_record(dataset, clip_id, item, label, split, meta=rest[0] if rest else None))
        w.flush()
        w.commit()
    finally:
        w.close()
    return Path(directory)
