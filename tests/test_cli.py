"""CLI contract: exit codes, one-line errors without tracebacks, fast lazy `--help`, `cache` subcommands."""

from __future__ import annotations

import json
import os

os.environ["HF_HUB_OFFLINE"] = "1"

import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from a2vtool.audio.demo import make_demo_dataset
from a2vtool.cli import app
from a2vtool.tiny import build_tiny_ast

CLASSES = ["dog", "rain", "siren"]
PER_CLASS = 3
N = len(CLASSES) * PER_CLASS
SUBENV = {**os.environ, "HF_HUB_OFFLINE": "1"}


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("cli")
    return {
        "ast": build_tiny_ast(base / "ast"),
        "data": make_demo_dataset(base / "data", classes=CLASSES, clips_per_class=PER_CLASS, duration=1.0),
        "base": base,
    }


def invoke(*args: str) -> tuple[int, str, str]:
    r = CliRunner().invoke(app, list(args))
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        raise r.exception
    return r.exit_code, r.stdout, r.stderr


def embed_args(env: dict[str, Path], root: Path, *extra: str, data: Path | None = None) -> list[str]:
    return ["embed", "--data", str(data or env["data"]), "--model", str(env["ast"]), "--out", str(root),
            "--device", "cpu", "--token-mode", "pool:2", *extra]


def one_error_line(stderr: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, f"expected one error line, got:\n{stderr}"
    assert lines[0].startswith("error:"), lines[0]
    assert "Traceback" not in stderr
    return lines[0]


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "a2vtool", *args], capture_output=True, text=True, env=SUBENV, timeout=timeout)


# ----------------------------------------------------------------------------------------------- start-up
def test_help_is_fast_and_does_not_import_torch() -> None:
    code = "import a2vtool.cli, sys; print(sorted(m for m in ('torch', 'transformers', 'numpy', 'diffusers') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=SUBENV, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        r = subprocess.run([sys.executable, "-X", "importtime", "-m", "a2vtool", "--help"], capture_output=True, text=True,
                           env=SUBENV, timeout=60)
        best = min(best, time.perf_counter() - t0)
        assert r.returncode == 0 and "embed" in r.stdout
        imported = {ln.split("|")[-1].strip().split(".")[0] for ln in r.stderr.splitlines() if ln.startswith("import time:")}
        assert "torch" not in imported and "transformers" not in imported
    assert best < 1.0, f"a2vtool --help took {best:.2f} s"


# ----------------------------------------------------------------------------------------------- happy path
def test_embed_json_then_cache_list_and_clear(env, tmp_path) -> None:
    root = tmp_path / "cache"
    code, out, _ = invoke(*embed_args(env, root, "--json"))
    assert code == 0
    s = json.loads(out)
    assert s["clips"] == N == s["computed"] and s["shape"] == [2, 32]
    code, out, _ = invoke(*embed_args(env, root, "--json"))
    assert code == 0 and json.loads(out)["computed"] == 0

    code, out, _ = invoke("cache", "list", "--root", str(root), "--json")
    assert code == 0
    listed = json.loads(out)["caches"]
    assert [c["path"] for c in listed] == [s["cache"]]
    assert listed[0]["items"] == N and listed[0]["token_mode"] == "pool:2" and listed[0]["datasets"] == ["folder"]
    code, out, _ = invoke("cache", "list", "--root", str(root))
    assert code == 0 and Path(s["cache"]).name[:16] in out

    code, _, _ = invoke("cache", "verify", s["cache"])
    assert code == 0

    not_cache = tmp_path / "precious"
    not_cache.mkdir()
    (not_cache / "keep.txt").write_text("mine")
    code, _, err = invoke("cache", "clear", str(not_cache))
    assert code == 2
    one_error_line(err)
    assert (not_cache / "keep.txt").read_text() == "mine"
    code, _, err = invoke("cache", "clear", str(env["data"]))
    assert code == 2 and env["data"].is_dir()

    code, out, _ = invoke("cache", "clear", s["cache"], "--json")
    assert code == 0 and json.loads(out)["bytes"] > 0
    assert not Path(s["cache"]).exists()
    code, out, _ = invoke("cache", "list", "--root", str(root), "--json")
    assert json.loads(out)["caches"] == []


