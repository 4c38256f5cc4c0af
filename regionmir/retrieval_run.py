"""A retrieval run and its relevance counts, as TSV files anyone can recompute the metrics from.

``regionmir evaluate --report DIR`` writes two files beside ``metrics.json``:

- ``run.tsv``: one line per query and rank — ``query_key``, ``query_anatomy``, ``rank`` (1-based),
  ``hit_key``, ``hit_anatomy``, ``score`` (cosine similarity);
- ``qrels.tsv``: one line per query — ``query_key``, ``num_relevant`` (R: the rows of the query's
  anatomy in the searched part of the index, after the same exclusions as the ranking) and
  ``query_anatomy`` (so queries that retrieved nothing still count, per anatomy too).

Each file starts with a header line naming its columns. A hit is relevant when its anatomy equals
the query's, as in :mod:`regionmir.retrieval_metrics`; :meth:`RetrievalRun.report` is exactly the
computation behind ``metrics.json``, so the figures can be checked from the files alone.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from .retrieval_metrics import retrieval_report

RUN_COLUMNS = ("query_key", "query_anatomy", "rank", "hit_key", "hit_anatomy", "score")
QRELS_COLUMNS = ("query_key", "num_relevant", "query_anatomy")

#: Fills the slots of a query that got fewer than k hits; never an anatomy name.
_NO_HIT = ""


@dataclass(frozen=True)
class RankedHit:
    """One retrieved row: its index key, anatomy name and cosine score."""

    key: str
    anatomy: str
    score: float


@dataclass
class RetrievalRun:
    """Queries (key, anatomy, R) and their ranked hits, best first."""

    query_keys: list[str] = field(default_factory=list)
    query_anatomies: list[str] = field(default_factory=list)
    num_relevant: list[int] = field(default_factory=list)
    hits: list[list[RankedHit]] = field(default_factory=list)

    def add(self, query_key: str, query_anatomy: str, num_relevant: int, hits: Sequence[RankedHit]) -> None:
        for name, value in (("query_key", query_key), ("query_anatomy", query_anatomy)):
            if not value or any(c in value for c in "\t\r\n"):
                raise ValueError(f"{name} must be non-empty text without tabs or line breaks, got {value!r}")
        if num_relevant < 0:
            raise ValueError(f"num_relevant must be >= 0, got {num_relevant}")
        self.query_keys.append(query_key)
        self.query_anatomies.append(query_anatomy)
        self.num_relevant.append(int(num_relevant))
        self.hits.append(list(hits))

    def __len__(self) -> int:
        return len(self.query_keys)

    def retrieved_anatomies(self, k: int) -> np.ndarray:
        """(Q, k) anatomy names of the first k hits of every query, padded with ``""``."""
        table = np.full((len(self), k), _NO_HIT, dtype=object)
        for q, hits in enumerate(self.hits):
            for r, hit in enumerate(hits[:k]):
                table[q, r] = hit.anatomy
        return table

    def report(self, ks: Sequence[int]) -> dict:
        """:func:`~regionmir.retrieval_metrics.retrieval_report` of this run (per anatomy by name)."""
        depth = max(ks)
        return retrieval_report(
            np.asarray(self.query_anatomies, dtype=object),
            self.retrieved_anatomies(depth),
            np.asarray(self.num_relevant),
            ks=ks,
        )

    # -- files

    def run_tsv(self) -> str:
        lines = ["\t".join(RUN_COLUMNS)]
        for key, anatomy, hits in zip(self.query_keys, self.query_anatomies, self.hits):
            for rank, hit in enumerate(hits, start=1):
                lines.append(f"{key}\t{anatomy}\t{rank}\t{hit.key}\t{hit.anatomy}\t{hit.score!r}")
        return "\n".join(lines) + "\n"

    def qrels_tsv(self) -> str:
        lines = ["\t".join(QRELS_COLUMNS)]
        for key, r, anatomy in zip(self.query_keys, self.num_relevant, self.query_anatomies):
            lines.append(f"{key}\t{r}\t{anatomy}")
        return "\n".join(lines) + "\n"

    @classmethod
    def from_tsv(cls, run_text: str, qrels_text: str, *, source: str = "run") -> RetrievalRun:
        """Read the two files back; every query of ``qrels`` is a query (with or without hits)."""
        run = cls()
        position: dict[str, int] = {}
        for number, cells in _rows(qrels_text, QRELS_COLUMNS, f"{source}/qrels.tsv"):
            key, r, anatomy = cells
            if key in position:
                raise ValueError(f"{source}/qrels.tsv line {number}: query {key!r} listed twice")
            position[key] = len(run)
            run.add(key, anatomy, _int(r, f"{source}/qrels.tsv line {number}"), [])
        for number, cells in _rows(run_text, RUN_COLUMNS, f"{source}/run.tsv"):
            key, anatomy, rank, hit_key, hit_anatomy, score = cells
            where = f"{source}/run.tsv line {number}"
            if key not in position:
                raise ValueError(f"{where}: query {key!r} is not in qrels.tsv")
            hits = run.hits[position[key]]
            if _int(rank, where) != len(hits) + 1:
                raise ValueError(f"{where}: rank {rank} of query {key!r} out of order (expected {len(hits) + 1})")
            value = float(score)
            if not math.isfinite(value):
                raise ValueError(f"{where}: score {score!r} is not a finite number")
            hits.append(RankedHit(hit_key, hit_anatomy, value))
        return run


def _rows(text: str, columns: tuple[str, ...], where: str):
    lines = text.splitlines()
    if not lines or lines[0].split("\t") != list(columns):
        raise ValueError(f"{where}: the first line must be the header {chr(9).join(columns)!r}")
    for number, line in enumerate(lines[1:], start=2):
        if not line:
            continue
        cells = line.split("\t")
        if len(cells) != len(columns):
            raise ValueError(f"{where} line {number}: {len(cells)} columns, expected {len(columns)}")
        yield number, cells


def _int(text: str, where: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{where}: {text!r} is not an integer") from None
