"""Flower engines: the simulation engine (Ray, in this process) and the deployment engine (SuperLink + SuperNodes)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from a2vtool.errors import A2VError, InputError

INSTALL = "pip install 'a2vtool[flower]'"
QUIET_ENV = {"FLWR_TELEMETRY_ENABLED": "0", "RAY_USAGE_STATS_ENABLED": "0", "HF_HUB_OFFLINE": "1",
             "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0", "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1"}


class EngineError(A2VError):
    """A Flower process failed to start or stopped; the message names it and why."""

    exit_code = 1


@dataclass
class EngineOptions:
    cpus_per_node: float = 1.0
    gpus_per_node: float = 0.0
    max_parallel: int | None = None
    round_timeout: float | None = None
    superlink: str | None = None  # deployment: a running SuperLink's address (host:port); None with launch_local
    launch_local: bool = False
    insecure: bool = False
    root_certificates: Path | None = None
    ssl: dict[str, Path] = field(default_factory=dict)  # launch_local with TLS: ca, cert, key
    base_port: int | None = None


def require_flwr() -> None:
    """A one-line error naming the install command when the flower extra is missing."""
    try:
        import flwr  # noqa: F401
    except ImportError:
        raise InputError(f"the flower engines need the flower extra, which is not installed: {INSTALL}") from None
    for k, v in QUIET_ENV.items():
        os.environ.setdefault(k, v)


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

    from a2vtool.federated.flower_apps import make_client_app, make_server_app
    from a2vtool.federated.flower_server import expected_nodes

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


from a2vtool.federated.flower_deploy import run_deployment_engine  # noqa: E402,F401
