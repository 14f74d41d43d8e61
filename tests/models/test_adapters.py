"""Adapters: position embeddings make the pooling see token order; old checkpoints without them still load."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from a2vtool.federated.checkpoint import load_adapters, save_adapters
from a2vtool.models.adapters import AdapterSpec, build_adapters, resize_positions

DIM, TOKENS = 6, 8
SLOTS = {"prompt_embeds": (3, 5), "pooled_prompt_embeds": (4,)}


def _model(positions: int) -> torch.nn.Module:
    torch.manual_seed(0)
    m = build_adapters(DIM, SLOTS, AdapterSpec(hidden=[16], width=8, heads=2, dropout=0.0, positions=positions))
    with torch.no_grad():
        for a in m.slots.values():
            if a.pos is not None:
                a.pos.normal_(0, 1.0)  # large enough that order matters visibly
    return m.eval()


def _pos(m: torch.nn.Module) -> list:
    return [a.pos for a in m.slots.values()]


def test_positions_make_the_output_depend_on_token_order() -> None:
    x = torch.randn(2, TOKENS, DIM, generator=torch.Generator().manual_seed(1))
    perm = torch.randperm(TOKENS, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        blind, ordered = _model(0), _model(TOKENS)
        for slot in SLOTS:
            # order-blind attention pooling: a permutation of the tokens gives the same output
            torch.testing.assert_close(blind(x)[slot], blind(x[:, perm])[slot], atol=1e-5, rtol=1e-5)
            assert (ordered(x)[slot] - ordered(x[:, perm])[slot]).abs().max() > 1e-3
    assert _pos(blind) == [None, None] and [tuple(p.shape) for p in _pos(ordered)] == [(TOKENS, 8)] * 2


def test_resize_positions_keeps_the_ends_and_fits_any_token_count() -> None:
    table = torch.randn(5, 3)
    assert resize_positions(table, 5) is table
    for n in (2, 9, 17):
        out = resize_positions(table, n)
        assert tuple(out.shape) == (n, 3)
        torch.testing.assert_close(out[0], table[0])
        torch.testing.assert_close(out[-1], table[-1])
    mid = resize_positions(torch.tensor([[0.0], [2.0]]), 3)
    torch.testing.assert_close(mid[:, 0], torch.tensor([0.0, 1.0, 2.0]))  # linear in between
    assert tuple(resize_positions(torch.ones(1, 3), 4).shape) == (4, 3)
    m = _model(4)  # a table of 4 positions serves clips of 8 and 3 tokens alike
    with torch.no_grad():
        for t in (TOKENS, 3):
            assert tuple(m(torch.randn(2, t, DIM))["prompt_embeds"].shape) == (2, 3, 5)


def _arch(spec: dict) -> dict:
    return {"in_dim": DIM, "slot_shapes": {k: list(v) for k, v in SLOTS.items()}, "spec": spec, "family": "sd"}


def _saved_and_loaded(tmp_path: Path, m: torch.nn.Module, spec: dict) -> tuple[torch.nn.Module, dict]:
    """`m` saved as an adapters file whose header holds `spec`, and loaded back."""
    path = tmp_path / "adapters.safetensors"
    save_adapters(path, m.state_dict(), "k", _arch(spec))
    return load_adapters(path)


def _same_outputs(a: torch.nn.Module, b: torch.nn.Module) -> None:
    x = torch.randn(2, TOKENS, DIM)
    with torch.no_grad():
        for slot in SLOTS:
            torch.testing.assert_close(a(x)[slot], b(x)[slot])


def test_adapters_saved_before_positions_existed_load_order_blind(tmp_path: Path) -> None:
    old = _model(0)
    spec = AdapterSpec(hidden=[16], width=8, heads=2, dropout=0.0, positions=0).model_dump()
    del spec["positions"]  # the header of an a2vtool 0.1 adapters file
    loaded, info = _saved_and_loaded(tmp_path, old, spec)
    assert _pos(loaded) == [None, None] and "positions" not in info["arch"]["spec"]
    _same_outputs(loaded, old)


def test_adapters_with_positions_round_trip(tmp_path: Path) -> None:
    m = _model(TOKENS)
    spec = AdapterSpec(hidden=[16], width=8, heads=2, dropout=0.0, positions=TOKENS).model_dump()
    loaded, _ = _saved_and_loaded(tmp_path, m, spec)
    for a, b in zip(_pos(loaded), _pos(m)):
        torch.testing.assert_close(a, b)
    _same_outputs(loaded, m)


def test_a_positions_mismatch_is_an_artifact_error(tmp_path: Path) -> None:
    from a2vtool.errors import ArtifactError

    spec = AdapterSpec(hidden=[16], width=8, heads=2, dropout=0.0, positions=0).model_dump()
    with pytest.raises(ArtifactError, match="does not match its architecture"):
        _saved_and_loaded(tmp_path, _model(TOKENS), spec)  # header says no positions, tensors have them


def test_null_positions_take_the_token_count_and_checkpoints_record_it() -> None:
    spec = AdapterSpec(hidden=[16], width=8, heads=2, dropout=0.0)
    assert spec.positions is None and spec.resolved(11).positions == 11
    assert AdapterSpec(positions=0).resolved(11).positions == 0  # an explicit value is kept
    m = build_adapters(DIM, SLOTS, spec, tokens=11)
    assert [tuple(p.shape) for p in _pos(m)] == [(11, 8)] * 2
    with pytest.raises(ValueError, match="no token count"):
        build_adapters(DIM, SLOTS, spec)


def test_a_federation_records_the_resolved_position_count(tmp_path: Path) -> None:
    from a2vtool.embeddings import import_tensors
    from a2vtool.federated.checkpoint import load_adapters as load
    from a2vtool.tiny import build_tiny_sd

    g = torch.Generator().manual_seed(0)
    rows = [(f"{c}-{i}", c, None, torch.randn(5, DIM, generator=g) + (3.0 if c == "a" else -3.0))
            for c in ("a", "b") for i in range(10)]
    emb = import_tensors(tmp_path / "emb", rows, dataset="synthetic")
    from a2vtool.config import validate
    from a2vtool.federated.config import FederateConfig
    from a2vtool.stages.federate import run

    cfg = validate(FederateConfig, {
        "data": {"embeddings": str(emb), "partition": {"kind": "iid", "num_nodes": 2}},
        "pipeline": {"name_or_path": str(build_tiny_sd(tmp_path / "sd")), "targets_root": str(tmp_path / "tt")},
        "adapters": {"hidden": [8], "width": 8, "heads": 2, "dropout": 0.0},
        "rounds": 1, "out": str(tmp_path / "run"), "device": "cpu", "seed": 0}, "test")
    run(cfg)
    model, info = load(tmp_path / "run")
    assert info["arch"]["spec"]["positions"] == 5
    assert [tuple(p.shape) for p in _pos(model)] == [(5, 8)]
