"""``regionmir delete`` end to end on milvus-lite: index phantom films, erase one patient (named
by the raw id an erasure request carries), search: none of their rows come back; the command is
idempotent, never prints the raw id, and also erases an image's crops from a crop cache."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from indexing.erasure import delete_main
from indexing.index_schema import model_collection_name
from indexing.region_index import RegionIndex
from regionmir.identifiers import hash_identifier

integration = pytest.mark.integration


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from random_model_index import build_random_model_index_subprocess

    return build_random_model_index_subprocess(
        str(tmp_path_factory.mktemp("erasure_demo")), images=8, size=128, seed=11
    )


def _train_rows(data: str) -> list[dict]:
    with open(Path(data) / "silver_dataset" / "splits" / "train.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def _rows_by(db: str, field: str) -> dict[str, int]:
    """Exact row counts per value of ``field`` (a full scan, not an approximate search)."""
    index = RegionIndex(db)
    try:
        return {key[0]: n for key, n in index.tally("regions", [field]).items()}
    finally:
        index.close()


def _search(db: str, model: str, k: int = 50) -> list:
    from regionmir.model_contract import read_contract

    dim = read_contract(model)[1].encoder_config.embedding_dim
    index = RegionIndex(db)
    try:
        rng = np.random.default_rng(0)
        return [
            hit for hits in index.search("regions", rng.normal(size=(8, dim)).astype(np.float32), k=k) for hit in hits
        ]
    finally:
        index.close()


def _delete(capsys, *args: str) -> dict:
    assert delete_main(list(args)) == 0
    return json.loads(capsys.readouterr().out)


@integration
def test_deleting_a_patient_removes_every_row_and_a_rerun_removes_nothing(demo, capsys, monkeypatch):
    monkeypatch.delenv("REGIONMIR_ID_SALT", raising=False)
    db = demo["milvus"]
    films = _train_rows(demo["data"])
    patient = films[0]["subject_id"]
    patient_hash = hash_identifier(patient)
    before = _rows_by(db, "patient_hash")
    assert before.get(patient_hash), "the demo indexed films of this patient"
    assert any(h.patient_hash == patient_hash for h in _search(db, demo["model"], k=200))

    assert delete_main(["--milvus", db, "--patient", patient]) == 2  # no salt set: refused, nothing deleted
    assert "REGIONMIR_ID_SALT is not set" in capsys.readouterr().err
    assert _rows_by(db, "patient_hash") == before
    summary = _delete(capsys, "--milvus", db, "--patient", patient, "--default-salt")  # the demo's index
    assert summary["selector"] == "patient_hash" and summary["value"] == patient_hash
    assert (
        summary["rows_deleted_total"]
        == before[patient_hash]
        == summary["rows_deleted"][model_collection_name("regions", demo["model_version"])]
    )
    assert patient not in json.dumps(summary)  # the raw id is never printed
    after = _rows_by(db, "patient_hash")
    assert patient_hash not in after
    assert after == {h: n for h, n in before.items() if h != patient_hash}  # nobody else lost a row
    assert not [h for h in _search(db, demo["model"], k=200) if h.patient_hash == patient_hash]

    assert delete_main(["--milvus", db, "--patient", patient, "--default-salt"]) == 0  # idempotent
    captured = capsys.readouterr()
    again = json.loads(captured.out)
    assert again["rows_deleted_total"] == 0 and again["images"] == 0 and "nothing matched" in captured.err


@integration
def test_deleting_an_image_also_erases_its_crops_from_a_crop_cache(demo, tmp_path, capsys, monkeypatch):
    import indexing.index_schema as index_schema

    db = demo["milvus"]
    per_image = _rows_by(db, "image_id")
    image, other = sorted(per_image)[:2]
    split = tmp_path / "cache" / "train-abc"
    split.mkdir(parents=True)
    table = pa.table({"image_id": [image, other, image], "anatomy_id": [1, 2, 3]})
    pq.write_table(table, split / "part-00000.parquet")
    (split / "_COMPLETE.json").write_text(json.dumps({"rows": 3}))

    # the collection is of an older row schema than this code reads: erasure still reaches it
    monkeypatch.setattr(index_schema, "SCHEMA_VERSION", 3)
    monkeypatch.setattr(index_schema, "FIELDS", (*index_schema.FIELDS, "series_uid"))
    summary = _delete(capsys, "--milvus", db, "--image", image, "--crop-cache", str(tmp_path / "cache"))
    monkeypatch.undo()
    assert summary["rows_deleted_total"] == per_image[image] > 0
    assert summary["crop_rows_deleted"] == {str(tmp_path / "cache"): 2} and summary["failed"] == {}
    assert pq.read_table(split / "part-00000.parquet")["image_id"].to_pylist() == [other]
    assert json.loads((split / "_COMPLETE.json").read_text())["rows"] == 1
    assert image not in _rows_by(db, "image_id") and other in _rows_by(db, "image_id")


def test_delete_refuses_two_selectors_and_a_missing_crop_cache(tmp_path, capsys):
    with pytest.raises(SystemExit):
        delete_main(["--milvus", str(tmp_path / "x.db"), "--patient", "1", "--image", "2"])
    assert (
        delete_main(["--milvus", str(tmp_path / "x.db"), "--image", "2", "--crop-cache", str(tmp_path / "nowhere")])
        == 2
    )
    assert "no such local folder" in capsys.readouterr().err
