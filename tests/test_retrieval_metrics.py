"""Retrieval metrics on worked examples (arithmetic in the comments), edge cases, and the exact
k-NN ground truth against brute force."""

from __future__ import annotations

import numpy as np
import pytest

from regionmir.anatomy import ANATOMY_NAMES
from regionmir.retrieval_metrics import (
    average_precision_at_k,
    exact_knn,
    hit_at_k,
    hit_rate_at_k,
    map_at_k,
    mrr_at_k,
    ndcg_at_k,
    precision_at_k,
    recall_at_k,
    reciprocal_rank_at_k,
    retrieval_report,
)

# Three queries, five retrieved items each; relevant = same label as the query.
#   q0 label 0: [0, 1, 0, 0, 1] -> rel [1, 0, 1, 1, 0], R = 4 relevant in the database
#   q1 label 1: [0, 0, 1, 1, 1] -> rel [0, 0, 1, 1, 1], R = 3
#   q2 label 2: [0, 1, 0, 1, 0] -> rel [0, 0, 0, 0, 0], R = 0 (nothing to find)
QUERY_LABELS = np.array([0, 1, 2])
RETRIEVED = np.array([[0, 1, 0, 0, 1], [0, 0, 1, 1, 1], [0, 1, 0, 1, 0]])
NUM_RELEVANT = np.array([4, 3, 0])


@pytest.mark.parametrize(
    "k, expected",
    [
        (1, [1.0, 0.0, 0.0]),  # q0 hits at rank 1; q1 misses
        (3, [2 / 3, 1 / 3, 0.0]),  # q0: ranks 1, 3; q1: rank 3
        (5, [3 / 5, 3 / 5, 0.0]),  # q0: 1, 3, 4; q1: 3, 4, 5
        (8, [3 / 8, 3 / 8, 0.0]),  # k > K: the 3 missing slots count as misses
    ],
)
def test_precision_at_k(k, expected):
    np.testing.assert_allclose(precision_at_k(QUERY_LABELS, RETRIEVED, k), expected)


@pytest.mark.parametrize(
    "k, num_relevant, expected",
    [
        # q0 @5, R=4: P(1)=1, P(3)=2/3, P(4)=3/4 -> (1 + 2/3 + 3/4) / min(5, 4) = (29/12) / 4 = 29/48
        # q1 @5, R=3: P(3)=1/3, P(4)=2/4, P(5)=3/5 -> (1/3 + 1/2 + 3/5) / min(5, 3) = (43/30) / 3 = 43/90
        # q2: R = 0 -> 0 by convention
        (5, NUM_RELEVANT, [29 / 48, 43 / 90, 0.0]),
        # @3: q0 (1 + 2/3) / min(3, 4) = 5/9; q1 (1/3) / min(3, 3) = 1/9
        (3, NUM_RELEVANT, [5 / 9, 1 / 9, 0.0]),
        # @1: q0 P(1)=1 / min(1, 4) = 1; q1 no hit
        (1, NUM_RELEVANT, [1.0, 0.0, 0.0]),
    ],
)
def test_average_precision_at_k(k, num_relevant, expected):
    np.testing.assert_allclose(average_precision_at_k(QUERY_LABELS, RETRIEVED, k, num_relevant), expected)


def test_map_is_the_mean_of_ap():
    # (29/48 + 43/90 + 0) / 3
    assert map_at_k(QUERY_LABELS, RETRIEVED, 5, NUM_RELEVANT) == pytest.approx((29 / 48 + 43 / 90) / 3)


def test_perfect_ranking_has_ap_one_even_when_more_relevant_exist_than_k():
    # 3 hits in 3 slots, 10 relevant in the database: (1 + 1 + 1) / min(3, 10) = 1.
    assert average_precision_at_k(np.array([7]), np.array([[7, 7, 7]]), 3, np.array([10]))[0] == 1.0


def test_num_relevant_smaller_than_hits_is_rejected():
    with pytest.raises(ValueError, match="num_relevant"):
        average_precision_at_k(np.array([0]), np.array([[0, 0]]), 2, np.array([1]))
    with pytest.raises(ValueError, match="num_relevant"):
        ndcg_at_k(np.array([0]), np.array([[0, 0]]), 2, np.array([1]))


