"""Milvus servers on this machine, for tests, benchmarks and the demo.

* :class:`MilvusLiteServer`: ``milvus-lite server --data-dir DIR --host 127.0.0.1 --port P`` —
  milvus-lite for several processes (Ray Serve replicas, Ray workers);
* :class:`MilvusStandaloneServer`: the C++ Milvus standalone of the PyPI package ``milvus``
  (``milvus-server``) — the production code path's stand-in.

Both listen on free 127.0.0.1 ports, keep their data in ``data_dir``, write their log into
``log_dir`` and can be restarted on the same data (``restart()``; the URI may change).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path


class LocalMilvusError(RuntimeError):
    """A local Milvus server could not be found or started (the message says why, with its log)."""


def _free_ports(count: int) -> list[int]:
    """``count`` distinct free TCP ports on 127.0.0.1 (all held open until all are chosen)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _venv_command(name: str, install_hint: str) -> str:
    beside_python = Path(sys.executable).parent / name
    command = str(beside_python) if beside_python.exists() else shutil.which(name)
    if command is None:
        raise LocalMilvusError(f"{name} not installed: {install_hint}")
    return command


def _log_tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class LocalMilvusServer:
    """A Milvus server process under test. ``uri`` is where it answers now; ``restart()``
    stops it (first signal, a grace period, then SIGKILL) and starts it again on the same data."""

    kind = "milvus"
    #: First signal of a stop, and how long a stop waits for the processes before SIGKILL.
    stop_signal = signal.SIGTERM
    stop_grace_s = 10.0
    start_timeout_s = 240.0

    def __init__(self, data_dir: Path | str, log_dir: Path | str):
        self.data_dir = Path(data_dir)
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.uri = ""
        self.token = ""  # what the start-up check connects with (a server with authorization wants one)
        self.process: subprocess.Popen | None = None
        self.starts = 0

    def command(self) -> tuple[list[str], dict[str, str]]:
        """The command line and environment of the next start; sets :attr:`uri`."""
        raise NotImplementedError

    def ready(self) -> bool:
        """True once the server answers a real request."""
        import grpc
        from pymilvus import MilvusClient
        from pymilvus.exceptions import MilvusException

        try:
            client = MilvusClient(uri=self.uri, token=self.token, timeout=2)
        except (MilvusException, grpc.RpcError):
            return False
        try:
            client.list_collections()
            return True
        except (MilvusException, grpc.RpcError):
            return False
        finally:
            client.close()

    @property
    def log_path(self) -> Path:
        return self.log_dir / f"{self.kind}-{self.starts}.log"

    def start(self) -> None:
        self.starts += 1
        command, env = self.command()
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                command, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
            )
        deadline = time.monotonic() + self.start_timeout_s
        while not self.ready():
            if self.process.poll() is not None or time.monotonic() > deadline:
                code = self.process.poll()
                self.stop()
                raise LocalMilvusError(
                    f"{self.kind} did not start at {self.uri} (exit code {code}); "
                    f"log {self.log_path}:\n{_log_tail(self.log_path)}"
                )
            time.sleep(0.5)

    def stop(self) -> None:
        """First signal to the server's processes, wait up to the grace period, then SIGKILL."""
        import psutil

        if self.process is None:
            return
        try:
            processes = [psutil.Process(self.process.pid)]
            processes += processes[0].children(recursive=True)
        except psutil.NoSuchProcess:
            processes = []

        def alive(p: psutil.Process) -> bool:  # a zombie has stopped, whoever reaps it
            try:
                return p.status() != psutil.STATUS_ZOMBIE
            except psutil.NoSuchProcess:
                return False

        for p in processes:
            try:
                p.send_signal(self.stop_signal)
            except psutil.NoSuchProcess:
                pass
        deadline = time.monotonic() + self.stop_grace_s
        while any(alive(p) for p in processes) and time.monotonic() < deadline:
            time.sleep(0.2)
        for p in processes:
            if alive(p):
                try:
                    p.kill()
                except psutil.NoSuchProcess:
                    pass
        self.process.wait(timeout=30)
        deadline = time.monotonic() + 30
        while any(alive(p) for p in processes) and time.monotonic() < deadline:
            time.sleep(0.1)
        self.process = None
        self.after_stop([p.pid for p in processes])

    def after_stop(self, pids: list[int]) -> None:
        """Remove what the stopped processes ``pids`` left outside the data folder."""

    def kill(self) -> None:
        """SIGKILL the server and everything it started: no shutdown, no flush, nothing cleaned up
        (what a crash leaves; the fault tests' kill). ``start()`` brings it back on the same data."""
        import psutil

        if self.process is None:
            return
        try:
            root = psutil.Process(self.process.pid)
            processes = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            processes = []
        for process in processes:
            try:
                process.send_signal(signal.SIGKILL)
            except psutil.NoSuchProcess:
                pass
        self.process.wait(timeout=30)
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()


