"""The two-view augmentation, above all the laterality rule: never a flip without the label swap."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from regionmir.anatomy import ANATOMY_NAMES, anatomy_id, mirror_id, side_of
from regionmir.augmentation import AugmentationConfig, augment_region, can_flip, two_views
from regionmir.boxes import Box
from regionmir.roi_crop import CropConfig, roi_crop

WIDTH, HEIGHT = 320, 256
LEFT_LUNG = anatomy_id("left lung")
RIGHT_LUNG = anatomy_id("right lung")
SPINE = anatomy_id("spine")
# On a PA film the patient's left lies on the image's right.
LEFT_LUNG_BOX = Box(180, 80, 260, 180)
RIGHT_LUNG_BOX = LEFT_LUNG_BOX.flipped_horizontally(WIDTH)  # Box(60, 80, 140, 180)
SPINE_BOX = Box(140, 40, 180, 240)
CROP = CropConfig(size=48, margin=0.15)
NO_AUG = AugmentationConfig.none()


def asymmetric_film() -> np.ndarray:
    """A dim film whose intensity depends on y only, plus a bright blob at (x=240, y=130).

    The blob sits 20 px right of the left-lung box's centre, so every view of that box has its
    bright mass in the right half unless the view was mirrored.
    """
    ys, xs = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
    film = 0.15 + 0.1 * ys / HEIGHT
    film += 0.7 * np.exp(-((xs - 240.0) ** 2 + (ys - 130.0) ** 2) / (2 * 8.0**2))
    return np.clip(film, 0, 1).astype(np.float32)


def looks_mirrored(view: np.ndarray) -> bool:
    half = view.shape[1] // 2
    return float(view[:, :half].mean()) > float(view[:, half:].mean())


# --- laterality --------------------------------------------------------------------------------


def test_flip_mirrors_the_crop_and_turns_left_lung_into_right_lung():
    film = asymmetric_film()
    aug = dataclasses.replace(NO_AUG, horizontal_flip_p=1.0)
    view, label = augment_region(film, LEFT_LUNG_BOX, LEFT_LUNG, CROP, aug, np.random.default_rng(0))
    assert label == RIGHT_LUNG
    np.testing.assert_array_equal(view, np.fliplr(roi_crop(film, LEFT_LUNG_BOX, CROP)))
    # The flipped view is what the mirrored film shows where the right lung would be.
    mirrored_film = np.ascontiguousarray(film[:, ::-1])
    np.testing.assert_allclose(view, roi_crop(mirrored_film, RIGHT_LUNG_BOX, CROP), atol=1e-6)
    assert looks_mirrored(view)


def test_without_flip_the_label_never_changes():
    film = asymmetric_film()
    aug = AugmentationConfig.contrastive()
    assert aug.horizontal_flip_p == 0.0  # off unless asked for
    rng = np.random.default_rng(1)
    for _ in range(50):
        view, label = augment_region(film, LEFT_LUNG_BOX, LEFT_LUNG, CROP, aug, rng)
        assert label == LEFT_LUNG
        assert not looks_mirrored(view)


def test_every_flipped_view_has_the_swapped_label_and_no_other_does():
    film = asymmetric_film()
    aug = dataclasses.replace(AugmentationConfig.contrastive(), horizontal_flip_p=0.5)
    rng = np.random.default_rng(2)
    flips = 0
    draws = 200
    for _ in range(draws):
        view, label = augment_region(film, LEFT_LUNG_BOX, LEFT_LUNG, CROP, aug, rng)
        flipped = looks_mirrored(view)  # judged from the pixels alone
        assert label == (RIGHT_LUNG if flipped else LEFT_LUNG)
        flips += flipped
    assert 0.3 * draws < flips < 0.7 * draws


def test_two_views_carry_their_own_labels():
    film = asymmetric_film()
    aug = dataclasses.replace(AugmentationConfig.contrastive(), horizontal_flip_p=0.5)
    rng = np.random.default_rng(3)
    seen_mixed = False
    for _ in range(40):
        v1, v2, l1, l2 = two_views(film, LEFT_LUNG_BOX, LEFT_LUNG, CROP, aug, rng)
        assert l1 == (RIGHT_LUNG if looks_mirrored(v1) else LEFT_LUNG)
        assert l2 == (RIGHT_LUNG if looks_mirrored(v2) else LEFT_LUNG)
        seen_mixed |= l1 != l2
    assert seen_mixed


def test_midline_regions_keep_their_label_when_flipped():
    film = asymmetric_film()
    aug = dataclasses.replace(NO_AUG, horizontal_flip_p=1.0)
    view, label = augment_region(film, SPINE_BOX, SPINE, CROP, aug, np.random.default_rng(0))
    assert label == SPINE
    np.testing.assert_array_equal(view, np.fliplr(roi_crop(film, SPINE_BOX, CROP)))


@pytest.mark.parametrize("anatomy", range(len(ANATOMY_NAMES)))
def test_flip_label_rule_for_every_anatomy(anatomy):
    film = asymmetric_film()
    aug = dataclasses.replace(NO_AUG, horizontal_flip_p=1.0)
    view, label = augment_region(film, LEFT_LUNG_BOX, anatomy, CROP, aug, np.random.default_rng(0))
    plain = roi_crop(film, LEFT_LUNG_BOX, CROP)
    if np.array_equal(view, np.fliplr(plain)):  # flipped: a twin swaps sides, midline stays
        expected_side = {"left": "right", "right": "left", "midline": "midline"}[side_of(anatomy)]
        assert label == mirror_id(anatomy) and side_of(label) == expected_side
    else:  # only a sided region without a twin may refuse the flip, and keeps its label
        assert not can_flip(anatomy) and side_of(anatomy) != "midline"
        np.testing.assert_array_equal(view, plain)
        assert label == anatomy


def test_only_the_right_atrium_refuses_to_flip():
    assert [ANATOMY_NAMES[i] for i in range(len(ANATOMY_NAMES)) if not can_flip(i)] == ["right atrium"]


# --- geometry on the full film -----------------------------------------------------------------


def test_none_is_exactly_the_plain_crop():
    film = asymmetric_film()
    view, label = augment_region(film, LEFT_LUNG_BOX, LEFT_LUNG, CROP, NO_AUG, np.random.default_rng(5))
    assert label == LEFT_LUNG
    np.testing.assert_array_equal(view, roi_crop(film, LEFT_LUNG_BOX, CROP))


def test_box_scale_jitter_takes_real_context_from_the_film():
    film = asymmetric_film()
    aug = dataclasses.replace(NO_AUG, scale_range=(1.2, 1.2))
    view, _ = augment_region(film, LEFT_LUNG_BOX, LEFT_LUNG, CROP, aug, np.random.default_rng(0))
    cx, cy = LEFT_LUNG_BOX.center
    grown = Box(cx - 48, cy - 60, cx + 48, cy + 60)  # the 80x100 box scaled by 1.2
    np.testing.assert_allclose(view, roi_crop(film, grown, CROP), atol=1e-6)


def test_rotation_corners_sample_the_film_not_padding():
    film = np.full((HEIGHT, WIDTH), 0.5, dtype=np.float32)
    aug = dataclasses.replace(NO_AUG, rotation_degrees=7.0)
    rng = np.random.default_rng(6)
    for _ in range(5):
        view, _ = augment_region(film, LEFT_LUNG_BOX, LEFT_LUNG, CROP, aug, rng)
        np.testing.assert_allclose(view, 0.5, atol=1e-5)


def test_small_rotation_stays_close_to_the_unrotated_crop():
    film = asymmetric_film()
    aug = dataclasses.replace(NO_AUG, rotation_degrees=2.0)
    view, _ = augment_region(film, LEFT_LUNG_BOX, LEFT_LUNG, CROP, aug, np.random.default_rng(7))
    plain = roi_crop(film, LEFT_LUNG_BOX, CROP)
    assert np.abs(view - plain).mean() < 0.02


def test_a_box_on_the_film_edge_never_fails_under_jitter():
    film = asymmetric_film()
    edge_box = Box(WIDTH - 6, 10, WIDTH + 30, 60)  # mostly off the right edge
    rng = np.random.default_rng(8)
    for _ in range(100):
        view, _ = augment_region(film, edge_box, LEFT_LUNG, CROP, AugmentationConfig.contrastive(), rng)
        assert view.shape == (CROP.size, CROP.size)


# --- values and determinism --------------------------------------------------------------------


@pytest.mark.parametrize("preset", [AugmentationConfig.contrastive(), AugmentationConfig.fine_tuning()])
def test_views_are_float32_in_unit_range(preset):
    rng = np.random.default_rng(9)
    film = np.clip(rng.random((HEIGHT, WIDTH)) * 1.4 - 0.2, 0, 1).astype(np.float32)  # saturated
    aug = dataclasses.replace(preset, horizontal_flip_p=0.5)
    for _ in range(30):
        view, _ = augment_region(film, LEFT_LUNG_BOX, LEFT_LUNG, CROP, aug, rng)
        assert view.dtype == np.float32 and view.shape == (CROP.size, CROP.size)
        assert view.min() >= 0.0 and view.max() <= 1.0


def test_same_seed_same_views_other_seed_other_views():
    film = asymmetric_film()
    aug = dataclasses.replace(AugmentationConfig.contrastive(), horizontal_flip_p=0.5)
    a = two_views(film, LEFT_LUNG_BOX, LEFT_LUNG, CROP, aug, np.random.default_rng(42))
    b = two_views(film, LEFT_LUNG_BOX, LEFT_LUNG, CROP, aug, np.random.default_rng(42))
    c = two_views(film, LEFT_LUNG_BOX, LEFT_LUNG, CROP, aug, np.random.default_rng(43))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert a[2:] == b[2:]
    assert not np.array_equal(a[0], c[0])
    assert not np.array_equal(a[0], a[1])  # the two views differ


# --- config ------------------------------------------------------------------------------------


def test_presets_and_round_trip():
    light, strong = AugmentationConfig.fine_tuning(), AugmentationConfig.contrastive()
    assert light.rotation_degrees < strong.rotation_degrees
    assert light.translate_fraction < strong.translate_fraction
    for config in (light, strong, NO_AUG):
        assert AugmentationConfig.from_dict(config.to_dict()) == config
    # A JSON round trip turns tuples into lists.
    as_json = {k: list(v) if isinstance(v, tuple) else v for k, v in strong.to_dict().items()}
    assert AugmentationConfig.from_dict(as_json) == strong


@pytest.mark.parametrize(
    "change",
    [
        {"scale_range": (1.2, 0.8)},
        {"horizontal_flip_p": 1.5},
        {"blur_p": -0.1},
        {"brightness": -0.1},
        {"rotation_degrees": 90.0},
        {"gamma_range": (0.0, 1.0)},
    ],
)
def test_config_rejects_bad_ranges(change):
    with pytest.raises(ValueError):
        dataclasses.replace(AugmentationConfig(), **change)
