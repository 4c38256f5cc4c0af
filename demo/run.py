"""``make demo``: the whole system on the embedded default (a local folder and milvus-lite).

1. synthesise phantom films and draw the pictures (:mod:`demo.pictures`);
2. region-contrastive (SupCon) pretraining, then anatomy fine-tuning from it: two phases of one
   Ray Train run on a local Ray (:mod:`demo.train`), and the classifier's test accuracy;
3. index every region of the train split into milvus-lite with Ray Data and evaluate retrieval with
   the test regions as queries (:mod:`demo.index`);
4. start the query service on Ray Serve (in the background, during step 3's evaluation), send box
   queries and anatomy-only queries over HTTP for test films it has never seen (:mod:`demo.serve`);
5. print a summary — accuracy, mAP@10, query latency, where the page and the pictures are — and
   write all of it to ``OUT/summary.json``; shut everything down, or with ``--keep-serving``
   (``make demo SERVE=1``) keep the service up for a person to try the page until Ctrl-C.

    regionmir-demo --out demo-output [--keep-serving] [--port 8000]     (or: python -m demo)
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from typing import Any

from regionmir.command_help import command_parser
from regionmir.console import configure_command_logging

log = logging.getLogger("demo")

STEPS = 4


class Steps:
    """The one step printer: ``[demo] step 2/4: …`` as each step starts, its seconds when it ends."""

    def __init__(self, total: int = STEPS):
        self.total, self.number = total, 0
        self.seconds: dict[str, float] = {}

    def run(self, name: str, title: str, work: Callable[[], Any]) -> Any:
        self.number += 1
        log.info(f"step {self.number}/{self.total}: {title}")
        started = time.perf_counter()
        result = work()
        self.seconds[name] = round(time.perf_counter() - started, 1)
        return result


def build_parser():
    parser = command_parser(prog="regionmir-demo", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="demo-output", help="folder for the data, model, index and pictures")
    parser.add_argument("--images", type=int, default=60, help="phantom films to synthesise")
    parser.add_argument("--size", type=int, default=256, help="film side in pixels")
    parser.add_argument("--seed", type=int, default=0, help="seed of the films (the same seed, the same films)")
    parser.add_argument("--pretrain-epochs", type=int, default=2, help="region-contrastive pretraining epochs")
    parser.add_argument("--finetune-epochs", type=int, default=2, help="anatomy fine-tuning epochs")
    parser.add_argument("--objective", choices=("simclr", "supcon"), default="supcon", help="pretraining loss")
    parser.add_argument("--port", type=int, default=8000, help="HTTP port of the service (another if taken)")
    parser.add_argument("--keep-serving", action="store_true", help="keep the service up until Ctrl-C")
    return parser


def run_demo(args) -> dict:
    from .index import index_and_evaluate
    from .pictures import synthesise_and_draw
    from .serve import ServiceStarter, query_service
    from .train import train_and_test

    started = time.perf_counter()
    steps = Steps()
    # a demo run always trains and indexes afresh (an index left by an older RegionMIR may have
    # another row schema)
    for previous in ("training", "regions.db", os.path.join("serving", "regions.db")):
        if os.path.exists(os.path.join(args.out, previous)):
            shutil.rmtree(os.path.join(args.out, previous))
    # Training starts the Ray the service will join: give it the service's HTTP front end now.
    from serving.config import ServeSettings
    from serving.deployments import choose_http_proxy

    choose_http_proxy(ServeSettings())
    pictures = steps.run(
        "synthesise_s",
        f"synthesising {args.images} phantom films of {args.size} px and drawing them",
        lambda: synthesise_and_draw(args.out, args.images, args.size, args.seed),
    )
    data = pictures["data"]
    trained = steps.run(
        "train_s",
        f"training on Ray: {args.objective} pretraining ({args.pretrain_epochs} epochs), then fine-tuning "
        f"({args.finetune_epochs} epochs) from it",
        lambda: train_and_test(data, args.out, args.pretrain_epochs, args.finetune_epochs, args.objective),
    )
    starter: list[ServiceStarter] = []

    def start_serving(db: str) -> None:
        starter.append(ServiceStarter(trained["model"], db, args.out, args.port))
        starter[0].start()

    indexed = steps.run(
        "index_and_evaluate_s",
        "indexing the train split into milvus-lite on Ray Data, then evaluating retrieval",
        lambda: index_and_evaluate(data, trained["model"], args.out, localize_films=3, after_index=start_serving),
    )

    def ask() -> dict:
        base = starter[0].result()
        log.info(f"service ready at {base}/ ({starter[0].seconds} s after it was started)")
        return {
            "url": base + "/",
            "api": base + "/docs",
            "milvus": starter[0].milvus,
            **query_service(base, data, films=2),
        }

    served = steps.run("serve_and_query_s", "querying the service over HTTP: box and anatomy-only queries", ask)
    return {
        "data": data,
        "films": pictures["films"],
        "splits": pictures["splits"],
        **{k: v for k, v in trained.items() if k != "confusion_matrix"},
        **{k: v for k, v in indexed.items() if k != "pictures"},
        "service": served,
        "pictures": {
            **pictures["pictures"],
            "confusion_matrix": trained["confusion_matrix"],
            **{f"report_{k}": v for k, v in indexed["pictures"].items()},
        },
        "timings": {**steps.seconds, "service_start_s": starter[0].seconds},
        "seconds": round(time.perf_counter() - started, 1),
    }


def summary_lines(summary: dict, summary_path: str) -> list[str]:
    """The closing lines a person reads: what the service answered, how good the model is, where
    every picture is."""
    r, s = summary["retrieval"], summary["service"]["by_kind"]
    miou = summary["localization_miou"]
    lines = [
        f"Service at {summary['service']['url']} (OpenAPI {summary['service']['api']}): "
        f"{s['box']['queries']} box queries p50 {s['box']['latency_ms_p50']} ms, top-1 same anatomy "
        f"{s['box']['top1_same_anatomy']:.0%}; {s['anatomy']['queries']} anatomy-only queries p50 "
        f"{s['anatomy']['latency_ms_p50']} ms, found box IoU {s['anatomy']['mean_box_iou']:.2f}, top-1 same "
        f"anatomy {s['anatomy']['top1_same_anatomy']:.0%}.",
        f"Fine-tuned model: test accuracy {summary['test_accuracy']:.2%} (classifier); retrieval of "
        f"{r['queries']} test regions from {summary['index']['rows']} indexed train regions: "
        f"p@1 {r['p@1']:.3f}, p@10 {r['p@10']:.3f}, mAP@10 {r['map@10']:.3f}, nDCG@10 {r['ndcg@10']:.3f}; "
        f"localization mIoU {'n/a' if miou is None else round(miou, 3)}.",
        "Pictures:",
        *(
            f"  {name:22s} {path if '://' in str(path) else os.path.abspath(path)}"
            for name, path in summary["pictures"].items()
        ),
        f"Report {summary['report']}; every figure in {summary_path}; demo finished in {summary['seconds']} s.",
        f"Serve this model again: regionmir serve --model {summary['model']} --milvus "
        f"{summary['service']['milvus']} --insecure-dev",
    ]
    return lines


def main(argv: list[str] | None = None) -> int:
    from .serve import shutdown, wait_for_interrupt

    args = build_parser().parse_args(argv)
    configure_command_logging("demo", args)
    try:
        summary = run_demo(args)
        path = os.path.join(args.out, "summary.json")
        with open(path, "w") as f:
            json.dump(summary, f, indent=1, default=str)
        print("\n" + "\n".join(summary_lines(summary, path)), flush=True)
        if args.keep_serving:
            wait_for_interrupt(summary["service"]["url"])
    finally:
        log.info("shutting down Ray Serve and Ray")
        shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
