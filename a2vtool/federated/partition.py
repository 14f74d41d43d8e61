"""Node data: explicit nodes or partitioners (iid, dirichlet, classes_per_node), then per-node stratified splits."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from a2vtool.errors import InputError
from a2vtool.federated.config import FederateConfig


@dataclass
class NodeData:
    """What one node holds: entries of its cache, per split."""

    name: str
    cache: Path
    classes: list[str]
    splits: dict[str, list[Any]] = field(default_factory=dict)  # split -> [Entry]

    def count(self, split: str) -> int:
        return len(self.splits.get(split, []))

    def per_class(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {c: {"train": 0, "val": 0, "test": 0} for c in self.classes}
        for split, entries in self.splits.items():
            for e in entries:
                out[e.label][split] += 1
        return out


def _rng(seed: int, *salt: int) -> Any:
    import numpy as np

    return np.random.default_rng([seed & 0xFFFFFFFF, *salt])


def _by_class(entries: list[Any], seed: int) -> dict[str, list[Any]]:
    """Group by label; within a class sort by clip id then shuffle with the split seed (order is reproducible)."""
    groups: dict[str, list[Any]] = {}
    for e in sorted(entries, key=lambda e: (e.label, e.clip_id)):
        groups.setdefault(e.label, []).append(e)
    for i, label in enumerate(sorted(groups)):
        perm = _rng(seed, 1, i).permutation(len(groups[label]))
        groups[label] = [groups[label][j] for j in perm]
    return groups


def stratified_split(entries: list[Any], ratios: tuple[float, float, float], seed: int) -> dict[str, list[Any]]:
    """Per class: test = round(n*test), val = round(n*val), train = the rest (at least one clip when n >= 1)."""
    out: dict[str, list[Any]] = {"train": [], "val": [], "test": []}
    for label, items in _by_class(entries, seed).items():
        n = len(items)
        n_test = int(round(n * ratios[2]))
        n_val = int(round(n * ratios[1]))
        if n - n_test - n_val < 1 and n >= 1 and ratios[0] > 0:
            overflow = 1 - (n - n_test - n_val)
            take = min(overflow, n_val)
            n_val -= take
            n_test -= overflow - take
        out["test"] += items[:n_test]
        out["val"] += items[n_test : n_test + n_val]
        out["train"] += items[n_test + n_val :]
    for k in out:
        out[k].sort(key=lambda e: e.index)
    return out


def _open(path: Path, caches: dict[Path, Any]) -> Any:
    from a2vtool.embeddings import open_cache

    if path not in caches:
        caches[path] = open_cache(path)
    return caches[path]


def build_nodes(cfg: FederateConfig, caches: dict[Path, Any] | None = None) -> list[NodeData]:
    """Resolve every node's clips and splits; all input errors (unknown class, empty node) are raised here."""
    caches = {} if caches is None else caches
    seed = cfg.seed if cfg.data.split_seed is None else cfg.data.split_seed
    if cfg.nodes is not None:
        raw = _explicit(cfg, caches, seed)
    else:
        raw = _partitioned(cfg, caches, seed)
    nodes = []
    for i, (name, cache, entries) in enumerate(raw):
        if not entries:
            raise InputError(f"node {name!r} has no samples", hint="check its classes, samples_per_class and slice")
        splits = stratified_split(entries, cfg.data.ratios, seed + 1000 + i)
        if not splits["train"]:
            raise InputError(f"node {name!r} has no training samples with ratios {list(cfg.data.ratios)}")
        nodes.append(NodeData(name, cache, sorted({e.label for e in entries}), splits))
    return nodes


def _explicit(cfg: FederateConfig, caches: dict[Path, Any], seed: int) -> list[tuple[str, Path, list[Any]]]:
    used: dict[tuple[Path, str], set[str]] = {}
    out = []
    for i, node in enumerate(cfg.nodes or []):
        name = node.name or f"node-{i:02d}"
        path = node.embeddings or cfg.data.embeddings
        if path is None:
            raise InputError(f"nodes.{i}.embeddings is not set and there is no data.embeddings default")
        cache = _open(Path(path), caches)
        dataset = node.dataset or cfg.data.dataset
        try:
            entries = cache.entries(dataset=dataset, classes=node.classes)
        except InputError as e:
            raise InputError(f"nodes.{i} ({name}): {e.message}") from None
        picked: list[Any] = []
        for label, items in _by_class(entries, seed).items():
            k = node.samples_per_class
            if node.slice is not None:
                if k is None:
                    raise InputError(f"nodes.{i}.slice needs nodes.{i}.samples_per_class")
                chosen = items[node.slice * k : (node.slice + 1) * k]
            elif cfg.data.disjoint:
                seen = used.setdefault((Path(path), label), set())
                free = [e for e in items if e.item not in seen]
                chosen = free if k is None else free[:k]
            else:
                chosen = items if k is None else items[:k]
            if cfg.data.disjoint:
                used.setdefault((Path(path), label), set()).update(e.item for e in chosen)
            picked += chosen
        out.append((name, Path(path), picked))
    return out


def _partitioned(cfg: FederateConfig, caches: dict[Path, Any], seed: int) -> list[tuple[str, Path, list[Any]]]:
    p = cfg.data.partition
    assert p is not None
    if cfg.data.embeddings is None:
        raise InputError("data.partition needs data.embeddings (the cache to partition)")
    cache = _open(Path(cfg.data.embeddings), caches)
    groups = _by_class(cache.entries(dataset=cfg.data.dataset, classes=cfg.data.classes), seed)
    if p.samples_per_class:
        groups = {c: v[: p.samples_per_class] for c, v in groups.items()}
    labels = sorted(groups)
    n = p.num_nodes
    buckets: list[list[Any]] = [[] for _ in range(n)]
    if p.kind == "iid":
        pool = [e for c in labels for e in groups[c]]
        perm = _rng(seed, 2).permutation(len(pool))
        for j, idx in enumerate(perm):
            buckets[j % n].append(pool[idx])
    elif p.kind == "dirichlet":
        for ci, c in enumerate(labels):
            props = _rng(seed, 3, ci).dirichlet([p.alpha] * n)
            cuts = (props.cumsum() * len(groups[c])).round().astype(int)[:-1]
            start = 0
            for j, end in enumerate([*cuts, len(groups[c])]):
                buckets[j] += groups[c][start:end]
                start = end
    else:
        if p.classes_per_node > len(labels):
            raise InputError(f"data.partition.classes_per_node {p.classes_per_node} exceeds the {len(labels)} classes")
        holders: dict[str, list[int]] = {c: [] for c in labels}
        for j in range(n):
            for k in range(p.classes_per_node):
                holders[labels[(j * p.classes_per_node + k) % len(labels)]].append(j)
        for c, nodes in holders.items():
            for k, e in enumerate(groups[c]):
                if nodes:
                    buckets[nodes[k % len(nodes)]].append(e)
    return [(f"node-{j:02d}", Path(cfg.data.embeddings), b) for j, b in enumerate(buckets)]


def node_table(nodes: list[NodeData]) -> Any:
    from rich.table import Table

    t = Table(title="nodes")
    for col in ("node", "classes", "train", "val", "test"):
        t.add_column(col, justify="right" if col in ("train", "val", "test") else "left")
    for nd in nodes:
        shown = ", ".join(nd.classes[:6]) + (f" (+{len(nd.classes) - 6})" if len(nd.classes) > 6 else "")
        t.add_row(nd.name, shown, str(nd.count("train")), str(nd.count("val")), str(nd.count("test")))
    return t
