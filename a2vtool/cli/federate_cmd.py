"""`a2vtool federate`: thin wrapper over stages.federate."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from a2vtool.cli.common import ConfigOpt, DebugOpt, JsonOpt, SetOpt, config_command, emit, flag_overrides, run_guarded, shared_flags

FLAGS = shared_flags()  # the config-key flags; the engine flags below are options of the run, not config keys


def register(app: typer.Typer) -> None:
    @config_command(app, "federate", "federate", FLAGS)
    def federate(
        config: ConfigOpt = None,
        set_: SetOpt = None,
        flags: Any = None,
        resume: Annotated[Path | None, typer.Option("--resume", help="Continue the run in this directory from its last complete round.", show_default=False)] = None,
        engine: Annotated[str, typer.Option("--engine", help="local (one process), flower-sim (Flower simulation on Ray) or flower (SuperLink + SuperNodes).")] = "local",
        cpus_per_node: Annotated[float, typer.Option("--cpus-per-node", help="flower-sim: CPU cores per node.")] = 1.0,
        gpus_per_node: Annotated[float, typer.Option("--gpus-per-node", help="flower-sim: GPU fraction per node.")] = 0.0,
        max_parallel: Annotated[int | None, typer.Option("--max-parallel", help="flower-sim: nodes training at once (default: as many as the CPUs allow).", show_default=False)] = None,
        round_timeout: Annotated[float | None, typer.Option("--round-timeout", help="flower engines: seconds to wait for every node's reply in a round.", show_default=False)] = None,
        superlink: Annotated[str | None, typer.Option("--superlink", help="flower: address HOST:PORT of a running SuperLink.", show_default=False)] = None,
        launch_local: Annotated[bool, typer.Option("--launch-local", help="flower: start a SuperLink and one SuperNode per node on 127.0.0.1 for a trial, stop them at the end.")] = False,
        insecure: Annotated[bool, typer.Option("--insecure", help="flower: talk to the SuperLink without TLS.")] = False,
        root_certificates: Annotated[Path | None, typer.Option("--root-certificates", help="flower: CA certificate (PEM) that signed the SuperLink's certificate.", show_default=False)] = None,
        ssl_dir: Annotated[Path | None, typer.Option("--ssl-dir", help="flower --launch-local with TLS: folder holding ca.crt, server.pem, server.key.", show_default=False)] = None,
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
                cfg = load_config(FederateConfig, config, set_, flag_overrides(FederateConfig, flags))
            options = None
            if engine != "local":
                from a2vtool.federated.flower_engine import EngineOptions

                ssl = {"ca": ssl_dir / "ca.crt", "cert": ssl_dir / "server.pem", "key": ssl_dir / "server.key"} if ssl_dir else {}
                options = EngineOptions(cpus_per_node=cpus_per_node, gpus_per_node=gpus_per_node, max_parallel=max_parallel,
                                        round_timeout=round_timeout, superlink=superlink, launch_local=launch_local,
                                        insecure=insecure, root_certificates=root_certificates, ssl=ssl)
            return run(cfg, resume=resume, engine=engine, options=options)

        manifest = run_guarded(go, debug=debug, as_json=as_json)
        if as_json:
            emit({"run": str(manifest["config"]["out"]) if not resume else str(resume), "rounds": manifest["rounds"],
                  "parameters": manifest["parameters"], "metrics": manifest["final"]["metrics"]}, True)
        else:
            from a2vtool.stages.federate import summary_table

            emit(manifest, False, summary_table)
