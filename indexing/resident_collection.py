"""A region collection held in this process's memory and searched exactly: :class:`ResidentCollection`.

Why: milvus-lite 3 (the embedded default) is pure Python; every search walks every row of the
collection in a Python loop (deduplicating primary keys and checking tombstones) before any index
is used, so its latency grows with the row count whatever the index type — about 150–180 ms at
100k rows on one core of our machine, at every index type, and its IVF/HNSW indexes miss
neighbours once a search is filtered by anatomy. A milvus-lite file is locked by the one process
that opens it, so that process sees every write: it can hold the rows itself, search them exactly
(one matrix product, the filters as column masks) and drop them whenever it writes. The file stays
the store — rows are written, counted, deleted and looked up in milvus-lite as before — and every
answer is exact (recall 1.0), filtered or not.

:class:`~indexing.region_index.RegionIndex` uses this for ``.db`` files (``resident_search=True``,
the default there); Milvus servers keep searching with their own index. Memory: the vectors
(``rows × dim × 4`` bytes: 51 MB at 100k rows × 128) plus the scalar columns (about as much again).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from .index_rows import RegionHit
from .index_schema import OUTPUT_FIELDS

#: The string columns a search filters on or returns (every output field but the key, the anatomy
#: id and the box).
_STRING_COLUMNS = tuple(f for f in OUTPUT_FIELDS if f not in ("key", "anatomy_id", "box"))


@dataclass
class _Codes:
    """One string column as small integer codes plus the distinct values (filters compare codes)."""

    values: np.ndarray  # distinct strings, sorted
    codes: np.ndarray  # per row, index into values

    @classmethod
    def of(cls, column: list[str]) -> _Codes:
        values, codes = np.unique(np.asarray(column, dtype=object).astype(str), return_inverse=True)
        return cls(values.astype(object), codes.astype(np.int32))

    def code(self, value: str) -> int:
        """The code of ``value``, or -1 when no row holds it."""
        at = int(np.searchsorted(self.values, value))
        return at if at < len(self.values) and self.values[at] == value else -1

    def __getitem__(self, row: int) -> str:
        return str(self.values[self.codes[row]])


class ResidentCollection:
    """Every row of one collection in memory: unit vectors, anatomy ids, boxes and the string columns.

    Build it with :meth:`from_rows` (dicts with the collection's fields, ``vector`` included) and
    :meth:`search` it like :meth:`RegionIndex.search <indexing.region_index.RegionIndex.search>`.
    """

    def __init__(self, rows: Iterable[Mapping], dim: int):
        keys: list[str] = []
        anatomy_ids: list[int] = []
        boxes: list[list[float]] = []
        vectors: list[np.ndarray] = []
        strings: dict[str, list[str]] = {name: [] for name in _STRING_COLUMNS}
        for row in rows:
            keys.append(str(row["key"]))
            anatomy_ids.append(int(row["anatomy_id"]))
            boxes.append([float(v) for v in row["box"]])
            vectors.append(np.asarray(row["vector"], dtype=np.float32))
            for name in _STRING_COLUMNS:
                strings[name].append(str(row[name]))
        self.dim = int(dim)
        self.keys = np.asarray(keys, dtype=object)
        self.anatomy_ids = np.asarray(anatomy_ids, dtype=np.int32)
        self.boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        matrix = np.stack(vectors).astype(np.float32) if vectors else np.zeros((0, self.dim), np.float32)
        norms = np.linalg.norm(matrix, axis=1, keepdims=True)
        self.vectors = matrix / np.maximum(norms, 1e-12)  # cosine similarity = dot product of unit vectors
        self.columns = {name: _Codes.of(strings[name]) for name in _STRING_COLUMNS}

    @property
    def rows(self) -> int:
        return len(self.keys)

    @property
    def nbytes(self) -> int:
        """Memory held by the arrays (the distinct strings not counted)."""
        return int(
            self.vectors.nbytes
            + self.anatomy_ids.nbytes
            + self.boxes.nbytes
            + self.keys.nbytes
            + sum(c.codes.nbytes for c in self.columns.values())
        )

    def mask(
        self,
        *,
        anatomy_id: int | None = None,
        equal: Mapping[str, str | None] | None = None,
        exclude_patient_hash: str | None = None,
    ) -> np.ndarray | None:
        """Rows kept by the filters (``None``: all): the same rows as
        :func:`~indexing.index_filters.build_filter`'s expression."""
        keep: np.ndarray | None = None

        def both(m: np.ndarray) -> None:
            nonlocal keep
            keep = m if keep is None else keep & m

        if anatomy_id is not None:
            both(self.anatomy_ids == int(anatomy_id))
        for name, value in (equal or {}).items():
            if value is not None:
                both(self.columns[name].codes == self.columns[name].code(value))
        if exclude_patient_hash:
            both(self.columns["patient_hash"].codes != self.columns["patient_hash"].code(exclude_patient_hash))
        return keep

    def search(
        self,
        queries: np.ndarray,
        k: int,
        keep: np.ndarray | None = None,
        group_field: str | None = None,
    ) -> list[list[RegionHit]]:
        """The ``k`` rows most similar (cosine) to each query among the ``keep`` rows, best first.

        ``group_field`` (``study_hash``, ``patient_hash``, ``image_id``): only the best row of each
        value (an empty value is a group of its own)."""
        candidates = np.arange(self.rows) if keep is None else np.flatnonzero(keep)
        queries = np.asarray(queries, dtype=np.float32)
        queries = queries / np.maximum(np.linalg.norm(queries, axis=1, keepdims=True), 1e-12)
        if candidates.size == 0:
            return [[] for _ in range(len(queries))]
        rows = self.vectors if keep is None else self.vectors[candidates]
        scores = queries @ rows.T  # (queries, candidates)
        answers = []
        for q in range(len(queries)):
            if group_field is None:
                order = self._top(scores[q], k)
            else:
                order = self._top_per_group(scores[q], candidates, k, self.columns[group_field])
            answers.append([self._hit(int(candidates[i]), float(scores[q, i])) for i in order])
        return answers

    @staticmethod
    def _top(scores: np.ndarray, k: int) -> np.ndarray:
        if k < scores.size:
            best = np.argpartition(-scores, k - 1)[:k]
        else:
            best = np.arange(scores.size)
        return best[np.argsort(-scores[best], kind="stable")]

    @staticmethod
    def _top_per_group(scores: np.ndarray, candidates: np.ndarray, k: int, groups: _Codes) -> list[int]:
        empty = groups.code("")
        page = min(scores.size, 8 * k)
        while True:  # the best `page` rows first; all of them only when those hold fewer than k groups
            order = ResidentCollection._top(scores, page)
            chosen: list[int] = []
            seen: set[int] = set()
            for i in order:
                group = int(groups.codes[candidates[i]])
                if group != empty:
                    if group in seen:
                        continue
                    seen.add(group)
                chosen.append(int(i))
                if len(chosen) == k:
                    return chosen
            if page == scores.size:
                return chosen
            page = scores.size

    def _hit(self, row: int, score: float) -> RegionHit:
        def text(name: str) -> str:
            return self.columns[name][row]

        return RegionHit(
            key=str(self.keys[row]),
            score=score,
            anatomy=text("anatomy"),
            anatomy_id=int(self.anatomy_ids[row]),
            image_id=text("image_id"),
            image_uri=text("image_uri"),
            box=tuple(float(v) for v in self.boxes[row]),  # type: ignore[arg-type]
            view=text("view"),
            split=text("split"),
            patient_hash=text("patient_hash"),
            study_hash=text("study_hash"),
            model_version=text("model_version"),
            box_source=text("box_source"),
        )
