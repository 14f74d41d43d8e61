"""The embedding cache on disk: sharded safetensors + one manifest; lazy reader and incremental writer."""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from a2vtool.artifacts import (
    MANIFEST,
    base_manifest,
    cache_key,
    read_manifest,
    save_tensors,
    write_json_atomic,
)

# maintenance functions live in embeddings_admin.py (re-exported here: one import path for callers); it and this
# module share the format names of embeddings_format.py, so the two do not import each other
from a2vtool.embeddings_admin import clear_cache, list_caches, verify_cache  # noqa: F401
from a2vtool.embeddings_format import KIND, SHARD_KIND, TENSOR
from a2vtool.errors import ArtifactError, CacheLockedError, InputError


# columns every entry has besides its `meta`; `Entry.get` and the natural partition read them by these names
ENTRY_COLUMNS = ("dataset", "clip_id", "label", "split", "fold")


@dataclass(frozen=True)
class Entry:
    """One clip of one dataset in a cache: where its row lives, its label, and the dataset's metadata for it."""

    index: int
    dataset: str
    clip_id: str
    item: str
    label: str
    split: str | None
    fold: int | None
    path: str
    # extra listing columns (csv columns such as speaker, ESC-50 target/take, VEGAS/VGGSound ytid/start); {} for caches
    # written before metadata was kept. Not part of equality or hashing.
    meta: dict[str, str] = field(default_factory=dict, compare=False)

    def get(self, column: str) -> str | None:
        """The value of `column` for this clip as a string: one of ENTRY_COLUMNS or a `meta` key; None if absent."""
        if column in ENTRY_COLUMNS:
            value = getattr(self, column)
            return None if value is None else str(value)
        return self.meta.get(column)


def clip_record(dataset: str, clip_id: str, item: str, label: str, split: str | None = None, fold: int | None = None,
                path: str = "", meta: dict[str, str] | None = None) -> dict[str, Any]:
    """THE manifest entry of one dataset clip (the listing, not the embedding: it is not part of the cache key)."""
    return {"dataset": dataset, "clip_id": clip_id, "item": item, "label": label, "split": split, "fold": fold,
            "path": path, "meta": {str(k): str(v) for k, v in (meta or {}).items()}}


def entry_of(index: int, c: dict[str, Any]) -> Entry:
    """An Entry from a manifest clip record (records of older caches lack `meta`, `path`, ...: defaults apply)."""
    return Entry(index, c["dataset"], c["clip_id"], c["item"], c["label"], c.get("split"), c.get("fold"),
                 c.get("path", ""), dict(c.get("meta") or {}))


class _ShardRows:
    """Slices rows [a:b] of a shard's embeddings tensor with one positioned read (header parsed once)."""

    DTYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "F64": "float64"}

    def __init__(self, path: Path) -> None:
        import json
        import struct

        self.path = path
        try:
            with open(path, "rb") as f:
                (n,) = struct.unpack("<Q", f.read(8))
                info = json.loads(f.read(n))[TENSOR]
            self.dtype = self.DTYPES[info["dtype"]]
            self.shape = [int(x) for x in info["shape"]]
            begin, end = info["data_offsets"]
        except Exception as e:  # noqa: BLE001 - any malformed header is the same problem for the user
            raise ArtifactError(f"cannot open shard {path}: {e}", hint="run `a2vtool cache verify`") from None
        self.start = 8 + n + int(begin)
        self.row_bytes = (int(end) - int(begin)) // max(self.shape[0], 1)

    def __getitem__(self, sl: slice) -> Any:
        import torch

        a, b, _ = sl.indices(self.shape[0])
        buf = bytearray(max(b - a, 0) * self.row_bytes)
        with open(self.path, "rb", buffering=0) as f:
            f.seek(self.start + a * self.row_bytes)
            got = f.readinto(buf)
        if got != len(buf):
            raise ArtifactError(f"shard {self.path} is truncated", hint="run `a2vtool cache verify`")
        if not buf:
            return torch.empty(0, *self.shape[1:], dtype=getattr(torch, self.dtype))
        return torch.frombuffer(buf, dtype=getattr(torch, self.dtype)).view(b - a, *self.shape[1:])


def shard_name(i: int) -> str:
    return f"shard-{i:05d}.safetensors"


