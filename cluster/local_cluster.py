"""A multi-node Ray cluster on one machine, for development and tests.

Every node is started by its own ``ray start`` in a new process session — its raylet, object
store, agents and workers all belong to that session — on 127.0.0.1 with its own ports: the head (GCS, optionally the dashboard and job
server) and any number of worker nodes. Ray schedules across them exactly as across machines —
placement groups spread over nodes, a node that dies takes its workers and objects with it — so a
job that survives here losing a node survives a real one. Killing a node (:meth:`LocalRayCluster.kill`)
sends SIGKILL to every process of its session: no graceful drain, like a VM that disappears.
(No ``--block``: a blocking ``ray start`` polls its children and costs a core's worth of sys time
across three nodes on a 2-core laptop.)

Command line (state kept in ``--state``, default ``.ray-local-cluster/``)::

    python -m cluster.local_cluster up --workers 2 --worker-cpus 4     # prints RAY_ADDRESS
    python -m cluster.local_cluster status
    python -m cluster.local_cluster kill worker-1
    python -m cluster.local_cluster down
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

#: Ports every node opens; each node gets its own (several nodes share 127.0.0.1).
NODE_PORTS = (
    "node-manager-port",
    "object-manager-port",
    "dashboard-agent-listen-port",
    "dashboard-agent-grpc-port",
    "metrics-export-port",
    "runtime-env-agent-port",
)
#: Worker processes of one node listen on ports in a block of this size, taken from
#: :data:`WORKER_PORT_RANGE`: above the worker ports of a Ray started in-process (10002–19999) and
#: below :data:`FREE_PORT_RANGE`, where the nodes' own ports are drawn (a metrics port drawn inside
#: a node's worker block makes ``ray start`` refuse to start).
WORKER_PORT_BLOCK = 200
WORKER_PORT_RANGE = (20000, 22000)  # ten nodes at a time


class ClusterError(RuntimeError):
    """The local cluster could not be started, reached or stopped; the message says which node and why."""


@dataclass
class NodeProcess:
    """One node: the session its ``ray start`` opened (``session`` = that process's pid) and its ports."""

    name: str
    head: bool
    cpus: int
    gpus: int
    session: int
    ports: dict[str, int]
    log: str
    resources: dict[str, float] = field(default_factory=dict)

    @property
    def node_manager_port(self) -> int:
        return self.ports["node-manager-port"]

    def processes(self) -> list[int]:
        """Live processes of this node (every process in its session; Ray gives workers their own
        process groups, but not their own sessions)."""
        return _session_members(self.session)

    def alive(self) -> bool:
        return bool(self.processes())


def _session_members(session: int) -> list[int]:
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[3]) == session:  # state, ppid, pgrp, session
            members.append(int(entry))
    return members


#: Where :func:`free_ports` looks: above Ray's worker ports (10002–19999, and the local clusters'
#: node blocks in :data:`WORKER_PORT_RANGE`) and below Linux's
#: ephemeral range (32768–60999), where every ``bind(port 0)`` and outgoing connection lands — a
#: port taken from ``bind(0)`` can go to the next process that binds port 0 (Ray starts dozens)
#: before its own user binds it; one picked here stays free unless someone asks for it by number.
FREE_PORT_RANGE = (22000, 32768)


def free_ports(count: int) -> list[int]:
    """``count`` distinct ports free on 127.0.0.1 right now (checked, not reserved), drawn at random
    from :data:`FREE_PORT_RANGE`."""
    draw = random.SystemRandom()
    sockets: list[socket.socket] = []
    ports: list[int] = []
    try:
        for _ in range(2000):
            if len(ports) == count:
                break
            port = draw.randrange(*FREE_PORT_RANGE)
            if port in ports:
                continue
            sock = socket.socket()
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                sock.close()
                continue
            sockets.append(sock)
            ports.append(port)
    finally:
        for sock in sockets:
            sock.close()
    if len(ports) < count:
        raise OSError(f"no {count} free ports in {FREE_PORT_RANGE[0]}..{FREE_PORT_RANGE[1] - 1} on 127.0.0.1")
    return ports


