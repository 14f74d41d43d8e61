"""Flower engines (simulation and deployment on loopback) against the local engine: same adapters every round."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["FLWR_TELEMETRY_ENABLED"] = "0"

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from test_federate_run import REPO, config_dict, make_cfg, metrics, world  # noqa: F401  (shared fixtures)

flwr = pytest.importorskip("flwr") if os.environ.get("A2V_REQUIRE_FLOWER") != "1" else __import__("flwr")
pytestmark = [pytest.mark.flower, pytest.mark.slow]

TOL = dict(rtol=1e-4, atol=1e-5)


def round_states(run_dir: Path) -> dict[int, dict[str, torch.Tensor]]:
    """Global adapters of every checkpointed round."""
    from safetensors.torch import load_file

    return {int(p.parent.name.split("-")[1]): load_file(str(p))
            for p in sorted((Path(run_dir) / "rounds").glob("round-*/global.safetensors"))}


def assert_close_rounds(a: Path, b: Path, rounds: int, exchange: bool = True) -> None:
    """Global adapters of every round and every final adapter file (global and nodes) agree to float tolerance."""
    from test_federate_run import final_tensors

    fa, fb = final_tensors(a), final_tensors(b)
    assert fa.keys() == fb.keys() and fa
    for f in fa:
        for k in fa[f]:
            torch.testing.assert_close(fa[f][k], fb[f][k], **TOL, msg=lambda m: f"final {f} {k}: {m}")
    ra, rb = round_states(a), round_states(b)
    assert sorted(ra) == sorted(rb) == (list(range(1, rounds + 1)) if exchange else [])
    for r in ra:
        assert ra[r].keys() == rb[r].keys()
        for k in ra[r]:
            torch.testing.assert_close(ra[r][k], rb[r][k], **TOL, msg=lambda m: f"round {r} {k}: {m}")


def two_node_over(**more: Any) -> dict[str, Any]:
    return {"nodes": [{"classes": ["dog", "rain", "siren"]}, {"classes": ["piano", "engine", "rooster"]}],
            "rounds": 2, "training": {"local_epochs": 1, "batch_size": 8, "lr": 0.003}, **more}


@pytest.mark.parametrize("strategy", ["fedavg", "fedadam", "none"])
def test_flower_sim_matches_local(world: dict[str, Path], tmp_path: Path, strategy: str) -> None:
    """fedadam: server moments stay on the ServerApp; none: each node's own adapters persist in context.state."""
    from a2vtool.federated.flower_engine import EngineOptions
    from a2vtool.stages.federate import run

    over = two_node_over(strategy={"name": strategy})
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # Ray gives each node 1 CPU (OMP threads = 1): same float reduction order as here
    try:
        local = run(make_cfg(world, tmp_path / "local", **over))
    finally:
        torch.set_num_threads(threads)
    sim = run(make_cfg(world, tmp_path / "sim", **over), engine="flower-sim",
              options=EngineOptions(cpus_per_node=1, max_parallel=2, round_timeout=300))
    assert_close_rounds(tmp_path / "local", tmp_path / "sim", 2, exchange=strategy != "none")
    lm, sm = metrics(tmp_path / "local"), metrics(tmp_path / "sim")
    assert [(x["round"], x["node"]) for x in lm] == [(x["round"], x["node"]) for x in sm]
    for a, b in zip(lm, sm):
        if "train" in a:
            assert abs(a["train"]["loss"] - b["train"]["loss"]) < 1e-4
        if a["node"] == "global":
            assert a["eval"]["test"]["n"] == b["eval"]["test"]["n"]
            assert abs(a["eval"]["test"]["acc"] - b["eval"]["test"]["acc"]) < 1e-6
    assert sim["final"]["adapters"].keys() == local["final"]["adapters"].keys()
    # node optimizer state persisted on the client side: the round-2 checkpoints hold the same Adam moments
    from a2vtool.federated import checkpoint as ck

    for name in ("node-00", "node-01"):
        _, oa = ck.load_node_state(ck.round_dir(tmp_path / "local", 2) / f"{name}.safetensors")
        _, ob = ck.load_node_state(ck.round_dir(tmp_path / "sim", 2) / f"{name}.safetensors")
        for idx in oa["state"]:
            torch.testing.assert_close(oa["state"][idx]["exp_avg"], ob["state"][idx]["exp_avg"], **TOL)
            assert float(oa["state"][idx]["step"]) == float(ob["state"][idx]["step"]) > 0


def per_node_caches(world: dict[str, Path]) -> dict[str, Any]:
    """Each node's own cache holding only its classes: what a SuperNode on another machine would have."""
    from test_federate_run import CLASSES, CLIPS, TOKENS, _separable_rows

    from a2vtool.embeddings import import_tensors

    rows = _separable_rows(CLASSES, CLIPS, TOKENS)
    nodes = []
    for i, cls in enumerate((CLASSES[:3], CLASSES[3:])):
        d = world["root"] / f"emb-node{i}"
        if not d.exists():
            import_tensors(d, [r for r in rows if r[1] in cls], dataset="synthetic")
        nodes.append({"classes": cls, "embeddings": str(d)})
    return two_node_over(nodes=nodes)


def flower_procs() -> list[str]:
    out = subprocess.run(["ps", "-ww", "-eo", "pid,stat,args"], capture_output=True, text=True).stdout.splitlines()
    return [ln for ln in out if any(k in ln for k in ("flower-superlink", "flower-supernode", "flwr-serverapp",
                                                       "flwr-clientapp", "flwr run")) and ln.split()[1][0] != "Z" and "pytest" not in ln]


