"""`train-generator` stage: embedding cache -> unified / per-class / per-group generators + a quality report."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator
from pydantic_core import PydanticCustomError

from a2vtool import SCHEMA_VERSION, ui
from a2vtool.config import StageConfig, Strict, dump_config, load_config
from a2vtool.errors import InputError

KIND = "a2v.generators"
AUTO_SEQUENCE_MAX = 64  # training_sequence_length default: the cache's own token count up to this many tokens ...
AUTO_SEQUENCE_FALLBACK = 4  # ... else this many pooled tokens


class TextTargetsSpec(Strict):
    pipeline: str | None = Field(None, description="Diffusers pipeline (folder or hub id) whose text encoders make the cvae condition.")
    artifact: Path | None = Field(None, description="A text-targets artifact folder made earlier; used instead of `pipeline`.")
    template: str = Field("a photo of {label}", description="Prompt template; {label} is the class name.")
    max_sequence_length: int = Field(77, ge=1, le=512, description="T5 tokens for FLUX prompts.")
    root: Path = Field(Path("cache/text-targets"), description="Where computed text targets are cached by key.")


class TrainGeneratorConfig(StageConfig):
    embeddings: Path | None = Field(None, description="Embedding cache folder (has manifest.json); required.")
    dataset: str | None = Field(None, description="Dataset inside the cache; None = every dataset.")
    classes: list[str] | None = Field(None, description="Classes to model; None = every class (per_group: the grouped ones).")
    splits: list[str] | None = Field(None, description='Splits to train on; None = ["train"] if the cache has it, else all clips.')
    generator: Literal["vae", "cvae", "gan", "gaussian"] = Field(
        "vae", description="vae, cvae (conditioned on text targets), gan, or gaussian (per-class mean and covariance, fitted in closed form).")
    granularity: Literal["unified", "per_class", "per_group"] = Field("per_class", description="One generator for all classes, per class, or per group.")
    groups: dict[str, list[str]] | None = Field(None, description="per_group: {group: [classes]}.")
    default_group: str | None = Field(None, description="per_group: group for classes listed in no group (else an error).")
    training_sequence_length: int | None = Field(
        None, ge=1, le=1024, description=f"Compact tokens the generator models (<=64 recommended); None = the cache's token count when it is <= {AUTO_SEQUENCE_MAX} (no interpolation), else {AUTO_SEQUENCE_FALLBACK}.")
    gaussian_rank: int = Field(32, ge=1, description="gaussian: principal directions of the low-rank + diagonal covariance (used when S*D > gaussian_full_max_dim).")
    gaussian_full_max_dim: int = Field(1024, ge=1, description="gaussian: full covariance when S*D (training tokens x token dim) is at most this, else low-rank + diagonal.")
    hidden_dim: int = Field(256, ge=4, description="Width of the token MLPs.")
    latent_dim: int = Field(32, ge=1, description="Latent size.")
    depth: int = Field(2, ge=0, le=8, description="Mixer blocks in encoder and decoder.")
    dropout: float = Field(0.1, ge=0, lt=1, description="Dropout (training only).")
    epochs: int = Field(200, ge=1, description="Maximum epochs (early stopping may end sooner).")
    batch_size: int = Field(64, ge=1, description="Mini-batch size.")
    lr: float = Field(3e-3, gt=0, description="AdamW learning rate.")
    weight_decay: float = Field(1e-5, ge=0, description="AdamW weight decay.")
    beta: float = Field(1.0, ge=0, description="KL weight after warm-up (1 = ELBO with decoder variance 1/2, standardised).")
    beta_warmup_fraction: float = Field(0.3, ge=0, le=1, description="Share of `epochs` over which beta ramps up linearly.")
    free_bits: float = Field(0.0, ge=0, description="KL floor per latent dimension in nats (0 = off).")
    cosine_weight: float = Field(0.0, ge=0, description="Weight of a (1 - cosine) reconstruction term (0 = off).")
    grad_clip: float = Field(5.0, ge=0, description="Gradient norm clip for VAE, GAN generator and discriminator (0 = off).")
    noise_std: float = Field(0.05, ge=0, description="Input noise augmentation, standardised units (0 = off).")
    val_fraction: float = Field(0.2, gt=0, lt=1, description="Share of each class held out for validation and metrics.")
    patience: int = Field(20, ge=0, description="Epochs without validation improvement before stopping (0 = never).")
    eval_samples: int = Field(256, ge=2, description="Generated samples per class for the quality metrics.")
    knn_k: int = Field(3, ge=1, description="k of the k-NN precision/recall.")
    text_targets: TextTargetsSpec = Field(default_factory=TextTargetsSpec, description="Text targets for cvae.")
    out: Path = Field(Path("runs/generators"), description="Output artifact folder (replaced atomically).")

    @model_validator(mode="after")
    def _combinations(self) -> TrainGeneratorConfig:
        problems = combination_problems(self)
        if problems:
            raise PydanticCustomError("combination", "; ".join(problems))
        return self


def combination_problems(cfg: TrainGeneratorConfig) -> list[str]:
    """Generator type vs granularity vs targets vs groups, checked before anything is loaded."""
    out = []
    if cfg.generator == "gaussian" and cfg.granularity != "per_class":
        out.append(f"generator 'gaussian' with granularity {cfg.granularity!r}: a Gaussian is fitted per class (one "
                   "Gaussian over several classes is their blurred mixture, the 'one Gaussian for all' baseline); use "
                   "granularity 'per_class'")
    if cfg.generator == "cvae" and cfg.granularity == "per_class":
        out.append("generator 'cvae' with granularity 'per_class': each generator sees one class, so its condition is "
                   "constant and useless; use 'vae' per_class, or 'cvae' with 'unified' or 'per_group'")
    if cfg.generator == "cvae" and not (cfg.text_targets.pipeline or cfg.text_targets.artifact):
        out.append("generator 'cvae' is conditioned on text targets: set text_targets.pipeline (diffusers pipeline) "
                   "or text_targets.artifact")
    if cfg.granularity == "per_group":
        if not cfg.groups:
            out.append("granularity 'per_group' needs groups: {\"group\": [\"class\", ...]}")
        seen: dict[str, str] = {}
        for g, members in (cfg.groups or {}).items():
            if not members:
                out.append(f"groups.{g} is empty")
            for c in members:
                if c in seen and seen[c] != g:
                    out.append(f"class {c!r} is in groups {seen[c]!r} and {g!r}; a class belongs to one group")
                seen[c] = g
    return out


@dataclass
class Plan:
    """One generator to train: its name, group and classes (rows of the class list)."""

    name: str
    group: str | None
    classes: list[str]


@dataclass
class Prepared:
    cache_key: str
    cache_tokens: int
    token_dim: int
    seq_len: int
    classes: list[str]
    plans: list[Plan]
    x: Any  # (n, S, D) compact tokens, float32
    labels: list[str]
    train_idx: list[int]
    val_idx: list[int]
    targets: Any = None  # TextTargets for cvae
    notes: list[str] = field(default_factory=list)


def _plans(cfg: TrainGeneratorConfig, classes: list[str]) -> list[Plan]:
    if cfg.granularity == "unified":
        return [Plan("unified", None, list(classes))]
    if cfg.granularity == "per_class":
        return [Plan(c, None, [c]) for c in classes]
    member = {c: g for g, cs in (cfg.groups or {}).items() for c in cs}
    loose = [c for c in classes if c not in member]
    if loose and not cfg.default_group:
        raise InputError(f"class {loose[0]!r} is in no group ({len(loose)} such)", hint="add it to groups or set default_group")
    grouped: dict[str, list[str]] = {g: [] for g in [*(cfg.groups or {}), cfg.default_group or ""]}
    for c in classes:
        grouped[member.get(c, cfg.default_group or "")].append(c)
    return [Plan(f"group-{g}", g, cs) for g, cs in grouped.items() if cs]  # config order; empty groups skipped


def sequence_length_for(requested: int | None, cache_tokens: int) -> int:
    """Tokens a generator models: `requested` (never more than the cache has); by default the cache's own count when
    it is at most AUTO_SEQUENCE_MAX (samples then need no interpolation), else AUTO_SEQUENCE_FALLBACK pooled tokens."""
    if requested is None:
        return cache_tokens if cache_tokens <= AUTO_SEQUENCE_MAX else AUTO_SEQUENCE_FALLBACK
    return min(requested, cache_tokens)


def prepare(cfg: TrainGeneratorConfig) -> Prepared:
    """Select the clips, pool them to the compact length (streamed), split train/val, load text targets."""
    import torch

    from a2vtool.embeddings import open_cache
    from a2vtool.models.generator_train import split_indices
    from a2vtool.models.generators import resize_tokens
    from a2vtool.runtime import torch_generator

    if cfg.embeddings is None:
        raise InputError("no embedding cache given", hint="pass --embeddings DIR or set `embeddings` in the config")
    cache = open_cache(cfg.embeddings)
    try:
        everything = cache.entries(cfg.dataset)
        splits = cfg.splits
        if splits is None and any(e.split == "train" for e in everything):
            splits = ["train"]
        wanted = cfg.classes
        if wanted is None and cfg.granularity == "per_group" and not cfg.default_group:
            wanted = sorted({c for cs in (cfg.groups or {}).values() for c in cs})
        if cfg.granularity == "per_group":  # every grouped class must exist in the cache: lists the valid ones if not
            cache.entries(cfg.dataset, [c for cs in (cfg.groups or {}).values() for c in cs if wanted is None or c in wanted])
        entries = cache.entries(cfg.dataset, wanted, splits)
        classes = list(dict.fromkeys(wanted)) if wanted else sorted({e.label for e in entries})
        counts = {c: 0 for c in classes}
        for e in entries:
            counts[e.label] += 1
        short = [f"{c} ({n})" for c, n in counts.items() if n < 2]
        if short:
            raise InputError(f"too few clips in splits {splits or 'all'} for: {', '.join(short)}; each class needs at least 2",
                             hint="add clips, pick other splits or drop the class")
        if not entries:
            raise InputError(f"no clips in {cfg.embeddings} for splits {splits or 'all'}", hint="check `splits` and `dataset`")
        tokens, dim = int(cache.shape[0]), int(cache.shape[1])
        seq = sequence_length_for(cfg.training_sequence_length, tokens)
        notes = []
        if cfg.training_sequence_length is not None and seq < cfg.training_sequence_length:
            notes.append(f"the cache holds {tokens} token(s) per clip: modelling {seq}, not {cfg.training_sequence_length}")
        chunks = []
        with ui.progress(f"pooling {len(entries)} clips to {seq} tokens", len(entries)) as advance:
            for batch, part in cache.iter_batches(entries, 256):
                chunks.append(resize_tokens(batch.float(), seq))
                advance(len(part))
    finally:
        cache.close()
    labels = [e.label for e in entries]
    tr, va = split_indices(labels, cfg.val_fraction, torch_generator(cfg.seed))
    targets = None
    if cfg.generator == "cvae":
        from a2vtool.models.text_targets import ensure_text_targets, load_text_targets

        tt = cfg.text_targets
        if tt.artifact is not None:
            targets = load_text_targets(tt.artifact)
        else:
            assert tt.pipeline is not None
            from a2vtool.runtime import resolve_device

            with ui.progress("computing text targets", None):
                _, targets = ensure_text_targets(tt.root, tt.pipeline, classes, tt.template, tt.max_sequence_length,
                                                 resolve_device(cfg.device))
        for c in classes:
            targets.index(c)  # an uncovered class is an InputError naming it
    return Prepared(cache.key, tokens, dim, seq, classes, _plans(cfg, classes), torch.cat(chunks), labels, tr, va,
                    targets, notes)


def train_settings(cfg: TrainGeneratorConfig) -> Any:
    from a2vtool.models.generator_train import TrainSettings

    return TrainSettings(**{k: getattr(cfg, k) for k in TrainSettings.__dataclass_fields__ if k != "min_delta"})


def build_for(cfg: TrainGeneratorConfig, prep: Prepared, plan: Plan, index: int) -> tuple[Any, Any, Any, Any]:
    """(model, train data, val data, condition table) of one plan; the model is seeded and standardised."""
    import torch

    from a2vtool.models.generator_train import GenData
    from a2vtool.models.generators import build_condition, build_generator, make_arch, make_gaussian_arch

    cond = build_condition(prep.targets, plan.classes, prep.seq_len) if cfg.generator == "cvae" else None
    if cfg.generator == "gaussian":
        arch = make_gaussian_arch(prep.seq_len, prep.token_dim, rank=cfg.gaussian_rank, full_max_dim=cfg.gaussian_full_max_dim)
    else:
        arch = make_arch(cfg.generator, prep.seq_len, prep.token_dim, hidden_dim=cfg.hidden_dim, latent_dim=cfg.latent_dim,
                         cond_dim=0 if cond is None else int(cond.shape[-1]), depth=cfg.depth, dropout=cfg.dropout)
    torch.manual_seed(cfg.seed * 1000 + index)
    model = build_generator(arch)
    row = {c: i for i, c in enumerate(plan.classes)}

    def data(idx: list[int]) -> GenData:
        keep = [i for i in idx if prep.labels[i] in row]
        cls = torch.tensor([row[prep.labels[i]] for i in keep], dtype=torch.long)
        return GenData(prep.x[keep], cls if cond is not None else None, cond)

    tr, va = data(prep.train_idx), data(prep.val_idx)
    if cfg.generator == "gaussian":
        model.fit(tr.x)  # closed form: mean and covariance of the training tokens (and the standardisation)
    else:
        model.set_stats(tr.x)
    tr.x, va.x = model.standardize(tr.x), model.standardize(va.x)
    return model, tr, va, cond


def artifact_key(cfg: TrainGeneratorConfig, prep: Prepared) -> str:
    from a2vtool.artifacts import cache_key

    semantic = {k: v for k, v in dump_config(cfg).items() if k not in ("embeddings", "out", "device")}
    return cache_key({"schema_version": SCHEMA_VERSION, "kind": KIND, "embeddings": prep.cache_key,
                      "targets": getattr(prep.targets, "key", None), "config": semantic})


def run(cfg: TrainGeneratorConfig) -> dict[str, Any]:
    """Train every generator, evaluate it against held-out clips and baselines, write the artifact; return a summary."""
    from a2vtool.models.generator_metrics import evaluate, features
    from a2vtool.models.generator_store import StoredGenerator, save_generator_set
    from a2vtool.models.generator_train import FitResult, fit
    from a2vtool.models.generators import param_count
    from a2vtool.runtime import resolve_device, seed_everything, torch_generator

    t0 = time.perf_counter()
    device = resolve_device(cfg.device)
    seed_everything(cfg.seed)
    if cfg.granularity != "per_group" and (cfg.groups or cfg.default_group):
        ui.warn(f"groups/default_group are ignored with granularity {cfg.granularity!r}")
    if cfg.training_sequence_length is not None and cfg.training_sequence_length > 64:
        ui.warn(f"training_sequence_length {cfg.training_sequence_length} > 64: more memory per clip for little gain")
    prep = prepare(cfg)
    for note in prep.notes:
        ui.info(note)
    class_specific = cfg.generator == "cvae" or cfg.granularity == "per_class" or all(len(p.classes) == 1 for p in prep.plans)
    if not class_specific:
        ui.warn(f"an unconditioned {cfg.granularity} {cfg.generator} ignores class labels: samples for a class come from "
                "the mixture of its generator's classes; use per_class or cvae for class-specific samples")
    settings = train_settings(cfg)
    stored, rows, generated = [], [], {}
    for i, plan in enumerate(prep.plans):
        model, tr, va, cond = build_for(cfg, prep, plan, i)
        counts = param_count(model)
        size = (f"{counts['total']:,} fitted statistics ({model.arch['covariance']} covariance)" if cfg.generator == "gaussian"
                else f"{counts['total']:,} parameters ({counts['sampler']:,} sample)")
        ui.info(f"generator {plan.name}: {size}, {len(tr)} train / {len(va)} val clips, tokens {prep.seq_len}x{prep.token_dim}")
        if cfg.generator == "gaussian":
            res = FitResult(best_val=None)  # type: ignore[arg-type]  # closed form (fitted in build_for): no epochs
        else:
            with ui.progress(f"train {plan.name}", cfg.epochs) as advance:
                res = fit(model, tr, va, settings, generator=torch_generator(cfg.seed + i), device=device, name=plan.name,
                          on_epoch=lambda r, adv=advance: adv(status=f"loss {r['loss']:.4f} val {r['val_loss']:.4f}"))
        model.cpu()
        for j, c in enumerate(plan.classes):
            g = torch_generator(cfg.seed * 7919 + 104729 + len(generated))
            generated[c] = features(model.sample(cfg.eval_samples, None if cond is None else cond[j], generator=g))
        info = {"params": counts, "train_clips": len(tr), "val_clips": len(va), "training": res.summary(),
                "history": res.history}
        stored.append(StoredGenerator(plan.name, plan.classes, model, plan.group, cond, info))
        rows.append({"name": plan.name, "group": plan.group, "classes": plan.classes, "params": counts["total"],
                     "sampler_params": counts["sampler"], **res.summary()})
    real = {c: features(prep.x[[i for i in prep.val_idx if prep.labels[i] == c]]) for c in prep.classes}
    train = {c: features(prep.x[[i for i in prep.train_idx if prep.labels[i] == c]]) for c in prep.classes}
    metrics = evaluate(real, generated, train, n=cfg.eval_samples, k=cfg.knn_k, seed=cfg.seed, kind=cfg.generator)
    rec = recommend_for_kd(metrics["summary"], cfg.generator, class_specific)
    metrics["summary"]["recommended_for_kd"] = rec
    metrics["summary"]["verdict"] = (metrics["summary"].get("verdict", "") + " " + rec["line"]).strip()
    key = artifact_key(cfg, prep)
    extra = {"generator": cfg.generator, "granularity": cfg.granularity, "classes": prep.classes,
             "class_specific": class_specific, "embedding_key": prep.cache_key,
             "targets_key": getattr(prep.targets, "key", None), "targets_family": getattr(prep.targets, "family", None),
             "token_dim": prep.token_dim, "cache_tokens": prep.cache_tokens, "training_sequence_length": prep.seq_len,
             "metrics": metrics, "recommended_for_kd": rec}
    save_generator_set(cfg.out, stored, key=key, config=dump_config(cfg), **extra)
    return {"out": str(cfg.out), "manifest": str(Path(cfg.out) / "manifest.json"), "key": key, **{
        k: extra[k] for k in ("generator", "granularity", "classes", "class_specific", "token_dim", "cache_tokens",
                              "training_sequence_length", "recommended_for_kd")}, "generators": rows, "metrics": metrics,
        "seconds": round(time.perf_counter() - t0, 2)}


def recommend_for_kd(summary: dict[str, Any], generator: str, class_specific: bool) -> dict[str, Any]:
    """Which generator KD should use, by mean Fréchet distance on held-out clips: this artifact's generator when it
    beats the per-class Gaussian baseline, else a per-class `gaussian` (the fallback; also when FD cannot be judged
    or the samples are not class-specific). Returns {"generator", "use_this_artifact", "fd", "gaussian_fd", "line"}."""
    import math

    fd = summary.get("generator", {}).get("fd", float("nan"))
    gfd = summary.get("gaussian_class", {}).get("fd", float("nan"))
    base = {"fd": fd if math.isfinite(fd) else None, "gaussian_fd": gfd if math.isfinite(gfd) else None}
    if generator == "gaussian":
        why = f"mean FD {fd:.3g}" if math.isfinite(fd) else "the baseline"
        return {"generator": "gaussian", "use_this_artifact": True, **base,
                "line": f"KD: use this artifact (per-class gaussian, {why})."}
    fallback = "train one with `a2vtool train-generator --generator gaussian` and set strategy.generators to it"
    if not class_specific:
        return {"generator": "gaussian", "use_this_artifact": False, **base,
                "line": f"KD: use a per-class gaussian, not this {generator} (its samples ignore the class); {fallback}."}
    if not (math.isfinite(fd) and math.isfinite(gfd)):
        return {"generator": "gaussian", "use_this_artifact": False, **base,
                "line": f"KD: use a per-class gaussian (too few held-out clips to judge this {generator}); {fallback}."}
    if fd < gfd:
        return {"generator": generator, "use_this_artifact": True, **base,
                "line": f"KD: use this {generator} (mean FD {fd:.3g} beats the per-class Gaussian's {gfd:.3g})."}
    return {"generator": "gaussian", "use_this_artifact": False, **base,
            "line": f"KD: use a per-class gaussian: this {generator} (mean FD {fd:.3g}) loses to the per-class Gaussian "
                    f"({gfd:.3g}); {fallback}."}


class TrainGeneratorWorkload:
    """memcheck Workload: one round = one training epoch over every generator of the config."""

    name = "train-generator"

    def __init__(self, cfg: TrainGeneratorConfig, device: str) -> None:
        self.cfg, self.device = cfg, device
        self.states: list[tuple[str, Any, Any, Any]] = []

    def setup(self) -> None:
        from a2vtool.models.generator_train import make_state
        from a2vtool.runtime import resolve_device, seed_everything, torch_generator

        seed_everything(self.cfg.seed)
        device = resolve_device(self.device)
        prep = prepare(self.cfg)
        settings = train_settings(self.cfg)
        for i, plan in enumerate(prep.plans):
            model, tr, _, _ = build_for(self.cfg, prep, plan, i)
            state = None if self.cfg.generator == "gaussian" else make_state(model, settings, device)
            self.states.append((plan.name, state or model, tr.to(device), torch_generator(self.cfg.seed + i)))

    def run_round(self, r: int, on_step: Callable[[str], None]) -> None:
        from a2vtool.models.generator_train import train_epoch

        for name, state, data, gen in self.states:
            if self.cfg.generator == "gaussian":  # a round of a closed-form fit is a refit
                state.fit(data.x * state.std + state.mean)
                on_step(f"{name} fit")
                continue
            epoch = min(r, state.settings.epochs - 1)
            train_epoch(state, data, epoch=epoch, generator=gen, on_step=lambda s, n=name: on_step(f"{n} {s}"))

    def close(self) -> None:
        self.states.clear()


def memcheck_workload(config: Path | TrainGeneratorConfig | None = None, sets: list[str] | None = None,
                      device: str = "auto", seed: int = 0) -> TrainGeneratorWorkload:
    """The workload memcheck drives; `config` is a config file (or model), `sets` are --set overrides."""
    if isinstance(config, TrainGeneratorConfig):
        cfg = config
    else:
        cfg = load_config(TrainGeneratorConfig, config, sets, {"seed": seed})
    return TrainGeneratorWorkload(cfg, device)
