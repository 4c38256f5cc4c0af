"""The Milvus server killed (SIGKILL) under load, then started again on the same data and port:
while it is down the service answers 503 ``index_unavailable`` with ``Retry-After`` (never a hang,
never another 5xx), and it answers 200 again by itself within 30 s of Milvus's own health check
answering again. Real milvus-lite server, real Ray Serve service, four clients querying
throughout."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest
import requests
from local_process import ahead_of_other_work, free_port

from indexing.local_milvus import MilvusLiteServer
from serving.config import ServeSettings

RECOVERY_GOAL_S = 30.0
integration = pytest.mark.integration
#: `make test-faults` (and `make test-slow`, CI): Ray Serve plus a Milvus server, minutes on 2 cores
pytestmark = pytest.mark.slow


@integration
def test_milvus_killed_under_load_gives_503_then_the_service_recovers_by_itself(tmp_path):
    import ray
    from random_model_index import build_random_model_index_subprocess
    from ray import serve

    from serving.deployments import start_service

    server = MilvusLiteServer(tmp_path / "milvus", tmp_path / "logs")
    server.port = free_port()
    os.makedirs(server.data_dir, exist_ok=True)
    server.start()
    answers: list[tuple[float, int, str, str | None]] = []  # (time, status, reason, Retry-After)
    stop = threading.Event()
    try:
        demo = build_random_model_index_subprocess(
            str(tmp_path / "demo"), images=6, size=128, seed=31, milvus=server.uri
        )
        film = Path(demo["query_films"][0]).read_bytes()
        settings = ServeSettings.from_dict(
            {
                "model": demo["model"],
                "milvus": server.uri,
                "http": {"host": "127.0.0.1", "port": free_port()},
                "limits": {"index_timeout_s": 3, "request_timeout_s": 15},
                "encoder": {"min_replicas": 1, "max_replicas": 1},
                "search": {"min_replicas": 1, "max_replicas": 1},
                "ingress": {"min_replicas": 1, "max_replicas": 1},
                "ray": {"num_cpus": 6, "metrics_export_port": free_port()},
            }
        )
        with ahead_of_other_work():
            base = start_service(settings, ready_timeout_s=420)

        def client() -> None:
            while not stop.is_set():
                try:
                    r = requests.post(
                        base + "/v1/search",
                        files={"image": ("film.png", film)},
                        data={"box": "20,20,70,90", "k": "3"},
                        timeout=60,
                    )
                    reason = r.json().get("error", {}).get("reason", "") if r.status_code != 200 else ""
                    answers.append((time.monotonic(), r.status_code, reason, r.headers.get("Retry-After")))
                except requests.RequestException as exc:  # a hang or a dropped connection is a failure too
                    answers.append((time.monotonic(), 0, type(exc).__name__, None))
                time.sleep(0.2)

        clients = [threading.Thread(target=client, daemon=True) for _ in range(4)]
        for t in clients:
            t.start()
        time.sleep(5)
        assert any(status == 200 for _, status, _, _ in answers), answers[-5:]

        killed_at = time.monotonic()
        server.kill()
        time.sleep(10)  # queries meet a dead index
        server.start()  # same data, same port; returns when it answers
        healthy_at = time.monotonic()
        deadline = healthy_at + RECOVERY_GOAL_S + 10
        while time.monotonic() < deadline and not any(t > healthy_at and s == 200 for t, s, _, _ in answers):
            time.sleep(0.5)
        stop.set()
        for t in clients:
            t.join(timeout=90)
    finally:
        stop.set()
        if ray.is_initialized():
            serve.shutdown()
            ray.shutdown()
        if server.process is not None:
            server.stop()

    during = [a for a in answers if killed_at + 4 < a[0] < healthy_at]
    assert during, "no query was answered while Milvus was down"
    assert {s for _, s, _, _ in during} <= {200, 503}, sorted({(s, r) for _, s, r, _ in during})
    down = [a for a in during if a[1] == 503]
    assert down and all(reason == "index_unavailable" and retry for _, _, reason, retry in down), down[:3]
    recovered = [t for t, s, _, _ in answers if t > healthy_at and s == 200]
    assert recovered, "the service did not answer 200 again"
    print(
        f"\n[faults] {len(down)} × 503 while down; first 200 {recovered[0] - healthy_at:.1f} s after "
        f"Milvus answered its health check again; statuses {sorted({s for _, s, _, _ in answers})}"
    )
    assert recovered[0] - healthy_at <= RECOVERY_GOAL_S
    assert all(s in (200, 503) for _, s, _, _ in answers), sorted({(s, r) for _, s, r, _ in answers})
