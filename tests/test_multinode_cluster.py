"""A real 3-node Ray cluster on this machine (head + 2 worker nodes, each its own ``ray start``;
the head has 0 CPUs, as in production). The query service deploys across it and answers; then
distributed pretraining spreads its workers over both worker nodes, one worker node is killed
mid-run (SIGKILL to every process of that node) and the job resumes from its last checkpoint on
the node that is left.

The cluster tests start a cluster and a Ray Train run (about 10 minutes on 2 cores): it is marked
``slow``, kept out of ``make test`` (20-minute budget) and run by ``make test-cluster``, which CI
runs after ``make test`` (``.ci/run``).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from cluster.local_cluster import ClusterError, LocalRayCluster, free_ports

NODE_LINE = re.compile(r"\[train\] worker (\d+)/(\d+) on node ([0-9a-f]{56})")


def test_a_node_name_that_does_not_exist_is_refused_by_name(tmp_path):
    cluster = LocalRayCluster(tmp_path)
    with pytest.raises(ClusterError, match="start the head"):
        cluster.add_worker("worker-1", cpus=2)
    with pytest.raises(ClusterError, match="no node named 'worker-9'"):
        cluster.kill("worker-9")
    with pytest.raises(ClusterError, match="no local cluster recorded"):
        LocalRayCluster.load(tmp_path / "nowhere")


@pytest.fixture(scope="module")
def three_nodes(tmp_path_factory) -> LocalRayCluster:
    cluster = LocalRayCluster(tmp_path_factory.mktemp("cluster"), head_cpus=0, dashboard=True)
    try:
        cluster.start_head()
        cluster.add_worker("worker-1", cpus=4)
        cluster.add_worker("worker-2", cpus=4)
        yield cluster
    finally:
        cluster.stop()


class _Output:
    """Collects a child process's output lines as they come (a reader thread)."""

    def __init__(self, process: subprocess.Popen):
        self.lines: list[str] = []
        self.started = time.monotonic()
        self._thread = threading.Thread(target=self._read, args=(process,), daemon=True)
        self._thread.start()

    def _read(self, process: subprocess.Popen) -> None:
        for line in process.stdout:
            self.lines.append(f"[+{time.monotonic() - self.started:6.1f} s] {line}")

    def text(self) -> str:
        return "".join(self.lines)

    def worker_nodes(self, start: int = 0) -> dict[int, str]:
        """world rank -> node id, from the workers' start lines after line ``start``."""
        return {int(m.group(1)): m.group(3) for line in self.lines[start:] if (m := NODE_LINE.search(line))}


def _env() -> dict[str, str]:
    env = dict(os.environ, RAY_AUTH_MODE="disabled")
    env.pop("RAY_ADDRESS", None)
    return env


def _actors_by_class(cluster: LocalRayCluster) -> dict[str, list[str]]:
    """Alive actors' class name -> the names of the nodes they run on (Ray's state API, via the head)."""
    from ray.util.state import list_actors

    names = cluster.node_names_by_id()
    placed: dict[str, list[str]] = {}
    for actor in list_actors(address=cluster.dashboard_url, filters=[("state", "=", "ALIVE")], limit=1000):
        placed.setdefault(actor.class_name, []).append(names.get(actor.node_id, actor.node_id))
    return placed


@pytest.mark.integration
@pytest.mark.slow
def test_the_query_service_deploys_across_the_worker_nodes_and_answers(three_nodes, tmp_path):
    import requests
    from random_model_index import build_random_model_index_subprocess

    cluster = three_nodes
    demo = build_random_model_index_subprocess(str(tmp_path / "demo"), images=6, size=160, seed=3)
    port = free_ports(1)[0]
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "regionmir.cli",
            "serve",
            "--address",
            cluster.address,
            "--model",
            demo["model"],
            "--milvus",
            demo["milvus"],
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--insecure-dev",
        ],
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output = _Output(process)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 900
        ready = "query service ready at"
        while time.monotonic() < deadline and process.poll() is None and ready not in output.text():
            time.sleep(1)
        assert "query service ready at" in output.text(), output.text()[-4000:]
        film = Path(demo["query_films"][0]).read_bytes()
        answer = requests.post(
            base + "/v1/search",
            files={"image": ("film.png", film, "image/png")},
            data={"anatomy": "cardiac silhouette", "k": "5"},
            timeout=120,
        )
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["query"]["box_source"] == "atlas" and len(body["results"]) == 5
        crop = requests.get(base + body["results"][0]["crop_url"], timeout=60)
        assert crop.status_code == 200 and crop.headers["content-type"] == "image/png"

        placed = _actors_by_class(cluster)
        replicas = {cls.rsplit(":", 1)[-1]: nodes for cls, nodes in placed.items() if cls.startswith("ServeReplica")}
        assert set(replicas) >= {"ingress", "search"}, placed  # the default topology: the ingress holds the encoder
        on = {node for nodes in replicas.values() for node in nodes}
        # replicas need CPUs, which only the worker nodes have; Serve's controller stays on the head
        assert on <= {"worker-1", "worker-2"}, replicas
        assert placed["ServeController"] == ["head"]
        print(f"[cluster] service replicas: {replicas}; proxies on {sorted(placed.get('ProxyActor', []))}")
    finally:
        process.send_signal(signal.SIGINT)  # `regionmir serve` shuts Serve down on Ctrl-C
        try:
            process.wait(timeout=120)
        except subprocess.TimeoutExpired:
            process.kill()
    assert process.returncode == 0, output.text()[-3000:]
    deadline = time.monotonic() + 60  # nothing left behind for the next job
    while "ServeController" in _actors_by_class(cluster) and time.monotonic() < deadline:
        time.sleep(2)
    assert "ServeController" not in _actors_by_class(cluster)


