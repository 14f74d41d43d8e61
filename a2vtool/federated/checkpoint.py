"""Round checkpoints and adapter artifacts of a federate run: safetensors for tensors, JSON for the rest."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

from a2vtool.artifacts import load_tensors, read_json_file, read_manifest, save_tensors
from a2vtool.errors import ArtifactError, InputError

RUN_KIND = "a2v.federate"
ADAPTER_KIND = "a2v.adapters"
NODE_KIND = "a2v.node_state"
ROUND_RE = re.compile(r"^round-(\d{4,})$")


def round_dir(run: Path, r: int) -> Path:
    return Path(run) / "rounds" / f"round-{r:04d}"


def complete_rounds(run: Path) -> list[int]:
    """Rounds whose checkpoint finished (state.json is written last), sorted numerically (never lexicographically)."""
    base = Path(run) / "rounds"
    if not base.is_dir():
        return []
    out = []
    for d in base.iterdir():
        m = ROUND_RE.match(d.name)
        if m and (d / "state.json").is_file():
            out.append(int(m.group(1)))
    return sorted(out)


def prune_rounds(run: Path, keep_last: int | None) -> None:
    if not keep_last:
        return
    for r in complete_rounds(run)[:-keep_last]:
        shutil.rmtree(round_dir(run, r), ignore_errors=True)


def flatten_optimizer(opt_state: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """torch optimizer state_dict -> (tensors, JSON meta) for safetensors."""
    import torch

    tensors: dict[str, Any] = {}
    scalars: dict[str, Any] = {}
    for idx, st in opt_state["state"].items():
        for name, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"opt.{idx}.{name}"] = v
            else:
                scalars[f"{idx}.{name}"] = v
    groups = [{k: v for k, v in g.items()} for g in opt_state["param_groups"]]
    return tensors, {"param_groups": groups, "scalars": scalars}


def unflatten_optimizer(tensors: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for k, v in tensors.items():
        if k.startswith("opt."):
            _, idx, name = k.split(".", 2)
            state.setdefault(int(idx), {})[name] = v
    for k, v in meta.get("scalars", {}).items():
        idx, name = k.split(".", 1)
        state.setdefault(int(idx), {})[name] = v
    return {"state": state, "param_groups": meta["param_groups"]}


def save_node_state(path: Path, model_state: dict[str, Any], opt_state: dict[str, Any] | None, key: str) -> None:
    tensors = {f"model.{k}": v for k, v in model_state.items()}
    meta: dict[str, Any] = {}
    if opt_state is not None:
        t, meta = flatten_optimizer(opt_state)
        tensors.update(t)
    save_tensors(path, tensors, NODE_KIND, key, optimizer=json.dumps(meta))


def load_node_state(path: Path) -> tuple[dict[str, Any], dict[str, Any] | None]:
    tensors, meta = load_tensors(path, NODE_KIND)
    model = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
    opt_meta = json.loads(meta.get("optimizer", "{}") or "{}")
    opt = unflatten_optimizer(tensors, opt_meta) if opt_meta else None
    return model, opt


def save_adapters(path: Path, state: dict[str, Any], key: str, arch: dict[str, Any], **extra: Any) -> None:
    save_tensors(path, state, ADAPTER_KIND, key, arch=arch, **extra)


def load_adapters(source: Path, which: str = "global", device: str = "cpu") -> tuple[Any, dict[str, Any]]:
    """Rebuild adapters from a run directory (its final adapters, `which` = global or a node name) or from one
    adapters .safetensors file. Returns (model in eval mode, info with arch, slot shapes, round, targets key)."""
    from a2vtool.models.adapters import AdapterSpec, build_adapters

    source = Path(source)
    if source.is_dir():
        m = read_manifest(source, RUN_KIND)
        files = m["final"]["adapters"]
        if which not in files:
            raise InputError(f"run {source} has no adapters {which!r}; it has: {', '.join(files)}")
        path = source / files[which]
    else:
        path = source
    tensors, meta = load_tensors(path, ADAPTER_KIND, device=device)
    try:
        arch = json.loads(meta["arch"])
    except (KeyError, ValueError):
        raise ArtifactError(f"{path} has no adapter architecture in its header") from None
    spec = {"positions": 0, **arch["spec"]}  # adapters saved before position embeddings existed have none
    model = build_adapters(arch["in_dim"], {k: tuple(v) for k, v in arch["slot_shapes"].items()}, AdapterSpec(**spec))
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    if missing or unexpected:
        raise ArtifactError(f"{path} does not match its architecture (missing {missing[:3]}, unexpected {unexpected[:3]})")
    info = {"arch": arch, "path": str(path), "round": int(meta.get("round", "0")), "which": meta.get("which", which),
            "targets_key": meta.get("targets_key"), "family": arch.get("family")}
    return model.eval().to(device), info


def clone_tensors(obj: Any) -> Any:
    """A deep copy of the tensors in nested dicts/lists (other values shared): a snapshot later training cannot change."""
    import torch

    if isinstance(obj, torch.Tensor):
        return obj.detach().clone()
    if isinstance(obj, dict):
        return {k: clone_tensors(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(clone_tensors(v) for v in obj)
    return obj


class CheckpointWriter:
    """Runs checkpoint writes one at a time, on one background thread (or inline with background=False). A write's
    error is raised by the next `submit`, `wait` or `close`, so it is never lost."""

    def __init__(self, background: bool) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self._pool = ThreadPoolExecutor(1, thread_name_prefix="a2v-checkpoint") if background else None
        self._pending: Any = None

    def submit(self, write: Any) -> None:
        self.wait()
        if self._pool is None:
            write()
        else:
            self._pending = self._pool.submit(write)

    def wait(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def close(self) -> None:
        try:
            self.wait()
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True)


def read_state(run: Path, r: int) -> dict[str, Any]:
    return read_json_file(round_dir(run, r) / "state.json", "round state")
