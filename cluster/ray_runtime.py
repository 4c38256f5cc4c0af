"""Starting or joining Ray for a RegionMIR command: the one place for the settings our machines need.

Every command that runs on Ray — ``train``, ``index``, ``evaluate``, ``serve``, the demo — comes
through :func:`start_ray`. A local Ray is started with start-up waits long enough for a small, busy
machine (a 2-core laptop, a CI runner already running Milvus and a previous Ray shutting down):
Ray's defaults give its GCS 30 s to publish its port and the raylet a short window for its agents,
and each has been seen to run out there. A start-up that still times out is retried.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import time
from typing import Any

log = logging.getLogger(__name__)

#: Environment defaults for a local Ray on a small, busy machine (a user's own setting wins).
LOCAL_RAY_ENVIRONMENT = {
    "RAY_AUTH_MODE": "disabled",  # local clusters; real ones configure their own auth
    "RAY_TRAIN_V2_ENABLED": "1",
    # the GCS writes its port file only once fully up: 30 s by default, not enough under load
    "RAY_gcs_server_port_wait_time_s": "120",
    # the raylet gives up when the node's metrics agent is slow to come up; workers prestarted at
    # the same moment (one per logical CPU) make that likely. Tasks and actors start what they need.
    "RAY_enable_worker_prestart": "0",
    "RAY_prestart_worker_first_driver": "0",
    "RAY_raylet_start_wait_time_s": "120",
    "RAY_agent_register_timeout_ms": "300000",
}

#: Set to 1 by a command's ``--verbose`` (:func:`regionmir.console.configure_logging`); local Ray
#: workers inherit it, and the log format beside it.
VERBOSE_ENV = "REGIONMIR_VERBOSE"

#: What a job's tasks and actors need from the driver's environment on a cluster it joins (a local
#: Ray's workers inherit it): the PACS credentials its Ray Data tasks read films with
#: (:mod:`regionmir.dicomweb`). Sent as the job's ``runtime_env`` env_vars when set and not already
#: the submitted job's own (Ray keeps a job's runtime_env in its job table, which the dashboard shows).
#: The Milvus token is not among them: the index job hands it to its upserting actors alone
#: (:mod:`indexing.row_upserter`).
JOB_FORWARDED_ENV = ("REGIONMIR_DICOMWEB_TOKEN", "REGIONMIR_DICOMWEB_USER", "REGIONMIR_DICOMWEB_PASSWORD")

#: Start-up attempts for a local Ray whose start timed out.
START_ATTEMPTS = 3


def local_cpu_slots(cores: int | None = None) -> int:
    """Logical CPUs a local Ray declares: at least 8, even on a 2-core laptop.

    Ray Train workers each hold one, and Ray Data needs free slots to stream data to them — its
    Parquet listing task itself launches footer-reading tasks, so with too few slots the pipeline
    deadlocks (seen with 4 logical CPUs and 2 workers). Logical CPUs only bound concurrency; the
    OS shares the cores.
    """
    cores = cores or os.cpu_count() or 2
    return max(8, 2 * cores)


def start_ray(
    address: str | None = None,
    *,
    num_cpus: int | None = None,
    object_store_mb: int = 512,
    log_to_driver: bool = True,
    verbose: bool | None = None,
    metrics_export_port: int | None = None,
    attempts: int = START_ATTEMPTS,
) -> None:
    """Join ``address`` (or ``$RAY_ADDRESS``) when given, else start a local Ray.

    ``log_to_driver`` streams the workers' output (``[train] ...`` progress lines) to this
    process's console; ``verbose`` keeps Ray's own INFO lines there too (by default they go to
    Ray's session log files only; ``None``: the command's ``--verbose``, which
    :func:`regionmir.console.configure_logging` records in ``$REGIONMIR_VERBOSE``). Does nothing
    when Ray is already initialised in this process.
    """
    import ray

    if ray.is_initialized():
        return
    if verbose is None:
        verbose = os.environ.get(VERBOSE_ENV) == "1"
    for name, value in LOCAL_RAY_ENVIRONMENT.items():
        os.environ.setdefault(name, value)
    level = "INFO" if verbose else "WARNING"
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        forwarded = {
            name: os.environ[name]
            for name in JOB_FORWARDED_ENV
            if os.environ.get(name) and name not in submitted_job_env_vars()
        }
        ray.init(
            address=address,
            log_to_driver=log_to_driver,
            logging_level=level,
            runtime_env={"env_vars": forwarded} if forwarded else None,
        )
    else:
        kwargs: dict[str, Any] = {
            "num_cpus": num_cpus or local_cpu_slots(),
            "include_dashboard": False,
            "object_store_memory": object_store_mb * 1024 * 1024,
            "log_to_driver": log_to_driver,
            "logging_level": level,
        }
        if metrics_export_port:
            kwargs["_metrics_export_port"] = metrics_export_port
        _start_local(ray, kwargs, attempts)
    if not verbose:
        quiet_ray_data_console()
        if log_to_driver:
            forward_own_lines_only()


def submitted_job_env_vars() -> dict[str, str]:
    """The env_vars of the runtime_env this driver was submitted with (``ray job submit``, a
    KubeRay RayJob): Ray refuses a ``ray.init`` runtime_env that names one of them again, and the
    job's tasks have them already."""
    import json

    try:
        job = json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR") or "{}")
    except ValueError:
        return {}
    return dict(((job.get("runtime_env") or {}).get("env_vars")) or {})


