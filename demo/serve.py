"""Step 4 of the demo: the query service on Ray Serve, asked over HTTP as a user would.

The service starts in the background from a copy of the index (:class:`ServiceStarter`) while the
evaluation runs; then box queries and anatomy-only queries for test films it has never seen
(:func:`query_service`): per query the anatomy asked, what came back first, the found box's IoU
with the labelled one, the latency.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import statistics
import threading
import time

log = logging.getLogger(__name__)

#: Regions the demo asks for by name, as a radiologist would (each also queried with its true box).
DEMO_REGIONS = ("left costophrenic angle", "cardiac silhouette", "right clavicle", "right hilar structures")


def serving_copy(db: str, out: str) -> str:
    """A copy of the milvus-lite index for the service's search replica: this process opened the
    index while building and evaluating it, and milvus-lite lets one process own a file for the
    life of that process."""
    from indexing.region_index import copy_lite_index

    return copy_lite_index(db, os.path.join(out, "serving", os.path.basename(db.rstrip("/"))))


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def _free_port(preferred: int) -> int:
    if _port_free(preferred):
        return preferred
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def query_service(base: str, data: str, regions=DEMO_REGIONS, films: int = 3, k: int = 10) -> dict:
    """Box and anatomy-only queries over HTTP for the first ``films`` test films: per query the
    anatomy asked, what came back first, the found box's IoU with the labelled one, the latency."""
    import requests

    from regionmir.anatomy import anatomy_id
    from regionmir.anatomy_atlas import iou
    from regionmir.dataset import open_dataset
    from regionmir.storage import read_bytes

    test = [r for r in open_dataset(data).iter_images(split="test")][:films]
    session = requests.Session()
    answers = []
    for record in test:
        film = read_bytes(record.image_uri)
        boxes = {r.anatomy_id: r.box for r in record.regions}
        for name in regions:
            truth = boxes.get(anatomy_id(name))
            if truth is None:
                continue
            for kind, form in (
                ("box", {"box": ",".join(f"{v:.0f}" for v in truth.as_list())}),
                ("anatomy", {"anatomy": name}),
            ):
                started = time.perf_counter()
                response = session.post(
                    base + "/v1/search",
                    files={"image": ("film.png", film, "image/png")},
                    data={**form, "k": str(k)},
                    timeout=120,
                )
                latency_ms = (time.perf_counter() - started) * 1000.0
                if response.status_code != 200:
                    raise RuntimeError(
                        f"{kind} query for {name} answered {response.status_code}: {response.text[:300]}"
                    )
                body = response.json()
                results = body["results"]
                answers.append(
                    {
                        "kind": kind,
                        "anatomy": name,
                        "latency_ms": round(latency_ms, 1),
                        "predicted_anatomy": body["query"]["predicted_anatomy"],
                        "top_result_anatomy": results[0]["anatomy"] if results else None,
                        "same_anatomy_in_top_k": sum(r["anatomy"] == name for r in results) / max(1, len(results)),
                        "box_iou": round(iou(body["query"]["box"], truth.as_list()), 3),
                    }
                )
    by_kind = {}
    for kind in ("box", "anatomy"):
        rows = [a for a in answers if a["kind"] == kind]
        by_kind[kind] = {
            "queries": len(rows),
            "latency_ms_p50": round(statistics.median(a["latency_ms"] for a in rows), 1),
            "top1_same_anatomy": round(sum(a["top_result_anatomy"] == a["anatomy"] for a in rows) / len(rows), 3),
            "precision_at_k": round(statistics.mean(a["same_anatomy_in_top_k"] for a in rows), 3),
            "mean_box_iou": round(statistics.mean(a["box_iou"] for a in rows), 3),
        }
    return {"films": len(test), "k": k, "by_kind": by_kind, "answers": answers}


class ServiceStarter(threading.Thread):
    """Starts the service in the background (from a copy of the index) while this process goes on
    evaluating: Serve's controller, proxy and replicas are each a fresh process to start."""

    def __init__(self, model: str, db: str, out: str, port: int):
        super().__init__(name="service-starter", daemon=True)
        self.model, self.db, self.out, self.port = model, db, out, port
        self.base: str | None = None
        self.milvus: str | None = None  # the service's copy of the index
        self.error: BaseException | None = None
        self.seconds = 0.0

    def run(self) -> None:
        started = time.perf_counter()
        try:
            from serving.config import ServeSettings
            from serving.deployments import start_service

            milvus = self.milvus = serving_copy(self.db, self.out)
            settings = ServeSettings.from_dict(
                {
                    "model": self.model,
                    "milvus": milvus,
                    "http": {"host": "127.0.0.1", "port": _free_port(self.port)},
                    "encoder": {"min_replicas": 1, "max_replicas": 2},
                    "ingress": {"min_replicas": 1, "max_replicas": 1},
                },
                "demo settings",
            )
            log.info(f"starting the query service on Ray Serve in the background (index copy {milvus})")
            self.base = start_service(settings, ready_timeout_s=600)
        except BaseException as exc:  # handed to the main thread by result()
            self.error = exc
        self.seconds = round(time.perf_counter() - started, 1)

    def result(self) -> str:
        self.join()
        if self.error is not None:
            raise self.error
        assert self.base is not None
        return self.base


def wait_for_interrupt(url: str) -> None:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    log.info(f"the service stays up: open {url} (no API key on this local demo); Ctrl-C stops it")
    stop.wait()


def shutdown() -> None:
    """Ray Serve's applications, then this process's Ray."""
    import ray
    from ray import serve

    from cluster.ray_runtime import stop_ray

    if ray.is_initialized():
        serve.shutdown()
    stop_ray()