def _registered_checkpoints(snapshot: Path) -> int:
    try:
        return len(json.loads(snapshot.read_text()).get("checkpoint_results", []))
    except (OSError, ValueError):  # not written yet, or caught mid-write
        return 0


@pytest.mark.integration
@pytest.mark.slow
def test_pretrain_spreads_over_worker_nodes_and_survives_losing_one(three_nodes, tmp_path):
    cluster = three_nodes
    nodes = {row["NodeManagerPort"]: row for row in cluster.ray_nodes()}
    assert len(nodes) == 3 and all(row["Alive"] for row in nodes.values())
    names = cluster.node_names_by_id()
    assert sorted(names.values()) == ["head", "worker-1", "worker-2"]

    env = _env()
    data, out = tmp_path / "phantoms", tmp_path / "run"
    made = subprocess.run(
        [
            sys.executable,
            "-m",
            "regionmir.cli",
            "synth",
            "--out",
            str(data),
            "--images",
            "20",
            "--size",
            "160",
            "--quiet",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert made.returncode == 0, made.stderr[-2000:]

    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "regionmir.cli",
            "pretrain",
            "--data",
            str(data),
            "--out",
            str(out),
            "--workers",
            "2",
            "--epochs",
            "2",
            "--batch-size",
            "16",
            "--max-failures",
            "2",
            "--address",
            cluster.address,
            "--placement",
            "SPREAD",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output = _Output(process)
    snapshot = out / "ray" / "run" / "checkpoint_manager_snapshot.json"
    killed, first_group, lines_at_kill = None, {}, 0
    deadline = time.monotonic() + 1500
    try:
        while killed is None and time.monotonic() < deadline and process.poll() is None:
            first_group = output.worker_nodes()
            # Kill only once Ray Train has *registered* the first epoch's checkpoint: a checkpoint
            # still being written is not one a restart can resume from.
            if len(first_group) == 2 and _registered_checkpoints(snapshot):
                victim = names[first_group[1]]  # the node that holds rank 1
                lines_at_kill = len(output.lines)
                cluster.kill(victim)
                output.lines.append(f"[+{time.monotonic() - output.started:6.1f} s] test: killed {victim}\n")
                killed = victim
            time.sleep(0.5)
        process.wait(timeout=max(60.0, deadline - time.monotonic()))
    finally:
        if process.poll() is None:
            process.kill()
    log = output.text()
    (tmp_path / "pretrain.log").write_text(log)
    milestones = ("crop cache", "Started training worker group", "epoch", "resumed", "killed", "Traceback")
    print("".join(line for line in output.lines if any(word in line for word in milestones)))
    assert killed is not None, "the run ended before a worker node could be killed:\n" + log[-4000:]

    # the first worker group spread over both worker nodes, none on the head (0 CPUs, as in production)
    assert sorted(names[node] for node in first_group.values()) == ["worker-1", "worker-2"], first_group
    assert not cluster.nodes[killed].alive()

    assert process.returncode == 0, log[-6000:]
    assert "resumed from the checkpoint of epoch" in log
    # the restarted group runs on what is left: the other worker node
    survivors = {names.get(node, node) for node in output.worker_nodes(lines_at_kill).values()}
    assert survivors and killed not in survivors, survivors

    summary = json.loads((out / "summary.json").read_text())
    assert summary["phases"]["pretrain"]["final_metrics"]["epoch"] == 2
    # resumed, not restarted: every epoch was trained (and checkpointed) exactly once
    trained = sorted(
        json.loads(path.read_text())["training"]["epoch"]
        for path in (out / "ray" / "run").glob("checkpoint_*/contract.json")
    )
    assert trained == [1, 2]
    rows = {row["NodeManagerPort"]: row["Alive"] for row in cluster.ray_nodes()}
    assert rows[cluster.nodes[killed].node_manager_port] is False  # the head saw the node die
