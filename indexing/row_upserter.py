"""Upserts from the Ray Data workers: embedded regions go from the encoders straight into a Milvus
server, and the driver reads back only what it needs to account for them.

``regionmir index`` against a **server** (``http(s)://host:port``: a Milvus standalone or cluster,
or a ``milvus-lite server``) appends :class:`RegionUpserter`, an actor pool after the encoders
(``--upserters``, default ``IndexJob.upserters``: two, so one is sending while the other
builds its next entities). Each actor opens its own client — with the driver's ``$MILVUS_TOKEN``,
handed to it as a constructor argument (so not in the job's ``runtime_env``, which the Ray
dashboard's job table shows; it is still in the actor's creation arguments that Ray's control
store keeps), or else its own worker's ``$MILVUS_TOKEN`` (a Kubernetes pod's, from its
Secret) — turns a batch into rows (:func:`indexing.index_rows.region_rows`) and upserts them, and
returns one small accounting row per region (:data:`ACCOUNTING_COLUMNS`: the row's key, its film,
its anatomy, and a skipped film's reason). No vector and no crop reaches the driver, and no single
process writes every row: what caps one writer (one process turning ~10⁷ rows into entities and
sending them) is spread over the pool.

A **milvus-lite file** keeps its one writer, the driver (``indexing.build._BackgroundWriter``):
the process that opens the file owns it. ``--upserters 0`` makes the driver write to a server too
(a server that only the driver's machine reaches, e.g. through a port-forward).

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


def upserts_from_workers(milvus: str, upserters: int = 1) -> bool:
    """Whether a job writing to ``milvus`` with ``upserters`` actors upserts from its workers: yes
    for a server (whose URI the workers must reach), no for a milvus-lite file (one process owns
    it) or with no upserting actors (``--upserters 0``: the driver writes to the server)."""
    return upserters > 0 and not RegionIndex.is_lite_file(milvus)


class RegionUpserter:
    """Ray Data actor: one client of the Milvus server; embedded batches in, accounting rows out."""

    def __init__(self, milvus: str, collection: str, model_version: str, token: str | None = None):
        if RegionIndex.is_lite_file(milvus):
            raise ValueError(f"{milvus} is a milvus-lite file: only the process that opens it may write it")
        self.milvus, self.token = milvus, token  # token None: this worker's $MILVUS_TOKEN
        self.collection, self.model_version = collection, model_version
        self.index: RegionIndex | None = None

    def _connected(self) -> RegionIndex:
        # on the first batch, not in the constructor: an error of a call reaches the driver as itself
        # (its cause), one of an actor's creation only as the text of the actor's death
        if self.index is None:
            self.index = RegionIndex(self.milvus, token=self.token)
        return self.index

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        anatomy_ids = np.asarray(batch["anatomy_id"])
        written = anatomy_ids >= 0
        keys = np.full(anatomy_ids.shape, "", dtype=object)
        if written.any():
            rows = region_rows(
                {name: np.asarray(values)[written] for name, values in batch.items()}, self.model_version
            )
            self._connected().upsert(self.collection, rows)
            keys[written] = [row.key for row in rows]
        columns = {"key": keys, "anatomy_id": anatomy_ids}
        return {name: columns.get(name, np.asarray(batch.get(name), dtype=object)) for name in ACCOUNTING_COLUMNS}

    def __del__(self) -> None:
        index = getattr(self, "index", None)
        if index is not None:
            index.close()
