"""Phantom generator: layout, determinism, DICOM round trip, and boxes that sit on the anatomy."""

from __future__ import annotations

import json

import numpy as np
import pydicom
import pytest
from tree_digest import tree_digest

from regionmir.anatomy import ANATOMY_NAMES
from regionmir.cli import main
from regionmir.synth.dataset_writer import phantom_params, write_phantom_dataset
from regionmir.synth.phantom_dicom import pixel_values
from regionmir.synth.phantom_film import gaussian_blur, render_film
from regionmir.synth.phantom_params import Finding, PhantomParams


@pytest.fixture(scope="module")
def eight_films(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "a"
    assert main(["synth", "--out", str(out), "--images", "8", "--seed", "1", "--size", "128", "--quiet"]) == 0
    return out


def test_writes_eight_images_and_scene_graphs_with_36_objects(eight_films):
    graphs = sorted((eight_films / "silver_dataset" / "scene_graph").glob("*_SceneGraph.json"))
    images = sorted((eight_films / "images").rglob("*.png"))
    assert len(graphs) == 8 and len(images) == 8
    for path in graphs:
        graph = json.loads(path.read_text())
        assert {o["bbox_name"] for o in graph["objects"]} == set(ANATOMY_NAMES)
        assert len(graph["objects"]) == 36
        assert graph["viewpoint"] in ("AP", "PA")
        for o in graph["objects"]:
            assert 0 <= o["original_x1"] < o["original_x2"] <= 128
            assert 0 <= o["original_y1"] < o["original_y2"] <= 128
            assert o["original_width"] == o["original_x2"] - o["original_x1"]
            assert 0 <= o["x1"] < o["x2"] <= 224  # the 224-scale copy
    rows = []
    for split in ("train", "valid", "test"):
        lines = (eight_films / "silver_dataset" / "splits" / f"{split}.csv").read_text().splitlines()
        assert lines[0] == "subject_id,study_id,dicom_id,path"
        rows += lines[1:]
    assert len(rows) == 8
    for row in rows:
        subject, study, dicom_id, rel = row.split(",")
        assert rel == f"files/p{subject[:2]}/p{subject}/s{study}/{dicom_id}.png"
        assert (eight_films / "images" / rel).exists()


def test_same_seed_same_bytes_other_seed_other_bytes(eight_films, tmp_path):
    main(["synth", "--out", str(tmp_path / "b"), "--images", "8", "--seed", "1", "--size", "128", "--quiet"])
    main(["synth", "--out", str(tmp_path / "c"), "--images", "8", "--seed", "2", "--size", "128", "--quiet"])
    first, again, other = tree_digest(eight_films), tree_digest(tmp_path / "b"), tree_digest(tmp_path / "c")
    assert first == again
    films = {k: v for k, v in first.items() if k.startswith(("images/", "silver_dataset/scene_graph/"))}
    assert len(films) == 16
    assert set(films.values()).isdisjoint(other.values())


def test_dicom_format_reads_back_with_the_same_pixels(tmp_path):
    summary = write_phantom_dataset(str(tmp_path), images=2, size=128, seed=3, fmt="dicom", progress=False)
    assert summary["images"] == 2
    dicoms = sorted(tmp_path.rglob("*.dcm"))
    assert len(dicoms) == 2
    for index in range(2):
        film = render_film(phantom_params(3, index), 128)
        expected = pixel_values(film)
        matches = [d for d in dicoms if np.array_equal(pydicom.dcmread(d).pixel_array, expected)]
        assert len(matches) == 1
        ds = pydicom.dcmread(matches[0])
        assert ds.PhotometricInterpretation == "MONOCHROME2" and ds.BitsStored == 12
        assert ds.ViewPosition == film.params.view


def test_boxes_sit_on_the_anatomy():
    params = PhantomParams()  # the average PA patient, no rotation
    film = render_film(params, 256)
    b, img = film.boxes, film.image

    def mean_in(name):
        box = b[name]
        return float(img[int(box.y1) : int(box.y2), int(box.x1) : int(box.x2)].mean())

    # the patient's right lung is on the image's left
    assert b["right lung"].center[0] < 128 < b["left lung"].center[0]
    assert b["right clavicle"].center[0] < 128 < b["left clavicle"].center[0]
    # aerated lung is dark, the heart and the abdomen are dense
    assert mean_in("right mid lung zone") < mean_in("cardiac silhouette") - 0.2
    assert mean_in("left mid lung zone") < mean_in("abdomen") - 0.2
    # vertical order: apex above carina above heart above diaphragm
    assert b["right apical zone"].y1 < b["carina"].y1 < b["cardiac silhouette"].center[1] < b["right hemidiaphragm"].y2
    # the costophrenic angle is the lateral-lower corner of its lung
    lung, angle = b["left lung"], b["left costophrenic angle"]
    assert angle.x2 >= lung.x2 - 2 and angle.y2 >= lung.y2 - 2
    # zones tile the lung from top to bottom
    assert b["right upper lung zone"].y1 == b["right lung"].y1
    assert b["right lower lung zone"].y2 == b["right lung"].y2
    # the cardiothoracic ratio is what the patient was drawn with
    heart_w = b["cardiac silhouette"].width
    thorax_w = b["left lung"].x2 - b["right lung"].x1
    assert abs(heart_w / thorax_w - params.cardiothoracic_ratio) < 0.06


def test_rotation_moves_boxes_with_the_film():
    upright = render_film(PhantomParams(), 256)
    tilted = render_film(PhantomParams(rotation_deg=5.0), 256)
    # a clockwise-positive rotation about the centre lowers the image-right side
    assert tilted.boxes["left clavicle"].center[1] > upright.boxes["left clavicle"].center[1]
    assert tilted.boxes["right clavicle"].center[1] < upright.boxes["right clavicle"].center[1]


def test_findings_change_the_film_and_are_recorded(tmp_path):
    base = PhantomParams()
    effusion = PhantomParams(findings=(Finding("pleural effusion", "left", severity=1.0),))
    a, e = render_film(base, 256), render_film(effusion, 256)
    box = a.boxes["left costophrenic angle"]
    region = (slice(int(box.y1), int(box.y2)), slice(int(box.x1), int(box.x2)))
    assert e.image[region].mean() > a.image[region].mean() + 0.05  # the angle is blunted (whiter)
    box_r = a.boxes["right costophrenic angle"]
    region_r = (slice(int(box_r.y1), int(box_r.y2)), slice(int(box_r.x1), int(box_r.x2)))
    assert abs(e.image[region_r].mean() - a.image[region_r].mean()) < 0.02  # the other side is not

    from regionmir.synth.dataset_writer import phantom_identity, scene_graph

    graph = scene_graph(e, phantom_identity(0, 0), 256)
    by_region = {a_["bbox_name"]: a_["attributes"][0] for a_ in graph["attributes"]}
    assert "anatomicalfinding|yes|pleural effusion" in by_region["left costophrenic angle"]
    assert by_region["right costophrenic angle"] == ["nlp|yes|normal"]


def test_gaussian_blur_keeps_mass_and_matches_a_direct_convolution():
    rng = np.random.default_rng(0)
    image = rng.random((40, 50)).astype(np.float32)
    blurred = gaussian_blur(image, 1.5)
    assert blurred.shape == image.shape
    radius = 5
    xs = np.arange(-radius, radius + 1)
    k = np.exp(-0.5 * (xs / 1.5) ** 2)
    k /= k.sum()
    padded = np.pad(image, radius, mode="reflect")
    rows = np.stack([np.convolve(r, k, mode="valid") for r in padded])
    direct = np.stack([np.convolve(c, k, mode="valid") for c in rows.T]).T
    # the FFT blur uses the exact Gaussian transfer function; truncation at 3.3 sigma differs slightly
    assert np.abs(blurred - direct).max() < 0.01


def test_preview_contact_sheet(tmp_path):
    from PIL import Image

    out = tmp_path / "p"
    assert (
        main(["synth", "--out", str(out), "--images", "3", "--size", "128", "--seed", "0", "--preview", "--quiet"]) == 0
    )
    sheet = Image.open(out / "preview.png")
    assert sheet.width > 256 and sheet.mode == "RGB"
