"""The query service in the ``split`` topology (``topology: split``): an ingress that decodes and
crops, an encoder deployment that batches the crops of concurrent queries, and the search replica,
on a local Ray on 127.0.0.1. Its answers are the in-process pipeline's (decode → crop → encode →
milvus-lite search, no Ray, no HTTP), concurrent queries are merged into encoder batches, and bad
input still gets a 4xx with the service answering the next query.

The default (``fused``) topology is covered by ``tests/test_serving.py``.
"""

from __future__ import annotations

import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from local_process import ahead_of_other_work, free_port

from serving.config import ServeSettings

#: `make test-faults` (and `make test-slow`, CI): a second Serve application of its own
pytestmark = [pytest.mark.slow, pytest.mark.integration]

BOXES = ("30,30,80,100", "20,40,90,120")
K = 6


def _in_process_hits(demo: dict, film: bytes, workdir: Path) -> dict[str, list[tuple[str, float]]]:
    """Each box's hits (key, score) from the in-process pipeline, on a copy of the index (milvus-lite:
    one process per file; the service gets the original)."""
    from indexing.region_index import copy_lite_index
    from regionmir.boxes import Box
    from regionmir.image_reader import read_image
    from regionmir.roi_crop import roi_crops
    from serving.runtime import EncoderRuntime, SearchRuntime

    copy = str(workdir / "in-process.db")
    copy_lite_index(demo["milvus"], copy)
    encoder = EncoderRuntime(demo["model"], device="cpu", threads=1)
    search = SearchRuntime(copy, "regions", encoder.contract.version_id)
    try:
        pixels = read_image(film, source="query").pixels
        expected = {}
        for box in BOXES:
            crops = roi_crops(pixels, [Box(*(float(v) for v in box.split(",")))], encoder.contract.crop_config)
            vector = encoder.forward(crops)["embeddings"][0]
            expected[box] = [(h["key"], float(h["score"])) for h in search.search(vector, K)]
    finally:
        search.close()
    return expected


@pytest.fixture(scope="module")
def split_service(tmp_path_factory):
    import ray
    from random_model_index import build_random_model_index_subprocess
    from ray import serve

    from serving.deployments import start_service

    workdir = tmp_path_factory.mktemp("serve_split")
    demo = build_random_model_index_subprocess(str(workdir), images=6, size=160, seed=5)
    film = Path(demo["query_films"][0]).read_bytes()
    expected = _in_process_hits(demo, film, workdir)
    port, metrics_port = free_port(), free_port()
    settings = ServeSettings.from_dict(
        {
            "model": demo["model"],
            "milvus": demo["milvus"],
            "topology": "split",
            "http": {"host": "127.0.0.1", "port": port},
            "encoder": {"min_replicas": 1, "max_replicas": 1, "max_batch_size": 8},
            "ingress": {"min_replicas": 1, "max_replicas": 1},
            "ray": {"num_cpus": 6, "metrics_export_port": metrics_port},
        }
    )
    try:
        with ahead_of_other_work():
            base = start_service(settings, ready_timeout_s=420)
        yield {"base": base, "film": film, "expected": expected, "metrics_port": metrics_port, "demo": demo}
    finally:
        if ray.is_initialized():  # serve.shutdown() would start a Ray of its own otherwise
            serve.shutdown()
            ray.shutdown()


def _search(service: dict, data: dict) -> requests.Response:
    return requests.post(
        service["base"] + "/v1/search",
        files={"image": ("film.png", service["film"], "image/png")},
        data=data,
        timeout=120,
    )


def _hits(response: requests.Response) -> list[tuple[str, float]]:
    assert response.status_code == 200, response.text
    return [(r["key"], r["score"]) for r in response.json()["results"]]


def _assert_same_hits(got: list[tuple[str, float]], want: list[tuple[str, float]]) -> None:
    assert [key for key, _ in got] == [key for key, _ in want]
    assert all(abs(a - b) < 1e-4 for (_, a), (_, b) in zip(got, want, strict=True)), (got, want)


def test_the_split_topology_runs_the_encoder_in_its_own_deployment_and_answers_as_in_process(split_service):
    from ray import serve

    applications = serve.status().applications
    deployments = {name for app in applications.values() for name in app.deployments}
    assert deployments == {"ingress", "encoder", "search"}, deployments  # fused: no "encoder"
    ready = requests.get(split_service["base"] + "/readyz", timeout=30).json()["checks"]
    assert ready["model"]["model_version"] == split_service["demo"]["model_version"]
    assert ready["index"]["rows"] == split_service["demo"]["rows"] > 0

    for box, want in split_service["expected"].items():
        body = _search(split_service, {"box": box, "k": str(K)})
        _assert_same_hits(_hits(body), want)
        assert body.json()["query"]["box_source"] == "user"
    anatomy = _search(split_service, {"anatomy": "right hemidiaphragm", "k": "4"})
    assert len(_hits(anatomy)) == 4 and anatomy.json()["query"]["box_source"] == "atlas"


def test_concurrent_queries_share_encoder_batches_and_bad_input_leaves_it_answering(split_service):
    box = BOXES[0]
    want = split_service["expected"][box]
    with ThreadPoolExecutor(max_workers=12) as pool:
        answers = list(pool.map(lambda _: _search(split_service, {"box": box, "k": str(K)}), range(48)))
    for answer in answers:
        _assert_same_hits(_hits(answer), want)

    # the encoder deployment's batcher merged some of them: the requests-per-batch histogram's sum
    # exceeds its count once any batch held more than one request
    metrics_url = f"http://127.0.0.1:{split_service['metrics_port']}/metrics"
    deadline, merged, text = time.monotonic() + 120, False, ""
    while time.monotonic() < deadline and not merged:
        try:
            text = requests.get(metrics_url, timeout=30).text
        except requests.RequestException:  # the metrics agent may be restarting: ask again
            text = ""
        total = re.search(r"^ray_regionmir_serve_encoder_batch_requests_sum\{[^}]*\} (\S+)$", text, re.M)
        count = re.search(r"^ray_regionmir_serve_encoder_batch_requests_count\{[^}]*\} (\S+)$", text, re.M)
        merged = bool(total and count and float(total.group(1)) > float(count.group(1)) > 0)
        if not merged:
            time.sleep(2)
    assert merged, [line for line in text.splitlines() if "encoder_batch_requests" in line][:6]

    outside = _search(split_service, {"box": "150,150,900,900", "k": "3"})
    assert 400 <= outside.status_code < 500 and outside.json()["error"]["reason"], outside.text
    not_an_image = requests.post(
        split_service["base"] + "/v1/search",
        files={"image": ("x.png", b"not a film", "image/png")},
        data={"box": box},
        timeout=60,
    )
    assert not_an_image.status_code in (400, 415, 422), not_an_image.text
    _assert_same_hits(_hits(_search(split_service, {"box": box, "k": str(K)})), want)