class EmbeddingCache:
    """Read-only, lazy view of a cache directory. Rows are sliced from memory-mapped shards on demand."""

    def __init__(self, directory: Path | str, max_open: int = 8) -> None:
        self.dir = Path(directory)
        self.manifest = read_manifest(self.dir, KIND)
        self.key: str = self.manifest["cache_key"]
        self.settings: dict[str, Any] = self.manifest["settings"]
        self.shape: tuple[int, int] = tuple(self.manifest.get("shape") or (0, 0))  # type: ignore[assignment]
        self._items: dict[str, list[int]] = self.manifest["items"]
        self._entries = [entry_of(i, c) for i, c in enumerate(self.manifest["clips"])]
        self._open: OrderedDict[int, Any] = OrderedDict()
        self._max_open = max_open

    # -- selection --------------------------------------------------------------------------------
    def datasets(self) -> list[str]:
        return sorted({e.dataset for e in self._entries})

    def entries(
        self,
        dataset: str | None = None,
        classes: list[str] | None = None,
        splits: list[str] | None = None,
    ) -> list[Entry]:
        """Every matching entry, in manifest order. Unknown dataset or class names are input errors."""
        out = self._entries
        if dataset is not None:
            names = self.datasets()
            if dataset not in names:
                raise InputError(f"dataset {dataset!r} is not in cache {self.dir}; it holds: {', '.join(names)}")
            out = [e for e in out if e.dataset == dataset]
        if classes is not None:
            valid = sorted({e.label for e in out})
            unknown = [c for c in classes if c not in valid]
            if unknown:
                raise InputError(
                    f"unknown class {unknown[0]!r} for cache {self.dir}"
                    + (f" dataset {dataset!r}" if dataset else "")
                    + f"; valid: {', '.join(valid)}"
                )
            keep = set(classes)
            out = [e for e in out if e.label in keep]
        if splits is not None:
            keep_s = set(splits)
            out = [e for e in out if e.split in keep_s]
        return list(out)

    def __len__(self) -> int:
        return len(self._entries)

    def labels(self, dataset: str | None = None) -> list[str]:
        return sorted({e.label for e in self.entries(dataset)})

    # -- reading ----------------------------------------------------------------------------------
    def _shard(self, i: int) -> Any:
        from safetensors import safe_open

        f = self._open.get(i)
        if f is None:
            path = self.dir / self.manifest["shards"][i]["file"]
            try:
                f = safe_open(str(path), framework="pt", device="cpu")
            except Exception as e:  # noqa: BLE001 - safetensors raises its own error types
                raise ArtifactError(f"cannot open shard {path}: {e}", hint="run `a2vtool cache verify`") from None
            self._open[i] = f
            if len(self._open) > self._max_open:
                self._open.popitem(last=False)
        else:
            self._open.move_to_end(i)
        return f

    def _rows_of(self, i: int) -> _ShardRows:
        """Row reader of shard i: plain positioned reads, so rows already consumed do not stay resident
        (pages touched through a memory map count in RSS until it is closed)."""
        f = self._open.get(("rows", i))  # type: ignore[call-overload]
        if f is None:
            f = _ShardRows(self.dir / self.manifest["shards"][i]["file"])
            self._open[("rows", i)] = f  # type: ignore[index]
            if len(self._open) > self._max_open:
                self._open.popitem(last=False)
        return f

    def rows(self, items: list[str]) -> Any:
        """Stack the rows of `items` (content ids) into a (n, T, D) tensor, reading only those rows."""
        import torch

        if not items:
            return torch.empty(0, *self.shape, dtype=getattr(torch, self.manifest["dtype"]))
        locs = []
        for it in items:
            loc = self._items.get(it)
            if loc is None:
                raise ArtifactError(f"item {it[:12]}… is listed but not stored in {self.dir}", hint="re-run embed")
            locs.append(loc)
        out: list[Any] = [None] * len(items)
        by_shard: dict[int, list[tuple[int, int]]] = {}
        for pos, (s, r) in enumerate(locs):
            by_shard.setdefault(s, []).append((r, pos))
        for s, pairs in by_shard.items():
            sl = self._rows_of(s)
            pairs.sort()
            lo, hi = pairs[0][0], pairs[-1][0] + 1
            if len(by_shard) == 1 and hi - lo == len(items) and all(r - lo == pos for r, pos in pairs):
                return sl[lo:hi]  # the rows are one in-order run of one shard (iter_batches): no second copy
            if hi - lo <= 2 * len(pairs):  # dense: one contiguous read
                block = sl[lo:hi]
                for r, pos in pairs:
                    out[pos] = block[r - lo]
            else:
                for r, pos in pairs:
                    out[pos] = sl[r : r + 1][0]
        return torch.stack(out)

    def views(self, entries: list[Entry]) -> list[Any]:
        """Zero-copy (T, D) tensors for `entries`, backed by copy-on-write memory maps of the shards: getting all
        of them costs microseconds and no RAM; a row's pages are read only when it is touched."""
        import mmap

        import numpy as np
        import torch

        maps: dict[int, Any] = {}
        out = []
        for e in entries:
            si, r = self._items[e.item]
            m = maps.get(si)
            if m is None:
                rows = self._rows_of(si)
                np_dtype = "float32" if rows.dtype == "bfloat16" else rows.dtype
                arr = np.memmap(rows.path, dtype=np_dtype, mode="c", offset=rows.start,
                                shape=(rows.shape[0], rows.row_bytes // np.dtype(np_dtype).itemsize))
                mm = getattr(arr, "_mmap", None)
                if mm is not None and hasattr(mmap, "MADV_RANDOM"):
                    mm.madvise(mmap.MADV_RANDOM)  # no read-ahead: touching a row maps that row's pages only
                m = maps[si] = torch.from_numpy(arr).view(getattr(torch, rows.dtype)).view(rows.shape)
            out.append(m[r])
        return out

    def load(self, entries: list[Entry]) -> Any:
        return self.rows([e.item for e in entries])

    def iter_batches(self, entries: list[Entry], batch_size: int = 64) -> Iterator[tuple[Any, list[Entry]]]:
        """Stream `entries` as (tensor, entries) batches; RAM stays at one batch."""
        for i in range(0, len(entries), batch_size):
            chunk = entries[i : i + batch_size]
            yield self.load(chunk), chunk

    def close(self) -> None:
        self._open.clear()

    def __enter__(self) -> EmbeddingCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def resolve_cache_dir(path: Path | str) -> Path:
    """A cache folder, or a cache root holding exactly one cache (so configs can name the root)."""
    p = Path(path)
    if (p / MANIFEST).is_file() or not p.is_dir():
        return p
    found = sorted(d for d in p.iterdir() if (d / MANIFEST).is_file())
    if len(found) == 1:
        return found[0]
    if not found:
        raise ArtifactError(f"{p} holds no embedding cache", hint="run `a2vtool embed` first, or check the path")
    raise InputError(f"{p} holds {len(found)} caches ({', '.join(d.name for d in found)}); name one of them",
                     hint="see `a2vtool cache list --root " + str(p) + "`")


def open_cache(directory: Path | str) -> EmbeddingCache:
    """Open a cache folder (or a root holding exactly one cache) for lazy reading."""
    return EmbeddingCache(resolve_cache_dir(directory))


# -- writing ----------------------------------------------------------------------------------------
@dataclass
class CacheWriter:
    """Incremental writer: each new shard is written atomically, then the manifest is replaced atomically.

    A kill at any instant loses at most the shard in flight; orphan shards of killed runs are removed on open.
    """

    directory: Path
    manifest: dict[str, Any]
    pending: list[tuple[str, Any]] = field(default_factory=list)
    lock: Any = None

    @classmethod
    def open(cls, directory: Path, fresh_manifest: dict[str, Any]) -> CacheWriter:
        from filelock import FileLock, Timeout

        directory.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(directory / ".lock"))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            raise CacheLockedError(
                f"cache {directory} is being written by another process (lock {directory / '.lock'})",
                hint="wait for it to finish; the lock is released automatically when that process exits",
            ) from None
        path = directory / MANIFEST
        if path.exists():
            manifest = read_manifest(directory, KIND)
            if manifest["cache_key"] != fresh_manifest["cache_key"]:
                lock.release()
                raise ArtifactError(f"{path} belongs to key {manifest['cache_key'][:16]}…, not this configuration")
        else:
            manifest = fresh_manifest
        w = cls(directory, manifest, lock=lock)
        w.clean_orphans()
        return w

    def clean_orphans(self) -> list[str]:
        known = {s["file"] for s in self.manifest["shards"]}
        removed = []
        for p in self.directory.iterdir():
            if p.name in (MANIFEST, ".lock"):
                continue
            if (p.name.startswith("shard-") and p.name not in known) or p.name.endswith(".tmp") or p.name.startswith(".shard-"):
                with contextlib.suppress(OSError):
                    p.unlink()
                removed.append(p.name)
        return removed

    def has(self, item: str) -> bool:
        return item in self.manifest["items"]

    def upsert_clips(self, records: list[dict[str, Any]]) -> None:
        """Insert or replace clip records (from `clip_record`) by (dataset, clip_id), keeping manifest order stable;
        takes effect at the next commit."""
        clips = self.manifest["clips"]
        index = {(c["dataset"], c["clip_id"]): i for i, c in enumerate(clips)}
        for rec in records:
            i = index.get((rec["dataset"], rec["clip_id"]))
            if i is None:
                index[(rec["dataset"], rec["clip_id"])] = len(clips)
                clips.append(rec)
            else:
                clips[i] = rec

    def add(self, item: str, row: Any) -> None:
        self.pending.append((item, row))

    def flush(self) -> int:
        """Write pending rows as one shard and commit the manifest; return rows written."""
        import torch

        if not self.pending:
            return 0
        idx = len(self.manifest["shards"])
        name = shard_name(idx)
        items = [it for it, _ in self.pending]
        block = torch.stack([r for _, r in self.pending])
        if self.manifest.get("shape") in (None, []):
            self.manifest["shape"] = list(block.shape[1:])
        elif list(block.shape[1:]) != list(self.manifest["shape"]):
            raise ArtifactError(f"row shape {tuple(block.shape[1:])} differs from cache shape {self.manifest['shape']}")
        digest = save_tensors(self.directory / name, {TENSOR: block}, SHARD_KIND, self.manifest["cache_key"], items=items)
        self.manifest["shards"].append(
            {"file": name, "rows": len(items), "sha256": digest, "bytes": (self.directory / name).stat().st_size}
        )
        for r, it in enumerate(items):
            self.manifest["items"][it] = [idx, r]
        self.pending.clear()
        self.commit()
        return len(items)

    def commit(self) -> None:
        write_json_atomic(self.directory / MANIFEST, self.manifest, indent=None)

    def close(self) -> None:
        if self.lock is not None:
            self.lock.release()
            self.lock = None


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