def reference_ap_at_k(relevant: list[bool], k: int, num_relevant: int) -> float:
    """Plain AP@k ÷ min(k, R): sum of the precision at each relevant rank ≤ k, over min(k, R)."""
    found, total = 0, 0.0
    for rank, is_relevant in enumerate(relevant[:k], start=1):
        if is_relevant:
            found += 1
            total += found / rank
    return total / min(k, num_relevant) if num_relevant > 0 else 0.0


# Hand-made cases: (ranked labels for query label 1, k, R, AP@k by hand).
AP_CASES = [
    # R < k: 2 relevant rows exist, both found at ranks 1 and 3: (1/1 + 2/3) / min(5, 2) = 5/6
    ([1, 0, 1, 0, 0], 5, 2, 5 / 6),
    # R < k and only one of the two found, at rank 2: (1/2) / 2 = 1/4
    ([0, 1, 0, 0, 0], 5, 2, 1 / 4),
    # R ≥ k: one hit at rank 1 of 10 relevant rows: (1/1) / min(10, 10) = 0.1 — not 1.0
    ([1, 0, 0, 0, 0, 0, 0, 0, 0, 0], 10, 10, 0.1),
    # R > k, all k slots relevant: (1 + 1 + 1) / min(3, 50) = 1
    ([1, 1, 1], 3, 50, 1.0),
    # R ≥ k, hits at ranks 2 and 4: (1/2 + 2/4) / min(4, 7) = 1/4
    ([0, 1, 0, 1], 4, 7, 0.25),
    # no relevant item in the database: 0 by convention
    ([0, 0, 0], 3, 0, 0.0),
    # relevant items exist but none retrieved: 0
    ([0, 0, 0], 3, 5, 0.0),
    # exclusions: the query's own patient held 2 of the 3 relevant rows; left out of the ranking
    # *and* of R, one relevant row remains and is found at rank 2: (1/2) / min(3, 1) = 1/2.
    # (Had R kept the excluded rows, R = 3 and AP = (1/2) / 3 = 1/6.)
    ([0, 1, 0], 3, 3 - 2, 0.5),
]


@pytest.mark.parametrize("ranked, k, num_relevant, by_hand", AP_CASES)
def test_standard_ap_on_hand_made_cases(ranked, k, num_relevant, by_hand):
    retrieved = np.array([ranked])
    relevant = [label == 1 for label in ranked]
    assert reference_ap_at_k(relevant, k, num_relevant) == pytest.approx(by_hand)
    assert average_precision_at_k(np.array([1]), retrieved, k, np.array([num_relevant]))[0] == pytest.approx(by_hand)


def test_map_matches_the_reference_on_random_rankings():
    rng = np.random.default_rng(7)
    labels = rng.integers(0, 4, size=200)
    retrieved = rng.integers(0, 4, size=(200, 12))
    retrieved[rng.random((200, 12)) < 0.1] = -1  # some short lists
    hits = (retrieved == labels[:, None]).sum(axis=1)
    num_relevant = hits + rng.integers(0, 15, size=200)
    for k in (1, 5, 10, 12):
        expected = [reference_ap_at_k(list(retrieved[q] == labels[q]), k, int(num_relevant[q])) for q in range(200)]
        np.testing.assert_allclose(average_precision_at_k(labels, retrieved, k, num_relevant), expected, atol=1e-12)


@pytest.mark.parametrize(
    "ranked, k, num_relevant, by_hand",
    [
        # hits at ranks 1, 3 of R = 2: DCG = 1 + 1/log2(4) = 1.5; IDCG = 1 + 1/log2(3)
        ([1, 0, 1], 3, 2, 1.5 / (1 + 1 / np.log2(3))),
        # one hit at rank 1 of R = 10 at k = 3: DCG = 1; IDCG = 1 + 1/log2(3) + 1/log2(4)
        ([1, 0, 0], 3, 10, 1 / (1 + 1 / np.log2(3) + 0.5)),
        # perfect ranking with R > k
        ([1, 1], 2, 9, 1.0),
        # nothing relevant in the database
        ([0, 0], 2, 0, 0.0),
    ],
)
def test_ndcg_on_hand_made_cases(ranked, k, num_relevant, by_hand):
    value = ndcg_at_k(np.array([1]), np.array([ranked]), k, np.array([num_relevant]))[0]
    assert value == pytest.approx(by_hand)


