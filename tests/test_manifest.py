"""ManifestReader: CSV / JSON Lines / JSON, relative and absolute images, aliases, counted bad rows."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from regionmir.anatomy import anatomy_id
from regionmir.boxes import Box
from regionmir.dataset import open_dataset
from regionmir.errors import DatasetError
from regionmir.identifiers import hash_identifier
from regionmir.manifest import ManifestReader
from regionmir.region_record import hash_split, stable_image_id

SALT = "test-salt"
COLUMNS = ["image", "bbox_name", "x1", "y1", "x2", "y2", "split", "patient_id", "study_id", "view"]
RAW_IDS = ["MRN4711", "MRN4712", "MRN4713", "MRN4714", "ACC0815", "ACC0816", "ACC0817", "ACC0818"]


def rows(absolute_image: str) -> list[list]:
    """Manifest rows; the comment is the CSV line number (header = 1) and what it tests."""
    return [
        ["imgs/a.png", "left_lung", 10, 20, 100, 200, "train", "MRN4711", "ACC0815", "PA"],  # 2
        ["imgs/a.png", "heart", 50, 60, 150, 160, "train", "MRN4711", "ACC0815", "PA"],  # 3
        ["imgs/a.png", "right lung", -3, 20, 90, 200, "train", "MRN4711", "ACC0815", "PA"],  # 4 clamped
        ["imgs/b.png", "left lung", 10, 20, "", 200, "valid", "MRN4712", "ACC0816", "AP"],  # 5 missing x2
        ["imgs/b.png", "left lung", 10, "abc", 100, 200, "valid", "MRN4712", "ACC0816", "AP"],  # 6 not a number
        ["imgs/b.png", "left kidney", 10, 20, 100, 200, "valid", "MRN4712", "ACC0816", "AP"],  # 7 unknown
        ["imgs/b.png", "spine", 10, 20, 100, 200, "holdout", "MRN4712", "ACC0816", "AP"],  # 8 bad split
        ["imgs/b.png", "spine", 10, 20, 10, 200, "valid", "MRN4712", "ACC0816", "AP"],  # 9 zero area
        ["imgs/b.png", "trachea", 10, 20, 100, 200, "valid", "MRN4712", "ACC0816", "AP"],  # 10
        [absolute_image, "lcpa", 5, 5, 50, 50, "", "MRN4713", "ACC0817", "LATERAL"],  # 11 hash split
        ["imgs/a.png", "left lung", 1, 1, 2, 2, "train", "MRN4711", "ACC0815", "PA"],  # 12 duplicate
        ["imgs/d.png", "heart", 1, 1, 50, 50, "val", "MRN4714", "ACC0818", "PA"],  # 13 alias split
        ["imgs/d.png", "trachea", 1, 1, 50, 50, "test", "MRN4714", "ACC0818", "PA"],  # 14 disagrees
    ]


EXPECTED_ISSUES = {
    "box_clamped": 1,
    "missing_value": 1,
    "bad_box": 1,
    "unknown_anatomy": 1,
    "invalid_split": 1,
    "box_zero_area": 1,
    "unknown_view": 1,
    "duplicate_region": 1,
    "inconsistent_image": 1,
}


def write_csv(folder: Path, absolute_image: str, name: str = "manifest.csv") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    lines = [",".join(COLUMNS)] + [",".join(str(v) for v in row) for row in rows(absolute_image)]
    (folder / name).write_text("\n".join(lines) + "\n")
    return folder / name


def check_scan(reader: ManifestReader, base: str, absolute_image: str, name: str) -> None:
    images = list(reader.iter_images())
    report = reader.report
    assert dict(report.read) == {"rows": 13, "images": 4, "regions": 7}
    assert dict(report.issues) == EXPECTED_ISSUES
    assert report.examples["missing_value"] == [f"{name}:5"]
    assert report.details["missing_value"] == {"x2": 1}
    assert report.examples["bad_box"] == [f"{name}:6"]
    assert report.details["unknown_anatomy"] == {"left kidney": 1}
    assert report.examples["invalid_split"] == [f"{name}:8"]
    assert report.examples["box_zero_area"] == [f"{name}:9"]
    assert report.examples["duplicate_region"] == [f"{name}:12"]
    assert report.details["inconsistent_image"] == {"split": 1}

    a, b, c, d = images
    assert a.image_uri == f"{base}/imgs/a.png" and c.image_uri == absolute_image
    assert a.image_id == stable_image_id("imgs/a.png") == a.regions[0].image_id
    assert [r.anatomy_name for r in a.regions] == ["right lung", "left lung", "cardiac silhouette"]
    assert a.region(anatomy_id("right lung")).box == Box(0.0, 20.0, 90.0, 200.0)
    assert a.region(anatomy_id("left lung")).box == Box(10.0, 20.0, 100.0, 200.0)
    assert (a.split, a.view, b.split, b.view) == ("train", "PA", "valid", "AP")
    assert [r.anatomy_name for r in b.regions] == ["trachea"]
    assert c.region(anatomy_id("left costophrenic angle")) is not None
    assert c.split == hash_split("MRN4713") and c.view == ""
    assert d.split == "valid" and d.anatomy_ids == (anatomy_id("trachea"), anatomy_id("heart"))
    assert a.patient_hash == hash_identifier("MRN4711", SALT)
    assert a.study_hash == hash_identifier("ACC0815", SALT)
    for image in images:
        text = repr(image)
        assert not [raw for raw in RAW_IDS if raw in text], text

    assert [i.image_id for i in reader.iter_images("valid")] == [b.image_id, d.image_id]
    assert reader.report.read["images"] == 2


def test_csv_manifest(tmp_path: Path):
    absolute = str(tmp_path / "other" / "c.png")
    path = write_csv(tmp_path / "data", absolute)
    reader = ManifestReader(str(path), salt=SALT)
    assert reader.format == "csv"
    check_scan(reader, str(tmp_path / "data"), absolute, "manifest.csv")
    assert "manifest.csv" in reader.describe()


def test_jsonl_manifest_counts_bad_lines(tmp_path: Path):
    absolute = str(tmp_path / "other" / "c.png")
    lines = []
    for row in rows(absolute):
        record = dict(zip(COLUMNS, row))
        # JSON carries numbers as numbers and empty cells as null
        record = {k: (None if v == "" else v) for k, v in record.items()}
        lines.append(json.dumps(record))
    # Line 1 is a blank, lines 15/16 are not row objects: same numbering as the CSV's data rows.
    text = "\n" + "\n".join(lines) + "\nnot json at all\n[1, 2]\n"
    (tmp_path / "data").mkdir()
    path = tmp_path / "data" / "regions.jsonl"
    path.write_text(text)
    reader = ManifestReader(str(path), salt=SALT)
    assert reader.format == "jsonl"
    images = list(reader.iter_images())
    assert len(images) == 4
    assert reader.report["bad_row"] == 2
    assert reader.report.examples["bad_row"] == ["regions.jsonl:15", "regions.jsonl:16"]
    issues = dict(reader.report.issues)
    issues.pop("bad_row")
    assert issues == EXPECTED_ISSUES
    assert reader.report.examples["missing_value"] == ["regions.jsonl:5"]


def test_json_array_and_sniffing(tmp_path: Path):
    items = [
        {"image": "x.png", "bbox_name": "Heart", "x1": 1, "y1": 2, "x2": 30, "y2": 40, "findings": ["cardiomegaly"]}
    ]
    (tmp_path / "labels.json").write_text(json.dumps(items))
    reader = open_dataset(str(tmp_path / "labels.json"), salt=SALT)
    assert isinstance(reader, ManifestReader) and reader.format == "json"
    (image,) = list(reader.iter_images())
    assert image.regions[0].attributes == ("cardiomegaly",)
    assert image.split == hash_split("x.png") and image.patient_hash == ""
    (tmp_path / "labels.txt").write_text(json.dumps(items[0]) + "\n")
    sniffed = open_dataset(str(tmp_path / "labels.txt"))
    assert sniffed.format == "jsonl" and len(list(sniffed.iter_images())) == 1


def test_missing_required_column_names_manifest_and_column(tmp_path: Path):
    path = tmp_path / "broken.csv"
    path.write_text("image,bbox_name,x1,y1,x2\na.png,heart,1,2,3\n")
    with pytest.raises(DatasetError) as info:
        ManifestReader(str(path))
    assert "'y2'" in str(info.value) and str(path) in str(info.value)
    jsonl = tmp_path / "broken.jsonl"
    jsonl.write_text(json.dumps({"image": "a.png", "x1": 1, "y1": 2, "x2": 3, "y2": 4}) + "\n")
    with pytest.raises(DatasetError, match="bbox_name"):
        ManifestReader(str(jsonl))


def test_open_dataset_finds_manifests(tmp_path: Path):
    write_csv(tmp_path / "data", str(tmp_path / "c.png"))
    assert isinstance(open_dataset(str(tmp_path / "data")), ManifestReader)
    assert isinstance(open_dataset(str(tmp_path / "data" / "manifest.csv")), ManifestReader)
    with pytest.raises(DatasetError, match="manifest not found"):
        open_dataset(str(tmp_path / "data" / "nothing.csv"))
    with pytest.raises(DatasetError, match=re.escape(str(tmp_path / "nothing"))):
        open_dataset(str(tmp_path / "nothing"))
    with pytest.raises(DatasetError, match="unknown split"):
        list(ManifestReader(str(tmp_path / "data" / "manifest.csv")).iter_images("val"))


def test_default_split_keeps_a_patient_together(tmp_path: Path):
    lines = ["image,bbox_name,x1,y1,x2,y2,patient_id"]
    for patient in range(40):
        for film in range(3):
            lines.append(f"p{patient}/f{film}.png,heart,1,1,20,20,PAT{patient:03d}")
    (tmp_path / "m.csv").write_text("\n".join(lines))
    images = list(ManifestReader(str(tmp_path / "m.csv")).iter_images())
    by_patient: dict[str, set[str]] = {}
    for image in images:
        by_patient.setdefault(image.patient_hash, set()).add(image.split)
    assert len(by_patient) == 40 and all(len(s) == 1 for s in by_patient.values())
    assert {i.split for i in images} == {"train", "valid", "test"}


@pytest.mark.integration
def test_manifest_on_s3(s3_server, tmp_path: Path):
    bucket = s3_server.make_bucket("manifest")
    absolute = f"{bucket}/elsewhere/c.png"
    write_csv(tmp_path / "data", absolute)
    s3_server.upload(tmp_path / "data", f"{bucket}/data")
    reader = open_dataset(f"{bucket}/data/manifest.csv", s3=s3_server.options, salt=SALT)
    check_scan(reader, f"{bucket}/data", absolute, "manifest.csv")
