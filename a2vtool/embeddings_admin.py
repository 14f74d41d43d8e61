"""Embedding-cache maintenance: verify (re-hash shards), list, clear. Writing (CacheWriter, import_tensors) is in
embeddings.py, which re-exports these; this module needs only the format names (embeddings_format.py)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from a2vtool.artifacts import MANIFEST, read_manifest, sha256_file
from a2vtool.embeddings_format import KIND, TENSOR
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