def test_precision_and_ndcg_agree_with_torchmetrics():
    """torchmetrics scores a query from every database item's score and relevance; given the whole
    database its P@k and nDCG@k are ours (its AP divides by the hits retrieved, so it is no oracle
    for AP@k)."""
    torch = pytest.importorskip("torch")
    from torchmetrics.functional.retrieval import retrieval_normalized_dcg, retrieval_precision

    rng = np.random.default_rng(3)
    for _ in range(30):
        n = int(rng.integers(3, 40))
        k = int(rng.integers(1, min(n, 12) + 1))  # k ≤ n: past the database torchmetrics' P@k is not ours
        database_labels = rng.integers(0, 3, size=n)
        scores = rng.permutation(n).astype(np.float64)  # distinct scores: one ranking
        order = np.argsort(-scores)
        query = np.array([1])
        retrieved = database_labels[order][None, :]
        num_relevant = np.array([(database_labels == 1).sum()])
        target = torch.from_numpy(database_labels == 1)
        preds = torch.from_numpy(scores)
        ours_p = precision_at_k(query, retrieved, k)[0]
        ours_ndcg = ndcg_at_k(query, retrieved, k, num_relevant)[0]
        assert ours_p == pytest.approx(float(retrieval_precision(preds, target, top_k=k)))
        if num_relevant[0] > 0:  # torchmetrics' nDCG of a query without relevant items is 0 too, with a warning
            assert ours_ndcg == pytest.approx(float(retrieval_normalized_dcg(preds, target, top_k=k)))


@pytest.mark.parametrize(
    "k, expected_rr, expected_hit",
    [
        (1, [1.0, 0.0, 0.0], [1.0, 0.0, 0.0]),
        (3, [1.0, 1 / 3, 0.0], [1.0, 1.0, 0.0]),  # q1's first hit is at rank 3
        (5, [1.0, 1 / 3, 0.0], [1.0, 1.0, 0.0]),
    ],
)
def test_reciprocal_rank_and_hit(k, expected_rr, expected_hit):
    np.testing.assert_allclose(reciprocal_rank_at_k(QUERY_LABELS, RETRIEVED, k), expected_rr)
    np.testing.assert_allclose(hit_at_k(QUERY_LABELS, RETRIEVED, k), expected_hit)
    assert mrr_at_k(QUERY_LABELS, RETRIEVED, k) == pytest.approx(np.mean(expected_rr))
    assert hit_rate_at_k(QUERY_LABELS, RETRIEVED, k) == pytest.approx(np.mean(expected_hit))


def test_k_beyond_a_short_padded_list():
    # Two real results, then -1 padding: P@5 = 2/5; AP@5 with R = 10 is (1 + 1) / min(5, 10) = 2/5.
    retrieved = np.array([[4, 4, -1, -1]])
    assert precision_at_k(np.array([4]), retrieved, 5)[0] == pytest.approx(2 / 5)
    assert average_precision_at_k(np.array([4]), retrieved, 5, np.array([10]))[0] == pytest.approx(2 / 5)
    assert reciprocal_rank_at_k(np.array([4]), retrieved, 5)[0] == 1.0


def test_string_labels_work():
    labels = np.array(["left lung", "trachea"])
    retrieved = np.array([["right lung", "left lung"], ["trachea", "carina"]])
    np.testing.assert_allclose(precision_at_k(labels, retrieved, 2), [0.5, 0.5])
    np.testing.assert_allclose(reciprocal_rank_at_k(labels, retrieved, 2), [0.5, 1.0])


@pytest.mark.parametrize(
    "query_labels, retrieved, k",
    [
        (np.array([[0]]), np.array([[0]]), 1),  # queries not 1-D
        (np.array([0, 1]), np.array([[0, 1]]), 1),  # Q mismatch
        (np.array([0]), np.array([0, 1]), 1),  # retrieved not 2-D
        (np.array([0]), np.array([[0, 1]]), 0),  # k < 1
    ],
)
def test_bad_shapes_raise(query_labels, retrieved, k):
    with pytest.raises(ValueError):
        precision_at_k(query_labels, retrieved, k)


