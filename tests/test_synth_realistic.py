"""Generator 2 (the realistic preset): positioning, flips, findings and devices move the boxes the way
they should, presets are exact, and rendering is deterministic across processes."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from tree_digest import tree_digest

from regionmir.anatomy import ANATOMY_NAMES
from regionmir.synth.dataset_writer import phantom_identity, phantom_params, scene_graph, write_phantom_dataset
from regionmir.synth.phantom_film import render_film
from regionmir.synth.phantom_params import DEVICES, Finding, PhantomParams, sample_params

SIZE = 192


def test_same_seed_same_bytes_with_one_or_two_processes(tmp_path):
    one = write_phantom_dataset(str(tmp_path / "one"), images=10, size=96, seed=4, progress=False, workers=1)
    two = write_phantom_dataset(str(tmp_path / "two"), images=10, size=96, seed=4, progress=False, workers=2)
    assert one["preset"] == two["preset"] == "realistic" and one["generator"] == "regionmir-phantom-2"
    first, second = tree_digest(tmp_path / "one"), tree_digest(tmp_path / "two")
    first.pop("synth_info.json"), second.pop("synth_info.json")
    assert first == second and len(first) > 20


def test_unknown_preset_is_refused(tmp_path):
    with pytest.raises(ValueError, match="preset"):
        write_phantom_dataset(str(tmp_path), images=1, size=64, preset="glossy", progress=False)


def test_realistic_films_vary_like_an_archive():
    params = [phantom_params(11, i) for i in range(300)]
    rotations = np.array([p.rotation_deg for p in params])
    assert rotations.std() > 2.5 and np.abs(rotations).max() <= 10.0
    assert {p.view for p in params} == {"AP", "PA"} and {p.processing for p in params} == {"CR", "DR"}
    assert 2 <= sum(p.flipped for p in params) <= 30
    assert {name for p in params for name in p.devices} == set(DEVICES)
    assert {f.name for p in params for f in p.findings} >= {"atelectasis", "nodule", "pleural effusion"}
    assert min(p.age for p in params) < 20 and max(p.age for p in params) > 75
    zooms = np.array([p.field_scale for p in params])
    assert zooms.min() < 0.92 and zooms.max() > 1.08
    # the classic preset keeps generator 1's narrow distribution: nothing of the above
    classic = [sample_params(np.random.default_rng(i), "classic") for i in range(50)]
    assert all(not p.flipped and not p.devices and not p.processing and p.field_scale == 1.0 for p in classic)


def test_every_region_stays_on_the_film():
    for index in range(24):
        film = render_film(phantom_params(5, index), 96)
        missing = set(ANATOMY_NAMES) - set(film.boxes)
        assert not missing, (index, missing)
        for box in film.boxes.values():
            assert 0 <= box.x1 < box.x2 <= 96 and 0 <= box.y1 < box.y2 <= 96


def test_a_flipped_film_mirrors_pixels_and_boxes_but_keeps_the_patients_names():
    base = PhantomParams(processing="DR", marker=True, lut_width=1.2, enhance_coarse=0.3)
    upright, flipped = render_film(base, SIZE), render_film(dataclasses.replace(base, flipped=True), SIZE)
    assert np.array_equal(flipped.image, upright.image[:, ::-1])
    for name in ANATOMY_NAMES:
        a, b = upright.boxes[name], flipped.boxes[name]
        assert (b.x1, b.x2, b.y1, b.y2) == (SIZE - a.x2, SIZE - a.x1, a.y1, a.y2), name
    # the patient's right lung now lies on the image's right; the lead "L" moved to the image's left
    assert flipped.boxes["right lung"].center[0] > SIZE / 2 > flipped.boxes["left lung"].center[0]
    top = slice(0, SIZE // 6)
    assert upright.image[top, SIZE // 2 :].max() > 0.99 and flipped.image[top, : SIZE // 2].max() > 0.99


def test_the_laterality_marker_marks_its_own_side_and_mirrors_with_the_film():
    base = PhantomParams(processing="DR", marker=True, marker_side="right", lut_width=1.2, display_range=(0.0, 0.9))
    right, left = render_film(base, SIZE), render_film(dataclasses.replace(base, marker_side="left"), SIZE)
    top, half = slice(0, SIZE // 5), SIZE // 2
    # "R" on the patient's right (the image's left on a PA film), "L" on the left; nothing else is white
    assert right.image[top, :half].max() == 1.0 and right.image[top, half:].max() < 1.0
    assert left.image[top, half:].max() == 1.0 and left.image[top, :half].max() < 1.0
    letter_r = right.image[top, :half] == 1.0
    letter_l = left.image[top, half:] == 1.0
    assert letter_r.sum() != letter_l.sum()  # two different letters
    mirrored = render_film(dataclasses.replace(base, flipped=True), SIZE)
    assert np.array_equal(mirrored.image[top, half:] == 1.0, letter_r[:, ::-1])  # a mirror-image "R"


def test_the_gastric_bubble_has_an_air_fluid_level_only_on_erect_films():
    """Erect (PA): a dome of air over a floor level on the film, even with the patient rotated;
    supine (AP): a rounded lucency, no level; under the left dome either way."""
    shapes = {}
    for view, rotation in (("PA", 0.0), ("AP", 0.0), ("PA rotated", 8.0)):
        base = PhantomParams(view=view[:2], rotation_deg=rotation, gastric_bubble=(0.0, 0.0, 0.0))
        without = render_film(base, SIZE)
        with_gas = render_film(dataclasses.replace(base, gastric_bubble=(1.2, 0.0, 0.0)), SIZE)
        lucent = without.image - with_gas.image  # air is darker
        assert lucent.min() > -0.01  # (quantum noise scales with the signal)
        gas = lucent > 0.5 * lucent.max()
        rows = np.nonzero(gas.any(1))[0]
        shapes[view] = gas.sum(1)[rows.min() : rows.max() + 1]
        dome = without.boxes["left hemidiaphragm"]
        xs = np.nonzero(gas.any(0))[0]
        assert xs.min() > SIZE / 2 and rows.min() >= dome.y1  # the patient's left, under the dome
    erect, supine = shapes["PA"], shapes["AP"]
    assert erect[-1] >= 0.9 * erect.max() and erect[0] < 0.5 * erect.max()  # flat floor, domed top
    assert supine[-1] < 0.5 * supine.max()  # rounded below: no level
    rotated = shapes["PA rotated"]  # the patient turns, the fluid's surface stays level on the film
    assert rotated[-1] >= 0.85 * rotated.max()


def test_a_zoomed_and_shifted_field_cuts_the_apices_and_keeps_boxes_exact():
    base = PhantomParams()
    cut = render_film(dataclasses.replace(base, field_scale=1.15, field_shift_y=-0.08), SIZE)
    assert cut.boxes["right apical zone"].y1 == 0 and cut.boxes["left apical zone"].y1 == 0
    assert cut.boxes["right lung"].width > render_film(base, SIZE).boxes["right lung"].width


def test_effusion_raises_the_hemidiaphragm_box_and_atelectasis_pulls_the_dome_up():
    base = render_film(PhantomParams(), SIZE)
    effusion = render_film(PhantomParams(findings=(Finding("pleural effusion", "right", severity=1.0),)), SIZE)
    assert effusion.boxes["right hemidiaphragm"].y1 < base.boxes["right hemidiaphragm"].y1 - 5
    assert effusion.boxes["left hemidiaphragm"] == base.boxes["left hemidiaphragm"]
    collapse = render_film(PhantomParams(findings=(Finding("atelectasis", "left", "lower", 1.0),)), SIZE)
    assert collapse.boxes["left hemidiaphragm"].y2 < base.boxes["left hemidiaphragm"].y2 - 3
    assert collapse.boxes["left lung"].y2 < base.boxes["left lung"].y2 - 3
    assert collapse.boxes["right lung"] == base.boxes["right lung"]


def test_devices_are_drawn_where_they_belong_and_recorded():
    params = PhantomParams(devices=("endotracheal tube", "central venous catheter", "pacemaker"), vessel_seed=3)
    film = render_film(params, SIZE)
    plain = render_film(PhantomParams(vessel_seed=3), SIZE)
    tube, trachea, carina = film.device_boxes["endotracheal tube"], film.boxes["trachea"], film.boxes["carina"]
    assert tube.x1 <= trachea.center[0] <= tube.x2 and tube.y1 == 0 and tube.y2 < carina.center[1]
    can = film.device_boxes["pacemaker"]
    assert can.y1 < film.boxes["cardiac silhouette"].y1  # generator above the heart, leads down into it
    assert can.y2 > film.boxes["cardiac silhouette"].center[1]
    inside = (slice(int(tube.y1), int(tube.y2)), slice(int(tube.x1), int(tube.x2)))
    assert film.image[inside].max() > plain.image[inside].max()
    graph = scene_graph(film, phantom_identity(0, 0), SIZE)
    by_region = {a["bbox_name"]: a["attributes"][0] for a in graph["attributes"]}
    assert "tubesandlines|yes|endotracheal tube" in by_region["trachea"]
    assert "tubesandlines|yes|central venous catheter" in by_region["cavoatrial junction"]
    assert {d["name"] for d in graph["phantom"]["devices"]} == set(params.devices)
    json.dumps(graph)


def test_acquisition_changes_processing_not_anatomy():
    base = PhantomParams(vessel_seed=9)
    dr = dataclasses.replace(
        base,
        processing="DR",
        enhance_fine=0.5,
        enhance_coarse=0.4,
        lut_width=1.2,
        detector_noise=0.005,
        grid_lines=0.01,
        collimation=(0.03, 0.02, 0.03, 0.02),
        text=("PORTABLE",),
    )
    a, b = render_film(base, SIZE), render_film(dr, SIZE)
    assert a.boxes == b.boxes
    assert not np.array_equal(a.image, b.image)
    assert b.image[:, :3].mean() > 0.9  # collimated (unexposed) edge is white


def test_auto_ranging_puts_the_films_own_range_on_the_display_range():
    """The processing station maps the film's 1st and 99.5th percentiles to ``display_range``: an
    under- and an over-exposed film of the same patient come out with the same display range."""
    under = PhantomParams(vessel_seed=9, processing="DR", exposure=1.2, display_range=(0.03, 0.95))
    over = dataclasses.replace(under, exposure=3.6)
    ranged = [render_film(p, SIZE).image for p in (under, over)]
    for image in ranged:
        low, high = np.percentile(image, [1.0, 99.5])
        assert low == pytest.approx(0.03, abs=0.01) and high == pytest.approx(0.95, abs=0.01)
    unranged = [render_film(dataclasses.replace(p, display_range=None), SIZE).image for p in (under, over)]
    spread = [abs(float(np.median(a)) - float(np.median(b))) for a, b in (ranged, unranged)]
    assert spread[0] < spread[1]
    assert render_film(under, SIZE).boxes == render_film(over, SIZE).boxes
