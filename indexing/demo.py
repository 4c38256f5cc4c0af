"""``make demo``: synthesise → pretrain → fine-tune → index into milvus-lite → evaluate retrieval.

Steps 1–3 are :mod:`training.demo` (phantom films and pictures, one Ray Train run of region
pretraining then fine-tuning, test accuracy). Then the fine-tuned model embeds every region of
the train split into a milvus-lite file (the embedded default; ``--milvus`` takes a server URI
too), and ``evaluate`` queries it with the test regions: accuracy, precision@k, mAP@10, MRR@10,
a Markdown report and two pictures.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable

from regionmir.command_help import command_parser
from training.demo import add_arguments, print_pictures, synthesise_and_train

from .build import index_data
from .evaluate import evaluate


def _step(message: str) -> None:
    print(f"[demo] {message}", file=sys.stderr, flush=True)


def index_and_evaluate(
    data: str,
    model: str,
    out: str,
    milvus: str | None = None,
    localize_films: int = 3,
    after_index: Callable[[str], None] | None = None,
) -> dict:
    """Index the train split, then evaluate; ``after_index(milvus)`` is called between the two
    (the full demo starts the service there, while the evaluation runs)."""
    milvus = milvus or os.path.join(out, "regions.db")
    _step(f"indexing the train split with {model} into {milvus}")
    built = index_data(data, model, milvus, split="train")
    if after_index is not None:
        after_index(milvus)
    _step("evaluating retrieval: test regions as queries against the train split")
    metrics = evaluate(data, model, milvus, os.path.join(out, "report"), localize_films=localize_films)
    return {
        "milvus": milvus,
        "index": {
            k: built[k] for k in ("collection", "rows", "rows_per_s", "films_skipped", "regions_skipped", "seconds")
        },
        "retrieval": {
            k: metrics[k]
            for k in (
                "accuracy",
                "p@1",
                "p@5",
                "p@10",
                "map@10",
                "ndcg@10",
                "mrr@10",
                "queries",
                "search_ms_per_query_p50",
            )
        },
        "localization_miou": metrics.get("localization_miou"),
        "report": os.path.join(out, "report", "report.md"),
        "pictures": metrics["pictures"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = command_parser(prog="python -m indexing.demo", description=__doc__.splitlines()[0])
    add_arguments(parser)
    parser.add_argument("--milvus", help="milvus-lite file or server URI (default: OUT/regions.db)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    trained = synthesise_and_train(args)
    indexed = index_and_evaluate(trained["data"], trained["model"], args.out, args.milvus)
    pictures = {**trained.pop("pictures"), **{f"report_{k}": v for k, v in indexed.pop("pictures").items()}}
    summary = {**trained, **indexed, "seconds": round(time.perf_counter() - started, 1)}
    print(json.dumps(summary, indent=1, default=str))
    print_pictures(pictures)
    r = summary["retrieval"]
    print(
        f"\nFine-tuned model: test accuracy {summary['test_accuracy']:.2%} (classifier), retrieval of "
        f"{r['queries']} test regions from {summary['index']['rows']} indexed train regions: "
        f"p@1 {r['p@1']:.3f}, p@10 {r['p@10']:.3f}, mAP@10 {r['map@10']:.3f}, nDCG@10 {r['ndcg@10']:.3f}, "
        f"MRR@10 {r['mrr@10']:.3f}; "
        f"report {summary['report']}; demo finished in {summary['seconds']} s."
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
