"""The service's settings (``serving.config``) without Ray: precedence of the sources, typed values,
mistakes named by the file, variable or flag they came from, the round trip to the replicas."""

from __future__ import annotations

import json
import os
from unittest import mock

import pytest

from serving.config import ConfigError, EncoderSettings, ServeSettings


def test_precedence_defaults_file_args_environment_flags(tmp_path):
    (tmp_path / "c.yaml").write_text("limits:\n  max_k: 5\n  default_k: 3\nhttp:\n  port: 9000\n")
    env = {"REGIONMIR_SERVE_CONFIG": str(tmp_path / "c.yaml"), "REGIONMIR_SERVE__LIMITS__DEFAULT_K": "4"}
    settings = ServeSettings.load(env=env, data={"limits": {"max_k": 6}}, overrides={"http.port": 9001})
    assert (settings.limits.max_k, settings.limits.default_k, settings.http.port) == (6, 4, 9001)
    assert settings.limits.films_in_memory == 1 and settings.encoder.max_replicas == 2  # defaults elsewhere
    # A flag left unset (None) does not override anything.
    assert ServeSettings.load(env=env, overrides={"http.port": None}).http.port == 9000
    # The API key: the file, then REGIONMIR_API_KEY, both over REGIONMIR_SERVE__AUTH__API_KEY.
    (tmp_path / "key").write_text(" from-file \n")
    env = {"REGIONMIR_SERVE__AUTH__API_KEY": "a", "REGIONMIR_API_KEY_FILE": str(tmp_path / "key")}
    assert ServeSettings.load(env=env).auth.api_key == "from-file"
    assert ServeSettings.load(env={**env, "REGIONMIR_API_KEY": "b"}).auth.api_key == "b"


def test_defaults_and_replicas_read_no_environment(monkeypatch):
    monkeypatch.setenv("REGIONMIR_SERVE__LIMITS__MAX_K", "7")
    monkeypatch.setenv("REGIONMIR_API_KEY", "k")
    assert ServeSettings().limits.max_k == 100 and ServeSettings().auth.api_key is None
    assert ServeSettings.from_dict({}).limits.max_k == 100
    assert ServeSettings.load().limits.max_k == 7  # only load() reads it


def test_to_dict_round_trip_is_json_and_exact():
    settings = ServeSettings.from_dict(
        {"model": "m", "milvus": "x.db", "auth": {"api_key": "s3cr3t"}, "encoder": {"gpus_per_replica": 0.25}}
    )
    data = json.loads(json.dumps(settings.to_dict()))
    again = ServeSettings.from_dict(data, "deployment settings")
    assert again == settings and again.to_dict() == data
    assert again.encoder.gpus_per_replica == 0.25 and again.auth.api_key == "s3cr3t"
    assert "s3cr3t" not in json.dumps(settings.redacted()) and settings.auth.api_key == "s3cr3t"
    assert ServeSettings().redacted()["auth"]["api_key"] is None  # nothing to hide: nothing shown


def test_a_wrong_type_in_a_variable_is_refused_with_the_variable_named():
    with pytest.raises(ConfigError, match=r"REGIONMIR_SERVE__LIMITS__MAX_K: limits.max_k: expected an integer"):
        ServeSettings.load(env={"REGIONMIR_SERVE__LIMITS__MAX_K": "many"})
    with pytest.raises(ConfigError, match=r"REGIONMIR_SERVE__ENCODER__NUM_CPUS: .*expected a number, got True"):
        ServeSettings.load(env={"REGIONMIR_SERVE__ENCODER__NUM_CPUS": "true"})
    with pytest.raises(ConfigError, match=r"REGIONMIR_SERVE__LIMITS: limits must be a mapping"):
        ServeSettings.load(env={"REGIONMIR_SERVE__LIMITS": "3"})
    with pytest.raises(
        ConfigError, match=r"REGIONMIR_SERVE__ENCODER__MAX_REPLICA: unknown setting 'encoder.max_replica'"
    ):
        ServeSettings.load(env={"REGIONMIR_SERVE__ENCODER__MAX_REPLICA": "3"})


def test_variables_are_yaml_scalars_and_text_stays_as_written():
    env = {
        "REGIONMIR_SERVE__RAY__NUM_CPUS": "4",
        "REGIONMIR_SERVE__LIMITS__MAX_UPLOAD_MB": "1.5",
        "REGIONMIR_SERVE__RAY__METRICS_EXPORT_PORT": "null",
        "REGIONMIR_SERVE__ENCODER__GPUS_PER_REPLICA": "auto",
        "REGIONMIR_SERVE__AUTH__API_KEY": "0123",  # YAML would read an octal 83
        "REGIONMIR_SERVE__COLLECTION": "2024-01-01",  # ... and a date
    }
    settings = ServeSettings.load(env=env)
    assert settings.ray.num_cpus == 4 and settings.limits.max_upload_mb == 1.5
    assert settings.ray.metrics_export_port is None and settings.encoder.gpus_per_replica == "auto"
    assert settings.auth.api_key == "0123" and settings.collection == "2024-01-01"


