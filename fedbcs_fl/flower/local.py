"""A real Flower deployment on this machine: ``fedbcs flower-local``.

One ``flower-superlink`` and one ``flower-supernode`` per client run as separate
processes on 127.0.0.1; then ``flwr run`` submits the app. Everything uses a private,
temporary FLWR_HOME and free ports, with telemetry, the update check and runtime
dependency installation off. By default the processes talk without TLS (the traffic never
leaves loopback); ``tls`` runs every API over TLS with a throwaway CA, and ``auth`` turns
on Flower's SuperNode authentication with throwaway keys, registered with the SuperLink
before the SuperNodes start (:mod:`~fedbcs_fl.flower.secure`; the credentials live in the
private FLWR_HOME and go with it). Flower allows SuperNode authentication only over TLS:
``auth`` without ``tls`` is refused (``fedbcs flower-local --auth`` turns ``--tls`` on).

Every process started here, and every process those start (SuperExec, ServerApp and
ClientApp processes, which Flower puts in sessions of their own), is stopped by PID when
the deployment ends, also on an error, Ctrl-C or SIGTERM; if ``flower-local`` itself is
killed (SIGKILL), a watchdog process (:mod:`~fedbcs_fl.flower.processes`) stops them and
removes the private FLWR_HOME. The run counts as successful only if the SuperLink reports
it ``finished:completed`` and the ServerApp wrote a record for every round and the final
model; ``flwr run`` itself exits 0 on failed runs. ``flower-local.json`` says how the run
ended, also when it was stopped by a signal or failed.

Two deployments cannot share a results folder: ``flower-local`` holds ``<out>/logs``
and the ServerApp holds ``<out>`` (:func:`~fedbcs_fl.run_folder.hold_run_folder`).
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import tomli_w

from ..config import RunConfig
from ..data import data_source
from ..run_folder import (
    atomic_write_text,
    hold_run_folder,
    holds_run,
    is_finished,
    read_records,
)
from . import processes
from .processes import descendants, stop_processes
from .secure import NodeKey, write_node_keys, write_tls_files
from .settings import to_run_config

# Seconds between SuperExec polls for new tasks (Flower's default, 1 s, dominates short runs).
TASK_POLL_INTERVAL = "0.2"
# How much longer than the run's timeout the throwaway certificates are valid: the time
# to start and stop the deployment.
CERTIFICATE_MARGIN = datetime.timedelta(hours=1)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (bind port 0, read, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def project_root() -> Path:
    """The folder holding the pyproject.toml with ``[tool.flwr.app]`` (what ``flwr run`` builds)."""
    root = Path(__file__).resolve().parents[2]
    if "[tool.flwr.app]" not in (root / "pyproject.toml").read_text(encoding="utf-8"):
        raise RuntimeError(f"{root}/pyproject.toml has no [tool.flwr.app]: use a source checkout")
    return root


def flower_environment(home: Path) -> dict[str, str]:
    """This process's environment for a Flower program that keeps its files in ``home``
    and never calls out: no telemetry, no update check (which waits on the network) and
    no runtime dependency installation."""
    return os.environ | {
        "FLWR_HOME": str(home),
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "FLWR_SUPEREXEC_TASK_POLL_INTERVAL": TASK_POLL_INTERVAL,
        # SuperLink and SuperNodes start flower-superexec by name.
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }


def _executable(name: str) -> str:
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if found is None:
        raise RuntimeError(f"{name} not found: is flwr installed in this environment?")
    return found


class LocalDeployment:
    """SuperLink + SuperNodes on loopback; use as a context manager, then :meth:`run`.

    Args:
        clients: SuperNodes to start (partition ids 0 … clients-1).
        node_config: extra node config of every SuperNode (e.g. ``{"data-root": ...}``).
        log_dir: where each process's output goes (``superlink.log``, ``supernode-<i>.log``,
            ``flwr-run.log``).
        tls: every API over TLS, with a throwaway CA (default False: no TLS).
        auth: only SuperNodes with a registered key may connect (default False); needs
            ``tls``, as Flower does.
        certificate_lifetime: how long the throwaway certificates are valid (default one
            day); the deployment must end before they expire.

    Raises:
        ValueError: ``auth`` without ``tls`` (before anything starts).
    """

    def __init__(
        self,
        clients: int,
        node_config: dict[str, Any],
        log_dir: Path,
        tls: bool = False,
        auth: bool = False,
        certificate_lifetime: datetime.timedelta = datetime.timedelta(days=1),
    ):
        if auth and not tls:
            raise ValueError("auth needs tls: Flower authenticates SuperNodes only over TLS")
        self.clients = clients
        self.node_config = node_config
        self.tls = tls
        self.auth = auth
        self.certificate_lifetime = certificate_lifetime
        self.node_keys: list[NodeKey] = []  # with auth, registered before the nodes start
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.home = Path(tempfile.mkdtemp(prefix="fedbcs-flwr-home-"))
        self.port = free_port()
        self.processes: list[subprocess.Popen] = []
        self.pids: set[int] = set()  # every PID seen in the deployment's process trees
        self.run_id: int | None = None
        with open(self.log_dir / "watchdog.log", "wb") as log:
            self.watchdog = subprocess.Popen(
                [sys.executable, processes.__file__, str(self.home)],
                stdin=subprocess.PIPE,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # it outlives us, and a Ctrl-C is ours to handle
                text=True,
            )
        self.env = flower_environment(self.home)

    # ---- processes ---------------------------------------------------------------------

    def _start(self, args: list[str], log_name: str) -> subprocess.Popen:
        with open(self.log_dir / log_name, "wb") as log:
            process = subprocess.Popen(
                args,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # Ctrl-C reaches us only; we stop the children
            )
        self.processes.append(process)
        self.pids.add(process.pid)
        self._tell_watchdog(process.pid)
        return process

    def _tell_watchdog(self, pid: int) -> None:
        """A process the watchdog must stop if we die (``pid``), or may forget (``-pid``)."""
        self.watchdog.stdin.write(f"{pid}\n")
        self.watchdog.stdin.flush()

    def _wait_for_port(self, process: subprocess.Popen, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"the SuperLink exited early; see {self.log_dir}/superlink.log")
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.2)
        raise RuntimeError(f"the SuperLink did not listen on port {self.port} in {timeout:.0f} s")

    def _security(self) -> tuple[list[str], list[list[str]], dict[str, Any]]:
        """Write the credentials the deployment uses; the SuperLink's security options,
        each SuperNode's, and ``flwr``'s connection to the SuperLink."""
        address = f"127.0.0.1:{self.port}"
        if not self.tls:
            insecure = ["--insecure"]
            return insecure, [insecure] * self.clients, {"address": address, "insecure": True}
        tls = write_tls_files(self.home / "tls", self.certificate_lifetime)
        ca = str(tls.ca_certificate)
        served = [
            *("--ssl-ca-certfile", ca),
            *("--ssl-certfile", str(tls.certificate)),
            *("--ssl-keyfile", str(tls.private_key)),
        ]
        link = [*served, *(["--enable-supernode-auth"] if self.auth else [])]
        # A SuperNode checks the SuperLink against the CA, and serves its own runtime API
        # (to its SuperExec and ClientApps) over TLS too.
        nodes = [["--root-certificates", ca, *served] for _ in range(self.clients)]
        if self.auth:
            self.node_keys = write_node_keys(self.home / "keys", self.clients)
            for args, key in zip(nodes, self.node_keys, strict=True):
                args += ["--auth-supernode-private-key", str(key.private_key)]
        return link, nodes, {"address": address, "root-certificates": ca}

    def start(self) -> None:
        """Start the SuperLink, wait until it listens, register the SuperNodes' keys
        (``auth``), then start the SuperNodes."""
        link_args, node_args, connection = self._security()
        (self.home / "config.toml").write_text(
            tomli_w.dumps({"superlink": {"default": "local", "local": connection}})
        )
        link = self._start(
            [
                _executable("flower-superlink"),
                *link_args,
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--disable-runtime-dependency-installation",
            ],
            "superlink.log",
        )
        self._wait_for_port(link)
        for key in self.node_keys:
            self._flwr("supernode", "register", str(key.public_key), "local")
        for partition_id in range(self.clients):
            config = {"partition-id": partition_id, "num-partitions": self.clients}
            config |= self.node_config
            self._start(
                [
                    _executable("flower-supernode"),
                    *node_args[partition_id],
                    "--superlink",
                    f"127.0.0.1:{self.port}",
                    "--port",
                    str(free_port()),
                    "--node-config",
                    " ".join(f"{k}={json.dumps(v)}" for k, v in config.items()),
                ],
                f"supernode-{partition_id}.log",
            )

    def stop(self) -> None:
        """SIGTERM every process of the deployment by PID, SIGKILL what is left after a grace
        period, remove the private FLWR_HOME, and release the watchdog."""
        tree = descendants([p.pid for p in self.processes])
        self.pids |= tree
        stop_processes(tree)
        for process in self.processes:
            process.wait()
        shutil.rmtree(self.home, ignore_errors=True)
        if not self.watchdog.stdin.closed:
            self.watchdog.stdin.write(processes.DONE + "\n")
            self.watchdog.stdin.close()
        self.watchdog.wait()

    def __enter__(self) -> LocalDeployment:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # ---- the run -------------------------------------------------------------------------

    def _flwr(self, *args: str, timeout: float = 120.0) -> str:
        """Run a ``flwr`` command to its end (it writes into FLWR_HOME, so the watchdog
        must stop it too before it removes the folder)."""
        process = subprocess.Popen(
            [_executable("flwr"), *args],
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        self._tell_watchdog(process.pid)
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()
            raise
        finally:
            self._tell_watchdog(-process.pid)  # reaped: its PID may be reused
        if process.returncode != 0:
            raise RuntimeError(f"flwr {' '.join(args)} failed: {stdout}{stderr}")
        return stdout

    def run_status(self, run_id: int) -> str:
        """The SuperLink's status of a run, e.g. ``finished:completed``."""
        listing = json.loads(self._flwr("ls", "local", "--run-id", str(run_id), "--format", "json"))
        return str(listing["runs"][0]["status"])

    def run(self, run_config: dict[str, Any], timeout: float) -> tuple[int, str]:
        """Submit the app with ``run_config``, follow its log until it ends; ``(run id,
        final status)``. Raises TimeoutError after ``timeout`` seconds."""
        config_file = self.home / "run-config.toml"
        config_file.write_text(tomli_w.dumps(run_config))
        process = self._start(
            [
                _executable("flwr"),
                "run",
                str(project_root()),
                "local",
                "--run-config",
                str(config_file),
                "--stream",
            ],
            "flwr-run.log",
        )
        deadline = time.monotonic() + timeout
        run_id = None
        while run_id is None or not self.run_status(run_id).startswith("finished"):
            if time.monotonic() > deadline:
                raise TimeoutError(f"the run did not finish in {timeout:.0f} s")
            if run_id is None:
                match = re.search(r"started run (\d+)", (self.log_dir / "flwr-run.log").read_text())
                if match:
                    run_id = self.run_id = int(match.group(1))
                elif process.poll() is not None:
                    raise RuntimeError(f"flwr run failed; see {self.log_dir}/flwr-run.log")
            self.pids |= descendants([p.pid for p in self.processes])
            time.sleep(1.0)
        return run_id, self.run_status(run_id)


