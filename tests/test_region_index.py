"""indexing.region_index (and the schema, rows and filters it uses): one contract, three Milvus backends.

The same test bodies run against a milvus-lite file (``tmp_path/x.db``), a ``milvus-lite server``
process and a real Milvus standalone (the PyPI package ``milvus``); the two servers are
session fixtures from ``conftest.py``. Tests without a server (keys, filter escaping, row checks,
an unreachable address) come first.
"""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import pytest

from indexing.index_filters import build_filter, quote_filter_value
from indexing.index_rows import RegionRow
from indexing.index_schema import row_key
from indexing.region_index import RegionIndex
from regionmir.anatomy import ANATOMY_NAMES, anatomy_id
from regionmir.errors import (
    CountMismatchError,
    DatasetError,
    DimensionMismatchError,
    IndexLockedError,
    IndexNotFoundError,
    IndexUnavailableError,
    RegionIndexError,
    SchemaMismatchError,
    UnknownAnatomyError,
)
from regionmir.identifiers import hash_identifier
from regionmir.sealed_location import open_location

DIM = 16
N_ROWS = 300
#: Regions the synthetic rows cycle through (includes the cardiac silhouette, alias "heart").
ANATOMY_IDS = (0, 9, 17, 22, 25, 31)
VIEWS = ("PA", "AP", "")
#: A view value with a quote and a backslash, stored and matched as-is.
ODD_VIEW = 'P"A\\'


def unit(vectors: np.ndarray) -> np.ndarray:
    return (vectors / np.linalg.norm(vectors, axis=-1, keepdims=True)).astype(np.float32)


def make_rows(
    n: int = N_ROWS, *, seed: int = 0, model_version: str = "m1", dim: int = DIM, prefix: str = "img"
) -> list[RegionRow]:
    """``n`` rows: random unit vectors, regions cycling through ANATOMY_IDS, hashed patients."""
    vectors = unit(np.random.default_rng(seed).normal(size=(n, dim)))
    rows = []
    for i in range(n):
        a = ANATOMY_IDS[i % len(ANATOMY_IDS)]
        rows.append(
            RegionRow(
                image_id=f"{prefix}-{i // len(ANATOMY_IDS):04d}",
                anatomy_id=a,
                anatomy=ANATOMY_NAMES[a],
                image_uri=f"s3://films/{prefix}-{i // len(ANATOMY_IDS):04d}.dcm",
                box=(10.0 + i, 20.0, 110.5 + i, 220.25),
                view=VIEWS[i % len(VIEWS)] if i % 7 else ODD_VIEW,
                split="test" if i % 5 == 0 else "train",
                patient_hash=hash_identifier(f"patient-{i // 12}", salt="test-salt"),
                study_hash=hash_identifier(f"study-{i // 6}", salt="test-salt"),
                model_version=model_version,
                vector=vectors[i],
            )
        )
    return rows


def new_name(prefix: str = "regions") -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


# ------------------------------------------------------------------------------ without a server


def test_row_key_is_deterministic_and_separates_its_parts():
    key = row_key("1.2.840.1", 25, "resnet10-abc")
    assert key == row_key("1.2.840.1", 25, "resnet10-abc")
    assert len(key) == 32 and all(c in "0123456789abcdef" for c in key)
    others = {
        row_key("1.2.840.2", 25, "resnet10-abc"),
        row_key("1.2.840.1", 24, "resnet10-abc"),
        row_key("1.2.840.1", 25, "resnet10-abd"),
    }
    assert key not in others and len(others) == 3
    # No concatenation ambiguity: ("a1", 2) and ("a", 12) differ.
    assert row_key("a1", 2, "m") != row_key("a", 12, "m")
    assert make_rows(1)[0].key == row_key("img-0000", ANATOMY_IDS[0], "m1")
    with pytest.raises(TypeError):
        row_key("x", "left lung", "m")  # type: ignore[arg-type]


def test_filter_values_are_quoted_and_escaped():
    assert quote_filter_value("PA") == '"PA"'
    assert quote_filter_value('PA" or 1==1 or "') == '"PA\\" or 1==1 or \\""'
    assert quote_filter_value("a\\b") == '"a\\\\b"'
    assert quote_filter_value('a\\"') == '"a\\\\\\""'  # backslash escaped before the quote
    assert quote_filter_value("énorme") == '"énorme"'
    with pytest.raises(ValueError, match="control"):
        quote_filter_value("PA\n or 1==1")
    with pytest.raises(TypeError):
        quote_filter_value(3)  # type: ignore[arg-type]


