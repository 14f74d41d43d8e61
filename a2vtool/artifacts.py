"""Artifact plumbing: cache keys, manifests, atomic writes and safetensors files with typed headers."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from a2vtool import SCHEMA_VERSION, __version__
from a2vtool.errors import ArtifactError

MANIFEST = "manifest.json"
_UMASK = os.umask(0)
os.umask(_UMASK)


def canonical_json(obj: Any) -> str:
    """Canonical JSON: sorted keys, no spaces; the byte form that keys are hashed from."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)


def cache_key(obj: Any) -> str:
    """sha256 (hex) of the canonical JSON of `obj`, which must hold everything that changes the artifact's bytes."""
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


class HashMemo:
    """Memo of file content hashes keyed by (path, size, mtime_ns, inode), so unchanged files are not re-read.

    The same trick git's index uses: a re-run over 50 GB of unchanged audio costs a `stat` per file.
    """

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.entries: dict[str, list[Any]] = {}
        self.dirty = False
        if path is not None and path.is_file():
            with contextlib.suppress(OSError, ValueError):
                self.entries = json.loads(path.read_text())

    def sha256(self, file: Path) -> str:
        st = file.stat()
        key = str(file.resolve())
        stamp = [st.st_size, st.st_mtime_ns, st.st_ino]
        hit = self.entries.get(key)
        if hit is not None and hit[:3] == stamp:
            return hit[3]
        digest = sha256_file(file)
        self.entries[key] = [*stamp, digest]
        self.dirty = True
        return digest

    def save(self) -> None:
        if self.path is not None and self.dirty:
            write_json_atomic(self.path, self.entries, indent=None)
            self.dirty = False


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write to a temporary sibling, fsync, then os.replace: readers see the old or the new file, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; artifacts follow the user's umask like any file
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_json_atomic(path: Path, obj: Any, indent: int | None = 2) -> None:
    write_bytes_atomic(path, (json.dumps(obj, indent=indent, default=str) + "\n").encode())


def read_json_file(path: Path, what: str) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ArtifactError(f"{what} not found: {path}") from None
    except (OSError, ValueError) as e:
        raise ArtifactError(f"{what} {path} is unreadable: {e}") from None


def read_manifest(directory: Path, kind: str | tuple[str, ...]) -> dict[str, Any]:
    """Read `<directory>/manifest.json` and check its kind and schema version; a missing one means incomplete."""
    directory = Path(directory)
    if not directory.exists():
        raise ArtifactError(f"artifact not found: {directory}", hint="check the path or run the stage that makes it")
    path = directory / MANIFEST
    if not path.is_file():
        raise ArtifactError(
            f"{directory} has no {MANIFEST}: it is not an a2vtool artifact or its run did not finish",
            hint="re-run the stage that writes it",
        )
    m = read_json_file(path, "manifest")
    kinds = (kind,) if isinstance(kind, str) else kind
    if not isinstance(m, dict) or m.get("kind") not in kinds:
        got = m.get("kind") if isinstance(m, dict) else None
        raise ArtifactError(f"{path} is a {got!r} artifact, expected {' or '.join(kinds)}")
    if m.get("schema_version") != SCHEMA_VERSION:
        raise ArtifactError(
            f"{path} has schema_version {m.get('schema_version')}, this a2vtool reads {SCHEMA_VERSION}",
            hint="re-run the stage with this version",
        )
    return m


@contextlib.contextmanager
def staged_dir(final: Path) -> Iterator[Path]:
    """Build a directory artifact in a temporary sibling and move it into place on success.

    Write the manifest last inside the block. An existing `final` is replaced only after the new one is
    complete; on any exception the staging directory is removed and `final` is untouched.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".partial", dir=final.parent))
    try:
        yield stage
        if final.exists():
            old = final.with_name(f".{final.name}.old-{os.getpid()}")
            os.replace(final, old)
            os.replace(stage, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(stage, final)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise


def clean_partials(parent: Path) -> list[Path]:
    """Remove staging leftovers (`.<name>.*.partial`, `.*.tmp`) of killed runs in `parent`; return them."""
    removed: list[Path] = []
    if not Path(parent).is_dir():
        return removed
    for p in Path(parent).iterdir():
        if p.name.startswith(".") and (p.name.endswith(".partial") or p.name.endswith(".tmp") or ".old-" in p.name):
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    p.unlink()
            removed.append(p)
    return removed


def header_meta(kind: str, key: str, **extra: Any) -> dict[str, str]:
    """safetensors header metadata (string values only) every a2vtool tensor file carries."""
    meta = {"kind": kind, "schema_version": str(SCHEMA_VERSION), "cache_key": key}
    meta.update({k: v if isinstance(v, str) else canonical_json(v) for k, v in extra.items()})
    return meta


def save_tensors(path: Path, tensors: dict[str, Any], kind: str, key: str, **extra: Any) -> str:
    """Save torch tensors atomically as safetensors with typed header metadata; return the file's sha256."""
    from safetensors.torch import save

    data = canonical_safetensors(save({k: v.detach().contiguous().cpu() for k, v in tensors.items()},
                                      metadata=header_meta(kind, key, **extra)))
    write_bytes_atomic(Path(path), data)
    return sha256_bytes(data)


def canonical_safetensors(data: bytes) -> bytes:
    """Rewrite a safetensors header with sorted keys: the library writes metadata in hash order, which differs
    between processes, and identical tensors must give identical bytes (and checksums)."""
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    text += b" " * (-(8 + len(text)) % 8)
    return len(text).to_bytes(8, "little") + text + data[8 + n :]


def load_tensors(path: Path, kind: str | None = None, device: str = "cpu") -> tuple[dict[str, Any], dict[str, str]]:
    """Load a safetensors file written by `save_tensors`, checking its header kind; returns (tensors, metadata)."""
    from safetensors import SafetensorError
    from safetensors.torch import safe_open

    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"tensor file not found: {path}")
    try:
        with safe_open(str(path), framework="pt", device=device) as f:
            meta = f.metadata() or {}
            if kind is not None and meta.get("kind") != kind:
                raise ArtifactError(f"{path} holds {meta.get('kind')!r}, expected {kind!r}")
            return {k: f.get_tensor(k) for k in f.keys()}, meta
    except (SafetensorError, OSError) as e:
        raise ArtifactError(f"{path} is not a readable safetensors file: {e}", hint="delete it and re-run") from None


def versions() -> dict[str, str]:
    """Versions of the pieces that shape results, for manifests."""
    out = {"a2vtool": __version__, "python": platform.python_version()}
    from importlib.metadata import PackageNotFoundError, version

    for pkg in ("torch", "torchaudio", "transformers", "diffusers", "safetensors", "flwr"):
        with contextlib.suppress(PackageNotFoundError):
            out[pkg] = version(pkg)
    return out


def base_manifest(kind: str, key: str, config: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """The fields every manifest starts with."""
    return {
        "kind": kind,
        "schema_version": SCHEMA_VERSION,
        "cache_key": key,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "versions": versions(),
        "config": config,
        **extra,
    }
