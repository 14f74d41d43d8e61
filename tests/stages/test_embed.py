"""The `embed` stage: counts, labels, shapes, cache hits, cache keys, kill/resume, corruption, reader API."""

from __future__ import annotations

import json
import os

os.environ["HF_HUB_OFFLINE"] = "1"

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from a2vtool.audio.demo import make_demo_dataset
from a2vtool.config import load_config
from a2vtool.embeddings import CacheWriter, open_cache, verify_cache
from a2vtool.errors import CacheLockedError, InputError, VerifyError
from a2vtool.stages.embed import EmbedConfig, run
from a2vtool.tiny import AST_HIDDEN, AST_TOKENS, build_tiny_ast

CLASSES = ["dog", "rain", "siren"]
PER_CLASS = 6
N = len(CLASSES) * PER_CLASS


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("embed")
    return {
        "ast": build_tiny_ast(base / "ast", seed=0),
        "ast2": build_tiny_ast(base / "ast2", seed=1),
        "data": make_demo_dataset(base / "data", classes=CLASSES, clips_per_class=PER_CLASS, duration=1.0),
        "base": base,
    }


def cfg_for(env: dict[str, Path], root: Path, *sets: str, data: Path | None = None, model: Path | None = None) -> EmbedConfig:
    o = {"dataset.root": str(data or env["data"]), "model.name_or_path": str(model or env["ast"]),
         "cache_root": str(root), "device": "cpu", "token_mode": "pool:4", "num_workers": 1}
    return load_config(EmbedConfig, None, list(sets), o)


def dataset_files(data: Path) -> dict[str, str]:
    """Every wav of a folder dataset -> its class (the folder name)."""
    return {p.stem: p.parent.name for p in sorted(data.glob("*/*.wav"))}


def snapshot(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file() and p.name != ".lock"}


@pytest.fixture(scope="module")
def first_run(env: dict[str, Path]) -> tuple[dict, Path]:
    root = env["base"] / "cache-main"
    return run(cfg_for(env, root)), root


# ------------------------------------------------------------------------------------------------ counts
def test_embed_returns_every_clip_with_its_label(env, first_run) -> None:
    summary, _ = first_run
    files = dataset_files(env["data"])
    assert len(files) == N
    assert summary["clips"] == N and summary["computed"] == N and summary["reused"] == 0
    assert summary["skipped"] == []
    assert summary["classes"] == {c: PER_CLASS for c in CLASSES}
    with open_cache(summary["cache"]) as cache:
        entries = cache.entries()
        assert len(entries) == N == len(cache)
        got = {Path(e.path).stem: e.label for e in entries}
        assert got == files
        assert sorted(e.clip_id for e in entries) == sorted(f"{lab}/{stem}.wav" for stem, lab in files.items())
        assert all(e.clip_id.split("/")[0] == e.label for e in entries)
        x = cache.load(entries)
        assert tuple(x.shape) == (N, 4, AST_HIDDEN)
        assert cache.shape == (4, AST_HIDDEN)
        # different clips give different rows (nothing copied across items)
        assert len({e.item for e in entries}) == N
        assert not bool((x[0] == x[1]).all())


@pytest.mark.parametrize("mode,tokens", [("cls", 1), ("mean", 1), ("pool:4", 4), ("full", AST_TOKENS)])
def test_shapes_follow_token_mode(env, mode: str, tokens: int) -> None:
    root = env["base"] / f"cache-mode-{mode.replace(':', '')}"
    s = run(cfg_for(env, root, f"token_mode={mode}", "dataset.max_per_class=1"))
    assert s["shape"] == [tokens, AST_HIDDEN]
    with open_cache(s["cache"]) as cache:
        x = cache.load(cache.entries())
    assert tuple(x.shape) == (len(CLASSES), tokens, AST_HIDDEN)


