"""memcheck workloads: the registry (name -> factory) and the built-in synthetic training loop used by self-tests.

A factory takes the MemcheckConfig (or has the form `f(config, sets, device=, seed=)`), validates the workload's own config (`cfg.config` + `cfg.set`, errors exit 2
before anything runs) and returns a Workload (see a2vtool.memory.runner) whose `setup` does the heavy loading.
Factories of other packages are registered as "module:attribute" strings and imported only when asked for.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pydantic import Field

from a2vtool.config import Strict, load_config
from a2vtool.errors import A2VError, InputError

if TYPE_CHECKING:
    from a2vtool.memory.runner import Workload
    from a2vtool.memory.config import MemcheckConfig


class SyntheticConfig(Strict):
    """The synthetic workload's own settings (set with `--set key=value` or a JSON file via `--config`)."""

    nodes: int = Field(2, ge=1, le=64, description="Simulated nodes; each trains in turn and is one step.")
    steps: int = Field(8, ge=1, le=10_000, description="Optimizer steps per node per round.")
    batch_size: int = Field(64, ge=1, description="Rows per step.")
    rows: int = Field(512, ge=1, description="Random training rows per node (made once in setup).")
    in_dim: int = Field(128, ge=1, description="Input features.")
    hidden: int = Field(256, ge=1, description="Hidden width of the 2-layer MLP.")
    classes: int = Field(10, ge=2, description="Output classes.")
    lr: float = Field(1e-3, gt=0, description="Adam learning rate.")


class SyntheticWorkload:
    """A small real training loop: a 2-layer MLP trained with Adam (state persists across rounds) on random data.

    Nothing is kept across rounds except the model, the optimizer and the data, so it must pass memcheck.
    """

    def __init__(self, cfg: SyntheticConfig, device: str, seed: int) -> None:
        self.name = "synthetic"
        self.cfg = cfg
        self.device = device
        self.seed = seed
        self.state: dict[str, Any] = {}
        self.last_loss: float | None = None
        self._threads = 0

    def setup(self) -> None:
        import torch

        c = self.cfg
        # tiny matrices: extra intra-op threads only add contention (restored in close)
        self._threads = torch.get_num_threads()
        torch.set_num_threads(1)
        gen = torch.Generator().manual_seed(self.seed)
        torch.manual_seed(self.seed)
        model = torch.nn.Sequential(torch.nn.Linear(c.in_dim, c.hidden), torch.nn.ReLU(),
                                    torch.nn.Linear(c.hidden, c.classes)).to(self.device)
        self.state = {
            "model": model,
            "opt": torch.optim.Adam(model.parameters(), lr=c.lr),
            "data": [(torch.randn(c.rows, c.in_dim, generator=gen).to(self.device),
                      torch.randint(0, c.classes, (c.rows,), generator=gen).to(self.device)) for _ in range(c.nodes)],
            "gen": gen,
        }

    def run_round(self, r: int, on_step: Callable[[str], None]) -> None:
        import torch

        c, st = self.cfg, self.state
        model, opt = st["model"], st["opt"]
        model.train()
        for node, (x, y) in enumerate(st["data"]):
            for _ in range(c.steps):
                idx = torch.randint(0, c.rows, (c.batch_size,), generator=st["gen"]).to(self.device)
                opt.zero_grad(set_to_none=True)
                pred = model(x[idx])
                assert pred.shape[0] == y[idx].shape[0]
                loss = torch.nn.functional.cross_entropy(pred, y[idx])
                loss.backward()
                opt.step()
                self.last_loss = float(loss.item())
            del pred, loss, idx
            on_step(f"node {node}")

    def close(self) -> None:
        self.state.clear()
        if self._threads:
            import torch

            torch.set_num_threads(self._threads)
            self._threads = 0


def make_synthetic(cfg: MemcheckConfig) -> Workload:
    """The synthetic workload; `cfg.config` (optional JSON) and `cfg.set` configure SyntheticConfig."""
    from a2vtool.runtime import resolve_device

    inner = load_config(SyntheticConfig, cfg.config, list(cfg.set))
    return SyntheticWorkload(inner, resolve_device(cfg.device), cfg.seed)


def lazy(target: str, name: str) -> Callable[[MemcheckConfig], Workload]:
    """A factory that imports `module:attribute` when called; a module missing from this build is a clear A2VError."""

    def factory(cfg: MemcheckConfig) -> Workload:
        return call_factory(resolve(target, name), cfg)

    factory.__doc__ = f"memcheck workload {name!r} from {target} (imported on use)"
    factory.target = target  # type: ignore[attr-defined]
    return factory


def call_factory(fn: Callable[..., Workload], cfg: MemcheckConfig) -> Workload:
    """Call a factory: `fn(cfg)`, or for the `fn(config, sets, device=, seed=)` form `fn(cfg.config, cfg.set, ...)`."""
    import inspect

    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return fn(cfg)
    if "sets" in params:
        extra = {k: v for k, v in (("device", cfg.device), ("seed", cfg.seed)) if k in params}
        return fn(cfg.config, list(cfg.set), **extra)
    return fn(cfg)


def resolve(target: str, name: str) -> Callable[[MemcheckConfig], Workload]:
    """Import the factory named by `module:attribute`."""
    module, _, attr = target.partition(":")
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name is not None and (module == e.name or module.startswith(e.name + ".")):
            raise A2VError(f"workload {name} is not available in this build ({module} is missing)",
                           hint=f"use another --workload: {', '.join(sorted(WORKLOADS))}") from None
        raise A2VError(f"workload {name} cannot be loaded: {e}", hint="install the missing package") from None
    fn = getattr(mod, attr, None)
    if not callable(fn):
        raise A2VError(f"workload {name} is not available in this build ({target} is missing)",
                       hint=f"use another --workload: {', '.join(sorted(WORKLOADS))}")
    return fn


WORKLOADS: dict[str, Callable[[MemcheckConfig], Workload]] = {
    "synthetic": make_synthetic,
    "federate": lazy("a2vtool.federated.memcheck_workload:make", "federate"),
    "generate-images": lazy("a2vtool.stages.generate_images:memcheck_workload", "generate-images"),
    "train-generator": lazy("a2vtool.stages.train_generator:memcheck_workload", "train-generator"),
}


def get_workload(name: str) -> Callable[[MemcheckConfig], Workload]:
    """The factory registered under `name`."""
    if name not in WORKLOADS:
        raise InputError(f"unknown memcheck workload {name!r}", hint=f"use one of {', '.join(sorted(WORKLOADS))}")
    return WORKLOADS[name]
