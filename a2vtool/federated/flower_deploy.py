"""Deployment engine: submits the run to a SuperLink with `flwr run`, or first starts one and a SuperNode per node on
loopback (--launch-local); every process it starts is stopped on exit (process groups, atexit and signal handlers)."""

from __future__ import annotations

import atexit
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from a2vtool.errors import InputError
from a2vtool.federated.flower_common import QUIET_ENV, EngineError

APP_MODULE = '''"""a2vtool's Flower app (generated): the ServerApp and ClientApp live in a2vtool.federated."""
from a2vtool.federated.flower_client import make_client_app
from a2vtool.federated.flower_server import deployment_server_app

serverapp = deployment_server_app()
clientapp = make_client_app()
'''
PYPROJECT = '''[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "a2vflower"
version = "1.0.0"
description = "a2vtool federate on Flower"
license = "Apache-2.0"
dependencies = []

[tool.hatch.build.targets.wheel]
packages = ["."]

[tool.flwr.app]
publisher = "a2vtool"

[tool.flwr.app.components]
serverapp = "a2v_flower_app:serverapp"
clientapp = "a2v_flower_app:clientapp"

[tool.flwr.app.config]
config = ""
run-dir = ""
status = ""
resume = false
timeout = 0.0
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_in_use(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


ACTIVE: list[Any] = []  # Processes objects of runs in progress in this process (tests and tools look up pids here)


MARKER_VAR = "A2V_FLOWER_LAUNCH"


class Processes:
    """Processes started here, each in its own process group; stop() ends them all (also at exit and on signals)."""

    def __init__(self, logdir: Path) -> None:
        self.logdir = logdir
        self.procs: list[tuple[str, subprocess.Popen[bytes], Path]] = []
        # Every process started here carries this marker in its environment, and so do the ServerApp/ClientApp
        # processes Flower spawns from them; stop() sweeps by marker, which also finds reparented orphans.
        self.marker = f"{os.getpid()}-{uuid.uuid4().hex}"
        atexit.register(self.stop)
        ACTIVE.append(self)
        self._old = {}
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            try:
                self._old[sig] = signal.signal(sig, self._on_signal)
            except ValueError:  # not the main thread
                pass

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.stop()
        raise SystemExit(128 + signum)

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        log = self.logdir / f"{name}.log"
        with open(log, "wb") as f:
            p = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT, env={**env, MARKER_VAR: self.marker},
                                 start_new_session=True)
        self.procs.append((name, p, log))
        return p

    def tail(self, name: str, lines: int = 6) -> str:
        log = next((lg for n, _, lg in self.procs if n == name), None)
        if log is None or not log.exists():
            return ""
        text = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
        return " | ".join(text[-lines:])

    def _marked(self) -> list[Any]:
        """Live processes (not zombies) whose environment carries this launch's marker."""
        import psutil

        found = []
        for proc in psutil.process_iter(["pid"]):
            try:
                if proc.pid != os.getpid() and proc.status() != psutil.STATUS_ZOMBIE \
                        and proc.environ().get(MARKER_VAR) == self.marker:
                    found.append(proc)
            except psutil.Error:
                continue
        return found

    def pid(self, name: str) -> int | None:
        return next((p.pid for n, p, _ in self.procs if n == name), None)

    def dead(self) -> list[tuple[str, int]]:
        return [(n, p.returncode) for n, p, _ in self.procs if p.poll() is not None and n != "flwr-run"]

    def stop(self) -> None:
        import psutil

        kids: list[Any] = []  # descendants outside the groups (the SuperLink starts flwr-serverapp in its own session)
        for _, p, _ in self.procs:
            try:
                kids += psutil.Process(p.pid).children(recursive=True)
            except psutil.Error:
                pass
        for _, p, _ in reversed(self.procs):
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 10
        for _, p, _ in self.procs:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            try:  # the group too: ServerApp/ClientApp subprocesses the Flower processes started
                os.killpg(p.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            p.poll()
        for _ in range(3):  # a process may spawn a child while we sweep: repeat until none carries the marker
            kids = {k.pid: k for k in [*kids, *self._marked()]}.values()  # type: ignore[assignment]
            for k in kids:
                try:
                    k.terminate()
                except psutil.Error:
                    pass
            _, alive = psutil.wait_procs(list(kids), timeout=5)
            for k in alive:
                try:
                    k.kill()
                except psutil.Error:
                    pass
            psutil.wait_procs(alive, timeout=2)
            kids = []
            if not self._marked():
                break
        if self in ACTIVE:
            ACTIVE.remove(self)
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old = {}


def _env(home: Path) -> dict[str, str]:
    env = {**os.environ, **QUIET_ENV, "FLWR_HOME": str(home)}
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    return env


def _bin(name: str) -> str:
    p = Path(sys.executable).parent / name
    return str(p) if p.exists() else name


def node_configs(cfg: Any) -> list[str]:
    """--node-config of each node for a loopback trial: its index, and with explicit nodes its own cache and classes."""
    out = []
    from a2vtool.federated.flower_common import expected_nodes

    for i in range(expected_nodes(cfg)):
        parts = [f"node-index={i}"]
        if cfg.nodes is not None:
            spec = cfg.nodes[i]
            emb = spec.embeddings or cfg.data.embeddings
            if emb is not None:
                parts.append(f'embeddings="{Path(emb).resolve()}"')
            if spec.classes:
                parts.append(f'classes="{",".join(spec.classes)}"')
        out.append(" ".join(parts))
    return out


def _wait_port(procs: Processes, name: str, p: subprocess.Popen[bytes], port: int, timeout: float) -> None:
    t0 = time.monotonic()
    while not port_in_use(port):
        if p.poll() is not None:
            raise EngineError(f"{name} exited with code {p.returncode} while starting: {procs.tail(name)}")
        if time.monotonic() - t0 > timeout:
            raise EngineError(f"{name} did not open port {port} within {timeout:.0f}s: {procs.tail(name)}")
        time.sleep(0.2)


def launch_local(procs: Processes, cfg: Any, env: dict[str, str], opts: Any) -> str:
    """Start a SuperLink and one SuperNode per node on 127.0.0.1; returns the SuperLink address."""
    port = opts.base_port or free_port()
    if port_in_use(port):
        raise EngineError(f"SuperLink: port {port} on 127.0.0.1 is already in use", hint="pick another --base-port")
    tls = ["--insecure"] if not opts.ssl else ["--ssl-ca-certfile", str(opts.ssl["ca"]), "--ssl-certfile",
                                               str(opts.ssl["cert"]), "--ssl-keyfile", str(opts.ssl["key"])]
    link = procs.start("superlink", [_bin("flower-superlink"), *tls, "--host", "127.0.0.1", "--port", str(port),
                                     "--disable-runtime-dependency-installation"], env)
    _wait_port(procs, "superlink", link, port, 60)
    client_tls = ["--insecure"] if not opts.ssl else ["--root-certificates", str(opts.ssl["ca"])]
    for i, nc in enumerate(node_configs(cfg)):
        nport = free_port()
        p = procs.start(f"supernode-{i}", [_bin("flower-supernode"), *client_tls, "--superlink", f"127.0.0.1:{port}",
                                           "--port", str(nport), "--node-config", nc, "--max-wait-time", "60"], env)
        _wait_port(procs, f"supernode-{i}", p, nport, 60)
    return f"127.0.0.1:{port}"


def run_deployment_engine(cfg: Any, run_dir: Path, *, resume: bool, opts: Any) -> dict[str, Any]:
    from a2vtool.artifacts import read_manifest
    from a2vtool.config import dump_config
    from a2vtool.federated import checkpoint as ck
    if not opts.launch_local and not opts.superlink:
        raise InputError("--engine flower needs --superlink HOST:PORT (a running SuperLink) or --launch-local")
    work = Path(tempfile.mkdtemp(prefix="a2v-flower-"))
    home, app = work / "flwr-home", work / "app"
    home.mkdir()
    app.mkdir()
    (app / "pyproject.toml").write_text(PYPROJECT)
    (app / "a2v_flower_app.py").write_text(APP_MODULE)
    cfg_path, status = work / "config.json", work / "status.json"
    cfg_path.write_text(json.dumps(dump_config(cfg)))
    env = _env(home)
    procs = Processes(work)
    run_dir = Path(run_dir).resolve()
    try:
        address = launch_local(procs, cfg, env, opts) if opts.launch_local else opts.superlink
        ca = opts.root_certificates or opts.ssl.get("ca")
        tls = 'insecure = true' if (opts.insecure or (opts.launch_local and not opts.ssl)) else \
            f'root-certificates = "{Path(ca).resolve()}"' if ca else ""  # neither: the system's CA bundle
        (home / "config.toml").write_text(f'[superlink]\ndefault = "a2v"\n\n[superlink.a2v]\naddress = "{address}"\n{tls}\n')
        rc = (f'config="{cfg_path}" run-dir="{run_dir}" status="{status}" resume={str(resume).lower()} '
              f'timeout={float(opts.round_timeout or 0)}')
        run = procs.start("flwr-run", [_bin("flwr"), "run", str(app), "a2v", "--run-config", rc, "--stream"], env)
        while run.poll() is None:
            dead = procs.dead()
            if dead:
                name, code = dead[0]
                raise EngineError(f"{name} stopped with exit code {code} during the run (round "
                                  f"{(ck.complete_rounds(run_dir) or [0])[-1] + 1}); the run directory keeps every "
                                  f"complete round: {procs.tail(name, 3)}", hint=f"continue with --resume {run_dir}")
            if status.exists():
                break
            time.sleep(0.5)
        t0 = time.monotonic()
        while not status.exists() and run.poll() is None and time.monotonic() - t0 < 30:
            time.sleep(0.2)
        if not status.exists():
            raise EngineError(f"flwr run ended (code {run.returncode}) without a result from the ServerApp: "
                              f"{procs.tail('flwr-run')} {procs.tail('superlink')}")
        st = json.loads(status.read_text())
        if not st["ok"]:
            raise EngineError(f"ServerApp: {st['error']}", hint=st.get("hint") or f"continue with --resume {run_dir}")
        return read_manifest(run_dir, ck.RUN_KIND)
    finally:
        procs.stop()
        if os.environ.get("A2V_KEEP_FLOWER_LOGS") != "1":
            import shutil

            shutil.rmtree(work, ignore_errors=True)


__all__ = ["run_deployment_engine", "launch_local", "node_configs", "Processes"]
