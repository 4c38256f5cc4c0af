"""``make demo``: the whole system on the embedded default (a local folder and milvus-lite).

1. synthesise phantom films and draw the pictures (:mod:`regionmir.demo`);
2. region-contrastive (SupCon) pretraining, then anatomy fine-tuning from it: two phases of one
   Ray Train run on a local Ray cluster (:mod:`training.demo`), and the classifier's test accuracy;
3. index every region of the train split into milvus-lite with Ray Data (:mod:`indexing.demo`)
   and evaluate retrieval with the test regions as queries;
4. start the query service on Ray Serve (:mod:`serving.deployments`), send box queries and
   anatomy-only queries over HTTP for test films it has never seen, and print a summary: accuracy,
   mAP@10, query latency, where the page is;
5. shut everything down — or, with ``--keep-serving`` (``make demo SERVE=1``), keep the service
   up for a person to try the page until Ctrl-C.

    python -m serving.full_demo --out demo-output [--keep-serving] [--port 8000]
"""

from __future__ import annotations

import json
import os
import signal
import socket
import statistics
import sys
import threading
import time

from regionmir.command_help import command_parser

#: Regions the demo asks for by name, as a radiologist would (each also queried with its true box).
DEMO_REGIONS = ("left costophrenic angle", "cardiac silhouette", "right clavicle", "right hilar structures")


def _step(message: str) -> None:
    print(f"[demo] {message}", file=sys.stderr, flush=True)


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
        self.error: BaseException | None = None
        self.seconds = 0.0

    def run(self) -> None:
        from serving.config import ServeSettings
        from serving.deployments import start_service

        started = time.perf_counter()
        try:
            milvus = serving_copy(self.db, self.out)
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
            _step(f"starting the query service on Ray Serve in the background (index copy {milvus})")
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
    print(f"\nThe service stays up: open {url} (no API key on this local demo). Ctrl-C stops it.", flush=True)
    stop.wait()


def shutdown() -> None:
    import ray
    from ray import serve

    if ray.is_initialized():
        serve.shutdown()
        ray.shutdown()


def main(argv: list[str] | None = None) -> int:
    from indexing.demo import index_and_evaluate
    from training.demo import add_arguments, print_pictures, synthesise_and_train

    parser = command_parser(prog="python -m serving.full_demo", description=__doc__.splitlines()[0])
    add_arguments(parser)
    parser.add_argument("--port", type=int, default=8000, help="HTTP port of the service (another if taken)")
    parser.add_argument("--keep-serving", action="store_true", help="keep the service up until Ctrl-C")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    timings = {}
    try:
        trained = synthesise_and_train(args)
        timings["synthesise_and_train_s"] = round(time.perf_counter() - started, 1)
        t = time.perf_counter()
        starters: list[ServiceStarter] = []

        def start_serving(db: str) -> None:
            starters.append(ServiceStarter(trained["model"], db, args.out, args.port))
            starters[0].start()

        indexed = index_and_evaluate(
            trained["data"], trained["model"], args.out, localize_films=3, after_index=start_serving
        )
        timings["index_and_evaluate_s"] = round(time.perf_counter() - t, 1)
        t = time.perf_counter()
        base = starters[0].result()
        timings["service_start_s"] = starters[0].seconds
        _step(
            f"service ready at {base}/ ({starters[0].seconds} s after it was started); sending box and "
            "anatomy-only queries over HTTP"
        )
        served = {"url": base + "/", "api": base + "/docs", **query_service(base, trained["data"], films=2)}
        timings["after_evaluation_until_answered_s"] = round(time.perf_counter() - t, 1)
        pictures = {**trained.pop("pictures"), **{f"report_{k}": v for k, v in indexed.pop("pictures").items()}}
        summary = {
            **trained,
            **indexed,
            "service": served,
            "timings": timings,
            "seconds": round(time.perf_counter() - started, 1),
        }
        with open(os.path.join(args.out, "summary.json"), "w") as f:
            json.dump(summary, f, indent=1, default=str)
        print(json.dumps({k: v for k, v in summary.items() if k != "service"}, indent=1, default=str))
        print_pictures(pictures)
        r, s = summary["retrieval"], served["by_kind"]
        print(
            f"\nService at {served['url']} (OpenAPI {served['api']}): "
            f"{s['box']['queries']} box queries p50 {s['box']['latency_ms_p50']} ms, top-1 same anatomy "
            f"{s['box']['top1_same_anatomy']:.0%}; {s['anatomy']['queries']} anatomy-only queries p50 "
            f"{s['anatomy']['latency_ms_p50']} ms, found box IoU {s['anatomy']['mean_box_iou']:.2f}, top-1 same "
            f"anatomy {s['anatomy']['top1_same_anatomy']:.0%}."
        )
        print(
            f"Fine-tuned model: test accuracy {summary['test_accuracy']:.2%} (classifier); retrieval of "
            f"{r['queries']} test regions from {summary['index']['rows']} indexed train regions: "
            f"p@1 {r['p@1']:.3f}, p@10 {r['p@10']:.3f}, mAP@10 {r['map@10']:.3f}, nDCG@10 {r['ndcg@10']:.3f}; localization mIoU "
            f"{summary['localization_miou'] if summary['localization_miou'] is None else round(summary['localization_miou'], 3)}; report {summary['report']}; summary "
            f"{os.path.join(args.out, 'summary.json')}; demo finished in {summary['seconds']} s.",
            flush=True,
        )
        if args.keep_serving:
            wait_for_interrupt(served["url"])
    finally:
        _step("shutting down Ray Serve and Ray")
        shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
