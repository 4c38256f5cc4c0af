"""ROI crop geometry checked against hand-computed pixels."""

from __future__ import annotations

import time

import numpy as np
import pytest

from regionmir.boxes import Box
from regionmir.errors import BoxError
from regionmir.roi_crop import CropConfig, roi_crop, roi_crops, square_crop_box


def ramp_image(height: int = 10, width: int = 10) -> np.ndarray:
    """Pixel (y, x) holds (10 * y + x) / 100: every pixel tells where it came from."""
    return np.arange(height * width, dtype=np.float32).reshape(height, width) / 100.0


# --- square_crop_box ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "box, margin, expected",
    [
        # square box, no margin: unchanged
        (Box(2, 3, 6, 7), 0.0, Box(2, 3, 6, 7)),
        # 20 wide, 40 tall, centre (20, 40): side = 40 * (1 + 2*0.25) = 60
        (Box(10, 20, 30, 60), 0.25, Box(-10, 10, 50, 70)),
        # wide box: side = 80 * 1.3 = 104 around centre (40, 10)
        (Box(0, 5, 80, 15), 0.15, Box(-12, -42, 92, 62)),
        # no margin, tall box: widened to its height
        (Box(0, 0, 2, 10), 0.0, Box(-4, 0, 6, 10)),
    ],
)
def test_square_crop_box_formula(box, margin, expected):
    got = square_crop_box(box, margin)
    assert got.as_list() == pytest.approx(expected.as_list())
    assert got.width == pytest.approx(got.height)


def test_square_crop_box_rejects_negative_margin_and_empty_boxes():
    with pytest.raises(ValueError):
        square_crop_box(Box(0, 0, 4, 4), -0.1)
    with pytest.raises(BoxError):
        square_crop_box(Box(3, 3, 3, 8), 0.1)
    with pytest.raises(BoxError):
        square_crop_box(Box(5, 0, 1, 4), 0.1)


# --- roi_crop: exact pixels --------------------------------------------------------------------


def test_crop_inside_with_matching_size_is_the_exact_subarray():
    image = ramp_image()
    crop = roi_crop(image, Box(2, 3, 6, 7), CropConfig(size=4, margin=0.0))
    assert crop.dtype == np.float32 and crop.shape == (4, 4)
    np.testing.assert_array_equal(crop, image[3:7, 2:6])


def test_crop_with_margin_takes_context_around_the_box():
    image = ramp_image()
    # 2x2 box, margin 0.5 → side 4 centred on (5, 5): columns/rows 3..6
    crop = roi_crop(image, Box(4, 4, 6, 6), CropConfig(size=4, margin=0.5))
    np.testing.assert_array_equal(crop, image[3:7, 3:7])


def test_crop_pads_outside_the_image_instead_of_shifting():
    image = ramp_image()
    config = CropConfig(size=4, margin=0.0, pad_value=0.7)
    top_left = roi_crop(image, Box(-2, -2, 2, 2), config)
    expected = np.full((4, 4), 0.7, dtype=np.float32)
    expected[2:, 2:] = image[0:2, 0:2]
    np.testing.assert_array_equal(top_left, expected)

    bottom_right = roi_crop(image, Box(8, 7, 12, 11), config)
    expected = np.full((4, 4), 0.7, dtype=np.float32)
    expected[:3, :2] = image[7:10, 8:10]
    np.testing.assert_array_equal(bottom_right, expected)


def test_a_box_larger_than_the_image_keeps_the_image_centred_where_the_box_says():
    image = ramp_image()
    crop = roi_crop(image, Box(-5, 0, 15, 10), CropConfig(size=20, margin=0.0, pad_value=0.0))
    # square window is x -5..15, y -5..15
    np.testing.assert_array_equal(crop[5:15, 5:15], image)
    assert np.all(crop[:5] == 0) and np.all(crop[15:] == 0)
    assert np.all(crop[:, :5] == 0) and np.all(crop[:, 15:] == 0)


