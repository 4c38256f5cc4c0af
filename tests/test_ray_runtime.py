"""`start_ray` keeps Ray's chatter off the console and in Ray's session log files, on a real local
Ray: Ray Data's INFO lines (execution plans, progress blocks), and of what workers print everything
but our own `[train] …` progress lines (shown once, without Ray's pid prefix)."""

from __future__ import annotations

import glob
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def test_ray_chatter_goes_to_its_log_files_and_our_worker_lines_to_the_console(capfd):
    import ray

    from cluster.ray_runtime import start_ray

    if ray.is_initialized():
        ray.shutdown()
    start_ray()
    try:
        batches = ray.data.range(200, override_num_blocks=4).map_batches(lambda b: b).iter_batches(batch_size=50)
        assert sum(1 for _ in batches) == 4
        session = ray._private.worker._global_node.get_session_dir_path()
        printed = capfd.readouterr()
        console = printed.out + printed.err
        assert "streaming_executor" not in console and "logging_progress" not in console
        logged = "".join(Path(path).read_text() for path in glob.glob(f"{session}/logs/ray-data/ray-data.log"))
        assert "streaming_executor" in logged  # kept where Ray keeps its logs

        @ray.remote
        def worker_prints() -> None:
            print("[train] epoch 1/2: loss 0.5", flush=True)
            print("(TrainController) Attempting to start training worker group", flush=True)
            print("[FailurePolicy] RETRY", flush=True)
            print("[data] warning: skipping film p10/x.png: unreadable", file=sys.stderr, flush=True)

        ray.get(worker_prints.remote())
        deadline = time.monotonic() + 30
        shown, errors = "", ""
        while "[train] epoch 1/2" not in shown and time.monotonic() < deadline:
            time.sleep(0.5)
            printed = capfd.readouterr()
            shown, errors = shown + printed.out, errors + printed.err
        time.sleep(2)  # anything else the worker printed would have arrived by now
        printed = capfd.readouterr()
        shown, errors = shown + printed.out, errors + printed.err
        assert "[data] warning: skipping film p10/x.png" in errors  # a worker's stderr stays stderr
        assert "[train] epoch 1/2: loss 0.5\n" in shown and "pid=" not in shown  # ours, once, unprefixed
        assert shown.count("[train] epoch 1/2") == 1
        assert "Attempting to start" not in shown and "FailurePolicy" not in shown
    finally:
        ray.shutdown()


_JOINING_DRIVER = """
import json, os
import ray
from cluster.ray_runtime import start_ray
start_ray(os.environ.pop("JOIN"))
seen = ray.get(ray.remote(num_cpus=1)(lambda: {k: os.environ.get(k) for k in ("REGIONMIR_DICOMWEB_TOKEN", "OTHER")}).remote())
print(json.dumps(seen))
"""


def test_a_job_joining_a_cluster_gives_its_tasks_the_pacs_credentials(tmp_path):
    """A cluster started without them (another machine, another environment): the index job's Ray
    Data tasks read PACS films there, so the driver sends the credentials as the job's env_vars —
    those only, not the rest of its environment."""
    import json
    import os
    import subprocess

    from cluster.local_cluster import LocalRayCluster

    clean = {k: v for k, v in os.environ.items() if not k.startswith("REGIONMIR_DICOMWEB_")}
    root = Path(__file__).resolve().parent.parent
    with LocalRayCluster(tmp_path / "cluster", head_cpus=1, env=clean) as cluster:
        address = cluster.start_head()
        driver = {**clean, "JOIN": address, "REGIONMIR_DICOMWEB_TOKEN": "token-for-the-pacs", "OTHER": "driver-only"}
        joined = subprocess.run(
            [sys.executable, "-c", _JOINING_DRIVER], env=driver, cwd=root, capture_output=True, text=True, timeout=300
        )
        # a submitted job (ray job submit, a RayJob) given the token in its own runtime_env: Ray
        # refuses a ray.init runtime_env naming it again, so the driver leaves it to the job's
        submitted = {
            **driver,
            "RAY_JOB_CONFIG_JSON_ENV_VAR": json.dumps(
                {"runtime_env": {"env_vars": {"REGIONMIR_DICOMWEB_TOKEN": "token-for-the-pacs"}}}
            ),
        }
        as_job = subprocess.run(
            [sys.executable, "-c", _JOINING_DRIVER],
            env=submitted,
            cwd=root,
            capture_output=True,
            text=True,
            timeout=300,
        )
    for done in (joined, as_job):
        assert done.returncode == 0, done.stderr[-3000:]
        seen = json.loads(done.stdout.strip().splitlines()[-1])
        assert seen == {"REGIONMIR_DICOMWEB_TOKEN": "token-for-the-pacs", "OTHER": None}


def test_a_local_clusters_worker_ports_are_never_drawn_for_its_nodes_own_ports():
    """``ray start`` refuses a node whose metrics (or any) port falls inside its worker-port block:
    the blocks and the drawn ports come from disjoint ranges, both above an in-process Ray's
    default worker ports (10002–19999)."""
    from cluster.local_cluster import FREE_PORT_RANGE, WORKER_PORT_BLOCK, WORKER_PORT_RANGE, free_ports

    assert 19999 < WORKER_PORT_RANGE[0] < WORKER_PORT_RANGE[1] <= FREE_PORT_RANGE[0]
    assert WORKER_PORT_RANGE[1] - WORKER_PORT_RANGE[0] >= 3 * WORKER_PORT_BLOCK  # a head and two workers
    drawn = free_ports(300)
    assert all(FREE_PORT_RANGE[0] <= port < FREE_PORT_RANGE[1] for port in drawn)
