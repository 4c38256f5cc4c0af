"""Step 3 of the demo: every region of the train split into milvus-lite, then retrieval evaluated.

Indexing runs on Ray Data (:func:`indexing.build.index_data`); the evaluation asks every test region
of the test films as a query against the indexed train regions (:func:`indexing.evaluate.evaluate`)
and writes its report and pictures.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

from indexing.build import index_data
from indexing.evaluate import evaluate
from indexing.jobs import EvaluationJob, IndexJob

log = logging.getLogger(__name__)


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
    built = index_data(IndexJob(data, model, milvus, split="train"))
    if after_index is not None:
        after_index(milvus)
    log.info("evaluating retrieval: test regions as queries against the train split")
    metrics = evaluate(EvaluationJob(data, model, milvus, os.path.join(out, "report"), localize_films=localize_films))
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
