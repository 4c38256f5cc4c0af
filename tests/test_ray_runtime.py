"""`start_ray` keeps Ray Data's INFO chatter (execution plans, progress blocks) off the console and
in Ray's session log files, on a real local Ray."""

from __future__ import annotations

import glob
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def test_ray_datas_info_lines_go_to_its_log_files_not_the_console(capfd):
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
    finally:
        ray.shutdown()
