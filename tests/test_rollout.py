"""Roll-outs without an empty minute: a running service keeps answering from its own model's
collection while ``regionmir index``-style indexing of a new model moves the alias, on a real
Milvus (milvus-lite) server and a real Ray Serve service.

Sequence (README, "Operating it safely"): index the new model (its own collection
``regions__<version>``; the alias moves), then redeploy the service with the new model; the old
service answers from ``regions__<old version>`` until it is replaced.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import requests
from local_process import ahead_of_other_work, free_port

from indexing.index_schema import model_collection_name
from indexing.region_index import RegionIndex
from serving.config import ServeSettings

integration = pytest.mark.integration
#: `make test-faults` (and `make test-slow`, CI): Ray Serve plus a Milvus server, minutes on 2 cores
pytestmark = pytest.mark.slow


@integration
def test_indexing_a_new_model_does_not_change_what_a_running_service_answers(milvus_lite_server, tmp_path):
    import ray
    from random_model_index import build_random_model_index_subprocess
    from ray import serve

    from serving.deployments import start_service

    old = build_random_model_index_subprocess(
        str(tmp_path / "old"), images=6, size=128, seed=21, milvus=milvus_lite_server.uri
    )
    settings = ServeSettings.from_dict(
        {
            "model": old["model"],
            "milvus": milvus_lite_server.uri,
            # Serve's own Python proxy: the front end that is not the default (the other tests use HAProxy)
            "http": {"host": "127.0.0.1", "port": free_port(), "proxy": "serve"},
            "encoder": {"min_replicas": 1, "max_replicas": 1},
            "search": {"min_replicas": 1, "max_replicas": 1},
            "ingress": {"min_replicas": 1, "max_replicas": 1},
            "ray": {"num_cpus": 6, "metrics_export_port": free_port()},
        }
    )
    film = Path(old["query_films"][0]).read_bytes()

    def query() -> dict:
        answer = requests.post(
            base + "/v1/search", files={"image": ("film.png", film)}, data={"box": "20,20,70,90", "k": "5"}, timeout=120
        )
        assert answer.status_code == 200, answer.text
        return answer.json()

    try:
        with ahead_of_other_work():
            base = start_service(settings, ready_timeout_s=420)
        before = query()
        assert len(before["results"]) == 5
        ready = requests.get(base + "/readyz", timeout=30).json()
        assert model_collection_name("regions", old["model_version"]) in str(ready)

        # a new model is indexed into the same Milvus: its own collection, and the alias moves to it
        new = build_random_model_index_subprocess(
            str(tmp_path / "new"), images=6, size=128, seed=22, milvus=milvus_lite_server.uri
        )
        assert new["model_version"] != old["model_version"]
        index = RegionIndex(milvus_lite_server.uri)
        try:
            assert index.alias_target("regions") == model_collection_name("regions", new["model_version"])
        finally:
            index.close()

        after = query()  # the running (old) service still answers, from its own model's rows
        assert [r["key"] for r in after["results"]] == [r["key"] for r in before["results"]]
        assert after["query"]["model_version"] == old["model_version"]
        assert requests.get(base + "/readyz", timeout=30).status_code == 200
    finally:
        if ray.is_initialized():
            serve.shutdown()
            ray.shutdown()
