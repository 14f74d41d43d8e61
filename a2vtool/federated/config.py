"""The federate config: nodes and data, target pipeline, adapters, local training, strategy, evaluation, checkpoints."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from a2vtool.config import StageConfig, Strict
from a2vtool.federated.strategies import DEFAULT as DEFAULT_STRATEGY
from a2vtool.federated.strategies import StrategySpec, params_for
from a2vtool.imaging.config import ImagesSpec
from a2vtool.models.adapters import AdapterSpec
from a2vtool.models.text_targets import DEFAULT_TEMPLATE

FLUX_SCHNELL = "black-forest-labs/FLUX.1-schnell"


class NodeSpec(Strict):
    name: str | None = Field(None, description="Node name in tables and metrics; default node-NN.")
    embeddings: Path | None = Field(None, description="This node's embedding cache; default data.embeddings.")
    dataset: str | None = Field(None, description="Dataset name inside the cache; default data.dataset.")
    classes: list[str] | None = Field(None, description="Classes this node holds; None = every class of its dataset.")
    samples_per_class: int | None = Field(None, ge=1, description="Clips per class; None = all that are available.")
    slice: int | None = Field(None, ge=0, description="Take slice [slice*K, (slice+1)*K) of each class's shuffled clips (K = samples_per_class), as in VEGAS '10n_10c_400s'.")


class PartitionSpec(Strict):
    # the kinds are the keys of a2vtool.federated.partition.PARTITIONERS (checked when that module is imported)
    kind: Literal["iid", "dirichlet", "classes_per_node", "natural"] = Field(
        "iid", description="How to deal clips to nodes: iid, dirichlet, classes_per_node, or natural (one node per value of the metadata column `by`).")
    num_nodes: int | None = Field(None, ge=1, description="Number of nodes (default 4). natural: merge the values into N nodes, round-robin over the sorted values, when there are more than N; default one node per value.")
    by: str | None = Field(None, min_length=1, description="natural: the clip metadata column whose values become the nodes (speaker, fold, split, a csv column, ytid, ...).")
    largest: int | None = Field(None, ge=1, description="natural: keep only the N values with the most clips (ties in sorted value order) and leave the other values' clips out; applied before num_nodes merges.")
    alpha: float = Field(0.5, gt=0, description="dirichlet: concentration (small = skewed).")
    classes_per_node: int = Field(1, ge=1, description="classes_per_node: classes each node holds.")
    samples_per_class: int | None = Field(None, ge=1, description="Cap on clips per class before dealing.")

    @model_validator(mode="before")
    @classmethod
    def _default_num_nodes(cls, data: object) -> object:
        """Dealing partitioners default to 4 nodes (resolved here, so their stored configs keep `num_nodes: 4`)."""
        if isinstance(data, dict) and data.get("kind", "iid") != "natural" and data.get("num_nodes") is None:
            return {**data, "num_nodes": 4}
        return data

    @model_validator(mode="after")
    def _natural_by(self) -> PartitionSpec:
        if self.kind == "natural" and self.by is None:
            raise ValueError("kind natural needs `by`: the metadata column whose values become nodes (e.g. speaker)")
        for key in ("by", "largest"):
            if self.kind != "natural" and getattr(self, key) is not None:
                raise ValueError(f"`{key}` is only used by kind natural, not {self.kind}; remove it")
        return self


class DataSpec(Strict):
    embeddings: Path | None = Field(None, description="Default embedding cache for every node.")
    dataset: str | None = Field(None, description="Dataset name inside the cache (needed if it holds several).")
    classes: list[str] | None = Field(None, description="Federation classes (partitioners; default = all).")
    partition: PartitionSpec | None = Field(None, description="Build nodes with a partitioner instead of listing them.")
    ratios: tuple[float, float, float] = Field((0.8, 0.1, 0.1), description="train/val/test fractions per node and class; must sum to 1.")
    disjoint: bool = Field(True, description="Nodes never share a clip (explicit nodes take the next unused clips).")
    split_seed: int | None = Field(None, description="Seed of partitioning and splits; default = the run seed.")

    @model_validator(mode="after")
    def _ratios(self) -> DataSpec:
        if abs(sum(self.ratios) - 1.0) > 1e-6 or min(self.ratios) < 0:
            raise ValueError(f"ratios {list(self.ratios)} must be non-negative and sum to 1 (e.g. [0.8, 0.1, 0.1])")
        return self


class PipelineSpec(Strict):
    name_or_path: str = Field(FLUX_SCHNELL, description="Diffusion pipeline (hub id or folder) whose text space is the target.")
    template: str = Field(DEFAULT_TEMPLATE, description="Prompt template; {label} gets the class name, underscores as spaces.")
    max_sequence_length: int = Field(17, ge=1, le=512, description="FLUX: T5 tokens of prompt_embeds.")
    slots: list[str] | None = Field(None, description="Target slots to train; None = every slot the pipeline has.")
    targets_root: Path = Field(Path("cache/text-targets"), description="Where text-target artifacts are cached.")


class TrainingSpec(Strict):
    local_epochs: int = Field(5, ge=1, description="Epochs over the node's train split per round.")
    batch_size: int = Field(16, ge=1, description="Clips per optimisation step.")
    lr: float = Field(1e-3, gt=0, description="AdamW learning rate (all slots unless slot_lr says otherwise).")
    weight_decay: float = Field(1e-4, ge=0, description="AdamW weight decay.")
    slot_lr: dict[str, float] = Field(default_factory=dict, description="Per-slot learning rate overrides.")
    slot_weight_decay: dict[str, float] = Field(default_factory=dict, description="Per-slot weight decay overrides.")
    grad_clip: float | None = Field(None, gt=0, description="Clip the gradient norm to this value.")
    schedule: Literal["none", "cosine"] = Field("none", description="cosine: lr decays over all local epochs of the run.")
    min_lr: float = Field(1e-6, ge=0, description="Floor of the cosine schedule.")
    cosine_weight: float = Field(0.0, ge=0, description="Weight of a (1 - cosine similarity) term added to the MSE.")


class EvalSpec(Strict):
    every: int = Field(1, ge=0, description="Evaluate every N rounds (0 = only after the last round).")
    splits: list[Literal["train", "val", "test"]] = Field(["val", "test"], description="Splits evaluated per node.")
    cross: bool = Field(True, description="Also evaluate each node on the whole federation's test split.")
    batch_size: int = Field(64, ge=1, description="Evaluation batch size.")


class CheckpointSpec(Strict):
    keep_last: int | None = Field(None, ge=1, description="Keep only the last K round checkpoints (None = all).")
    background: bool = Field(True, description=(
        "Write each round's checkpoint on a background thread while the next round trains (one write in flight; "
        "the run waits for it before the next checkpoint and at the end). Holds one extra copy of the states."))


class FederateConfig(StageConfig):
    name: str = Field("federation", description="Run name, recorded in the manifest.")
    nodes: list[NodeSpec] | None = Field(None, description="Explicit nodes (or use data.partition).")
    data: DataSpec = Field(default_factory=DataSpec, description="Embedding caches, splits and partitioning.")
    pipeline: PipelineSpec = Field(default_factory=PipelineSpec, description="Diffusion model whose text space the adapters target.")
    adapters: AdapterSpec = Field(default_factory=AdapterSpec, description="Adapter architecture.")
    training: TrainingSpec = Field(default_factory=TrainingSpec, description="Local training on each node.")
    strategy: StrategySpec = Field(default_factory=lambda: params_for(DEFAULT_STRATEGY),
                                   description="Server strategy: strategy.name plus that strategy's parameters (docs/strategies.md).")
    rounds: int = Field(5, ge=1, description="Federated rounds.")
    eval: EvalSpec = Field(default_factory=EvalSpec, description="Per-round evaluation.")
    images: ImagesSpec = Field(default_factory=ImagesSpec, description="Images during training.")
    checkpoints: CheckpointSpec = Field(default_factory=CheckpointSpec, description="Round checkpoints.")
    out: Path = Field(Path("runs/federate"), description="Run directory.")

    @model_validator(mode="after")
    def _nodes(self) -> FederateConfig:
        if (self.nodes is None) == (self.data.partition is None):
            raise ValueError("give either nodes (a list) or data.partition, exactly one of them")
        if self.nodes is not None and not self.nodes:
            raise ValueError("nodes is empty")
        return self