class MilvusLiteServer(LocalMilvusServer):
    """``milvus-lite server --data-dir DIR --host 127.0.0.1 --port P`` (stops cleanly on SIGINT)."""

    kind = "milvus-lite-server"
    stop_signal = signal.SIGINT
    start_timeout_s = 120.0

    #: Set to keep the same port across restarts (clients that stay connected then find the server
    #: again, as they would a production server coming back at its address); ``None``: a free port
    #: each start.
    port: int | None = None

    def command(self) -> tuple[list[str], dict[str, str]]:
        executable = _venv_command("milvus-lite", "it comes with milvus-lite (pip install -e .[dev])")
        port = self.port or _free_ports(1)[0]
        self.uri = f"http://127.0.0.1:{port}"
        command = [executable, "server", "--data-dir", str(self.data_dir), "--host", "127.0.0.1", "--port", str(port)]
        return command, dict(os.environ, PYTHONUNBUFFERED="1")


class MilvusStandaloneServer(LocalMilvusServer):
    """The C++ Milvus standalone of the PyPI package ``milvus``, every port free and on 127.0.0.1.

    ``milvus-server`` extracts its binaries into ``DATA/bin``; they can be kept in a cache folder
    (``bin_cache``) so that only the first session pays for the extraction. The embedded etcd
    ignores ``--etcd-port``: its ports come from an etcd config file (``ETCD_CONFIG_PATH``).
    Milvus 2.3 standalone rarely exits on SIGTERM within seconds: the stop ends with SIGKILL,
    which loses nothing that was flushed.
    """

    kind = "milvus-standalone"
    _PORT_OPTIONS = (
        "proxy-port",
        "proxy-internal-port",
        "root-coord-port",
        "query-coord-port",
        "query-node-port",
        "index-coord-port",
        "index-node-port",
        "data-coord-port",
        "data-node-port",
    )
    _COMPONENTS = ("rootCoord", "proxy", "queryCoord", "queryNode", "indexNode", "dataCoord", "dataNode")

    def __init__(
        self,
        data_dir: Path | str,
        log_dir: Path | str,
        bin_cache: Path | None = None,
        *,
        extra_config: Sequence[str] = (),
        token: str = "",
    ):
        """``extra_config``: more ``KEY=VALUE`` settings of ``milvus.yaml`` (``--extra-config``),
        e.g. ``common.security.authorizationEnabled=true`` for a server that wants a token;
        ``token``: the one its start-up check connects with then (``root:Milvus`` until changed)."""
        super().__init__(data_dir, log_dir)
        self.bin_cache = bin_cache
        self.extra_config = tuple(extra_config)
        self.token = token

    def command(self) -> tuple[list[str], dict[str, str]]:
        executable = _venv_command("milvus-server", "it comes with the PyPI package milvus (pip install -e .[dev])")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.bin_cache is not None and not (self.data_dir / "bin").exists():
            (self.data_dir / "bin").symlink_to(self.bin_cache, target_is_directory=True)
        ports = _free_ports(len(self._PORT_OPTIONS) + 2)
        etcd_client, etcd_peer = ports[-2:]
        etcd_config = self.data_dir / "embed-etcd.yaml"
        etcd_config.write_text(
            "name: regionmir-test\n"
            f"listen-client-urls: http://127.0.0.1:{etcd_client}\n"
            f"advertise-client-urls: http://127.0.0.1:{etcd_client}\n"
            f"listen-peer-urls: http://127.0.0.1:{etcd_peer}\n"
            f"initial-advertise-peer-urls: http://127.0.0.1:{etcd_peer}\n"
            f"initial-cluster: regionmir-test=http://127.0.0.1:{etcd_peer}\n"
        )
        command = [executable, "--data", str(self.data_dir), "--etcd-port", str(etcd_client)]
        for option, port in zip(self._PORT_OPTIONS, ports):
            command += [f"--{option}", str(port)]
        for setting in (*(f"{component}.ip=127.0.0.1" for component in self._COMPONENTS), *self.extra_config):
            command += ["--extra-config", setting]
        self.uri = f"http://127.0.0.1:{ports[0]}"
        return command, dict(os.environ, ETCD_CONFIG_PATH=str(etcd_config), PYTHONUNBUFFERED="1")

    def after_stop(self, pids: list[int]) -> None:
        # Milvus 2.3 writes /tmp/milvus/server_id_<pid> whatever MILVUS_RUN_DIR says, and only
        # removes it on a clean exit.
        for pid in pids:
            Path(f"/tmp/milvus/server_id_{pid}").unlink(missing_ok=True)