def test_flower_deployment_on_loopback_matches_local(world: dict[str, Path], tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from a2vtool.federated.flower_engine import EngineOptions
    from a2vtool.stages.federate import run

    over = per_node_caches(world)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run(make_cfg(world, tmp_path / "local", **over))
    finally:
        torch.set_num_threads(threads)
    before = flower_procs()
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # ClientApp subprocesses inherit it: same float reduction order as local
    man = run(make_cfg(world, tmp_path / "dep", **over), engine="flower",
              options=EngineOptions(launch_local=True, round_timeout=300))
    assert man["rounds"] == 2
    assert_close_rounds(tmp_path / "local", tmp_path / "dep", 2)
    assert {x["node"] for x in metrics(tmp_path / "dep")} == {"node-00", "node-01", "global"}
    assert flower_procs() == before, "processes left behind"


def test_missing_flower_extra_is_one_line(world: dict[str, Path], tmp_path: Path) -> None:
    cfg = tmp_path / "run.json"
    import json

    cfg.write_text(json.dumps(config_dict(world, tmp_path / "run", **two_node_over())))
    code = ("import sys; sys.modules['flwr'] = None; from a2vtool.cli import main; "
            f"sys.argv = ['a2vtool', 'federate', '--config', {str(cfg)!r}, '--engine', 'flower-sim']; main()")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert p.returncode == 2, p.stderr
    lines = [ln for ln in p.stderr.splitlines() if "flower extra" in ln]
    assert len(lines) == 1 and "pip install 'a2vtool[flower]'" in lines[0], p.stderr
    assert not (tmp_path / "run").exists()


def test_sim_resources_beyond_the_machine_exit_2(world: dict[str, Path], tmp_path: Path) -> None:
    import json

    cfg = tmp_path / "run.json"
    cfg.write_text(json.dumps(config_dict(world, tmp_path / "run", **two_node_over())))
    code = ("import sys; from a2vtool.cli import main; sys.argv = ['a2vtool', 'federate', '--config', "
            f"{str(cfg)!r}, '--engine', 'flower-sim', '--cpus-per-node', '{(os.cpu_count() or 1) + 1}']; main()")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert p.returncode == 2, p.stderr
    assert "CPU cores" in p.stderr


def test_supernode_dying_mid_round_is_reported_and_resumable(world: dict[str, Path], tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    import signal
    import threading
    import time

    from a2vtool.errors import A2VError
    from a2vtool.federated import checkpoint as ck
    from a2vtool.federated.flower_engine import EngineOptions
    from a2vtool.stages.federate import run

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    over = per_node_caches(world)
    run_dir = tmp_path / "dep"
    killed: list[int] = []

    def killer() -> None:  # once round 1 is checkpointed, kill node 1's SuperNode (round 2 is in flight)
        t0 = time.monotonic()
        while time.monotonic() - t0 < 240 and not ck.complete_rounds(run_dir):
            time.sleep(0.2)
        from a2vtool.federated.flower_deploy import ACTIVE

        pid = ACTIVE[0].pid("supernode-1") if ACTIVE else None
        if pid is not None:
            os.killpg(pid, signal.SIGKILL)
            killed.append(pid)

    th = threading.Thread(target=killer, daemon=True)
    th.start()
    with pytest.raises(A2VError) as ei:
        run(make_cfg(world, run_dir, **over), engine="flower", options=EngineOptions(launch_local=True, round_timeout=120))
    th.join(5)
    assert killed
    assert "supernode-1" in ei.value.message and "round 2" in ei.value.message, ei.value.message
    assert ck.complete_rounds(run_dir) == [1] and not (run_dir / "manifest.json").exists()
    assert flower_procs() == []
    from test_federate_run import federate as _  # noqa: F401
    from a2vtool.federated.loop import load_run_config

    man = run(load_run_config(run_dir), resume=run_dir, engine="flower",
              options=EngineOptions(launch_local=True, round_timeout=300))
    assert man["rounds"] == 2 and ck.complete_rounds(run_dir) == [1, 2]
    torch.set_num_threads(1)
    try:
        run(make_cfg(world, tmp_path / "local", **over))
    finally:
        torch.set_num_threads(2)
    assert_close_rounds(tmp_path / "local", run_dir, 2)
    rows = metrics(run_dir)
    assert sorted({(x["round"], x["node"]) for x in rows}) == sorted((r, n) for r in (1, 2) for n in ("node-00", "node-01", "global"))


def test_launch_local_port_in_use_names_the_superlink(world: dict[str, Path], tmp_path: Path) -> None:
    import socket

    from a2vtool.federated.flower_engine import EngineError, EngineOptions
    from a2vtool.stages.federate import run

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(EngineError) as ei:
            run(make_cfg(world, tmp_path / "dep", **two_node_over()), engine="flower",
                options=EngineOptions(launch_local=True, base_port=port))
    assert "SuperLink" in ei.value.message and str(port) in ei.value.message and "in use" in ei.value.message
    assert not (tmp_path / "dep" / "rounds").exists()
    assert flower_procs() == []


def test_flower_needs_a_superlink_or_launch_local(world: dict[str, Path], tmp_path: Path) -> None:
    from a2vtool.errors import InputError
    from a2vtool.federated.flower_engine import EngineOptions
    from a2vtool.stages.federate import run

    with pytest.raises(InputError, match="--superlink"):
        run(make_cfg(world, tmp_path / "dep", **two_node_over()), engine="flower", options=EngineOptions())