def test_cls_and_mean_are_what_they_say(env) -> None:
    full = run(cfg_for(env, env["base"] / "cache-mode-full", "token_mode=full", "dataset.max_per_class=1"))
    cls = run(cfg_for(env, env["base"] / "cache-mode-cls", "token_mode=cls", "dataset.max_per_class=1"))
    mean = run(cfg_for(env, env["base"] / "cache-mode-mean", "token_mode=mean", "dataset.max_per_class=1"))
    import torch

    with open_cache(full["cache"]) as f, open_cache(cls["cache"]) as c, open_cache(mean["cache"]) as m:
        xf = f.load(f.entries())
        assert torch.allclose(c.load(c.entries())[:, 0], xf[:, 0], atol=1e-6)
        assert torch.allclose(m.load(m.entries())[:, 0], xf.mean(dim=1), atol=1e-5)


# --------------------------------------------------------------------------------------------- cache hit
def test_rerun_computes_nothing_and_changes_nothing(env, first_run) -> None:
    summary, root = first_run
    directory = Path(summary["cache"])
    before = snapshot(directory)
    manifest_before = json.loads((directory / "manifest.json").read_text())
    again = run(cfg_for(env, root))
    assert again["computed"] == 0 and again["reused"] == N and again["clips"] == N
    assert again["cache"] == summary["cache"]
    after = snapshot(directory)
    assert sorted(after) == sorted(before)
    for name in before:
        if name != "manifest.json":
            assert after[name] == before[name], name
    m = json.loads((directory / "manifest.json").read_text())
    for k in ("shards", "items", "clips", "cache_key", "shape", "settings"):
        assert m[k] == manifest_before[k], k


def test_new_clip_only_computes_that_clip(env, tmp_path) -> None:
    import shutil

    data = tmp_path / "data"
    shutil.copytree(env["data"], data)
    root = tmp_path / "cache"
    assert run(cfg_for(env, root, data=data))["computed"] == N
    src = data / "dog" / "dog_000.wav"
    raw = bytearray(src.read_bytes())
    raw[-2:] = b"\x01\x02"  # a different last sample: a new clip
    (data / "dog" / "dog_new.wav").write_bytes(bytes(raw))
    s = run(cfg_for(env, root, data=data))
    assert s["computed"] == 1 and s["reused"] == N and s["clips"] == N + 1


# ---------------------------------------------------------------------------------------------- cache key
def test_settings_that_change_bytes_change_the_key(env, first_run) -> None:
    summary, root = first_run
    base = Path(summary["cache"]).name
    variants = {
        "sample_rate": cfg_for(env, root, "sample_rate=8000", "dataset.max_per_class=1"),
        "duration": cfg_for(env, root, "duration=0.5", "dataset.max_per_class=1"),
        "model": cfg_for(env, root, "dataset.max_per_class=1", model=env["ast2"]),
        "token_mode": cfg_for(env, root, "token_mode=mean", "dataset.max_per_class=1"),
    }
    dirs = {}
    for name, cfg in variants.items():
        s = run(cfg)
        assert s["computed"] == len(CLASSES), name
        dirs[name] = Path(s["cache"]).name
    assert base not in dirs.values()
    assert len(set(dirs.values())) == len(dirs), dirs
    # not in the key: worker count, batch size, cache root location
    same = run(cfg_for(env, root, "num_workers=2", "batch_size=3"))
    assert Path(same["cache"]).name == base and same["computed"] == 0


# ------------------------------------------------------------------------------------------ kill / resume
def _embed_cmd(data: Path, model: Path, root: Path) -> list[str]:
    return [sys.executable, "-m", "a2vtool", "embed", "--data", str(data), "--model", str(model), "--out", str(root),
            "--device", "cpu", "--token-mode", "full", "--set", "shard_rows=2", "--set", "batch_size=1",
            "--set", "num_workers=1", "--json"]


def _manifest_state(root: Path) -> tuple[int, int] | None:
    for m in root.glob("*/manifest.json"):
        try:
            d = json.loads(m.read_text())
        except (OSError, ValueError):
            return None
        return len(d["shards"]), len(d["items"])
    return None


