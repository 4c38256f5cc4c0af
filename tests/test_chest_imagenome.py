"""ChestImaGenomeReader on a hand-written Chest ImaGenome copy with every kind of known dirt.

The fixture (see :func:`write_chest_imagenome`), split CSV paths ``.dcm``, images on disk ``.png``:

=====  =====  ==========  =====================================================================
image  split  subject     what is special
=====  =====  ==========  =====================================================================
H      train  10003344    first train row, scene graph present, image *missing* (probe misses)
A      train  10000980    clean, 36 regions
B      train  10001122    right lung x1 = -5, left lung zero area, spine missing, "left kidney",
                          cardiac silhouette reaching y2 = 350 on a 300 px high image
C      valid  10002233    left costophrenic angle has findings
G      valid  10000980    second study of A's patient
D      test   10000980    listed in images_to_avoid.csv
E      test   10005566    no scene graph
F      test   10006677    scene graph is not JSON
=====  =====  ==========  =====================================================================
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from PIL import Image

from regionmir.anatomy import ANATOMY_NAMES, anatomy_id
from regionmir.boxes import Box
from regionmir.chest_imagenome import ChestImaGenomeReader, clamp_to_image
from regionmir.dataset import open_dataset
from regionmir.errors import DatasetError
from regionmir.identifiers import hash_identifier
from regionmir.scan_report import ScanReport

SALT = "test-salt"
WIDTH, HEIGHT = 256, 300

# dicom_id -> (split, subject_id, study_id)
IMAGES = {
    "h0000000-hhhh": ("train", "10003344", "53000001"),
    "a0000000-aaaa": ("train", "10000980", "50985099"),
    "b0000000-bbbb": ("train", "10001122", "51000001"),
    "c0000000-cccc": ("valid", "10002233", "52000001"),
    "g0000000-gggg": ("valid", "10000980", "50985100"),
    "d0000000-dddd": ("test", "10000980", "50985101"),
    "e0000000-eeee": ("test", "10005566", "55000001"),
    "f0000000-ffff": ("test", "10006677", "56000001"),
}
A, B, C, D, E, F, G, H = (next(k for k in IMAGES if k.startswith(c)) for c in "abcdefgh")
RAW_IDS = sorted({v for _, subject, study in IMAGES.values() for v in (subject, study)})


def region_box(index: int) -> list[float]:
    """The clean box of region ``index`` (inside the 256 x 300 image)."""
    return [10.0 + index, 20.0 + index, 100.0 + 2 * index, 120.0 + index]


def scene_graph(dicom_id: str) -> dict:
    split, subject, study = IMAGES[dicom_id]
    objects, attributes = [], []
    for index, name in enumerate(ANATOMY_NAMES):
        x1, y1, x2, y2 = region_box(index)
        if dicom_id == B:
            if name == "spine":
                continue
            if name == "right lung":
                x1 = -5.0
            if name == "left lung":
                x2 = x1
            if name == "cardiac silhouette":
                y2 = 350.0
        objects.append(
            {
                "object_id": f"{dicom_id}_{name}",
                "bbox_name": name,
                "name": name.title(),
                "synsets": ["C0000000"],
                "x1": 1,
                "y1": 1,
                "x2": 2,
                "y2": 2,
                "width": 1,
                "height": 1,  # 224 px copy: unused
                "original_x1": x1,
                "original_y1": y1,
                "original_x2": x2,
                "original_y2": y2,
                "original_width": x2 - x1,
                "original_height": y2 - y1,
            }
        )
    if dicom_id == B:
        objects.append({**objects[0], "bbox_name": "left kidney"})
    if dicom_id == C:
        attributes.append(
            {
                "bbox_name": "left costophrenic angle",
                "name": "Left costophrenic angle",
                "attributes": [
                    ["anatomicalfinding|yes|pleural effusion", "nlp|no|normal"],
                    ["nlp|yes|abnormal", "anatomicalfinding|no|lung opacity"],
                ],
                "phrases": ["Small left pleural effusion."],
            }
        )
    return {
        "image_id": dicom_id,
        "patient_id": int(subject),
        "study_id": int(study),
        "viewpoint": "PA" if dicom_id != G else "AP",
        "objects": objects,
        "attributes": attributes,
        "relationships": [],
    }


def mimic_path(dicom_id: str, ext: str = ".dcm") -> str:
    _, subject, study = IMAGES[dicom_id]
    return f"files/p{subject[:2]}/p{subject}/s{study}/{dicom_id}{ext}"


def write_chest_imagenome(root: Path, nested: bool = False) -> Path:
    """Write the fixture under ``root`` (images under ``root/files``); returns silver_dataset."""
    silver = root / "silver_dataset"
    graphs = silver / "scene_graph" / ("scene_graph" if nested else "")
    graphs.mkdir(parents=True)
    (silver / "splits").mkdir()
    for dicom_id in IMAGES:
        if dicom_id == E:
            continue
        target = graphs / f"{dicom_id}_SceneGraph.json"
        if dicom_id == F:
            target.write_text('{"image_id": "f0000000-ffff", "objects": [')
        else:
            target.write_text(json.dumps(scene_graph(dicom_id)))
        if dicom_id != H:
            image = root / mimic_path(dicom_id, ".png")
            image.parent.mkdir(parents=True, exist_ok=True)
            Image.new("L", (WIDTH, HEIGHT), 128).save(image)
    header = ",subject_id,study_id,dicom_id,path,ViewPosition\n"  # the release's leading index column
    for split in ("train", "valid", "test"):
        rows = [
            f"{n},{s},{t},{d},{mimic_path(d)},PA\n" for n, (d, (sp, s, t)) in enumerate(IMAGES.items()) if sp == split
        ]
        (silver / "splits" / f"{split}.csv").write_text(header + "".join(rows))
    _, subject, study = IMAGES[D]
    (silver / "splits" / "images_to_avoid.csv").write_text(
        f"subject_id,study_id,dicom_id,path,ViewPosition\n{subject},{study},{D},{mimic_path(D)},PA\n"
    )
    return silver


@pytest.fixture
def dataset_root(tmp_path: Path) -> Path:
    write_chest_imagenome(tmp_path / "cig")
    return tmp_path / "cig"


def check_full_scan(reader: ChestImaGenomeReader) -> dict:
    """Assertions shared by the local and S3 scans; returns the images by id."""
    images = {image.image_id: image for image in reader.iter_images()}
    assert list(images) == [A, B, C, G]
    report = reader.report
    assert dict(report.read) == {"split_rows": 8, "images": 4, "regions": 36 + 34 + 36 + 36}
    assert dict(report.issues) == {
        "missing_image": 1,
        "box_clamped": 1,
        "box_zero_area": 1,
        "unknown_anatomy": 1,
        "region_missing": 1,
        "image_to_avoid": 1,
        "missing_scene_graph": 1,
        "bad_json": 1,
    }
    assert report.details["region_missing"] == {"spine": 1}
    assert report.details["unknown_anatomy"] == {"left kidney": 1}
    assert report.details["box_clamped"] == {"negative coordinates": 1}
    assert report.examples["missing_image"] == [H]
    assert report.examples["box_zero_area"] == [f"{B}/left lung"]
    assert report.examples["image_to_avoid"] == [D]
    assert report.examples["missing_scene_graph"] == [E]
    assert report.examples["bad_json"] == [F]

    b = images[B]
    assert b.split == "train" and b.view == "PA"
    assert anatomy_id("spine") not in b.anatomy_ids and anatomy_id("left lung") not in b.anatomy_ids
    assert b.region(anatomy_id("right lung")).box == Box(0.0, 20.0, 100.0, 120.0)
    assert b.region(anatomy_id("left lung")) is None
    index = anatomy_id("trachea")
    assert b.region(index).box == Box(*region_box(index))
    assert list(b.anatomy_ids) == sorted(b.anatomy_ids)
    # every image of the scan is the png beside the .dcm the CSV names
    for image in images.values():
        assert image.image_uri.endswith(mimic_path(image.image_id, ".png"))
        assert all(r.image_uri == image.image_uri and r.image_id == image.image_id for r in image.regions)
    angle = images[C].region(anatomy_id("left costophrenic angle"))
    assert angle.attributes == ("abnormal", "pleural effusion")
    assert images[C].region(anatomy_id("right lung")).attributes == ()
    assert images[G].view == "AP"
    return images


def test_full_scan_counts_every_kind_of_dirt(dataset_root: Path):
    reader = ChestImaGenomeReader(dataset_root, salt=SALT)
    images = check_full_scan(reader)
    for image in images.values():
        assert Path(image.image_uri).is_file()
    summary = reader.report.summary()
    for reason in ("box_clamped", "region_missing", "image_to_avoid", "spine", "left kidney"):
        assert reason in summary


def test_identifiers_are_salted_hashes_only(dataset_root: Path):
    images = {i.image_id: i for i in ChestImaGenomeReader(dataset_root, salt=SALT).iter_images()}
    a, g = images[A], images[G]
    assert a.patient_hash == hash_identifier("10000980", SALT) == g.patient_hash
    assert a.study_hash == hash_identifier("50985099", SALT) != g.study_hash
    assert len(a.patient_hash) == 16
    for image in images.values():
        # The MIMIC path in image_uri holds the subject id (p10000980): it is where the file
        # lives. Every other field must be free of raw ids.
        stripped = [dataclasses.replace(image, image_uri="", regions=())]
        stripped += [dataclasses.replace(region, image_uri="") for region in image.regions]
        for record in stripped:
            text = repr(record)
            assert not [raw for raw in RAW_IDS if raw in text], text


def test_split_filtering_and_report_per_scan(dataset_root: Path):
    reader = ChestImaGenomeReader(dataset_root, salt=SALT)
    assert [i.image_id for i in reader.iter_images("valid")] == [C, G]
    assert reader.report.read["images"] == 2 and reader.report.read["split_rows"] == 2
    assert reader.report.total_issues == 0
    assert [i.image_id for i in reader.iter_images("test")] == []
    assert reader.report["image_to_avoid"] == 1 and reader.report["bad_json"] == 1
    only_train = ChestImaGenomeReader(dataset_root, splits=("train",), salt=SALT)
    assert [i.image_id for i in only_train.iter_images()] == [A, B]
    with pytest.raises(DatasetError, match="valid"):
        list(only_train.iter_images("valid"))


def test_images_to_avoid_can_be_kept(dataset_root: Path):
    reader = ChestImaGenomeReader(dataset_root, skip_images_to_avoid=False, salt=SALT)
    assert [i.image_id for i in reader.iter_images("test")] == [D]
    assert reader.report["image_to_avoid"] == 0


@pytest.mark.parametrize("variant", ["nested scene_graph", "root is silver_dataset", "threads"])
def test_layout_variants(tmp_path: Path, variant: str):
    root = tmp_path / "cig"
    silver = write_chest_imagenome(root, nested=variant == "nested scene_graph")
    given = silver if variant == "root is silver_dataset" else root
    reader = ChestImaGenomeReader(given, salt=SALT, workers=4 if variant == "threads" else None)
    check_full_scan(reader)
    if variant == "nested scene_graph":
        assert reader.scene_graph_dir.endswith("scene_graph/scene_graph")


def test_explicit_image_root_and_files_prefix(tmp_path: Path):
    root = tmp_path / "cig"
    write_chest_imagenome(root)
    reader = ChestImaGenomeReader(root, image_root=root / "files", salt=SALT)
    layout = reader.image_layout()
    assert (layout.form, layout.extension) == ("without files/", ".png")
    assert "png" in reader.describe()
    check_full_scan(reader)


def test_missing_images_raise_after_probing(tmp_path: Path):
    root = tmp_path / "cig"
    write_chest_imagenome(root)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    reader = ChestImaGenomeReader(root, image_root=elsewhere, probe_rows=2, salt=SALT)
    with pytest.raises(DatasetError, match="no image found"):
        list(reader.iter_images())
    assert "NOT FOUND" in ChestImaGenomeReader(root, image_root=elsewhere, probe_rows=2).describe()


def test_clamp_to_image_counts_boxes_past_the_edge(dataset_root: Path):
    images = {i.image_id: i for i in ChestImaGenomeReader(dataset_root, salt=SALT).iter_images()}
    report = ScanReport()
    clamped = clamp_to_image(images[B], WIDTH, HEIGHT, report)
    index = anatomy_id("cardiac silhouette")
    assert clamped.region(index).box == Box(*region_box(index)[:3], HEIGHT)
    assert len(clamped.regions) == len(images[B].regions)
    assert dict(report.issues) == {"box_clamped": 1}
    assert report.details["box_clamped"] == {"past image edge": 1}
    # A clean image passes unchanged.
    assert clamp_to_image(images[A], WIDTH, HEIGHT, report) == images[A]
    # Labels drawn for a 2x larger image: the whole image is refused, once.
    refused = clamp_to_image(images[A], WIDTH / 2, HEIGHT / 2, report)
    assert refused.regions == () and report["image_size_mismatch"] == 1
    # A box entirely outside is dropped; the others stay.
    inside, outside = images[A].regions[:2]
    outside = dataclasses.replace(outside, box=Box(250.0, 10.0, 260.0, 20.0))
    report = ScanReport()
    kept = clamp_to_image(images[A].with_regions([inside, outside]), 240, HEIGHT, report)
    assert kept.regions == (inside,)
    assert dict(report.issues) == {"box_outside_image": 1}


def test_scene_graph_folder_without_splits(dataset_root: Path):
    """Pointed at the scene graph folder itself: every graph is read, split by patient hash."""
    graphs = dataset_root / "silver_dataset" / "scene_graph"
    reader = open_dataset(str(graphs), salt=SALT, image_root=str(dataset_root))
    assert isinstance(reader, ChestImaGenomeReader)
    images = list(reader.iter_images())
    assert sorted(i.image_id for i in images) == sorted([A, B, C, D, G, H])
    assert dict(reader.report.issues) == {
        "bad_json": 1,
        "box_clamped": 1,
        "box_zero_area": 1,
        "unknown_anatomy": 1,
        "region_missing": 1,
    }
    assert reader.report.read["scene_graphs"] == 7
    # The first image fixed the layout; later missing files are not stat'ed (decode finds them).
    assert not Path(next(i for i in images if i.image_id == H).image_uri).exists()
    by_patient: dict[str, set[str]] = {}
    for image in images:
        by_patient.setdefault(image.patient_hash, set()).add(image.split)
    assert all(len(splits) == 1 for splits in by_patient.values())  # a patient stays in one split
    for split in ("train", "valid", "test"):
        expected = {i.image_id for i in images if i.split == split}
        assert {i.image_id for i in reader.iter_images(split)} == expected


def test_open_dataset_and_errors(dataset_root: Path, tmp_path: Path):
    assert isinstance(open_dataset(str(dataset_root)), ChestImaGenomeReader)
    assert isinstance(open_dataset(str(dataset_root / "silver_dataset")), ChestImaGenomeReader)
    with pytest.raises(DatasetError, match="no such"):
        open_dataset(str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="silver_dataset"):
        open_dataset(str(tmp_path / "empty"))
    (dataset_root / "silver_dataset" / "splits" / "valid.csv").unlink()
    with pytest.raises(DatasetError, match="valid.csv"):
        ChestImaGenomeReader(dataset_root)
    assert [i.image_id for i in ChestImaGenomeReader(dataset_root, splits=("train",)).iter_images()] == [A, B]


def test_stopping_early_does_not_hang(dataset_root: Path):
    reader = ChestImaGenomeReader(dataset_root, workers=4)
    first = next(reader.iter_images())
    assert first.image_id == A


def test_report_merge_and_round_trip():
    one, two = ScanReport(source="x", max_examples=2), ScanReport(source="y")
    one.count("images", 3)
    one.issue("box_clamped", "a", detail="negative coordinates")
    two.count("images", 2)
    two.issue("box_clamped", "b", detail="past image edge")
    two.issue("box_clamped", "c", detail="past image edge")
    merged = one + two
    assert merged.read["images"] == 5 and merged["box_clamped"] == 3
    assert merged.details["box_clamped"] == {"negative coordinates": 1, "past image edge": 2}
    assert merged.examples["box_clamped"] == ["a", "b"]  # capped at max_examples
    assert ScanReport.from_dict(merged.as_dict()) == merged
    assert one["box_clamped"] == 1  # merge leaves its inputs alone
    json.dumps(merged.as_dict())


@pytest.mark.integration
def test_reads_the_same_copy_from_s3(s3_server, tmp_path: Path):
    write_chest_imagenome(tmp_path / "cig", nested=True)
    bucket = s3_server.make_bucket("cig")
    s3_server.upload(tmp_path / "cig", f"{bucket}/chest-imagenome")
    reader = open_dataset(f"{bucket}/chest-imagenome/", s3=s3_server.options, salt=SALT)
    assert isinstance(reader, ChestImaGenomeReader) and reader.workers > 1
    images = check_full_scan(reader)
    uri = images[B].image_uri
    assert uri == f"{bucket}/chest-imagenome/{mimic_path(B, '.png')}"

    from regionmir.image_reader import read_image

    decoded = read_image(uri, s3=s3_server.options)
    report = ScanReport()
    clamped = clamp_to_image(images[B], decoded.info.width, decoded.info.height, report)
    assert report.details["box_clamped"] == {"past image edge": 1}
    assert clamped.region(anatomy_id("cardiac silhouette")).box.y2 == HEIGHT