def test_window_snaps_to_the_nearest_pixel():
    image = ramp_image()
    # x1 = 2.4 → 2, y1 = 3.5 → 4 (half up); side 4
    crop = roi_crop(image, Box(2.4, 3.5, 6.4, 7.5), CropConfig(size=4, margin=0.0))
    np.testing.assert_array_equal(crop, image[4:8, 2:6])


def _tent_weights(in_size: int, out_size: int) -> np.ndarray:
    """PIL-style antialiased bilinear weights, written from the definition: (out, in)."""
    scale = in_size / out_size
    support = max(scale, 1.0)
    weights = np.zeros((out_size, in_size))
    for i in range(out_size):
        centre = (i + 0.5) * scale
        for j in range(in_size):
            weights[i, j] = max(0.0, 1.0 - abs(j + 0.5 - centre) / support)
        weights[i] /= weights[i].sum()
    return weights


def test_downscaling_is_antialiased_bilinear():
    image = np.zeros((10, 10), dtype=np.float32)
    image[4, 4] = 1.0  # a single bright pixel, at row/col 3 of the 8x8 window below
    crop = roi_crop(image, Box(1, 1, 9, 9), CropConfig(size=4, margin=0.0))
    # Output pixel 1 (window rows 1..4, centre 3.0) weights window pixel 3 by 3/8 in each axis.
    assert crop[1, 1] == pytest.approx((3 / 8) ** 2, abs=1e-6)
    assert crop[2, 2] == pytest.approx((1 / 8) ** 2, abs=1e-6)
    assert crop[1, 2] == pytest.approx(3 / 8 * 1 / 8, abs=1e-6)
    assert crop[0, 0] == 0.0 and crop[3, 3] == 0.0

    window = np.random.default_rng(0).random((8, 8)).astype(np.float32)
    image = np.zeros((10, 10), dtype=np.float32)
    image[1:9, 1:9] = window
    weights = _tent_weights(8, 4)
    expected = weights @ window @ weights.T
    np.testing.assert_allclose(roi_crop(image, Box(1, 1, 9, 9), CropConfig(size=4, margin=0.0)), expected, atol=1e-6)


def _one_pass_over_the_padded_window(image: np.ndarray, box: Box, config: CropConfig) -> np.ndarray:
    """The definition: the whole snapped window materialised with its padding, resized in one pass."""
    import torch
    import torch.nn.functional as F

    window = square_crop_box(box, config.margin)
    side = max(1, int(np.floor(window.width + 0.5)))
    x0, y0 = int(np.floor(window.x1 + 0.5)), int(np.floor(window.y1 + 0.5))
    padded = np.full((side, side), config.pad_value, dtype=np.float32)
    height, width = image.shape
    ix0, iy0, ix1, iy1 = max(x0, 0), max(y0, 0), min(x0 + side, width), min(y0 + side, height)
    padded[iy0 - y0 : iy1 - y0, ix0 - x0 : ix1 - x0] = image[iy0:iy1, ix0:ix1]
    tensor = torch.from_numpy(padded)[None, None]
    size = (config.size, config.size)
    return F.interpolate(tensor, size=size, mode="bilinear", align_corners=False, antialias=True)[0, 0].numpy()


@pytest.mark.parametrize(
    "shape, box, margin, exact",
    [
        ((300, 1200), Box(0, 0, 1200, 300), 0.1, True),  # whole box of a wide film: overlap wider than tall
        ((1200, 300), Box(0, 0, 300, 1200), 0.1, False),  # tall film: the overlapping columns go first
        ((500, 500), Box(-40, 420, 90, 499), 0.25, False),  # a corner box near the edge
        ((500, 500), Box(100, 0, 180, 30), 0.5, True),  # a flat box at the top: window far above the film
    ],
)
def test_a_window_leaving_the_film_crops_as_the_padded_window_would(shape, box, margin, exact):
    image = np.random.default_rng(3).random(shape, dtype=np.float32)
    config = CropConfig(size=64, margin=margin, pad_value=0.2)
    expected = _one_pass_over_the_padded_window(image, box, config)
    crop = roi_crop(image, box, config)
    assert crop.shape == (64, 64) and crop.dtype == np.float32
    if exact:  # rows first, as torch's own pass: bit for bit
        np.testing.assert_array_equal(crop, expected)
    else:  # columns first: the same sums in another order
        np.testing.assert_allclose(crop, expected, rtol=0, atol=1e-6)