# ------------------------------------------------------------------------------------------- corruption
def test_flipped_byte_reported_by_cache_verify_and_embed_verify(env, tmp_path) -> None:
    root = tmp_path / "cache"
    code, out, _ = invoke(*embed_args(env, root, "--json", "--set", "shard_rows=3"))
    assert code == 0
    d = Path(json.loads(out)["cache"])
    shard = d / "shard-00002.safetensors"
    raw = bytearray(shard.read_bytes())
    raw[-5] ^= 0x01
    shard.write_bytes(bytes(raw))

    code, _, err = invoke("cache", "verify", str(d))
    assert code == 4
    line = one_error_line(err)
    assert "shard-00002.safetensors" in line and "shard-00001" not in line

    code, _, err = invoke(*embed_args(env, root, "--verify"))
    assert code == 4
    assert "shard-00002.safetensors" in one_error_line(err)


def test_corrupt_wav_skipped_then_strict_exit_2(env, tmp_path) -> None:
    import shutil

    data = tmp_path / "data"
    shutil.copytree(env["data"], data)
    bad = data / "siren" / "siren_zz_bad.wav"
    bad.write_bytes(os.urandom(2048))
    code, out, err = invoke(*embed_args(env, tmp_path / "c1", "--json", data=data))
    assert code == 0
    assert "siren_zz_bad.wav" in err and "Traceback" not in err
    s = json.loads(out)
    assert s["clips"] == N and s["computed"] == N and len(s["skipped"]) == 1  # n - 1 of the n files

    root2 = tmp_path / "c2"
    code, _, err = invoke(*embed_args(env, root2, "--strict", data=data))
    assert code == 2
    assert "siren_zz_bad.wav" in err and "error:" in err and "Traceback" not in err
    code, out, _ = invoke("cache", "list", "--root", str(root2), "--json")
    assert json.loads(out)["caches"][0]["clips"] == N  # the readable clips are cached anyway


# --------------------------------------------------------------------------------------------- bad input
def test_unknown_class_lists_valid_names(env, tmp_path) -> None:
    code, _, err = invoke(*embed_args(env, tmp_path / "c", "--classes", "dog,cat"))
    assert code == 2
    line = one_error_line(err)
    assert "cat" in line and all(c in line for c in CLASSES)
    assert not (tmp_path / "c").exists() or not any((tmp_path / "c").glob("*/shard-*"))


def test_unknown_config_key_in_file_and_in_set(env, tmp_path) -> None:
    f = tmp_path / "embed.json"
    f.write_text(json.dumps({"dataset": {"colour": "red"}, "duration": 1.0}))
    code, _, err = invoke(*embed_args(env, tmp_path / "c", "--config", str(f)))
    assert code == 2
    assert "dataset.colour" in one_error_line(err)

    code, _, err = invoke(*embed_args(env, tmp_path / "c", "--set", "dataset.colour=red", "--set", "batch_sise=3"))
    assert code == 2
    line = one_error_line(err)
    assert "dataset.colour" in line and "batch_sise" in line

    code, _, err = invoke(*embed_args(env, tmp_path / "c", "--set", "duration"))
    assert code == 2 and "duration" in one_error_line(err)


def test_missing_dataset_folder(env, tmp_path) -> None:
    code, _, err = invoke(*embed_args(env, tmp_path / "c", data=tmp_path / "no-such-data"))
    assert code == 2
    assert "no-such-data" in one_error_line(err)


def test_missing_model_folder_in_fresh_process(env, tmp_path) -> None:
    args = embed_args(env, tmp_path / "c")
    args[args.index("--model") + 1] = str(tmp_path / "no-such-model")
    r = run_cli(*args)
    assert r.returncode == 2
    line = one_error_line(r.stderr)
    assert "no-such-model" in line and "a2vtool models tiny" in line
    code, _, err = invoke(*args, "--debug")
    assert code == 2 and "Traceback" in err  # --debug shows it


def test_unknown_class_in_fresh_process_has_no_traceback(env, tmp_path) -> None:
    r = run_cli(*embed_args(env, tmp_path / "c", "--classes", "walrus"))
    assert r.returncode == 2
    assert "walrus" in one_error_line(r.stderr) and r.stdout == ""


def test_locked_cache_exit_1(env, tmp_path) -> None:
    from filelock import FileLock

    root = tmp_path / "cache"
    code, out, _ = invoke(*embed_args(env, root, "--json"))
    assert code == 0
    d = Path(json.loads(out)["cache"])
    lock = FileLock(str(d / ".lock"))
    lock.acquire()
    try:
        code, _, err = invoke(*embed_args(env, root))
        assert code == 1
        line = one_error_line(err)
        assert "another process" in line and str(d) in line
    finally:
        lock.release()
    code, _, _ = invoke(*embed_args(env, root))
    assert code == 0