def test_build_filter_excludes_a_patient_only_by_a_valid_hash():
    patient = hash_identifier("MRN-1", salt="test-salt")
    assert build_filter(exclude_patient_hash=patient) == f'patient_hash != "{patient}"'
    assert build_filter(exclude_patient_hash="") == ""  # unknown patient: excludes nothing
    with pytest.raises(ValueError, match="patient hash"):
        build_filter(exclude_patient_hash='" or 1==1 or "')


def test_build_filter_validates_anatomy_and_joins_clauses():
    assert build_filter() == ""
    assert build_filter(anatomy="heart") == f"anatomy_id == {anatomy_id('cardiac silhouette')}"
    assert build_filter(anatomy=9, view="PA", split="test", model_version='m"1') == (
        'anatomy_id == 9 and view == "PA" and split == "test" and model_version == "m\\"1"'
    )
    with pytest.raises(UnknownAnatomyError):
        build_filter(anatomy='left lung" or 1==1')


def test_region_row_refuses_paths_clear_identifiers_and_raw_vectors():
    row = make_rows(1)[0]
    assert row.vector.dtype == np.float32 and row.box == (10.0, 20.0, 110.5, 220.25)
    with pytest.raises(ValueError, match="not a path"):
        replace(row, image_id="films/img-1.dcm")
    with pytest.raises(ValueError, match="hash_identifier"):
        replace(row, patient_hash="PATIENT-12345")
    with pytest.raises(ValueError, match="does not match"):
        replace(row, anatomy="left lung")
    with pytest.raises(ValueError, match="L2-normalised"):
        replace(row, vector=row.vector * 3)
    with pytest.raises(ValueError, match="x2 > x1"):
        replace(row, box=(50.0, 20.0, 40.0, 60.0))
    with pytest.raises(ValueError, match="longer than"):
        replace(row, image_uri="s3://b/" + "x" * 3000)


def test_unreachable_server_is_a_clear_error():
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    started = time.monotonic()
    with pytest.raises(IndexUnavailableError) as info:
        RegionIndex(f"http://user:secret@127.0.0.1:{port}", connect_timeout=3)
    assert time.monotonic() - started < 30
    assert f"127.0.0.1:{port}" in str(info.value) and "secret" not in str(info.value)
    assert info.value.reason == "unavailable"


# --------------------------------------------------------------------------------- the backends


@dataclass
class Backend:
    """Where a test's Milvus answers now (``uri()``) and how to restart it on the same data."""

    name: str
    uri: Callable[[], str]
    restart: Callable[[], None]

    def open(self, **kwargs) -> RegionIndex:
        return RegionIndex(self.uri(), **kwargs)


@pytest.fixture(params=["lite-file", "lite-server", "milvus"])
def backend(request, tmp_path) -> Backend:
    if request.param == "lite-file":
        path = str(tmp_path / "x.db")
        # One process per file: "restarting" is closing and reopening in this process.
        return Backend("lite-file", lambda: path, lambda: None)
    server = request.getfixturevalue("milvus_lite_server" if request.param == "lite-server" else "milvus_standalone")
    return Backend(request.param, lambda: server.uri, server.restart)


@pytest.fixture
def index(backend) -> RegionIndex:
    with backend.open() as opened:
        yield opened


def filled(index: RegionIndex, rows: list[RegionRow] | None = None, **create) -> tuple[str, list[RegionRow]]:
    """A new collection holding ``rows`` (default: make_rows()), flushed."""
    rows = make_rows() if rows is None else rows
    name = new_name()
    index.create_collection(name, rows[0].vector.shape[0], **create)
    index.upsert(name, rows)
    index.flush(name)
    return name, rows