def _start_local(ray: Any, kwargs: dict[str, Any], attempts: int) -> None:
    for attempt in range(1, attempts + 1):
        try:
            ray.init(**kwargs)
            return
        except Exception as exc:  # a node start-up that timed out on an overloaded machine: try again
            if attempt == attempts or "timed out" not in str(exc).lower():
                raise
            log.warning("local Ray did not start (%s); retrying (%d of %d)", exc, attempt + 1, attempts)
            ray.shutdown()
            time.sleep(5)


#: A line our own code printed in a Ray worker: ``[train] …``, ``[data] …`` (lower-case tag), or
#: the same as a JSON line (``--log-format json``).
OWN_LINE = re.compile(r'^(\[[a-z][a-z-]*\] |\{"time": "[^"]*", "level": )')


def forward_own_lines_only() -> bool:
    """Of what Ray's workers print, show only our own progress lines (``[train] epoch 2/8: …``),
    once each and without Ray's ``(RayTrainWorker pid=…)`` prefix; Ray's controllers, actors,
    raylets and C++ core workers keep talking into Ray's session log files. Returns False (Ray's
    own console forwarding left as it is) when this Ray has no such hook.
    """
    try:
        from ray._private import worker as ray_worker
    except ImportError:  # another Ray: its default forwarding stays
        return False
    original = getattr(ray_worker, "print_worker_logs", None)
    if original is None:
        return False
    if getattr(original, "_regionmir_own_lines_only", False):
        return True

    def own_lines_only(data: dict, print_file: object = None, ignore_prefix: bool = False) -> None:
        if not getattr(ray_worker, "_worker_logs_enabled", True):  # paused (a worker at a breakpoint)
            return
        for line in data.get("lines", ()):
            if OWN_LINE.match(line):
                print(line, file=print_file or sys.stdout, flush=True)  # a worker's stderr stays stderr

    own_lines_only._regionmir_own_lines_only = True  # type: ignore[attr-defined]
    # every path that prints worker output (the live handler, the lines flushed at shutdown) calls it
    ray_worker.print_worker_logs = own_lines_only
    return True


def stop_ray() -> None:
    """Shut this process's Ray down (a local one stops; a joined cluster keeps running)."""
    import ray

    if ray.is_initialized():
        ray.shutdown()


def quiet_ray_data_console() -> None:
    """Ray Data's INFO lines (execution plans, a progress block every few seconds when stdout is
    not a terminal) off the console: warnings still show, and Ray's session log files
    (``ray-data.log``) keep everything. Our commands print their own progress lines."""
    import ray.data  # configures the ray.data loggers on import

    for handler in logging.getLogger(ray.data.__name__).handlers:
        if isinstance(handler, logging.StreamHandler) and handler.stream in (sys.stderr, sys.stdout):
            handler.setLevel(logging.WARNING)