@contextmanager
def stop_on_sigterm() -> Iterator[None]:
    """Turn SIGTERM into KeyboardInterrupt while inside, so cleanup code runs."""

    def interrupt(signum, frame):
        raise KeyboardInterrupt(signal.Signals(signum).name)

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_local(
    config: RunConfig,
    clients: int,
    out: Path,
    fail_partition: int = -1,
    timeout: float = 3600.0,
    *,
    tls: bool = False,
    auth: bool = False,
) -> dict[str, Any]:
    """Run ``config`` on a local deployment of ``clients`` SuperNodes; results in ``out``.

    A run without ``sites`` trains on the first ``clients`` sites of its data. ``tls`` and
    ``auth`` are :class:`LocalDeployment`'s (``auth`` needs ``tls``); the certificates are
    valid for ``timeout`` plus :data:`CERTIFICATE_MARGIN`. Returns the report also written
    to ``out/flower-local.json``: ``ok``, ``run_id``, ``status`` (the SuperLink's final
    status, or ``stopped by SIGTERM``, ``stopped by Ctrl-C`` or ``failed: <error>``),
    ``rounds_completed``, ``tls`` and ``auth`` (whether the deployment ran with them) and
    ``pids`` (every process the deployment ran, all stopped).

    Raises:
        RunFolderInUse: another deployment or run uses ``out``.
        ValueError: ``out`` already holds a run, or is no folder this process can write in.
    """
    out = Path(out).resolve()
    with hold_run_folder(out / "logs"):  # this deployment's own files
        with hold_run_folder(out):  # free now; the ServerApp holds it for the run
            if holds_run(out):
                raise ValueError(f"{out} already holds a run; choose another --out or delete it")
        return _run_local(config, clients, out, fail_partition, timeout, tls, auth)


