"""Upserts from the Ray Data workers: embedded regions go from the encoders straight into a Milvus
server, and the driver reads back only what it needs to account for them.

``regionmir index`` against a **server** (``http(s)://host:port``: a Milvus standalone or cluster,
or a ``milvus-lite server``) appends :class:`RegionUpserter`, an actor pool after the encoders
(``--upserters``, default ``IndexJob.upserters``: two, so one is sending while the other
builds its next entities). Each actor opens its own client — with the driver's ``$MILVUS_TOKEN``,
handed to it as a constructor argument (not the job's ``runtime_env``, which the Ray dashboard's
job table shows), or else its own worker's ``$MILVUS_TOKEN`` (a Kubernetes pod's, from its
Secret) — turns a batch into rows (:func:`indexing.index_rows.region_rows`) and upserts them, and
returns one small accounting row per region (:data:`ACCOUNTING_COLUMNS`: the row's key, its film,
its anatomy, and a skipped film's reason). No vector and no crop reaches the driver, and no single
process writes every row: what caps one writer (one process turning ~10⁷ rows into entities and
sending them) is spread over the pool.

A **milvus-lite file** keeps its one writer, the driver (``indexing.build._BackgroundWriter``):
the process that opens the file owns it.

Upserts are idempotent (the key is derived from film, region and model version), so a batch that
Ray Data runs again after a worker died writes the same rows again, not new ones; the driver counts
keys, not calls. A placeholder row (a film that could not be read, ``anatomy_id`` -1) passes through
unwritten, with its ``skip_reason``, for the driver's one bad-film policy
(:meth:`regionmir.bad_films.BadFilms.filter`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .index_rows import region_rows
from .region_index import RegionIndex

#: The columns each upserting actor returns, one row per region (placeholders included).
ACCOUNTING_COLUMNS = ("key", "image_id", "anatomy_id", "skip_reason")


def upserts_from_workers(milvus: str) -> bool:
    """Whether a job writing to ``milvus`` upserts from its workers: yes for a server, no for a
    milvus-lite file (one process owns it)."""
    return not RegionIndex.is_lite_file(milvus)


class RegionUpserter:
    """Ray Data actor: one client of the Milvus server; embedded batches in, accounting rows out."""

    def __init__(self, milvus: str, collection: str, model_version: str, token: str | None = None):
        if not upserts_from_workers(milvus):
            raise ValueError(f"{milvus} is a milvus-lite file: only the process that opens it may write it")
        self.index = RegionIndex(milvus, token=token)  # token None: this worker's $MILVUS_TOKEN
        self.collection, self.model_version = collection, model_version

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        anatomy_ids = np.asarray(batch["anatomy_id"])
        written = anatomy_ids >= 0
        keys = np.full(anatomy_ids.shape, "", dtype=object)
        if written.any():
            rows = region_rows(
                {name: np.asarray(values)[written] for name, values in batch.items()}, self.model_version
            )
            self.index.upsert(self.collection, rows)
            keys[written] = [row.key for row in rows]
        return {
            "key": keys,
            "image_id": np.asarray(batch["image_id"], dtype=object),
            "anatomy_id": anatomy_ids,
            "skip_reason": np.asarray(batch["skip_reason"], dtype=object),
        }

    def __del__(self) -> None:
        index = getattr(self, "index", None)
        if index is not None:
            index.close()
