"""`a2vtool federate`: thin wrapper over stages.federate."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from a2vtool.cli.common import ConfigOpt, DebugOpt, DeviceOpt, JsonOpt, OutOpt, SeedOpt, SetOpt, emit, overrides, run_guarded


def register(app: typer.Typer) -> None:
    @app.command("federate")
    def federate(
        config: ConfigOpt = None,
        set_: SetOpt = None,
        out: OutOpt = None,
        device: DeviceOpt = None,
        seed: SeedOpt = None,
        resume: Annotated[Path | None, typer.Option("--resume", help="Continue the run in this directory from its last complete round.", show_default=False)] = None,
        engine: Annotated[str, typer.Option("--engine", help="local (one process), flower-sim or flower.")] = "local",
        as_json: JsonOpt = False,
        debug: DebugOpt = False,
    ) -> None:
        """Train adapters across federated nodes: local training, aggregation, evaluation and a checkpoint every round."""

        def go() -> dict[str, Any]:
            from a2vtool.config import load_config
            from a2vtool.errors import InputError
            from a2vtool.stages.federate import FederateConfig, run

            if resume is not None:
                from a2vtool.config import dump_config, validate
                from a2vtool.federated.loop import load_run_config

                if config is not None:
                    raise InputError("--resume takes the config stored in the run directory; drop --config")
                base = dump_config(load_run_config(resume))
                from a2vtool.config import apply_set, parse_set

                for item in set_ or []:
                    keys, value = parse_set(item)
                    if keys[0] != "rounds":
                        raise InputError(f"--set {item}: only rounds may change on --resume (the rest must match the run)")
                    apply_set(base, keys, value, origin=f"--set {item}")
                cfg = validate(FederateConfig, base, str(resume / "run.json"))
            else:
                if config is None:
                    raise InputError("federate needs --config run.json (see configs/ for examples)")
                cfg = load_config(FederateConfig, config, set_, overrides("out", out, device, seed))
            return run(cfg, resume=resume, engine=engine)

        manifest = run_guarded(go, debug=debug, as_json=as_json)
        if as_json:
            emit({"run": str(manifest["config"]["out"]) if not resume else str(resume), "rounds": manifest["rounds"],
                  "parameters": manifest["parameters"], "metrics": manifest["final"]["metrics"]}, True)
        else:
            from a2vtool.stages.federate import summary_table

            emit(manifest, False, summary_table)