@pytest.mark.integration
def test_upsert_batches_by_bytes_and_is_idempotent(index):
    name = new_name()
    index.create_collection(name, DIM)
    rows = make_rows()
    result = index.upsert(name, rows, max_batch_bytes=8 * 1024)
    assert result.rows == N_ROWS and result.batches >= 5
    index.flush(name)
    assert index.count(name) == N_ROWS
    assert index.verify(name, N_ROWS) == N_ROWS
    with pytest.raises(CountMismatchError) as info:
        index.verify(name, N_ROWS + 1)
    assert info.value.expected == N_ROWS + 1 and info.value.actual == N_ROWS and name in str(info.value)

    # A re-run (any iterable) replaces rows; Strong consistency counts them without a flush.
    again = index.upsert(name, iter(rows), max_batch_bytes=16 * 1024)
    assert again.rows == N_ROWS
    assert index.count(name) == N_ROWS
    assert index.upsert(name, [rows[0], rows[0]]).rows == 1  # a key twice in one call is sent once
    assert index.count(name) == N_ROWS


@pytest.mark.integration
def test_a_changed_vector_replaces_the_old_one(index):
    name, rows = filled(index)
    old = rows[42]
    new_vector = unit(np.random.default_rng(99).normal(size=DIM))
    index.upsert(name, [replace(old, vector=new_vector, view="AP")])
    assert index.count(name) == N_ROWS

    [hits] = index.search(name, new_vector, k=3)
    assert hits[0].key == old.key and hits[0].score == pytest.approx(1.0, abs=1e-4)
    assert hits[0].view == "AP"
    [hits] = index.search(name, old.vector, k=5)
    assert all(h.key != old.key or h.score < 0.99 for h in hits)


@pytest.mark.integration
def test_rows_are_fetched_by_key_and_counted_by_filter(index):
    name, rows = filled(index)
    index.upsert(name, make_rows(12, seed=5, model_version="m2", prefix="new"))
    assert index.count(name) == N_ROWS + 12
    assert index.count(name, model_version="m1") == N_ROWS
    assert index.count(name, model_version="m2") == 12
    assert index.count(name, model_version="m3") == 0
    assert index.count(name, anatomy="heart", model_version="m1") == sum(r.anatomy_id == 9 for r in rows)

    wanted = [rows[3].key, rows[200].key, "0" * 32]  # the last one was never written
    found = index.get(name, wanted + [rows[3].key])
    assert set(found) == {rows[3].key, rows[200].key}
    got = found[rows[200].key]
    assert (got.image_id, got.anatomy_id, got.box, got.view) == (
        rows[200].image_id,
        rows[200].anatomy_id,
        rows[200].box,
        rows[200].view,
    )
    assert index.get(name, []) == {}
    for bad in ('" or key != "', "0" * 31, "G" * 32, 7):
        with pytest.raises(ValueError, match="not a region key"):
            index.get(name, [bad])


@pytest.mark.integration
def test_filtered_search_returns_the_region_asked_for_and_the_exact_match_first(index):
    name, rows = filled(index)
    queries = [rows[i] for i in (0, 7, 28, 100, 299)]
    results = index.search(name, np.stack([q.vector for q in queries]), k=10, anatomy=None)
    assert [hits[0].key for hits in results] == [q.key for q in queries]
    for query in queries:
        [hits] = index.search(name, query.vector, k=10, anatomy=query.anatomy)
        assert len(hits) == 10
        assert {h.anatomy for h in hits} == {query.anatomy}
        assert {h.anatomy_id for h in hits} == {query.anatomy_id}
        top = hits[0]
        assert top.key == query.key and top.score == pytest.approx(1.0, abs=1e-4)
        assert (top.image_id, open_location(top.image_uri, top.image_id), top.view, top.split, top.model_version) == (
            query.image_id,
            query.image_uri,
            query.view,
            query.split,
            query.model_version,
        )
        assert (top.patient_hash, top.study_hash) == (query.patient_hash, query.study_hash)
        assert top.box == pytest.approx(query.box)
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)

    heart = next(r for r in rows if r.anatomy == "cardiac silhouette")
    [hits] = index.search(name, heart.vector, k=5, anatomy="heart")  # aliases resolve
    assert hits[0].key == heart.key and {h.anatomy for h in hits} == {"cardiac silhouette"}
    [hits] = index.search(name, heart.vector, k=50, view="PA", split="train", model_version="m1")
    assert hits and all((h.view, h.split, h.model_version) == ("PA", "train", "m1") for h in hits)
    [hits] = index.search(name, heart.vector, k=5, model_version="another-model")
    assert hits == []
    with pytest.raises(UnknownAnatomyError):
        index.search(name, heart.vector, k=5, anatomy="left elbow")