def test_retrieval_report_overall_per_anatomy_and_macro():
    report = retrieval_report(
        QUERY_LABELS, RETRIEVED, ks=(1, 3, 5), num_relevant=NUM_RELEVANT, label_names=ANATOMY_NAMES
    )
    assert report["num_queries"] == 3
    assert set(report) >= {"p@1", "p@3", "p@5", "map@5", "ndcg@5", "mrr@5", "hit@3", "macro", "per_anatomy"}
    assert report["p@3"] == pytest.approx((2 / 3 + 1 / 3 + 0) / 3)
    assert report["map@5"] == pytest.approx((29 / 48 + 43 / 90) / 3)
    assert report["mrr@3"] == pytest.approx((1 + 1 / 3) / 3)
    assert list(report["per_anatomy"]) == ["right lung", "right upper lung zone", "right mid lung zone"]
    assert report["per_anatomy"]["right upper lung zone"] == {
        "num_queries": 1,
        "p@1": 0.0,
        "p@3": pytest.approx(1 / 3),
        "p@5": pytest.approx(3 / 5),
        "map@1": 0.0,
        "map@3": pytest.approx(1 / 9),
        "map@5": pytest.approx(43 / 90),
        # hits at ranks 3, 4, 5 of R = 3: DCG@5 = 1/2 + 1/log2(5) + 1/log2(6); IDCG@5 = 1 + 1/log2(3) + 1/2
        "ndcg@1": 0.0,
        "ndcg@3": pytest.approx(0.5 / (1 + 1 / np.log2(3) + 0.5)),
        "ndcg@5": pytest.approx((0.5 + 1 / np.log2(5) + 1 / np.log2(6)) / (1 + 1 / np.log2(3) + 0.5)),
        "mrr@1": 0.0,
        "mrr@3": pytest.approx(1 / 3),
        "mrr@5": pytest.approx(1 / 3),
        "hit@1": 0.0,
        "hit@3": 1.0,
        "hit@5": 1.0,
    }


def test_report_micro_and_macro_differ_with_unbalanced_anatomies():
    # Label 0: three queries all hit at rank 1; label 1: one query, no hit.
    # micro p@1 = 3/4 (mean over queries); macro p@1 = (1 + 0) / 2 = 1/2 (mean over anatomies).
    report = retrieval_report(np.array([0, 0, 0, 1]), np.array([[0], [0], [0], [0]]), np.array([5, 5, 5, 2]), ks=(1,))
    assert report["p@1"] == pytest.approx(0.75)
    assert report["macro"]["p@1"] == pytest.approx(0.5)
    assert report["per_anatomy"]["0"]["num_queries"] == 3  # no names given: str(label)


# --- exact k-NN and recall -----------------------------------------------------------------------


