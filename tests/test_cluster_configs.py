"""The Ray cluster-launcher configs in ``cluster/`` are what ``ray up`` accepts: each is filled out
with Ray's own defaults for its provider and validated against Ray's cluster schema
(``ray/autoscaler/ray-schema.json``, the check ``ray up`` runs), offline. Their images and the
job runtime env agree with the project's pins."""

from __future__ import annotations

import copy
import re
import tomllib
from pathlib import Path

import jsonschema
import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "cluster").glob("*-gpu.yaml"))


def _ray_pin() -> str:
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return next(re.search(r"==([\w.]+)", d).group(1) for d in dependencies if d.startswith("ray["))


def _load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def _ray_up_check(config: dict) -> dict:
    """What ``ray up`` does to a config before touching a cloud: fill defaults, validate."""
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def test_there_is_a_cloud_and_an_on_premises_config():
    assert {p.name for p in CONFIGS} == {"aws-gpu.yaml", "onprem-gpu.yaml"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_ray_accepts_the_config(path):
    prepared = _ray_up_check(_load(path))
    assert prepared["head_node_type"] in prepared["available_node_types"]


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_the_image_is_the_gpu_image_of_the_pinned_ray(path):
    docker = _load(path)["docker"]
    assert docker["image"].endswith(f":{_ray_pin()}-gpu"), docker["image"]
    assert "--gpus all" in docker["worker_run_options"]


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_the_head_trains_nothing_and_every_node_exports_metrics(path):
    config = _load(path)
    head = " ".join(config["head_start_ray_commands"])
    workers = " ".join(config["worker_start_ray_commands"])
    assert "--head" in head and "--num-cpus=0" in head
    # the dashboard (and its job server) answer on the head's loopback only: reach them through
    # `ray dashboard CONFIG`'s SSH forward, never from the network
    assert "--dashboard-host=127.0.0.1" in head and "0.0.0.0" not in head
    port = re.search(r"--port=(\d+)", head).group(1)
    assert f"--address=$RAY_HEAD_IP:{port}" in workers
    for commands in (head, workers):
        assert "--metrics-export-port=8080" in commands  # the port k8s/monitoring and Prometheus scrape


def test_the_aws_head_advertises_no_cpus_to_the_autoscaler():
    config = _load(ROOT / "cluster" / "aws-gpu.yaml")
    head = config["available_node_types"][config["head_node_type"]]
    assert head["resources"] == {"CPU": 0}
    workers = [t for name, t in config["available_node_types"].items() if name != config["head_node_type"]]
    assert workers and all(t["max_workers"] <= config["max_workers"] for t in workers)


def test_a_misspelled_field_is_refused_by_rays_schema():
    config = _load(ROOT / "cluster" / "aws-gpu.yaml")
    config["available_node_types"]["gpu_worker"]["max_worker"] = config["available_node_types"]["gpu_worker"].pop(
        "max_workers"
    )
    with pytest.raises(jsonschema.ValidationError, match="max_worker"):
        _ray_up_check(config)
    config = _load(ROOT / "cluster" / "onprem-gpu.yaml")
    config["head_start_ray_command"] = config.pop("head_start_ray_commands")
    with pytest.raises(jsonschema.ValidationError, match="head_start_ray_command"):
        _ray_up_check(config)


def test_the_job_runtime_env_carries_settings_and_no_credentials():
    from ray.runtime_env import RuntimeEnv

    runtime_env = _load(ROOT / "cluster" / "runtime-env.yaml")
    RuntimeEnv(**runtime_env)  # Ray's own validation of a runtime env
    variables = runtime_env["env_vars"]
    assert variables["RAY_TRAIN_V2_ENABLED"] == "1"
    assert not [name for name in variables if re.search(r"KEY|SECRET|TOKEN|PASSWORD", name)]