def _read_all(directory: Path) -> dict[str, tuple[str, object]]:
    with open_cache(directory) as cache:
        entries = cache.entries()
        x = cache.load(entries)
        return {e.clip_id: (e.label, x[i].clone()) for i, e in enumerate(entries)}


@pytest.mark.slow
def test_kill_and_resume_matches_uninterrupted_run(env, tmp_path) -> None:
    import torch

    data = make_demo_dataset(tmp_path / "data", classes=CLASSES, clips_per_class=12, duration=1.0)
    n = len(list(data.glob("*/*.wav")))
    envv = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    killed = False
    for attempt in range(3):
        root = tmp_path / f"interrupted-{attempt}"
        proc = subprocess.Popen(_embed_cmd(data, env["ast"], root), env=envv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        try:
            while time.monotonic() < deadline and proc.poll() is None:
                st = _manifest_state(root)
                if st is not None and st[0] >= 1 and st[1] < n:
                    proc.send_signal(signal.SIGKILL)
                    killed = True
                    break
                time.sleep(0.005)
        finally:
            if proc.poll() is None and not killed:
                proc.kill()
            proc.wait()
        if killed:
            break
    assert killed, "could not kill embed mid-run in 3 attempts"
    shards, items = _manifest_state(root)  # type: ignore[misc]
    assert 1 <= shards and items < n

    resumed = subprocess.run(_embed_cmd(data, env["ast"], root), env=envv, capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    s = json.loads(resumed.stdout)
    assert s["clips"] == n and s["reused"] >= items and s["computed"] == n - s["reused"]

    ref_root = tmp_path / "reference"
    ref = subprocess.run(_embed_cmd(data, env["ast"], ref_root), env=envv, capture_output=True, text=True, timeout=120)
    assert ref.returncode == 0, ref.stderr
    r = json.loads(ref.stdout)
    assert Path(r["cache"]).name == Path(s["cache"]).name

    got, want = _read_all(Path(s["cache"])), _read_all(Path(r["cache"]))
    assert sorted(got) == sorted(want)
    for clip_id, (label, t) in want.items():
        assert got[clip_id][0] == label
        assert torch.equal(got[clip_id][1], t), clip_id
    m = json.loads((Path(s["cache"]) / "manifest.json").read_text())
    assert len(m["items"]) == n == len(m["clips"])
    assert len({c["clip_id"] for c in m["clips"]}) == n
    stored_rows = sum(sh["rows"] for sh in m["shards"])
    assert stored_rows == n, "rows stored twice"
    on_disk = {p.name for p in Path(s["cache"]).iterdir() if p.name not in ("manifest.json", ".lock")}
    assert on_disk == {sh["file"] for sh in m["shards"]}, "orphan files left behind"
    assert verify_cache(Path(s["cache"]))["ok"]


# ------------------------------------------------------------------------------------------- corruption
def test_flipped_byte_fails_verify(env, tmp_path) -> None:
    s = run(cfg_for(env, tmp_path / "c", "shard_rows=6"))
    d = Path(s["cache"])
    assert verify_cache(d)["shards"] == 3
    shard = d / "shard-00001.safetensors"
    raw = bytearray(shard.read_bytes())
    raw[len(raw) - 10] ^= 0xFF
    shard.write_bytes(bytes(raw))
    with pytest.raises(VerifyError, match="shard-00001.safetensors") as e:
        verify_cache(d)
    assert "shard-00000" not in str(e.value) and "shard-00002" not in str(e.value)
    assert e.value.exit_code == 4


def test_corrupt_wav_is_skipped_and_strict_fails(env, tmp_path) -> None:
    import shutil

    data = tmp_path / "data"
    shutil.copytree(env["data"], data)
    bad = data / "rain" / "rain_broken.wav"
    bad.write_bytes(os.urandom(4000))
    s = run(cfg_for(env, tmp_path / "c1", data=data))
    assert s["clips"] == N and s["computed"] == N
    assert [k["clip"] for k in s["skipped"]] == [str(bad)]
    with open_cache(s["cache"]) as cache:
        assert len(cache.entries()) == N
        assert all("rain_broken" not in e.path for e in cache.entries())

    root2 = tmp_path / "c2"
    with pytest.raises(InputError, match="rain_broken.wav") as e:
        run(cfg_for(env, root2, "strict=true", data=data))
    assert e.value.exit_code == 2
    with open_cache(root2) as cache:  # everything readable was still cached
        assert len(cache.entries()) == N


# -------------------------------------------------------------------------------------------------- lock
def test_second_writer_gets_cache_locked_error(env, first_run, tmp_path) -> None:
    from filelock import FileLock

    summary, root = first_run
    d = Path(summary["cache"])
    holder = FileLock(str(d / ".lock"))
    holder.acquire()
    try:
        with pytest.raises(CacheLockedError, match="another process") as e:
            run(cfg_for(env, root))
        assert e.value.exit_code == 1
        m = json.loads((d / "manifest.json").read_text())
        with pytest.raises(CacheLockedError):
            CacheWriter.open(d, m)
    finally:
        holder.release()
    assert run(cfg_for(env, root))["computed"] == 0  # released -> usable again


# ---------------------------------------------------------------------------------------------- reader
def test_reader_entries_filtering(env, first_run) -> None:
    summary, _ = first_run
    with open_cache(summary["cache"]) as cache:
        assert cache.datasets() == ["folder"]
        assert len(cache.entries(dataset="folder")) == N
        two = cache.entries(classes=["dog", "siren"])
        assert len(two) == 2 * PER_CLASS and {e.label for e in two} == {"dog", "siren"}
        assert cache.entries(splits=["nonexistent"]) == []
        splits = {e.split for e in cache.entries()}
        for sp in splits:
            assert len(cache.entries(splits=[sp])) == sum(1 for e in cache.entries() if e.split == sp)
        with pytest.raises(InputError, match="valid: dog, rain, siren"):
            cache.entries(classes=["cat"])
        with pytest.raises(InputError, match="folder"):
            cache.entries(dataset="vegas")
        assert cache.labels() == CLASSES


def test_reader_load_order_and_iter_batches(env, first_run) -> None:
    import torch

    summary, _ = first_run
    with open_cache(summary["cache"]) as cache:
        entries = cache.entries()
        full = cache.load(entries)
        order = [7, 0, 17, 3, 3, 12]
        picked = cache.load([entries[i] for i in order])
        for j, i in enumerate(order):
            assert torch.equal(picked[j], full[i])
        rev = cache.load(entries[::-1])
        assert torch.equal(rev, full.flip(0))
        seen: list[str] = []
        total = torch.zeros_like(full[0])
        for x, chunk in cache.iter_batches(entries, batch_size=5):
            assert x.shape[0] == len(chunk) <= 5
            seen += [e.clip_id for e in chunk]
            total += x.sum(0)
        assert sorted(seen) == sorted(e.clip_id for e in entries) and len(seen) == len(set(seen)) == N
        assert torch.allclose(total, full.sum(0), atol=1e-4)
        assert cache.load([]).shape[0] == 0


def test_reader_is_lazy(env, tmp_path) -> None:
    """Opening a cache and touching one row does not read the shards into RAM."""
    import torch

    from a2vtool.embeddings import import_tensors

    g = torch.Generator().manual_seed(0)
    rows = [(f"c{i}", "a" if i % 2 else "b", None, torch.randn(64, 1024, generator=g)) for i in range(400)]  # ~100 MB
    d = import_tensors(tmp_path / "big", rows, shard_rows=100)
    del rows
    code = (
        "import resource, sys\n"
        "from a2vtool.embeddings import open_cache\n"
        "import torch\n"
        "r0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        f"c = open_cache({str(d)!r}); e = c.entries(); x = c.load(e[:2]); s = float(x.sum())\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - r0)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    grew_kb = int(out.stdout.strip().splitlines()[-1])
    assert grew_kb < 30_000, f"opening a 100 MB cache grew RSS by {grew_kb} kB"


# ---------------------------------------------------------------------------------------------- metadata
def test_csv_metadata_columns_are_kept_per_clip(env, first_run, tmp_path) -> None:
    """Extra csv columns (speaker) reach the cache entries; FLAC at 22.05 kHz reads like the spoken-words set;
    the listing (metadata included) never changes the cache key."""
    import csv

    import numpy as np
    import soundfile as sf

    summary, _ = first_run
    data = tmp_path / "csv-speakers"
    data.mkdir()
    rows = [["path", "label", "speaker"]]
    for i, (stem, label) in enumerate(sorted(dataset_files(env["data"]).items())):
        rows.append([str(env["data"] / label / f"{stem}.wav"), label, f"spk{i % 3}"])
    t = np.arange(int(0.5 * 22050)) / 22050
    sf.write(data / "flac_000.flac", (0.3 * np.sin(2 * np.pi * 440 * t)).astype("float32"), 22050, format="FLAC")
    rows.append(["flac_000.flac", "dog", "zoe"])
    with open(data / "manifest.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows)
    s = run(cfg_for(env, tmp_path / "cache", "dataset.kind=csv", "dataset.name=speakers", data=data))
    assert s["cache_key"] == summary["cache_key"]  # same settings, same key: the listing is not embedding bytes
    assert s["computed"] == s["clips"] == N + 1
    s2 = run(cfg_for(env, tmp_path / "cache", data=env["data"]))  # the folder layout into the same cache
    assert s2["cache"] == s["cache"] and s2["computed"] == 0
    with open_cache(s["cache"]) as cache:
        spk = cache.entries(dataset="speakers")
        assert len(spk) == N + 1
        want = {r[0]: r[2] for r in rows[1:]}
        assert all(e.meta == {"speaker": want[e.clip_id]} for e in spk)
        assert {e.get("speaker") for e in spk} == {"spk0", "spk1", "spk2", "zoe"}
        assert all(e.meta == {} for e in cache.entries(dataset="folder"))  # the folder layout has no metadata


def test_esc50_folds_and_columns_are_kept(env, tmp_path) -> None:
    data = make_demo_dataset(tmp_path / "esc", classes=2, clips_per_class=5, duration=0.5, layout="esc50")
    s = run(cfg_for(env, tmp_path / "cache", "dataset.kind=esc50", data=data))
    with open(data / "meta" / "esc50.csv") as f:
        truth = {r["filename"]: r for r in __import__("csv").DictReader(f)}
    with open_cache(s["cache"]) as cache:
        entries = cache.entries()
        assert len(entries) == 10
        for e in entries:
            assert e.fold == int(truth[e.clip_id]["fold"]) and e.get("fold") == truth[e.clip_id]["fold"]
            assert e.meta["target"] == truth[e.clip_id]["target"] and e.meta["take"] == truth[e.clip_id]["take"]


def test_caches_without_metadata_read_as_empty_meta(env, first_run, tmp_path) -> None:
    import shutil

    summary, _ = first_run
    old = tmp_path / "old"
    shutil.copytree(summary["cache"], old, ignore=shutil.ignore_patterns(".lock"))
    m = json.loads((old / "manifest.json").read_text())
    for c in m["clips"]:
        c.pop("meta", None)  # a cache written before metadata was kept
    (old / "manifest.json").write_text(json.dumps(m))
    with open_cache(old) as cache:
        assert len(cache.entries()) == len(m["clips"]) and all(e.meta == {} for e in cache.entries())
        assert cache.entries()[0].get("speaker") is None and cache.entries()[0].get("label")
