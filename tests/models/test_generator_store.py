"""Generator artifacts: exact reload, per-class sampling API, and all-or-nothing validation of multi-generator sets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from a2vtool.artifacts import save_tensors, sha256_file
from a2vtool.errors import ArtifactError, InputError
from a2vtool.models.generator_store import StoredGenerator, file_name, load_generator_set, save_generator_set
from a2vtool.models.generators import build_generator, make_arch

S, D, T = 4, 32, 10
CLASSES = ["dog", "rain", "siren"]


@pytest.fixture(autouse=True)
def _one_thread() -> object:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _model(kind: str, seed: int, cond_dim: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    m = build_generator(make_arch(kind, S, D, hidden_dim=32, latent_dim=8, cond_dim=cond_dim, depth=1))
    m.set_stats(torch.randn(16, S, D) * 2 + seed)
    return m.eval()


def _save(directory: Path, kind: str, seed: int) -> list[StoredGenerator]:
    if kind == "cvae":
        gens = [StoredGenerator("group-animals", ["dog", "siren"], _model("cvae", seed, 12), "animals", torch.randn(2, S, 12)),
                StoredGenerator("group-weather", ["rain"], _model("cvae", seed + 1, 12), "weather", torch.randn(1, S, 12))]
    else:
        gens = [StoredGenerator(c, [c], _model(kind, seed + i)) for i, c in enumerate(CLASSES)]
    save_generator_set(directory, gens, key=f"key-{kind}-{seed}", config={"seed": seed}, classes=CLASSES,
                       embedding_key="emb", targets_key="tt" if kind == "cvae" else None, token_dim=D, cache_tokens=T,
                       training_sequence_length=S, generator=kind, granularity="per_class")
    return gens


@pytest.mark.parametrize("kind", ["vae", "gan", "cvae"])
def test_reload_gives_identical_samples(tmp_path: Path, kind: str) -> None:
    gens = _save(tmp_path / "g", kind, 0)
    gs = load_generator_set(tmp_path / "g")
    assert gs.classes == CLASSES and gs.token_dim == D and gs.cache_tokens == T and gs.embedding_key == "emb"
    assert gs.targets_key == ("tt" if kind == "cvae" else None)
    manifest = json.loads((tmp_path / "g" / "manifest.json").read_text())
    assert manifest["kind"] == "a2v.generators" and all(e["arch"]["type"] == kind for e in manifest["generators"])
    for g in gens:
        for row, c in enumerate(g.classes):
            cond = None if g.condition is None else g.condition[row]
            want = g.model.sample(5, cond, sequence_length=T, generator=torch.Generator().manual_seed(7))
            got = gs.sample(c, 5, generator=torch.Generator().manual_seed(7))  # L defaults to cache_tokens
            assert got.shape == (5, T, D) and got.dtype == torch.float32 and torch.equal(got, want)
    with pytest.warns(UserWarning, match="1214"):
        assert gs.sample("rain", 2, sequence_length=1214).shape == (2, 1214, D)
    if kind == "cvae":  # each class of a group gets its own stored condition
        a = gs.sample("dog", 3, generator=torch.Generator().manual_seed(1))
        b = gs.sample("siren", 3, generator=torch.Generator().manual_seed(1))
        assert not torch.equal(a, b)


def test_unknown_class_lists_the_known_ones(tmp_path: Path) -> None:
    _save(tmp_path / "g", "vae", 0)
    with pytest.raises(InputError, match="'cat'.*dog, rain, siren"):
        load_generator_set(tmp_path / "g").sample("cat", 1)


def _corrupt(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_corrupt_file_fails_the_whole_load_and_keeps_previous_generators(tmp_path: Path) -> None:
    _save(tmp_path / "a", "vae", 0)
    _save(tmp_path / "b", "vae", 100)
    gs = load_generator_set(tmp_path / "a")
    before = {c: gs.sample(c, 4, generator=torch.Generator().manual_seed(3)) for c in CLASSES}
    bad = tmp_path / "b" / file_name("siren")
    _corrupt(bad)
    with pytest.raises(ArtifactError, match=str(bad.name)):
        gs.reload(tmp_path / "b")
    with pytest.raises(ArtifactError, match="checksum"):
        load_generator_set(tmp_path / "b")
    assert gs.directory == tmp_path / "a"
    for c in CLASSES:  # nothing was replaced: not even the generators whose files were fine
        assert torch.equal(gs.sample(c, 4, generator=torch.Generator().manual_seed(3)), before[c])
    _save(tmp_path / "b", "vae", 100)  # a good artifact replaces all of them
    gs.reload(tmp_path / "b")
    assert not torch.equal(gs.sample("dog", 4, generator=torch.Generator().manual_seed(3)), before["dog"])


def test_missing_truncated_and_mismatched_files_are_named(tmp_path: Path) -> None:
    d = tmp_path / "g"
    _save(d, "vae", 0)
    target = d / file_name("rain")
    target.unlink()
    with pytest.raises(ArtifactError, match=f"{target.name} is missing"):
        load_generator_set(d)
    # a truncated file whose checksum was updated: unreadable, named
    _save(d, "vae", 0)
    target.write_bytes(target.read_bytes()[:100])
    m = json.loads((d / "manifest.json").read_text())
    next(e for e in m["generators"] if e["name"] == "rain")["sha256"] = sha256_file(target)
    (d / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ArtifactError, match=f"{target.name} is not a readable safetensors file"):
        load_generator_set(d)
    # a well-formed file with the wrong shapes, its checksum updated in the manifest: the shape check catches it
    _save(d, "vae", 0)
    wrong = build_generator(make_arch("vae", S, D, hidden_dim=16, latent_dim=8, depth=1))
    digest = save_tensors(target, {f"model.{k}": v for k, v in wrong.state_dict().items()}, "a2v.generator", "key-vae-0")
    m = json.loads((d / "manifest.json").read_text())
    next(e for e in m["generators"] if e["name"] == "rain")["sha256"] = digest
    (d / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ArtifactError, match=f"{target.name}: tensor .* expected"):
        load_generator_set(d)
    # a file from another artifact (right checksum in the manifest, wrong artifact key)
    _save(d, "vae", 0)
    save_tensors(target, {f"model.{k}": v for k, v in _model("vae", 0).state_dict().items()}, "a2v.generator", "other")
    m = json.loads((d / "manifest.json").read_text())
    next(e for e in m["generators"] if e["name"] == "rain")["sha256"] = sha256_file(target)
    (d / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ArtifactError, match="belongs to artifact"):
        load_generator_set(d)


def test_file_names_are_safe_and_distinct() -> None:
    a, b = file_name("dog bark/ü"), file_name("dog_bark_")
    assert a.startswith("gen-dog_bark") and a.endswith(".safetensors") and "/" not in a and a != b
    assert file_name("unified") == "gen-unified.safetensors"
    with pytest.raises(InputError, match="unique"):
        save_generator_set(Path("/nonexistent/x"), [StoredGenerator("a", ["a"], _model("vae", 0))] * 2, key="k", config={})
