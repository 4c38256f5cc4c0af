"""Starting or joining Ray for a command: one place for the settings our machines need."""

from __future__ import annotations

import os


def start_ray(address: str | None = None, num_cpus: int | None = None, object_store_mb: int = 512,
              quiet: bool = True) -> None:
    """Join ``address`` (or ``RAY_ADDRESS``) when given, else start a local Ray.

    Local Ray declares at least 8 logical CPUs even on a 2-core laptop: Ray Train workers each hold
    one, and Ray Data needs free slots to stream data to them — its Parquet listing task itself
    launches footer-reading tasks, so with too few slots the pipeline deadlocks (seen with 4
    logical CPUs and 2 workers). Logical CPUs only bound concurrency; the OS shares the cores.
    """
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # local clusters; real ones configure auth
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        # the workers' progress lines ("[train] ...", resumptions) belong in the job's output
        ray.init(address=address, log_to_driver=True, logging_level="WARNING" if quiet else "INFO")
        if quiet:
            quiet_ray_data_console()
        return
    cores = os.cpu_count() or 2
    ray.init(num_cpus=num_cpus or max(8, 2 * cores), include_dashboard=False,
             object_store_memory=object_store_mb * 1024 * 1024, log_to_driver=True,
             logging_level="WARNING" if quiet else "INFO")
    if quiet:
        quiet_ray_data_console()


def quiet_ray_data_console() -> None:
    """Ray Data's INFO lines (execution plans, a progress block every few seconds when stdout is
    not a terminal) off the console: warnings still show, and Ray's session log files
    (``ray-data.log``) keep everything. Our commands print their own progress lines."""
    import logging
    import sys

    import ray.data  # configures the ray.data loggers on import

    for handler in logging.getLogger(ray.data.__name__).handlers:
        if isinstance(handler, logging.StreamHandler) and handler.stream in (sys.stderr, sys.stdout):
            handler.setLevel(logging.WARNING)
