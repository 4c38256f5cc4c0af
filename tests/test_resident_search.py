"""indexing.resident_collection through RegionIndex: a milvus-lite file's searches answered from this
process's in-memory copy give exactly milvus-lite's own exact (FLAT) answers, filtered and grouped,
and see every write made through any RegionIndex of the process."""

from __future__ import annotations

import pickle
from dataclasses import replace

import numpy as np
import pytest
from test_region_index import DIM, ODD_VIEW, make_rows, unit

from indexing.region_index import RegionIndex, search_resident
from regionmir.errors import DimensionMismatchError, IndexNotFoundError, UnknownAnatomyError


@pytest.fixture
def lite_pair(tmp_path):
    """A FLAT collection of 600 rows (two model versions) and two clients of the same file: one
    answering from memory (the default for files), one asking milvus-lite itself."""
    path = str(tmp_path / "regions.db")
    resident = RegionIndex(path)
    assert resident.resident_search, "a milvus-lite file is searched from memory by default"
    resident.create_collection("regions", DIM, index_type="FLAT")
    resident.upsert("regions", make_rows(500) + make_rows(100, seed=1, model_version="m2", prefix="other"))
    resident.flush("regions")
    lite = RegionIndex(path, resident_search=False)
    yield resident, lite
    resident.close()
    lite.close()


def keys(hits) -> list[list[str]]:
    return [[h.key for h in page] for page in hits]


SEARCHES = [
    {},
    {"anatomy": "heart"},
    {"anatomy": 9, "view": "AP"},
    {"view": ODD_VIEW},
    {"split": "test", "model_version": "m1"},
    {"model_version": "m2"},
    {"anatomy": 0, "exclude_patient_hash": make_rows(1)[0].patient_hash},
    {"group_by": "study"},
    {"group_by": "patient", "anatomy": 17},
    {"group_by": "image", "model_version": "m1"},
]


@pytest.mark.parametrize("filters", SEARCHES, ids=[str(s) or "plain" for s in SEARCHES])
def test_resident_answers_are_milvus_lites_exact_answers(lite_pair, filters):
    resident, lite = lite_pair
    queries = unit(np.random.default_rng(7).normal(size=(5, DIM)))
    ours = resident.search("regions", queries, k=10, **filters)
    theirs = lite.search("regions", queries, k=10, **filters)
    assert keys(ours) == keys(theirs)
    assert all(len(page) == 10 for page in ours)
    for mine, milvus in zip(ours, theirs):
        for h, m in zip(mine, milvus):
            assert h.score == pytest.approx(m.score, abs=1e-4)
            assert replace(h, score=0.0) == replace(m, score=0.0)  # every other field as milvus-lite reads it


def test_a_filter_matching_nothing_answers_nothing(lite_pair):
    resident, _ = lite_pair
    query = unit(np.ones((1, DIM)))
    assert resident.search("regions", query, k=5, view="LATERAL") == [[]]
    assert resident.search("regions", query, k=5, model_version="m9") == [[]]


def test_writes_through_another_client_of_the_process_are_seen(lite_pair, tmp_path):
    resident, lite = lite_pair
    query = make_rows(1, seed=42)[0].vector
    before = resident.search("regions", query, k=1)[0][0]
    # a new row equal to the query, written by the other client
    new = make_rows(1, seed=42, prefix="fresh")[0]
    lite.upsert("regions", [new])
    lite.flush("regions")
    found = resident.search("regions", query, k=1)[0][0]
    assert found.key == new.key != before.key and found.score == pytest.approx(1.0, abs=1e-5)
    lite.delete_keys("regions", [new.key])
    assert resident.search("regions", query, k=1)[0][0].key == before.key


def test_searches_through_an_alias_follow_it(lite_pair):
    resident, lite = lite_pair
    lite.create_collection("regions_v2", DIM, index_type="FLAT")
    lite.upsert("regions_v2", make_rows(30, seed=3, prefix="v2"))
    lite.flush("regions_v2")
    lite.point_alias("served", "regions")
    query = unit(np.ones(DIM))
    assert resident.search("served", query, k=3) == resident.search("regions", query, k=3)
    lite.point_alias("served", "regions_v2")
    assert {h.image_id.split("-")[0] for h in resident.search("served", query, k=3)[0]} == {"v2"}


def test_errors_match_a_servers(lite_pair):
    resident, _ = lite_pair
    with pytest.raises(DimensionMismatchError):
        resident.search("regions", np.ones(DIM + 1, np.float32), k=3)
    with pytest.raises(IndexNotFoundError):
        resident.search("nothing_here", np.ones(DIM, np.float32), k=3)
    with pytest.raises(ValueError, match="k must be"):  # the request is checked before the collection
        resident.search("nothing_here", np.ones(DIM, np.float32), k=0)
    with pytest.raises(UnknownAnatomyError):
        resident.search("regions", np.ones(DIM, np.float32), k=3, anatomy="left elbow")
    with pytest.raises(ValueError, match="group_by"):
        resident.search("regions", np.ones(DIM, np.float32), k=3, group_by="hospital")
    with pytest.raises(ValueError, match="exclude_patient_hash"):
        resident.search("regions", np.ones(DIM, np.float32), k=3, exclude_patient_hash="patient-1")


def test_a_server_is_never_searched_from_memory():
    with pytest.raises(ValueError, match="server"):
        RegionIndex("http://127.0.0.1:1", resident_search=True, connect_timeout=0.1)


def test_a_copy_sent_to_another_process_answers_and_fails_as_the_file(lite_pair):
    """What a ``fused`` ingress replica does (serving.backends.CopiedIndex): the rows the file's
    process holds, pickled as Ray sends them, searched with ``search_resident`` — the same answers,
    filtered and grouped, and the same errors as the file's own searches."""
    resident, _ = lite_pair
    copy = pickle.loads(pickle.dumps(resident.resident("regions")))
    assert copy is not resident.resident("regions") and copy.rows == 600
    queries = unit(np.random.default_rng(11).normal(size=(3, DIM)))
    for filters in SEARCHES:
        group_by = filters.get("group_by")
        rest = {k: v for k, v in filters.items() if k != "group_by"}
        copied = search_resident(lambda: copy, resident.display_uri, "regions", queries, 10, group_by, **rest)
        assert keys(copied) == keys(resident.search("regions", queries, k=10, **filters)), filters
    one = np.ones(DIM, np.float32)
    with pytest.raises(DimensionMismatchError):
        search_resident(lambda: copy, resident.display_uri, "regions", np.ones(DIM + 1, np.float32), 3)
    with pytest.raises(UnknownAnatomyError):
        search_resident(lambda: copy, resident.display_uri, "regions", one, 3, anatomy="left elbow")
    with pytest.raises(ValueError, match="group_by"):
        search_resident(lambda: copy, resident.display_uri, "regions", one, 3, "hospital")
    with pytest.raises(ValueError, match="k must be"):
        search_resident(lambda: copy, resident.display_uri, "regions", one, 0)