def _free_port_block(size: int, start: int, stop: int) -> int:
    """The first port of ``size`` consecutive ports that nothing listens on (checked, not reserved)."""
    for first in range(start, stop - size, size):
        try:
            probe = [socket.socket() for _ in (0, 1)]
            try:
                probe[0].bind(("127.0.0.1", first))
                probe[1].bind(("127.0.0.1", first + size - 1))
            finally:
                for sock in probe:
                    sock.close()
            return first
        except OSError:
            continue
    raise ClusterError(f"no free block of {size} ports between {start} and {stop}")


class LocalRayCluster:
    """Head + worker nodes as separate processes on this machine.

    ``head_cpus=0`` mirrors the production layout (k8s/ and cluster/ray-cluster.yaml): the head
    runs the driver and Ray's control plane, workers run the training workers and data tasks.
    """

    def __init__(
        self,
        workdir: str | os.PathLike,
        *,
        head_cpus: int = 0,
        object_store_mb: int = 200,
        dashboard: bool = False,
        python: str = sys.executable,
        env: dict[str, str] | None = None,
    ):
        self.workdir = Path(workdir)
        self.head_cpus = head_cpus
        self.object_store_mb = object_store_mb
        self.dashboard = dashboard
        self.python = python
        self.env = dict(env if env is not None else os.environ)
        self.env.setdefault("RAY_AUTH_MODE", "disabled")
        self.env.pop("RAY_ADDRESS", None)
        # Jobs submitted to the cluster run their entrypoint (`regionmir ...`) from this Python's bin.
        bin_dir = os.path.dirname(self.python)
        if bin_dir not in self.env.get("PATH", "").split(os.pathsep):
            self.env["PATH"] = bin_dir + os.pathsep + self.env.get("PATH", "")
        self.nodes: dict[str, NodeProcess] = {}
        self.address: str | None = None
        self.dashboard_url: str | None = None
        self.temp_dir: str | None = None
        self.start_timeout = 240.0
        self._next_worker_port = 0

    # ------------------------------------------------------------------ lifecycle
    def start_head(self) -> str:
        if self.address:
            raise ClusterError(f"the head is already running at {self.address}")
        self.workdir.mkdir(parents=True, exist_ok=True)
        # Ray's unix sockets live under the temp dir and must stay short (107 bytes).
        self.temp_dir = tempfile.mkdtemp(prefix="rmc-")
        gcs_port, client_port, dashboard_port = free_ports(3)
        extra = [
            "--head",
            f"--port={gcs_port}",
            f"--ray-client-server-port={client_port}",
            f"--temp-dir={self.temp_dir}",
            f"--include-dashboard={'true' if self.dashboard else 'false'}",
        ]
        if self.dashboard:
            extra += ["--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard_port}"]
            self.dashboard_url = f"http://127.0.0.1:{dashboard_port}"
        self.address = f"127.0.0.1:{gcs_port}"
        self._start_node("head", self.head_cpus, 0, {}, extra, head=True)
        return self.address

    def add_worker(self, name: str, cpus: int, gpus: int = 0, resources: dict[str, float] | None = None) -> NodeProcess:
        if not self.address:
            raise ClusterError("start the head before adding worker nodes")
        if name in self.nodes:
            raise ClusterError(f"a node named {name!r} already exists")
        # Every node here writes into the head's session folder, which the head's log monitor already
        # streams to drivers: a monitor per node would send each line once per node.
        return self._start_node(
            name,
            cpus,
            gpus,
            dict(resources or {}),
            [f"--address={self.address}", "--include-log-monitor=false"],
            head=False,
        )

    def _start_node(
        self, name: str, cpus: int, gpus: int, resources: dict[str, float], extra: list[str], head: bool
    ) -> NodeProcess:
        ports = dict(zip(NODE_PORTS, free_ports(len(NODE_PORTS))))
        base, stop = WORKER_PORT_RANGE
        first = _free_port_block(WORKER_PORT_BLOCK, start=base + self._next_worker_port, stop=stop)
        self._next_worker_port = first + WORKER_PORT_BLOCK - base
        command = [
            self.python,
            "-m",
            "ray.scripts.scripts",
            "start",
            "--node-ip-address=127.0.0.1",
            f"--num-cpus={cpus}",
            f"--num-gpus={gpus}",
            f"--object-store-memory={self.object_store_mb << 20}",
            f"--min-worker-port={first}",
            f"--max-worker-port={first + WORKER_PORT_BLOCK - 1}",
            "--disable-usage-stats",
            *[f"--{key}={value}" for key, value in ports.items()],
            *extra,
        ]
        if resources:
            command.append(f"--resources={json.dumps(resources)}")
        log = self.workdir / f"{name}.log"
        with open(log, "ab") as handle:
            process = subprocess.Popen(
                command, stdout=handle, stderr=subprocess.STDOUT, env=self.env, start_new_session=True
            )
        node = NodeProcess(
            name=name,
            head=head,
            cpus=cpus,
            gpus=gpus,
            session=process.pid,
            ports=ports,
            log=str(log),
            resources=resources,
        )
        self.nodes[name] = node
        self._save()
        # `ray start` returns once its node has registered with the head (or failed to): one node
        # at a time, since nodes sharing a session folder pick their socket names on start-up.
        try:
            code = process.wait(timeout=self.start_timeout)
        except subprocess.TimeoutExpired:
            self.kill(name)
            raise ClusterError(
                f"node {name} did not start in {self.start_timeout:.0f} s; see {log}:\n{_tail(str(log))}"
            ) from None
        if code != 0:
            self.kill(name)
            raise ClusterError(f"node {name} failed to start (ray start exited {code}); see {log}:\n{_tail(str(log))}")
        return node

    def ray_nodes(self) -> list[dict[str, Any]]:
        """The head's view of the nodes (``ray.nodes()``), read by a short-lived driver process."""
        if not self.address:
            raise ClusterError("the cluster is not started")
        script = (
            f"import json, ray; ray.init(address={self.address!r}, logging_level='ERROR', log_to_driver=False); "
            "print('NODES' + json.dumps(ray.nodes()))"
        )
        result = subprocess.run([self.python, "-c", script], env=self.env, capture_output=True, text=True, timeout=120)
        for line in result.stdout.splitlines():
            if line.startswith("NODES"):
                return json.loads(line[5:])
        raise ClusterError(f"could not read the nodes from {self.address}: {result.stderr[-1500:]}")

    def node_names_by_id(self) -> dict[str, str]:
        """Ray node id -> our node name (matched on each node's node-manager port)."""
        by_port = {n.node_manager_port: n.name for n in self.nodes.values()}
        return {row["NodeID"]: by_port.get(row["NodeManagerPort"], "?") for row in self.ray_nodes()}

    def kill(self, name: str) -> None:
        """SIGKILL every process of node ``name`` at once: raylet, object store, agents, workers."""
        node = self.nodes.get(name)
        if node is None:
            raise ClusterError(f"no node named {name!r} (nodes: {', '.join(self.nodes)})")
        _signal_all(node.processes(), signal.SIGKILL)

    def stop(self, timeout: float = 30) -> None:
        """Stop the worker nodes, then the head: SIGTERM to every process, SIGKILL to what is left."""
        order = [n for n in self.nodes.values() if not n.head] + [n for n in self.nodes.values() if n.head]
        for node in order:
            _signal_all(node.processes(), signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for node in order:
            while node.alive() and time.monotonic() < deadline:
                time.sleep(0.2)
            _signal_all(node.processes(), signal.SIGKILL)
        self.address = None
        state = self.workdir / "cluster.json"
        if state.exists():
            state.unlink()

    def __enter__(self) -> LocalRayCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ state (for the command line)
    def _save(self) -> None:
        state = {
            "address": self.address,
            "dashboard_url": self.dashboard_url,
            "temp_dir": self.temp_dir,
            "next_worker_port": self._next_worker_port,
            "nodes": [asdict(n) for n in self.nodes.values()],
        }
        (self.workdir / "cluster.json").write_text(json.dumps(state, indent=1))

    @classmethod
    def load(cls, workdir: str | os.PathLike) -> LocalRayCluster:
        path = Path(workdir) / "cluster.json"
        if not path.exists():
            raise ClusterError(f"no local cluster recorded in {path} (start one with `up`)")
        state = json.loads(path.read_text())
        cluster = cls(workdir)
        cluster.address, cluster.dashboard_url = state["address"], state.get("dashboard_url")
        cluster.temp_dir = state.get("temp_dir")
        cluster._next_worker_port = state.get("next_worker_port", 0)
        cluster.nodes = {n["name"]: NodeProcess(**n) for n in state["nodes"]}
        return cluster


def _signal_all(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def _tail(path: str, chars: int = 2000) -> str:
    try:
        return Path(path).read_text(errors="replace")[-chars:]
    except OSError:
        return "(no log)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cluster.local_cluster", description=__doc__.split("\n\n")[0])
    parser.add_argument("--state", default=".ray-local-cluster", help="folder for logs and the cluster's state")
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser("up", help="start a head and worker nodes, print the address")
    up.add_argument("--workers", type=int, default=2, help="worker nodes (default 2)")
    up.add_argument("--worker-cpus", type=int, default=4, help="logical CPUs per worker node (default 4)")
    up.add_argument("--head-cpus", type=int, default=0, help="logical CPUs of the head (default 0, as in production)")
    up.add_argument("--object-store-mb", type=int, default=200)
    up.add_argument(
        "--dashboard",
        action="store_true",
        help="start the dashboard and job server on the head (needed by `ray job submit`)",
    )
    commands.add_parser("status", help="the nodes and whether the head sees them alive")
    kill = commands.add_parser("kill", help="SIGKILL one node (as if its machine vanished)")
    kill.add_argument("name")
    add = commands.add_parser("add", help="start one more worker node")
    add.add_argument("name")
    add.add_argument("--cpus", type=int, default=4)
    commands.add_parser("down", help="stop every node")
    args = parser.parse_args(argv)
    try:
        if args.command == "up":
            cluster = LocalRayCluster(
                args.state, head_cpus=args.head_cpus, object_store_mb=args.object_store_mb, dashboard=args.dashboard
            )
            if (Path(args.state) / "cluster.json").exists():
                raise ClusterError(f"a cluster is already recorded in {args.state}/cluster.json: `down` it first")
            cluster.start_head()
            for index in range(1, args.workers + 1):
                cluster.add_worker(f"worker-{index}", args.worker_cpus)
            print(f"local Ray cluster up: head + {args.workers} worker node(s); logs in {args.state}/")
            print(f"export RAY_ADDRESS={cluster.address}")
            if cluster.dashboard_url:
                print(
                    f"dashboard and job server: {cluster.dashboard_url}  "
                    f"(ray job submit --address {cluster.dashboard_url} ...)"
                )
            return 0
        cluster = LocalRayCluster.load(args.state)
        if args.command == "status":
            names = {n.node_manager_port: n.name for n in cluster.nodes.values()}
            for row in cluster.ray_nodes():
                name = names.get(row["NodeManagerPort"], "?")
                cpus = row.get("Resources", {}).get("CPU", 0)
                print(f"{name:12s} {'alive' if row['Alive'] else 'dead ':5s} {row['NodeID'][:12]} CPU {cpus:g}")
        elif args.command == "kill":
            cluster.kill(args.name)
            print(f"killed {args.name}")
        elif args.command == "add":
            cluster.add_worker(args.name, args.cpus)
            print(f"added {args.name}")
        elif args.command == "down":
            cluster.stop()
            print("local Ray cluster stopped")
        return 0
    except ClusterError as exc:
        print(f"local cluster: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
