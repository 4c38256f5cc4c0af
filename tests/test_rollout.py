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
    common = {
        "model": old["model"],
        "milvus": milvus_lite_server.uri,
        # Serve's own Python proxy: the front end that is not the default (the other tests use HAProxy)
        "http": {"host": "127.0.0.1", "port": free_port(), "proxy": "serve"},
        "encoder": {"min_replicas": 1, "max_replicas": 1},
        "search": {"min_replicas": 1, "max_replicas": 1},
        "ingress": {"min_replicas": 1, "max_replicas": 1},
        "ray": {"num_cpus": 6, "metrics_export_port": free_port()},
    }
    film = Path(old["query_films"][0]).read_bytes()

    def query(door: str | None = None) -> dict:
        answer = requests.post(
            (door or base) + "/v1/search",
            files={"image": ("film.png", film)},
            data={"box": "20,20,70,90", "k": "5"},
            timeout=120,
        )
        assert answer.status_code == 200, answer.text
        return answer.json()

    def hits(answer: dict) -> list[tuple[str, float]]:
        return [(r["key"], round(r["score"], 5)) for r in answer["results"]]

    try:
        with ahead_of_other_work():
            base = start_service(ServeSettings.from_dict(common), ready_timeout_s=420)
            # a second front door whose searches go to the search replica (the first's ingress
            # searches the server over its own connection, search.from_ingress)
            through_replica = start_service(
                ServeSettings.from_dict({**common, "search": {**common["search"], "from_ingress": False}}),
                backend_app="regionmir",
                route_prefix="/replica",
                app_name="regionmir-replica",
                ready_timeout_s=300,
            )
        before = query()
        assert len(before["results"]) == 5
        assert hits(query(through_replica)) == hits(before)
        ready = requests.get(base + "/readyz", timeout=30).json()
        assert model_collection_name("regions", old["model_version"]) in str(ready)
        assert ready["checks"]["index"]["searched_in"] == "ingress"
        assert ready["checks"]["index"]["ingress_connected"], ready  # its searches made the connection
        other = requests.get(through_replica + "/readyz", timeout=30).json()
        assert other["checks"]["index"]["searched_in"] == "search replica"

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
        assert hits(query(through_replica)) == hits(after)
        assert after["query"]["model_version"] == old["model_version"]
        assert requests.get(base + "/readyz", timeout=30).status_code == 200
    finally:
        if ray.is_initialized():
            serve.shutdown()
            ray.shutdown()