def test_a_whole_film_box_never_materialises_its_padded_window():
    import tracemalloc

    image = np.random.default_rng(4).random((1000, 4000), dtype=np.float32)
    config = CropConfig(size=224, margin=0.25)
    window_bytes = (4000 * 1.5) ** 2 * 4  # the padded square window: 144 MB
    tracemalloc.start()
    try:
        roi_crop(image, Box(0, 0, 4000, 1000), config)
        roi_crop(image.T, Box(0, 0, 1000, 4000), config)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # One strip of the overlapping lines by the window's side: 1000 x 6000 x 4 B = 24 MB.
    assert peak < window_bytes / 4, f"peak {peak / 1e6:.0f} MB"


def test_upscaling_keeps_values_in_range():
    image = ramp_image()
    crop = roi_crop(image, Box(2, 2, 5, 5), CropConfig(size=32, margin=0.2))
    assert crop.shape == (32, 32)
    assert crop.min() >= 0.0 and crop.max() <= 1.0


def test_non_float32_input_is_converted():
    crop = roi_crop(ramp_image().astype(np.float64), Box(2, 3, 6, 7), CropConfig(size=4, margin=0.0))
    assert crop.dtype == np.float32
    np.testing.assert_array_equal(crop, ramp_image()[3:7, 2:6])


# --- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "box",
    [
        Box(20, 20, 30, 30),  # entirely outside
        Box(-5, 0, 0, 5),  # touches the left edge, zero overlap
        Box(0, 10, 5, 14),  # just below the bottom edge
        Box(3, 3, 3, 8),  # zero width
        Box(6, 2, 2, 6),  # inverted
        Box(float("nan"), 0, 4, 4),
    ],
)
def test_unusable_boxes_raise_box_error(box):
    with pytest.raises(BoxError):
        roi_crop(ramp_image(), box, CropConfig(size=4))


def test_non_2d_image_raises():
    with pytest.raises(ValueError):
        roi_crop(np.zeros((3, 10, 10), dtype=np.float32), Box(0, 0, 4, 4))


def test_crop_config_validates():
    with pytest.raises(ValueError):
        CropConfig(size=0)
    with pytest.raises(ValueError):
        CropConfig(margin=-0.1)


# --- batched -----------------------------------------------------------------------------------


def test_roi_crops_matches_single_crops():
    rng = np.random.default_rng(1)
    image = rng.random((64, 80)).astype(np.float32)
    boxes = [Box(0, 0, 20, 30), Box(50, 10, 79, 25), Box(-4, 40, 12, 70)]
    config = CropConfig(size=24, margin=0.15)
    batch = roi_crops(image, boxes, config)
    assert batch.shape == (3, 24, 24) and batch.dtype == np.float32
    for crop, box in zip(batch, boxes):
        np.testing.assert_array_equal(crop, roi_crop(image, box, config))
    assert roi_crops(image, [], config).shape == (0, 24, 24)


def test_36_crops_of_a_1024_film_are_fast():
    rng = np.random.default_rng(2)
    image = rng.random((1024, 1024)).astype(np.float32)
    boxes = []
    for _ in range(36):
        x1, y1 = rng.uniform(-50, 800, size=2)
        w, h = rng.uniform(40, 500, size=2)
        boxes.append(Box(x1, y1, x1 + w, y1 + h))
    roi_crops(image, boxes[:2])  # warm up torch's kernels
    timings = []
    for _ in range(3):  # best of three: a loaded CI machine should not fail this
        start = time.perf_counter()
        crops = roi_crops(image, boxes, CropConfig(size=96))
        timings.append(time.perf_counter() - start)
    assert crops.shape == (36, 96, 96)
    # ~0.1 s on one idle core; resizing the whole film per crop would take seconds.
    assert min(timings) < 1.5, f"36 crops took {min(timings):.3f} s"