def test_values_are_typed_and_mistakes_name_their_source(tmp_path):
    # An integer: 8 or 8.0, never 8.5, "8" or true; a number: never a string or true; numbers given as text are text.
    assert ServeSettings.from_dict({"limits": {"max_k": 20.0}}).limits.max_k == 20
    settings = ServeSettings.from_dict({"encoder": {"num_cpus": 1, "gpus_per_replica": 1}, "auth": {"api_key": 1234}})
    assert settings.encoder.num_cpus == 1.0 and settings.encoder.gpus_per_replica == 1.0
    assert settings.auth.api_key == "1234"
    for bad in (8.5, "8", True, None):
        with pytest.raises(ConfigError, match=r"^f.yaml: limits.max_k: expected an integer"):
            ServeSettings.from_dict({"limits": {"max_k": bad}}, "f.yaml")
    with pytest.raises(ConfigError, match=r"encoder.gpus_per_replica: expected a number or 'auto', got 'two'"):
        ServeSettings.from_dict({"encoder": {"gpus_per_replica": "two"}})
    with pytest.raises(ConfigError, match=r"^args: unknown setting 'nope' \(known here: app_name, atlas, "):
        ServeSettings.load(data={"nope": 1}, env={}, data_source="args")
    with pytest.raises(ConfigError, match=r"^--http.port: http.port: expected an integer, got 'x'"):
        ServeSettings.load(env={}, overrides={"http.port": "x"})
    (tmp_path / "list.yaml").write_text("- 1\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        ServeSettings.load(str(tmp_path / "list.yaml"), env={})
    with pytest.raises(ConfigError, match=r"missing.yaml: cannot read"):
        ServeSettings.load(str(tmp_path / "missing.yaml"), env={})
    with pytest.raises(ConfigError, match=r"REGIONMIR_API_KEY_FILE=.*: cannot read"):
        ServeSettings.load(env={"REGIONMIR_API_KEY_FILE": str(tmp_path / "no-key")})
    # Assigning after loading is checked too.
    with pytest.raises(ValueError):
        ServeSettings().http.port = "x"  # type: ignore[assignment]


def test_sections_keep_their_own_defaults():
    assert EncoderSettings().max_replicas == 2 and EncoderSettings().max_ongoing_requests == 32
    assert ServeSettings().search.max_ongoing_requests == 16 and ServeSettings().ingress.max_queued_requests == 64
    assert ServeSettings().encoder.serve_scaling() == {
        "autoscaling_config": {
            "min_replicas": 1,
            "max_replicas": 2,
            "target_ongoing_requests": 2.0,
            "upscale_delay_s": 3.0,
            "downscale_delay_s": 60.0,
            "look_back_period_s": 30.0,
        }
    }


def test_http_proxy_setting_switches_the_local_ray_environment():
    import ray

    from serving.deployments import GRPC_MAX_MESSAGE_BYTES, HAPROXY_PORTS, HAPROXY_SWITCHES, choose_http_proxy

    if ray.is_initialized():
        pytest.skip("a Ray of this process is running: its environment is fixed")
    with mock.patch.dict(os.environ):  # whatever the switch writes is gone after the test
        for name in (*HAPROXY_SWITCHES, *HAPROXY_PORTS, "RAY_ADDRESS"):
            os.environ.pop(name, None)
        choose_http_proxy(ServeSettings.from_dict({"http": {"proxy": "serve"}}))
        assert [os.environ[name] for name in HAPROXY_SWITCHES] == ["0", "0"]
        choose_http_proxy(ServeSettings())
        assert [os.environ[name] for name in HAPROXY_SWITCHES] == ["1", "1"]
        assert len({int(os.environ[name]) for name in HAPROXY_PORTS}) == 2
        assert int(os.environ["RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH"]) >= GRPC_MAX_MESSAGE_BYTES
        with pytest.raises(ConfigError, match="proxy"):
            ServeSettings.from_dict({"http": {"proxy": "nginx"}})
        os.environ["RAY_ADDRESS"] = "127.0.0.1:1"  # a cluster to join: its nodes decide, nothing set here
        os.environ[HAPROXY_SWITCHES[0]] = "untouched"
        choose_http_proxy(ServeSettings.from_dict({"http": {"proxy": "serve"}}))
        assert os.environ[HAPROXY_SWITCHES[0]] == "untouched"
    assert os.environ.get(HAPROXY_SWITCHES[0]) != "untouched"


def test_http_proxy_haproxy_falls_back_to_serves_proxy_without_a_binary(caplog):
    import ray

    from serving import deployments

    if ray.is_initialized():
        pytest.skip("a Ray of this process is running: its environment is fixed")
    with mock.patch.dict(os.environ), mock.patch.object(deployments, "haproxy_available", return_value=False):
        os.environ.pop("RAY_ADDRESS", None)
        deployments.choose_http_proxy(ServeSettings())
        assert [os.environ[name] for name in deployments.HAPROXY_SWITCHES] == ["0", "0"]
    assert "no HAProxy binary" in caplog.text
