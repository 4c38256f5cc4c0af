"""Retrieval quality on the anatomy label: precision, AP/mAP, nDCG, reciprocal rank, hit rate @k.

The paper judges retrieval by eye; we measure it as CheXtriev does (MICCAI 2024): a retrieved
ROI is *relevant* when its anatomy label equals the query's. Every metric takes

- ``query_labels``: (Q,) the label of each query, and
- ``retrieved_labels``: (Q, K) the labels of the K retrieved items, best first,

as NumPy arrays (ints or strings). Lists shorter than K are padded with a value that is never a
query label (e.g. -1); a padded slot, or a slot beyond K when k > K, counts as *not relevant*, so a
system that returns fewer than k items is penalised, not excused.

AP@k and nDCG@k also take ``num_relevant``: (Q,) the number R of relevant items *in the
database* for each query, counted after the same exclusions as the ranking (model version, same
patient). AP@k is divided by min(k, R), the standard definition; no other variant is reported.

Per-query functions return (Q,) arrays (``precision_at_k``, ``average_precision_at_k``,
``ndcg_at_k``, ``reciprocal_rank_at_k``, ``hit_at_k``); ``map_at_k``, ``mrr_at_k`` and
``hit_rate_at_k`` are their means over queries. :func:`retrieval_report` gathers them overall and per anatomy.

For index recall (is the ANN index as good as brute force?) :func:`exact_knn` is the cosine
ground truth and :func:`recall_at_k` compares id lists.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

__all__ = [
    "relevance",
    "precision_at_k",
    "average_precision_at_k",
    "map_at_k",
    "ndcg_at_k",
    "reciprocal_rank_at_k",
    "mrr_at_k",
    "hit_at_k",
    "hit_rate_at_k",
    "retrieval_report",
    "exact_knn",
    "recall_at_k",
]


def relevance(query_labels: np.ndarray, retrieved_labels: np.ndarray, k: int) -> np.ndarray:
    """(Q, k) boolean matrix: is the i-th retrieved item of query q relevant (same label)?

    Columns beyond the K retrieved items (k > K) are False.
    """
    query_labels = np.asarray(query_labels)
    retrieved_labels = np.asarray(retrieved_labels)
    if query_labels.ndim != 1:
        raise ValueError(f"query_labels must be (Q,); got shape {query_labels.shape}")
    if retrieved_labels.ndim != 2 or retrieved_labels.shape[0] != query_labels.shape[0]:
        raise ValueError(
            f"retrieved_labels must be (Q, K) with Q={query_labels.shape[0]}; got shape {retrieved_labels.shape}"
        )
    if k < 1:
        raise ValueError(f"k must be >= 1; got {k}")
    hits = retrieved_labels[:, :k] == query_labels[:, None]
    if hits.shape[1] < k:
        hits = np.pad(hits, ((0, 0), (0, k - hits.shape[1])), constant_values=False)
    return hits


def precision_at_k(query_labels: np.ndarray, retrieved_labels: np.ndarray, k: int) -> np.ndarray:
    """(Q,) P@k = (number of relevant items among the first k) / k."""
    return relevance(query_labels, retrieved_labels, k).sum(axis=1) / k


def _checked_num_relevant(num_relevant: np.ndarray, hits: np.ndarray) -> np.ndarray:
    num_relevant = np.asarray(num_relevant)
    if num_relevant.shape != (hits.shape[0],):
        raise ValueError(f"num_relevant must be (Q,) = ({hits.shape[0]},); got {num_relevant.shape}")
    if np.any(num_relevant < hits.sum(axis=1)):
        raise ValueError(
            "num_relevant is below the number of relevant items retrieved for some query "
            "(R must be counted after the same exclusions as the ranking)"
        )
    return num_relevant


def average_precision_at_k(
    query_labels: np.ndarray,
    retrieved_labels: np.ndarray,
    k: int,
    num_relevant: np.ndarray,
) -> np.ndarray:
    """(Q,) AP@k = (1 / min(k, R)) · Σ_{i≤k} P(i) · rel(i).

    P(i) is the precision at cut-off i, rel(i) is 1 when the i-th item is relevant, and R is the
    number of relevant items *in the database* for that query (``num_relevant``, (Q,)), counted
    after the same exclusions as the ranking. Dividing by min(k, R) — the best number of hits
    achievable in k slots — makes a perfect ranking score 1 even when R > k, and a ranking that
    finds one of ten relevant items at rank 1 score 0.1, not 1. This is the common definition
    (e.g. the ``apk`` of Kaggle's ml_metrics); ``ranx`` divides by R instead, ``torchmetrics`` by
    the relevant items retrieved.

    A query with no relevant item in the database (R = 0) has AP 0.
    """
    hits = relevance(query_labels, retrieved_labels, k)
    num_relevant = _checked_num_relevant(num_relevant, hits)
    ranks = np.arange(1, k + 1)
    precision_at_each_rank = np.cumsum(hits, axis=1) / ranks
    summed = (precision_at_each_rank * hits).sum(axis=1)
    denominator = np.minimum(k, num_relevant)
    return np.divide(summed, denominator, out=np.zeros(hits.shape[0]), where=denominator > 0)


def map_at_k(
    query_labels: np.ndarray,
    retrieved_labels: np.ndarray,
    k: int,
    num_relevant: np.ndarray,
) -> float:
    """mAP@k: the mean over queries of :func:`average_precision_at_k`."""
    return float(np.mean(average_precision_at_k(query_labels, retrieved_labels, k, num_relevant)))


def ndcg_at_k(
    query_labels: np.ndarray,
    retrieved_labels: np.ndarray,
    k: int,
    num_relevant: np.ndarray,
) -> np.ndarray:
    """(Q,) nDCG@k with binary relevance: DCG@k / IDCG@k.

    DCG@k = Σ_{i≤k} rel(i) / log2(i + 1); IDCG@k is the DCG of the ideal ranking, min(k, R)
    relevant items first, with R = ``num_relevant`` (relevant items in the database). A query with
    R = 0 scores 0. (This is the definition of ``ranx`` and of torchmetrics' retrieval nDCG given
    the whole database.)
    """
    hits = relevance(query_labels, retrieved_labels, k)
    num_relevant = _checked_num_relevant(num_relevant, hits)
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    dcg = (hits * discounts).sum(axis=1)
    ideal = np.concatenate([[0.0], np.cumsum(discounts)])[np.minimum(k, num_relevant)]
    return np.divide(dcg, ideal, out=np.zeros(hits.shape[0]), where=ideal > 0)


def reciprocal_rank_at_k(query_labels: np.ndarray, retrieved_labels: np.ndarray, k: int) -> np.ndarray:
    """(Q,) 1 / (rank of the first relevant item), 0 when none is in the first k."""
    hits = relevance(query_labels, retrieved_labels, k)
    first = hits.argmax(axis=1)  # index of the first True; 0 also when there is none
    return np.where(hits.any(axis=1), 1.0 / (first + 1), 0.0)


def mrr_at_k(query_labels: np.ndarray, retrieved_labels: np.ndarray, k: int) -> float:
    """MRR@k: the mean over queries of :func:`reciprocal_rank_at_k`."""
    return float(np.mean(reciprocal_rank_at_k(query_labels, retrieved_labels, k)))


def hit_at_k(query_labels: np.ndarray, retrieved_labels: np.ndarray, k: int) -> np.ndarray:
    """(Q,) 1.0 when at least one of the first k items is relevant, else 0.0."""
    return relevance(query_labels, retrieved_labels, k).any(axis=1).astype(np.float64)


def hit_rate_at_k(query_labels: np.ndarray, retrieved_labels: np.ndarray, k: int) -> float:
    """Hit rate@k: the fraction of queries with a relevant item in the first k."""
    return float(np.mean(hit_at_k(query_labels, retrieved_labels, k)))


def _per_query_metrics(
    query_labels: np.ndarray,
    retrieved_labels: np.ndarray,
    ks: Sequence[int],
    num_relevant: np.ndarray,
) -> dict[str, np.ndarray]:
    metrics: dict[str, np.ndarray] = {}
    for name, metric in (
        ("p", precision_at_k),
        ("map", average_precision_at_k),
        ("ndcg", ndcg_at_k),
        ("mrr", reciprocal_rank_at_k),
        ("hit", hit_at_k),
    ):
        for k in ks:
            if metric in (average_precision_at_k, ndcg_at_k):
                metrics[f"{name}@{k}"] = metric(query_labels, retrieved_labels, k, num_relevant)
            else:
                metrics[f"{name}@{k}"] = metric(query_labels, retrieved_labels, k)
    return metrics


def _label_name(label, label_names: Sequence[str] | Mapping | None) -> str:
    if label_names is None:
        return str(label)
    if isinstance(label_names, Mapping):
        return str(label_names.get(label, label))
    return str(label_names[int(label)])


def retrieval_report(
    query_labels: np.ndarray,
    retrieved_labels: np.ndarray,
    num_relevant: np.ndarray,
    ks: Sequence[int] = (1, 3, 5, 10),
    label_names: Sequence[str] | Mapping | None = None,
) -> dict:
    """All metrics at every k, overall and per anatomy, as a JSON-ready dict.

    Args:
        query_labels: (Q,) label of each query.
        retrieved_labels: (Q, K) labels of the retrieved items, best first.
        num_relevant: (Q,) number of relevant items in the database per query, counted after the
            same exclusions as the ranking: the R of AP@k and nDCG@k.
        ks: cut-offs; keys are ``p@k``, ``map@k``, ``ndcg@k``, ``mrr@k``, ``hit@k`` for each.
        label_names: names for the ``per_anatomy`` keys: a sequence indexed by integer label
            (e.g. :data:`regionmir.anatomy.ANATOMY_NAMES`) or a mapping; default ``str(label)``.

    Returns:
        ``{"num_queries": Q, "p@1": ..., ..., "macro": {metric: mean over anatomies},
        "per_anatomy": {name: {"num_queries": n, "p@1": ..., ...}}}``. The top-level values are
        means over queries (micro); ``macro`` weighs every anatomy equally.
    """
    query_labels = np.asarray(query_labels)
    if query_labels.shape[0] == 0:
        raise ValueError("no queries")
    num_relevant = np.asarray(num_relevant)
    per_query = _per_query_metrics(query_labels, retrieved_labels, ks, num_relevant)

    report: dict = {"num_queries": int(query_labels.shape[0])}
    report.update({name: float(values.mean()) for name, values in per_query.items()})

    per_anatomy: dict[str, dict] = {}
    for label in np.unique(query_labels):
        mask = query_labels == label
        entry: dict = {"num_queries": int(mask.sum())}
        entry.update({name: float(values[mask].mean()) for name, values in per_query.items()})
        per_anatomy[_label_name(label.item() if isinstance(label, np.generic) else label, label_names)] = entry
    report["macro"] = {name: float(np.mean([entry[name] for entry in per_anatomy.values()])) for name in per_query}
    report["per_anatomy"] = per_anatomy
    return report


def exact_knn(
    query_vecs: np.ndarray,
    db_vecs: np.ndarray,
    k: int,
    batch_size: int = 1024,
) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force cosine nearest neighbours: the ground truth an ANN index is measured against.

    Args:
        query_vecs: (Q, D) float vectors (need not be normalised).
        db_vecs: (N, D) float vectors.
        k: neighbours per query; clamped to N.
        batch_size: queries scored at once, to bound memory at batch_size × N floats.

    Returns:
        indices: (Q, min(k, N)) int64 rows of ``db_vecs``, most similar first.
        scores: (Q, min(k, N)) float32 cosine similarities, non-increasing along each row.

    Scores are float32, as the index stores them. Equal scores are ordered by ascending database
    index, also at the k-th boundary, so the result is deterministic. A zero vector has cosine 0
    with everything.
    """
    query_vecs = np.asarray(query_vecs, dtype=np.float32)
    db_vecs = np.asarray(db_vecs, dtype=np.float32)
    if query_vecs.ndim != 2 or db_vecs.ndim != 2 or query_vecs.shape[1] != db_vecs.shape[1]:
        raise ValueError(f"need (Q, D) queries and (N, D) database; got {query_vecs.shape} and {db_vecs.shape}")
    if k < 1:
        raise ValueError(f"k must be >= 1; got {k}")
    k = min(k, db_vecs.shape[0])
    queries = _unit_rows(query_vecs)
    database = _unit_rows(db_vecs)

    indices = np.empty((queries.shape[0], k), dtype=np.int64)
    scores = np.empty((queries.shape[0], k), dtype=np.float32)
    for start in range(0, queries.shape[0], batch_size):
        similarity = queries[start : start + batch_size] @ database.T
        top = _top_k_stable(similarity, k)
        indices[start : start + batch_size] = top
        scores[start : start + batch_size] = np.take_along_axis(similarity, top, axis=1)
    return indices, scores


def _unit_rows(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 0)


def _top_k_stable(similarity: np.ndarray, k: int) -> np.ndarray:
    """(rows, k) column indices of the k largest values per row; ties by ascending column.

    argpartition is O(N) but picks arbitrarily among values tied at the k-th place; those rows
    (rare with real embeddings) fall back to a stable full sort.
    """
    n = similarity.shape[1]
    if k == n:
        return np.argsort(-similarity, axis=1, kind="stable")
    candidates = np.argpartition(-similarity, k - 1, axis=1)[:, :k]
    kth_value = np.take_along_axis(similarity, candidates, axis=1).min(axis=1)
    tied_at_boundary = (similarity >= kth_value[:, None]).sum(axis=1) > k
    for row in np.flatnonzero(tied_at_boundary):
        candidates[row] = np.argsort(-similarity[row], kind="stable")[:k]
    values = np.take_along_axis(similarity, candidates, axis=1)
    # lexsort's last key is the primary one: by descending value, then ascending index.
    order = np.lexsort((candidates, -values), axis=1)
    return np.take_along_axis(candidates, order, axis=1)


def recall_at_k(found_ids: np.ndarray, true_ids: np.ndarray) -> float:
    """Mean over queries of |found ∩ true| / |true|: how much of the exact top-k an index found.

    Args:
        found_ids: (Q, K') ids returned by the index (extra columns beyond k are the caller's
            business: slice to k first). Negative ids are padding and never match.
        true_ids: (Q, k) exact neighbours, e.g. from :func:`exact_knn`. Negative ids are padding
            and are not counted in |true|.

    A query whose true list is all padding scores 1 (there was nothing to find).

    Ties: if several database items share the k-th score, the exact list holds only some of them,
    and an index returning another of the tied items is counted as a miss.
    """
    found_ids = np.asarray(found_ids)
    true_ids = np.asarray(true_ids)
    if found_ids.ndim != 2 or true_ids.ndim != 2 or found_ids.shape[0] != true_ids.shape[0]:
        raise ValueError(f"need (Q, K') found and (Q, k) true ids; got {found_ids.shape} and {true_ids.shape}")
    valid_true = true_ids >= 0
    # Each true id counts once, however many times the index returned it.
    found = (true_ids[:, :, None] == found_ids[:, None, :]).any(axis=2) & valid_true
    sizes = valid_true.sum(axis=1)
    per_query = np.divide(found.sum(axis=1), sizes, out=np.ones(true_ids.shape[0]), where=sizes > 0)
    return float(per_query.mean())
