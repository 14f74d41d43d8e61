"""The strategy registry: one object per strategy drives config validation, the CLI listing and the docs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Literal

import pytest

from a2vtool.config import validate
from a2vtool.errors import ConfigError, InputError
from a2vtool.federated import strategies as reg
from a2vtool.federated.config import FederateConfig
from a2vtool.federated.strategies.base import ServerOutput, Strategy, StrategyParams, register

REPO = Path(__file__).resolve().parents[2]


def _cfg(strategy: dict) -> FederateConfig:
    return validate(FederateConfig, {"nodes": [{}], "strategy": strategy}, "test")


def test_every_registered_strategy_validates_with_its_own_parameters() -> None:
    assert set(reg.STRATEGIES) == set(reg.REGISTRY)
    for name in reg.STRATEGIES:
        extra = {"generators": "gens"} if reg.get(name).needs_generators else {}
        cfg = _cfg({"name": name, **extra})
        assert cfg.strategy.name == name
        assert type(cfg.strategy) is reg.get(name).params
    assert _cfg({}).strategy.name == reg.DEFAULT  # no name: the default strategy


def test_a_parameter_of_another_strategy_is_an_unknown_key() -> None:
    with pytest.raises(ConfigError, match="momentum.*unknown key"):
        _cfg({"name": "fedavg", "momentum": 0.5})
    assert _cfg({"name": "fedavgm", "momentum": 0.5}).strategy.momentum == 0.5


def test_unknown_strategy_name_lists_the_registry() -> None:
    with pytest.raises(ConfigError) as exc:
        _cfg({"name": "fedsgd"})
    text = str(exc.value)
    assert "strategy.name" in text and "fedsgd" in text
    assert all(n in text for n in reg.STRATEGIES)
    with pytest.raises(InputError, match="fedsgd"):
        reg.get("fedsgd")


def test_required_and_bounded_parameters() -> None:
    with pytest.raises(ConfigError, match="generators"):
        _cfg({"name": "kd"})
    with pytest.raises(InputError, match="strategy.trim_ratio"):
        reg.params_for("trimmed_mean", trim_ratio=0.5)


def test_flags_drive_the_engine() -> None:
    assert not reg.get("none").exchanges and reg.get("fedavg").exchanges
    assert reg.get("fedprox").proximal and not reg.get("fedavg").proximal
    assert reg.get("fedadam").server_state and reg.get("kd").needs_generators
    assert [d["name"] for d in reg.describe()] == list(reg.STRATEGIES)


def test_register_rejects_duplicates_and_a_params_model_that_does_not_fix_the_name() -> None:
    class Toy(StrategyParams):
        name: Literal["toy"] = "toy"

    def step(inp):  # noqa: ANN001, ANN202
        return ServerOutput(inp.global_state)

    with pytest.raises(ValueError, match="twice"):
        register(Strategy("fedavg", "dup", reg.get("fedavg").params, step))
    with pytest.raises(ValueError, match="must fix name"):
        register(Strategy("toy2", "mismatch", Toy, step))
    assert "toy2" not in reg.REGISTRY


def test_docs_are_generated_from_the_registry() -> None:
    doc = (REPO / "docs" / "strategies.md").read_text()
    assert doc == reg.markdown(), "docs/strategies.md is stale: run `a2vtool strategies --markdown > docs/strategies.md`"


def test_cli_lists_the_registry_as_json() -> None:
    p = subprocess.run([sys.executable, "-m", "a2vtool", "strategies", "--json"], capture_output=True, timeout=60,
                       cwd=str(REPO))
    assert p.returncode == 0, p.stderr.decode()
    got = json.loads(p.stdout)
    assert [d["name"] for d in got["strategies"]] == list(reg.STRATEGIES)
    kd = next(d for d in got["strategies"] if d["name"] == "kd")
    assert {"name": "generators", "required": True} .items() <= next(p for p in kd["params"] if p["name"] == "generators").items()
