"""The flower-sim engine: Flower's simulation runtime with the shared ServerApp (this process) and ClientApp (Ray)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from a2vtool.errors import InputError
from a2vtool.federated.flower_common import EngineError, EngineOptions, expected_nodes, require_flwr

__all__ = ["EngineError", "EngineOptions", "run_simulation_engine", "simulation_resources"]


def simulation_resources(n: int, opts: EngineOptions) -> dict[str, Any]:
    """Ray backend config for n nodes; InputError (exit 2) when this machine cannot satisfy the request."""
    cpus = os.cpu_count() or 1
    if opts.cpus_per_node <= 0 or opts.gpus_per_node < 0:
        raise InputError("--cpus-per-node must be > 0 and --gpus-per-node >= 0")
    if opts.cpus_per_node > cpus:
        raise InputError(f"--cpus-per-node {opts.cpus_per_node:g} is more than this machine's {cpus} CPU cores")
    gpus = 0
    if opts.gpus_per_node:
        import torch

        gpus = torch.cuda.device_count()
        if opts.gpus_per_node > max(gpus, 0) or gpus == 0:
            raise InputError(f"--gpus-per-node {opts.gpus_per_node:g} needs a GPU; this machine has {gpus}")
    parallel = opts.max_parallel or max(1, min(n, int(cpus // opts.cpus_per_node)))
    if parallel < 1:
        raise InputError("--max-parallel must be >= 1")
    if parallel * opts.cpus_per_node > cpus:
        raise InputError(f"--max-parallel {parallel} x --cpus-per-node {opts.cpus_per_node:g} = "
                         f"{parallel * opts.cpus_per_node:g} CPUs, but this machine has {cpus}")
    if opts.gpus_per_node and parallel * opts.gpus_per_node > gpus:
        raise InputError(f"--max-parallel {parallel} x --gpus-per-node {opts.gpus_per_node:g} GPUs, but this machine has {gpus}")
    return {"client_resources": {"num_cpus": opts.cpus_per_node, "num_gpus": opts.gpus_per_node},
            "init_args": {"num_cpus": parallel * opts.cpus_per_node, "num_gpus": parallel * opts.gpus_per_node,
                          "include_dashboard": False, "logging_level": 40, "log_to_driver": False}}


def run_simulation_engine(cfg: Any, run_dir: Path, *, resume: bool, opts: EngineOptions) -> dict[str, Any]:
    """flower-sim: flwr.simulation.run_simulation with our ServerApp (this process) and ClientApp (Ray actors)."""
    require_flwr()
    from flwr.simulation import run_simulation

    from a2vtool.federated.flower_client import make_client_app
    from a2vtool.federated.flower_server import make_server_app

    n = expected_nodes(cfg)
    backend = simulation_resources(n, opts)
    holder: dict[str, Any] = {}
    server = make_server_app(cfg, run_dir, resume, opts.round_timeout, holder)
    run_simulation(server, make_client_app(), num_supernodes=n, backend_config=backend)
    if "error" in holder:
        raise holder["error"]
    if "manifest" not in holder:
        raise EngineError("the Flower simulation stopped before the ServerApp finished (see the log above)")
    return holder["manifest"]
