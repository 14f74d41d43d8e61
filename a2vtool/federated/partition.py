"""Node data: explicit nodes or a partitioner (registry PARTITIONERS: iid, dirichlet, classes_per_node, natural), then
per-node stratified splits."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args

from a2vtool.errors import InputError
from a2vtool.federated.config import FederateConfig, PartitionSpec


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
    parts = PARTITIONERS[p.kind](p, groups, seed, str(cfg.data.embeddings))
    return [(name, Path(cfg.data.embeddings), b) for name, b in parts]


# -- partitioners: (spec, {class: shuffled entries}, seed, cache name) -> [(node name, entries)] ---------------------
Partitioner = Callable[[PartitionSpec, dict[str, list[Any]], int, str], list[tuple[str, list[Any]]]]


def _numbered(buckets: list[list[Any]]) -> list[tuple[str, list[Any]]]:
    return [(f"node-{j:02d}", b) for j, b in enumerate(buckets)]


def _iid(p: PartitionSpec, groups: dict[str, list[Any]], seed: int, source: str) -> list[tuple[str, list[Any]]]:
    """Every clip dealt round-robin in one seeded shuffle: nodes of equal size and class mix."""
    n = int(p.num_nodes or 4)
    buckets: list[list[Any]] = [[] for _ in range(n)]
    pool = [e for c in sorted(groups) for e in groups[c]]
    perm = _rng(seed, 2).permutation(len(pool))
    for j, idx in enumerate(perm):
        buckets[j % n].append(pool[idx])
    return _numbered(buckets)


def _dirichlet(p: PartitionSpec, groups: dict[str, list[Any]], seed: int, source: str) -> list[tuple[str, list[Any]]]:
    """Per class, shares drawn from Dirichlet(alpha): small alpha gives skewed label mixes."""
    n = int(p.num_nodes or 4)
    buckets: list[list[Any]] = [[] for _ in range(n)]
    for ci, c in enumerate(sorted(groups)):
        props = _rng(seed, 3, ci).dirichlet([p.alpha] * n)
        cuts = (props.cumsum() * len(groups[c])).round().astype(int)[:-1]
        start = 0
        for j, end in enumerate([*cuts, len(groups[c])]):
            buckets[j] += groups[c][start:end]
            start = end
    return _numbered(buckets)


def _classes_per_node(p: PartitionSpec, groups: dict[str, list[Any]], seed: int, source: str) -> list[tuple[str, list[Any]]]:
    """Node j holds classes j*k .. j*k+k-1 (cyclically); a class held by several nodes is dealt among them."""
    n = int(p.num_nodes or 4)
    labels = sorted(groups)
    if p.classes_per_node > len(labels):
        raise InputError(f"data.partition.classes_per_node {p.classes_per_node} exceeds the {len(labels)} classes")
    buckets: list[list[Any]] = [[] for _ in range(n)]
    holders: dict[str, list[int]] = {c: [] for c in labels}
    for j in range(n):
        for k in range(p.classes_per_node):
            holders[labels[(j * p.classes_per_node + k) % len(labels)]].append(j)
    for c, nodes in holders.items():
        for k, e in enumerate(groups[c]):
            if nodes:
                buckets[nodes[k % len(nodes)]].append(e)
    return _numbered(buckets)


def _value_key(v: str) -> tuple[int, int, str]:
    """Sort order of natural-partition values: integers numerically (2 before 10), then strings."""
    return (0, int(v), "") if re.fullmatch(r"-?\d+", v) else (1, 0, v)


def _slug(v: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", v).strip("._") or "_"


def natural_values(entries: list[Any], by: str, source: str) -> dict[str, list[Any]]:
    """{value: entries} of metadata column `by`, values in sorted order (integers numerically); a column no clip has,
    or clips lacking a value, are one-line InputErrors (the first names the columns the clips do have)."""
    from a2vtool.embeddings import ENTRY_COLUMNS

    out: dict[str, list[Any]] = {}
    lacking: list[Any] = []
    for e in entries:
        v = e.get(by)
        if v is None or v == "":
            lacking.append(e)
        else:
            out.setdefault(v, []).append(e)
    if not out:
        have = [c for c in ENTRY_COLUMNS if any(e.get(c) is not None for e in entries)]
        have += sorted({k for e in entries for k in e.meta} - set(have))
        raise InputError(f"data.partition.by: column {by!r} is not in the clips of {source}; available: "
                         f"{', '.join(have) or 'none'}", hint="re-run embed on a listing that has that column, or pick another")
    if lacking:
        raise InputError(f"data.partition.by: {len(lacking)} of {len(entries)} clips of {source} have no {by!r} value "
                         f"(first: {lacking[0].clip_id})", hint="fill in the column, or select classes/dataset that have it")
    return {v: out[v] for v in sorted(out, key=_value_key)}


def natural_groups(values: list[str], num_nodes: int | None) -> list[list[str]]:
    """Values per node: one node per value, or with num_nodes N < len(values) value i joins node i % N (sorted order)."""
    if num_nodes is None or num_nodes >= len(values):
        return [[v] for v in values]
    return [values[j::num_nodes] for j in range(num_nodes)]


def _natural(p: PartitionSpec, groups: dict[str, list[Any]], seed: int, source: str) -> list[tuple[str, list[Any]]]:
    """One node per value of metadata column `by` (e.g. speaker = node), like Flower Datasets' NaturalIdPartitioner;
    named `<by>-<value>` (merged nodes: `<by>-<v1>+<v2>...`, or `<by>-group-NN` beyond 4 values)."""
    assert p.by is not None
    by_value = natural_values([e for c in sorted(groups) for e in groups[c]], p.by, source)
    if p.largest is not None and p.largest < len(by_value):
        keep = set(sorted(by_value, key=lambda v: -len(by_value[v]))[: p.largest])  # stable: ties in value order
        by_value = {v: es for v, es in by_value.items() if v in keep}
    out: list[tuple[str, list[Any]]] = []
    taken: set[str] = set()
    for j, vals in enumerate(natural_groups(list(by_value), p.num_nodes)):
        label = "+".join(_slug(v) for v in vals) if len(vals) <= 4 else f"group-{j:02d}"
        name = f"{_slug(p.by)}-{label}"
        if name in taken:  # values that differ only in unsafe characters
            name = f"{name}-{j:02d}"
        taken.add(name)
        out.append((name, [e for v in vals for e in by_value[v]]))
    return out


PARTITIONERS: dict[str, Partitioner] = {
    "iid": _iid,
    "dirichlet": _dirichlet,
    "classes_per_node": _classes_per_node,
    "natural": _natural,
}
if set(PARTITIONERS) != set(get_args(PartitionSpec.model_fields["kind"].annotation)):  # one list of kinds
    raise RuntimeError("PartitionSpec.kind and PARTITIONERS list different partitioners")


def node_count(cfg: FederateConfig, caches: dict[Path, Any] | None = None) -> int:
    """How many nodes `cfg` makes (a natural partition needs the cache to know)."""
    if cfg.nodes is not None:
        return len(cfg.nodes)
    p = cfg.data.partition
    assert p is not None
    if p.kind != "natural":
        return int(p.num_nodes or 4)
    seed = cfg.seed if cfg.data.split_seed is None else cfg.data.split_seed
    return len(_partitioned(cfg, {} if caches is None else caches, seed))


def node_table(nodes: list[NodeData]) -> Any:
    from rich.table import Table

    t = Table(title="nodes")
    for col in ("node", "classes", "train", "val", "test"):
        t.add_column(col, justify="right" if col in ("train", "val", "test") else "left")
    for nd in nodes:
        shown = ", ".join(nd.classes[:6]) + (f" (+{len(nd.classes) - 6})" if len(nd.classes) > 6 else "")
        t.add_row(nd.name, shown, str(nd.count("train")), str(nd.count("val")), str(nd.count("test")))
    return t