def _brute_force(queries: np.ndarray, database: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    indices, scores = [], []
    for q in queries:
        cosines = [float(q @ d / (np.linalg.norm(q) * np.linalg.norm(d))) for d in database]
        order = sorted(range(len(database)), key=lambda i: (-cosines[i], i))[:k]
        indices.append(order)
        scores.append([cosines[i] for i in order])
    return np.array(indices), np.array(scores)


NEAR_TIE = 1e-6  # cosines closer than this may come out in either order (float32 vs float64)


def _assert_same_neighbours(indices: np.ndarray, queries: np.ndarray, database: np.ndarray, k: int) -> None:
    """``indices`` are the brute-force neighbours, up to the order of near-tied ones.

    exact_knn scores in float32 (as the index does), the reference in float64: two neighbours whose
    cosines differ by less than float32 rounding may come out in either order depending on the BLAS
    kernel. Where the reference has such a near-tie any order of the tied items is right; everywhere
    else the order must be the reference's, and every returned item must score what the reference's
    item at that rank scores.
    """
    expected_indices, expected_scores = _brute_force(queries, database, k)
    assert all(len(set(row)) == k for row in indices.tolist()), "a neighbour returned twice"
    np.testing.assert_allclose(
        np.take_along_axis(_cosines(queries, database), indices, axis=1), expected_scores, atol=NEAR_TIE
    )
    close = np.abs(np.diff(expected_scores, axis=1)) < NEAR_TIE
    near_tie = np.zeros(expected_scores.shape, dtype=bool)
    near_tie[:, 1:] |= close
    near_tie[:, :-1] |= close
    np.testing.assert_array_equal(indices[~near_tie], expected_indices[~near_tie])


def _cosines(queries: np.ndarray, database: np.ndarray) -> np.ndarray:
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    d = database / np.linalg.norm(database, axis=1, keepdims=True)
    return q @ d.T


@pytest.mark.parametrize("k, batch_size", [(1, 1024), (10, 7), (300, 64)])
def test_exact_knn_matches_brute_force(k, batch_size):
    rng = np.random.default_rng(0)
    queries = rng.normal(size=(20, 8))
    database = rng.normal(size=(300, 8))
    indices, scores = exact_knn(queries, database, k, batch_size=batch_size)
    _, expected_scores = _brute_force(queries, database, k)
    assert indices.shape == (20, k) and indices.dtype == np.int64 and scores.dtype == np.float32
    np.testing.assert_allclose(scores, expected_scores, atol=NEAR_TIE)
    _assert_same_neighbours(indices, queries, database, k)


def test_the_near_tie_check_forgives_only_near_ties():
    queries = np.array([[1.0, 0.0]])
    # Cosines to the query: row 0 and row 1 differ by ~1e-8 (a near-tie), row 2 is clearly lower.
    database = np.array([[1.0, 1e-4], [1.0, 1.0e-4 + 1e-8], [1.0, 1.0]])
    _assert_same_neighbours(np.array([[1, 0, 2]]), queries, database, 3)  # tied pair swapped: fine
    with pytest.raises(AssertionError):
        _assert_same_neighbours(np.array([[0, 2, 1]]), queries, database, 3)  # a clear order broken
    with pytest.raises(AssertionError):
        _assert_same_neighbours(np.array([[0, 0, 2]]), queries, database, 3)  # a neighbour twice


def test_exact_knn_ties_go_to_the_lower_index_even_at_the_boundary():
    # Cosines to [1, 0]: rows 1, 2, 4 are all 1.0 (rows 2 and 4 are scaled copies), row 3 is 0.707.
    database = np.array([[0, 1], [1, 0], [2, 0], [1, 1], [3, 0]], dtype=np.float32)
    indices, scores = exact_knn(np.array([[1.0, 0.0]]), database, 2)
    np.testing.assert_array_equal(indices, [[1, 2]])
    np.testing.assert_allclose(scores, [[1.0, 1.0]])
    indices, _ = exact_knn(np.array([[1.0, 0.0]]), database, 4)
    np.testing.assert_array_equal(indices, [[1, 2, 4, 3]])


def test_exact_knn_clamps_k_and_handles_zero_vectors():
    database = np.array([[1.0, 0.0], [0.0, 0.0]])
    indices, scores = exact_knn(np.array([[0.0, 0.0], [1.0, 0.0]]), database, 5)
    assert indices.shape == (2, 2)
    np.testing.assert_allclose(scores[0], [0.0, 0.0])  # a zero query is equally far from all
    np.testing.assert_array_equal(indices[1], [0, 1])


@pytest.mark.parametrize(
    "found, true, expected",
    [
        ([[1, 2, 3], [4, 5, 6]], [[1, 2, 9], [6, 5, 4]], (2 / 3 + 1) / 2),  # order does not matter
        ([[1, 1, 1]], [[1, 2, 3]], 1 / 3),  # duplicates count once
        ([[-1, 1, 7]], [[1, -1, -1]], 1.0),  # padding on both sides
        ([[5, 6]], [[-1, -1]], 1.0),  # nothing to find
        ([[8, 9]], [[1, 2]], 0.0),
    ],
)
def test_recall_at_k(found, true, expected):
    assert recall_at_k(np.array(found), np.array(true)) == pytest.approx(expected)


def test_recall_of_exact_knn_against_itself_is_one():
    rng = np.random.default_rng(1)
    database = rng.normal(size=(100, 4))
    true_ids, _ = exact_knn(database[:10], database, 5)
    assert recall_at_k(true_ids, true_ids) == 1.0