def _run_local(
    config: RunConfig,
    clients: int,
    out: Path,
    fail_partition: int,
    timeout: float,
    tls: bool,
    auth: bool,
) -> dict[str, Any]:
    names = config.sites or data_source(config.dataset).site_names(config.data_root)
    if len(names) < clients:
        raise ValueError(f"{clients} clients but only {len(names)} sites: {names}")
    config = dataclasses.replace(config, sites=list(names[:clients]))
    run_config = to_run_config(
        config, out_dir=str(out), min_nodes=clients, fail_partition=fail_partition
    )
    node_config = {
        key: value
        for key, value in (("data-root", config.data_root), ("split-file", config.split_file))
        if value
    }
    lifetime = datetime.timedelta(seconds=timeout) + CERTIFICATE_MARGIN
    deployment = LocalDeployment(clients, node_config, out / "logs", tls, auth, lifetime)
    report: dict[str, Any] = {
        "ok": False,
        "run_id": None,
        "status": "not started",
        "tls": tls,
        "auth": auth,
    }
    try:
        with stop_on_sigterm():
            try:
                deployment.start()
                report["run_id"], report["status"] = deployment.run(run_config, timeout)
            finally:
                deployment.stop()
    except KeyboardInterrupt as stop:
        report["status"] = f"stopped by {stop.args[0] if stop.args else 'Ctrl-C'}"
        raise
    except Exception as error:
        report["status"] = f"failed: {type(error).__name__}: {error}"
        raise
    finally:
        report["run_id"] = deployment.run_id
        rounds = len(read_records(out)) if holds_run(out) else 0
        report["rounds_completed"] = rounds
        report["ok"] = (
            report["status"] == "finished:completed"
            and rounds == config.rounds
            and is_finished(out)
        )
        report["pids"] = sorted(deployment.pids)
        report["logs"] = str(out / "logs")
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "flower-local.json", json.dumps(report, indent=2))
    return report