@pytest.mark.integration
def test_same_patient_exclusion_grouping_by_study_and_tallies(index):
    name, rows = filled(index)
    query = rows[30]  # patient-2 holds rows 24..35; study-5 (one film) rows 30..35
    [plain] = index.search(name, query.vector, k=10)
    assert plain[0].key == query.key
    [hits] = index.search(name, query.vector, k=10, exclude_patient_hash=query.patient_hash)
    assert len(hits) == 10 and all(h.patient_hash != query.patient_hash for h in hits)
    assert index.count(name, exclude_patient_hash=query.patient_hash) == N_ROWS - 12
    assert index.count(name, anatomy=query.anatomy_id, exclude_patient_hash=query.patient_hash) == sum(
        r.anatomy_id == query.anatomy_id and r.patient_hash != query.patient_hash for r in rows
    )
    assert index.count(name, exclude_patient_hash="") == N_ROWS  # unknown patient: nothing excluded

    # one study per hit, each the study's best row: the first 20 studies of the full ranking
    [grouped] = index.search(name, query.vector, k=20, group_by="study")
    [everything] = index.search(name, query.vector, k=N_ROWS)
    best_per_study: dict[str, str] = {}
    for hit in everything:
        best_per_study.setdefault(hit.study_hash, hit.key)
    assert [h.key for h in grouped] == list(best_per_study.values())[:20]
    assert len({h.study_hash for h in grouped}) == 20 and grouped[0].key == query.key
    [few] = index.search(name, query.vector, k=80, group_by="study", anatomy=query.anatomy_id)
    assert len(few) == N_ROWS // len(ANATOMY_IDS)  # 50 studies hold this region: all of them, once
    with pytest.raises(ValueError, match="group_by"):
        index.search(name, query.vector, k=5, group_by="hospital")

    assert index.tally(name, ("anatomy_id", "patient_hash"), model_version="m1") == Counter(
        (r.anatomy_id, r.patient_hash) for r in rows
    )
    assert index.tally(name, ("split",), batch_size=7) == Counter((r.split,) for r in rows)
    assert index.tally(name, ("split",), model_version="m9") == Counter()
    with pytest.raises(ValueError, match="scalar fields"):
        index.tally(name, ("vector",))


@pytest.mark.integration
def test_film_locations_are_stored_sealed_and_open_only_with_the_salt(index):
    """MIMIC paths name the subject and the study: the stored image_uri shows neither."""
    path = "s3://archive/files/p10/p10000032/s50414267/02aa804e-bde0afdd-112c0b34-7bc16630-4e384014.dcm"
    rows = [replace(row, image_uri=path) for row in make_rows(12)]
    name, _ = filled(index, rows)
    stored = index.client.query(name, filter="anatomy_id >= 0", output_fields=["image_uri"], limit=20)
    assert len(stored) == 12 and all(r["image_uri"].startswith("sealed:v1:") for r in stored)
    assert not any(secret in str(stored) for secret in ("10000032", "50414267", "files/"))
    by_image = {}
    for row in index.client.query(name, filter="anatomy_id >= 0", output_fields=["image_id", "image_uri"], limit=20):
        by_image.setdefault(row["image_id"], set()).add(row["image_uri"])
    assert all(len(v) == 1 for v in by_image.values())  # deterministic: a re-index upserts identical rows
    [hits] = index.search(name, rows[0].vector, k=1)
    assert open_location(hits[0].image_uri, hits[0].image_id) == path
    from regionmir.sealed_location import SealedLocationError

    with pytest.raises(SealedLocationError, match="REGIONMIR_ID_SALT") as err:
        open_location(hits[0].image_uri, hits[0].image_id, salt="another deployment's salt")
    assert "10000032" not in str(err.value)


