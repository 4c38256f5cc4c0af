"""The ROI rows the Ray pipeline produces, checked without Ray: context crops reproduce the
direct crop, and the cache key follows the labels and the settings."""

from __future__ import annotations

import numpy as np

from regionmir.boxes import Box
from regionmir.region_record import ImageRecord, RegionRecord
from regionmir.roi_crop import CropConfig, roi_crop
from regionmir.synth.dataset_writer import phantom_params
from regionmir.synth.phantom_film import render_film
from training.roi_pipeline import RoiPipelineConfig, cache_key, context_window, crop_from_context, cut_context


def test_context_crop_reproduces_the_direct_crop():
    film = render_film(phantom_params(0, 0), 256)
    config = RoiPipelineConfig(crop=CropConfig(size=32), anatomy_ids=(0,))
    for name in ("left lung", "carina", "right costophrenic angle", "spine"):
        box = film.boxes[name]
        context, local = cut_context(film.image, box, config)
        assert context.dtype == np.uint8 and context.shape == (64, 64)
        from_context = crop_from_context(context, local, config.crop)
        direct = roi_crop(film.image, box, config.crop)
        # two resamplings and 8-bit storage: close, not identical
        assert np.abs(from_context - direct).mean() < 0.03, name


def test_context_window_is_the_crop_window_grown_around_the_same_centre():
    box = Box(10, 20, 50, 40)
    window = context_window(box, CropConfig(size=32, margin=0.15), 2.0)
    assert window.center == box.center
    assert window.width == window.height == 40 * 1.3 * 2.0


def test_cache_key_changes_with_labels_and_settings_only():
    region = RegionRecord("a.png", "a", 0, Box(0, 0, 10, 10), "train")
    films = [ImageRecord("a.png", "a", "train", regions=(region,))]
    config = RoiPipelineConfig(crop=CropConfig(size=32), anatomy_ids=(0,))
    key = cache_key(films, config)
    assert key == cache_key(list(films), RoiPipelineConfig(crop=CropConfig(size=32), anatomy_ids=(0,)))
    assert key != cache_key(films, RoiPipelineConfig(crop=CropConfig(size=48), anatomy_ids=(0,)))
    moved = [ImageRecord("a.png", "a", "train", regions=(RegionRecord("a.png", "a", 0, Box(0, 0, 11, 10), "train"),))]
    assert key != cache_key(moved, config)
