"""The hostile caller's table, against a real local service with the production limits.

Each row is an upload or URL that used to cost the service tens of seconds, gigabytes or a 5xx;
each must now get its 4xx (or a 503 with ``Retry-After`` past the concurrency cap), no Serve
replica may grow past 2 GB RSS, and a good query right after must still answer 200. How long each
answer takes is printed by ``benchmarks/hostile_requests.py``, not asserted here.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest
import requests
from hostile_inputs import (
    deflate_bomb_dicom,
    forged_jpeg2000_dicom,
    grey16_png,
    nan_rescale_dicom,
    rgb_png,
    strip_png,
)
from local_process import ahead_of_other_work, free_port

from serving.config import ServeSettings

MAX_REPLICA_RSS = 2 * 1024**3
integration = pytest.mark.integration


class ReplicaMemory:
    """Samples the RSS of every Ray Serve replica process of this machine while it runs."""

    def __init__(self, every_s: float = 0.1):
        self.every_s, self.peak, self.peak_process = every_s, 0, ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def replicas() -> list[psutil.Process]:
        found = []
        for process in psutil.process_iter(["cmdline"]):
            try:
                if "ServeReplica" in " ".join(process.info["cmdline"] or []):
                    found.append(process)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        return found

    def _run(self) -> None:
        processes = self.replicas()
        while not self._stop.is_set():
            for process in processes:
                try:
                    rss = process.memory_info().rss
                except psutil.NoSuchProcess:
                    continue
                if rss > self.peak:
                    self.peak, self.peak_process = rss, " ".join(process.cmdline()[:1])
            time.sleep(self.every_s)

    def __enter__(self) -> ReplicaMemory:
        replicas = self.replicas()
        assert replicas, "no Serve replica process found to watch"
        self.at_rest = max(p.memory_info().rss for p in replicas)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    import ray
    from random_model_index import build_random_model_index_subprocess
    from ray import serve

    from serving.deployments import start_service

    demo = build_random_model_index_subprocess(str(tmp_path_factory.mktemp("hostile_demo")), images=6, size=160, seed=5)
    settings = ServeSettings.from_dict(
        {
            "model": demo["model"],
            "milvus": demo["milvus"],
            "http": {"host": "127.0.0.1", "port": free_port()},
            # the shipped limits (32 MB uploads, 60 Mpx, longer side 8192, 4:1, one film in memory per replica)
            "encoder": {"min_replicas": 1, "max_replicas": 1, "max_batch_size": 8, "batch_wait_timeout_ms": 5},
            "ingress": {"min_replicas": 1, "max_replicas": 1},
            "ray": {"num_cpus": 6, "metrics_export_port": free_port()},
        }
    )
    try:
        with ahead_of_other_work():
            base = start_service(settings, ready_timeout_s=420)
        yield base, Path(demo["query_films"][0]).read_bytes()
    finally:
        if ray.is_initialized():
            serve.shutdown()
            ray.shutdown()


def _search(base: str, data: bytes, name: str = "film.png", **fields) -> requests.Response:
    return requests.post(base + "/v1/search", files={"image": (name, data)}, data=fields, timeout=300)


def _good_query(base: str, film: bytes) -> None:
    response = _search(base, film, box="30,30,80,100", k="3")
    assert response.status_code == 200, response.text
    assert len(response.json()["results"]) == 3


def _expect(response: requests.Response, status: int, reason: str, row: str) -> None:
    assert response.status_code == status, (row, response.status_code, response.text[:300])
    assert response.json()["error"]["reason"] == reason, (row, response.text[:300])
    assert response.json()["error"]["message"], row


@integration
def test_the_hostile_table_gets_its_answers_in_bounded_memory(service):
    base, film = service
    strip = strip_png(39000, 1500)
    rows = [
        (
            "39000 x 1500 PNG, box over the whole film",
            lambda: _search(base, strip, box="0,0,39000,1500"),
            413,
            "image_too_large",
        ),
        (
            "the same film, anatomy only",
            lambda: _search(base, strip, anatomy="cardiac silhouette"),
            413,
            "image_too_large",
        ),
        (
            "deflated DICOM inflating to 4 GiB (4 MB on the wire)",
            lambda: _search(base, deflate_bomb_dicom(4 * 1024**3), "bomb.dcm", box="1,1,50,50"),
            413,
            "image_too_large",
        ),
        ("anatomy=² (a Unicode digit)", lambda: _search(base, film, anatomy="²"), 422, "unknown_anatomy"),
        (
            "result key with a trailing newline",
            lambda: requests.get(base + "/v1/results/" + "0" * 32 + "%0A/crop", timeout=30),
            422,
            "bad_key",
        ),
        (
            "DICOM with RescaleSlope NaN",
            lambda: _search(base, nan_rescale_dicom(), "nan.dcm", box="1,1,50,50"),
            422,
            "bad_pixel_values",
        ),
        # our additions
        (
            "JPEG 2000 whose code stream declares 200000 x 200000",
            lambda: _search(base, forged_jpeg2000_dicom(), "j2k.dcm", box="1,1,50,50"),
            413,
            "image_too_large",
        ),
        (
            "a 10:1 strip within the side limit",
            lambda: _search(base, strip_png(4000, 400), box="1,1,50,50"),
            422,
            "bad_image_shape",
        ),
        ("k as a Unicode digit", lambda: _search(base, film, box="30,30,80,100", k="³"), 422, "bad_k"),
    ]
    with ReplicaMemory() as memory:
        for row, send, status, reason in rows:
            _expect(send(), status, reason, row)
            _good_query(base, film)

        # 16 concurrent 7740² RGB films: each answered (200) or turned away (503 + Retry-After)
        big = rgb_png(7740)
        with ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(lambda _: _search(base, big, box="100,100,2100,2100", k="3"), range(16)))
        statuses = sorted(r.status_code for r in answers)
        assert set(statuses) <= {200, 503} and 200 in statuses, statuses
        for response in answers:
            if response.status_code == 503:
                assert response.json()["error"]["reason"] == "overloaded"
                assert int(response.headers["Retry-After"]) > 0

        # every real film still fits: 16-bit 4096 x 4096
        accepted = _search(base, grey16_png(4096), box="100,100,1100,1100", k="3")
        assert accepted.status_code == 200, accepted.text[:300]
        _good_query(base, film)
    print(
        f"\n[hostile] concurrent RGB statuses {statuses}; replica RSS at rest {memory.at_rest / 2**20:.0f} MiB, "
        f"peak {memory.peak / 2**20:.0f} MiB ({memory.peak_process})"
    )
    assert memory.peak < MAX_REPLICA_RSS, f"{memory.peak_process} reached {memory.peak / 2**20:.0f} MiB"
    assert requests.get(base + "/healthz", timeout=30).status_code == 200
