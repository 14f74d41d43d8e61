"""What both sides of the Flower engines share: engine options and errors, the flower extra check, record codecs."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from a2vtool.errors import A2VError, InputError

INSTALL = "pip install 'a2vtool[flower]'"
QUIET_ENV = {"FLWR_TELEMETRY_ENABLED": "0", "RAY_USAGE_STATS_ENABLED": "0", "HF_HUB_OFFLINE": "1",
             "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0", "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1"}
NODE_KEYS = ("node-index", "partition-id")  # node config keys naming the node of the config a SuperNode is


class EngineError(A2VError):
    """A Flower process failed to start or stopped; the message names it and why."""

    exit_code = 1


class NodeFailure(A2VError):
    """A node did not answer a round (it died, timed out or raised); the run directory holds the last complete round."""

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


@dataclass(frozen=True)
class Clip:
    """What the server knows of a node's clip: its id and label (never its embedding)."""

    clip_id: str
    label: str


def require_flwr() -> None:
    """A one-line error naming the install command when the flower extra is missing."""
    try:
        import flwr  # noqa: F401
    except ImportError:
        raise InputError(f"the flower engines need the flower extra, which is not installed: {INSTALL}") from None
    for k, v in QUIET_ENV.items():
        os.environ.setdefault(k, v)


def expected_nodes(cfg: Any) -> int:
    """How many SuperNodes the config needs (a natural partition reads the cache's metadata to know)."""
    from a2vtool.federated.partition import node_count

    caches: dict[Path, Any] = {}
    try:
        return node_count(cfg, caches)
    finally:
        for c in caches.values():
            c.close()


def node_index(node_config: dict[str, Any]) -> int:
    for k in NODE_KEYS:
        if k in node_config:
            return int(node_config[k])
    raise InputError("this SuperNode has no node index",
                     hint="start it with --node-config 'node-index=N' (N = its position in the config's nodes)")


# -- records ------------------------------------------------------------------------------------------------------
def to_record(state: dict[str, Any]) -> Any:
    from flwr.app import ArrayRecord

    return ArrayRecord.from_torch_state_dict({k: v.detach().cpu().contiguous() for k, v in state.items()})


def from_record(rec: Any) -> dict[str, Any]:
    return {k: v.clone() for k, v in rec.to_torch_state_dict().items()}


def opt_to_records(opt_state: dict[str, Any]) -> tuple[Any, str]:
    from a2vtool.federated.checkpoint import flatten_optimizer

    tensors, meta = flatten_optimizer(opt_state)
    return to_record(tensors), json.dumps(meta)


def opt_from_records(rec: Any, meta: str) -> dict[str, Any]:
    from a2vtool.federated.checkpoint import unflatten_optimizer

    return unflatten_optimizer(from_record(rec), json.loads(meta))


def record_bytes(content: Any) -> int:
    """Bytes of the array records in a message's content (what dominates the traffic)."""
    return sum(r.count_bytes() for r in content.array_records.values())