@pytest.mark.integration
def test_a_reindex_removes_rows_of_films_that_left_the_data_and_keeps_unreadable_ones(index):
    """``regionmir index``'s reconciliation (indexing.build.reconcile, then verify per split) on each backend."""
    from indexing.build import reconcile

    name, rows = filled(index)
    train = [r for r in rows if r.split == "train"]
    images = sorted({r.image_id for r in train})
    gone, unreadable = images[:2], images[2]  # two films left the data; one could not be read now
    written = {r.key for r in train if r.image_id not in (*gone, unreadable)}
    stale = [r for r in train if r.image_id in gone]
    kept_unreadable = sum(1 for r in train if r.image_id == unreadable)

    assert reconcile(index, name, ["train"], written, {unreadable}, keep=True) == {
        "removed": 0,
        "kept_missing": len(stale),
        "kept_unreadable": kept_unreadable,
    }
    assert index.count(name) == N_ROWS
    with pytest.raises(CountMismatchError):
        index.verify(name, len(written), splits=["train"])

    assert reconcile(index, name, ["train"], written, {unreadable}) == {
        "removed": len(stale),
        "kept_missing": 0,
        "kept_unreadable": kept_unreadable,
    }
    assert index.count(name) == N_ROWS - len(stale)
    assert index.get(name, [r.key for r in stale]) == {}
    index.verify(name, len(written) + kept_unreadable, splits=["train"])  # the test split is not this run's
    assert index.count(name, split="test") == sum(1 for r in rows if r.split == "test")
    assert reconcile(index, name, ["train"], written, {unreadable})["removed"] == 0

    # a truncated listing (a fifth of the films "gone"): refused, nothing removed, unless allowed
    cut = set(images[3 : 3 + len(images) // 5])
    listed = {r.key for r in train if r.image_id not in (*gone, unreadable, *cut)}
    with pytest.raises(DatasetError, match="would remove .* rows"):
        reconcile(index, name, ["train"], listed, {unreadable})
    assert index.count(name) == N_ROWS - len(stale)
    removed = reconcile(index, name, ["train"], listed, {unreadable}, allow_mass_removal=True)["removed"]
    assert removed == sum(1 for r in train if r.image_id in cut) > 0
    with pytest.raises(ValueError, match="region key"):
        index.delete_keys(name, ["x' or 1==1"])


@pytest.mark.integration
def test_rows_of_a_patient_study_or_image_are_deleted_and_deleting_again_is_a_no_op(index):
    name, rows = filled(index)
    patient, study, image = rows[30].patient_hash, rows[0].study_hash, rows[50].image_id
    assert name in index.collections()
    gone = index.delete_rows(name, patient_hash=patient)  # patient-2: rows 24..35
    assert gone == sorted({r.image_id for r in rows if r.patient_hash == patient})
    assert index.count(name) == N_ROWS - 12 and index.count(name, exclude_patient_hash=patient) == N_ROWS - 12
    [hits] = index.search(name, rows[30].vector, k=10)
    assert all(h.patient_hash != patient for h in hits)
    assert index.delete_rows(name, patient_hash=patient) == []  # idempotent
    left = N_ROWS - 12
    for selector, value in (("study_hash", study), ("image_id", image)):
        matching = [r for r in rows if getattr(r, selector) == value and r.patient_hash != patient]
        assert index.delete_rows(name, **{selector: value}) == sorted({r.image_id for r in matching})
        left -= len(matching)
        assert index.count(name) == left
    with pytest.raises(ValueError, match="exactly one"):
        index.delete_rows(name, patient_hash=patient, image_id=image)
    with pytest.raises(ValueError, match="hex hash"):
        index.delete_rows(name, patient_hash="x' or 1==1")


@pytest.mark.integration
def test_a_collection_of_another_schema_version_names_the_rebuild_command(index, backend, monkeypatch):
    import indexing.index_schema as index_schema

    name, rows = filled(index, make_rows(12))
    # this code moved on to a new row layout: version 3, with a field the old collection lacks
    monkeypatch.setattr(index_schema, "SCHEMA_VERSION", 3)
    monkeypatch.setattr(index_schema, "FIELDS", (*index_schema.FIELDS, "series_uid"))
    mismatch = (
        r"older row schema \((v2|without field\(s\) \['series_uid'\]); this RegionMIR reads v3\).*regionmir index"
    )
    with backend.open() as upgraded, pytest.raises(SchemaMismatchError, match=mismatch):
        upgraded.count(name)
    monkeypatch.undo()
    assert index.count(name) == 12


@pytest.mark.integration
def test_filter_values_are_escaped_on_the_server(index):
    name, rows = filled(index)
    odd = [r for r in rows if r.view == ODD_VIEW]
    [hits] = index.search(name, odd[0].vector, k=100, view=ODD_VIEW)
    assert hits[0].key == odd[0].key
    assert {h.key for h in hits} == {r.key for r in odd}
    for attack in ('PA" or 1==1 or "', "PA' or 1==1 or '", 'PA\\" or anatomy_id >= 0 or view == \\"'):
        [hits] = index.search(name, rows[1].vector, k=100, view=attack)
        assert hits == [], attack
        [hits] = index.search(name, rows[1].vector, k=100, split="train", model_version=attack)
        assert hits == [], attack


@pytest.mark.integration
def test_alias_switches_between_versions_without_touching_the_old_one(index):
    alias = new_name("serving")
    assert index.alias_target(alias) is None
    v1, rows1 = filled(index, make_rows(120, seed=1, model_version="m1"), index_type="FLAT")
    assert index.point_alias(alias, v1) is None
    assert index.alias_target(alias) == v1
    [hits] = index.search(alias, rows1[5].vector, k=3)
    assert hits[0].key == rows1[5].key and hits[0].model_version == "m1"
    assert index.count(alias) == 120

    v2, rows2 = filled(
        index, make_rows(150, seed=2, model_version="m2"), index_type="IVF_FLAT", index_params={"nlist": 8}
    )
    assert index.point_alias(alias, v2) == v1
    assert index.alias_target(alias) == v2
    [hits] = index.search(alias, rows2[5].vector, k=3)
    assert hits[0].key == rows2[5].key and hits[0].model_version == "m2"
    [hits] = index.search(alias, rows1[5].vector, k=10)
    assert all(h.model_version == "m2" for h in hits)
    assert index.count(alias) == 150

    assert index.count(v1) == 120  # the old version is intact
    [hits] = index.search(v1, rows1[5].vector, k=3)
    assert hits[0].key == rows1[5].key

    with pytest.raises(RegionIndexError) as info:
        index.drop(v2)  # served by the alias
    assert info.value.reason == "in_use"
    with pytest.raises(RegionIndexError) as info:
        index.drop(alias)
    assert info.value.reason == "is_alias"
    with pytest.raises(RegionIndexError) as info:
        index.point_alias(v1, v2)  # a collection's name cannot become an alias
    assert info.value.reason == "not_alias"
    index.drop(v1)
    assert index.count(alias) == 150
    with pytest.raises(IndexNotFoundError):
        index.count(v1)


@pytest.mark.integration
def test_errors_name_the_collection_and_the_reason(index):
    missing = new_name("missing")
    for call in (
        lambda: index.search(missing, np.ones(DIM), k=3),
        lambda: index.count(missing),
        lambda: index.upsert(missing, make_rows(2)),
        lambda: index.point_alias("a_x", missing),
    ):
        with pytest.raises(IndexNotFoundError) as info:
            call()
        assert missing in str(info.value) and info.value.reason == "not_found"
    name = new_name()
    index.create_collection(name, DIM)
    with pytest.raises(DimensionMismatchError) as info:
        index.upsert(name, make_rows(3) + make_rows(2, dim=DIM + 4, prefix="wide"))
    assert name in str(info.value) and f"{DIM}-d" in str(info.value)
    assert index.count(name) == 0  # nothing was sent
    with pytest.raises(DimensionMismatchError):
        index.search(name, np.ones(DIM * 2), k=3)
    with pytest.raises(RegionIndexError) as info:
        index.create_collection(name, DIM)
    assert info.value.reason == "exists"
    with pytest.raises(SchemaMismatchError):
        index.create_collection(name, DIM * 2, exist_ok=True)
    index.create_collection(name, DIM, exist_ok=True)
    with pytest.raises(ValueError):
        index.create_collection("bad-name", DIM)
    with pytest.raises(ValueError):
        index.search(name, np.ones(DIM), k=0)


@pytest.mark.integration
def test_data_survives_a_restart(backend):
    index = backend.open()
    name, rows = filled(index)
    alias = new_name("serving")
    index.point_alias(alias, name)
    index.close()
    with pytest.raises(RegionIndexError, match="closed"):
        index.count(name)

    started = time.monotonic()
    backend.restart()
    print(f"{backend.name}: restart took {time.monotonic() - started:.1f}s")

    with backend.open() as reopened:
        assert reopened.count(name) == N_ROWS
        assert reopened.alias_target(alias) == name
        [hits] = reopened.search(alias, rows[17].vector, k=5, anatomy=rows[17].anatomy)
        assert hits[0].key == rows[17].key and hits[0].score == pytest.approx(1.0, abs=1e-4)
        reopened.upsert(name, make_rows(6, seed=5, prefix="after"))
        reopened.flush(name)
        assert reopened.count(name) == N_ROWS + 6


@pytest.mark.integration
def test_a_lite_file_held_by_another_process_is_a_clear_error(tmp_path, capfd):
    path = tmp_path / "held.db"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            (
                "import sys\nfrom pymilvus import MilvusClient\n"
                f"client = MilvusClient({str(path)!r})\nprint('ready', flush=True)\nsys.stdin.read()"
            ),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "ready"
        with pytest.raises(IndexLockedError) as info:
            RegionIndex(str(path))
        message = str(info.value)
        assert str(path) in message and "another process" in message and "milvus-lite server" in message
        # one error family: the index's errors are the library's, picklable (across Ray) as themselves
        import pickle

        from regionmir.errors import RegionMIRError

        again = pickle.loads(pickle.dumps(info.value))
        assert isinstance(again, IndexLockedError) and isinstance(again, RegionMIRError)
        assert (again.reason, again.uri, str(again)) == (info.value.reason, info.value.uri, message)
        # ... so `regionmir index` meeting it prints one clear line, not a traceback
        from dataclasses import asdict

        from indexing.build import index_main
        from regionmir.anatomy import STANDARD_29_IDS
        from regionmir.encoder import RegionEncoder, load_preset
        from regionmir.model_contract import ModelContract, save_model
        from regionmir.roi_crop import CropConfig
        from regionmir.synth.dataset_writer import write_phantom_dataset

        config = load_preset("resnet10-cpu")
        save_model(
            str(tmp_path / "model"),
            RegionEncoder(config),
            ModelContract(
                stage="finetune",
                encoder=config.to_dict(),
                class_anatomy_ids=tuple(STANDARD_29_IDS),
                crop=asdict(CropConfig(size=config.crop_size)),
                training={},
            ),
        )
        write_phantom_dataset(str(tmp_path / "data"), images=3, size=96, seed=1, progress=False)
        code = index_main(["--data", str(tmp_path / "data"), "--model", str(tmp_path / "model"), "--milvus", str(path)])
        error = capfd.readouterr().err.strip().splitlines()
        assert code == 2 and error[-1].startswith("regionmir index: Milvus at") and "another process" in error[-1]
        assert not any("Traceback" in line for line in error)
    finally:
        holder.stdin.close()
        try:
            holder.wait(timeout=30)
        except subprocess.TimeoutExpired:
            holder.kill()
            holder.wait()


@pytest.mark.integration
def test_a_lite_file_in_a_folder_not_yet_made_is_created(tmp_path):
    path = tmp_path / "new" / "nested" / "regions.db"
    with RegionIndex(str(path)) as index:
        name, _ = filled(index, make_rows(12))
        assert index.count(name) == 12
    assert path.exists()


@pytest.mark.integration
def test_a_copy_of_a_held_lite_file_opens_with_every_row(tmp_path):
    """The demo and the load benchmark hand the service a copy of the index this process holds."""
    from indexing.region_index import copy_lite_index

    original = tmp_path / "built.db"
    with RegionIndex(str(original)) as index:
        name, rows = filled(index, make_rows(20))
        index.point_alias("regions", name)
        copy = copy_lite_index(str(original), str(tmp_path / "serving" / "regions.db"))
        with RegionIndex(copy) as served:  # a second file: this process may hold both
            assert served.count("regions") == 20
            assert served.get("regions", [rows[3].key])[rows[3].key].image_id == rows[3].image_id


@pytest.mark.integration
def test_the_default_index_is_exact_up_to_a_million_rows_and_searched_once_built(index, backend):
    from indexing.region_index import EXACT_SEARCH_MAX_ROWS

    assert index.default_index_type() == "FLAT"
    assert index.default_index_type(EXACT_SEARCH_MAX_ROWS) == "FLAT"
    big = index.default_index_type(EXACT_SEARCH_MAX_ROWS + 1)
    assert big == ("FLAT" if index.is_local_file else "HNSW")  # a file is searched from memory at any size
    name, rows = filled(index, expected_rows=len(make_rows()))
    described = index.client.describe_index(name, "vector")
    assert described["index_type"] == "FLAT"
    assert index.wait_until_indexed(name, timeout_s=300) == len(rows)
    # searchable at once after the wait, exactly: every row finds itself first
    for row in rows[:5]:
        assert index.search(name, row.vector, k=1)[0][0].key == row_key(row.image_id, row.anatomy_id, "m1")
