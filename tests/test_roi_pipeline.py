"""The ROI rows the Ray pipeline produces, checked without Ray: context crops reproduce the
direct crop, and the cache key follows the labels and the settings."""

from __future__ import annotations

import json

import numpy as np

from regionmir.boxes import Box
from regionmir.film_rows import FILM_COLUMN
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


def _film_rows(tmp_path, count: int = 3):
    from regionmir.anatomy import STANDARD_29_IDS
    from regionmir.dataset import films_by_split
    from regionmir.film_rows import film_rows
    from regionmir.synth.dataset_writer import write_phantom_dataset

    write_phantom_dataset(str(tmp_path / "phantoms"), images=count, size=128, seed=3, progress=False)
    records, _ = films_by_split(str(tmp_path / "phantoms"), None, ("train", "valid", "test"))
    films = [film for split in records.values() for film in split]
    config = RoiPipelineConfig(crop=CropConfig(size=16), anatomy_ids=tuple(STANDARD_29_IDS))
    return films, film_rows(films), config


def test_the_croppers_placeholders_account_for_every_region_not_cut(tmp_path):
    """The crop cache proves nothing went missing: crops + placeholders' `skipped` = the labels."""
    from training.roi_pipeline import ContextCropper, expected_crop_count

    films, rows, config = _film_rows(tmp_path)
    with open(films[0].image_uri, "wb") as broken:  # an unreadable film: all its regions skipped
        broken.write(b"not an image")
    record = json.loads(rows[1][FILM_COLUMN])  # a box under a pixel inside the film: dropped by clamping
    record["regions"][0][1:] = [127.5, 127.5, 128.0, 128.0]  # under a pixel inside
    rows[1] = {FILM_COLUMN: json.dumps(record)}
    batch = {FILM_COLUMN: np.asarray([r[FILM_COLUMN] for r in rows], dtype=object)}

    counted = ContextCropper(config, None, account_skips=True)(batch)
    crops = counted["anatomy_id"] >= 0
    assert int(crops.sum()) + int(counted["skipped"].sum()) == expected_crop_count(films, config.anatomy_ids)
    assert sorted(counted["image_id"][~crops]) == sorted([films[0].image_id, films[1].image_id])
    assert counted["skipped"][list(counted["image_id"]).index(films[1].image_id)] == 0  # its crops came first
    placeholder = {i: n for i, n, a in zip(counted["image_id"], counted["skipped"], counted["anatomy_id"]) if a < 0}
    assert placeholder[films[1].image_id] == 1
    assert placeholder[films[0].image_id] == sum(1 for r in films[0].regions if r.anatomy_id in config.anatomy_ids)

    plain = ContextCropper(config, None)(batch)  # the streaming training path: crops only
    assert "skipped" not in plain and (plain["anatomy_id"] >= 0).all() and len(plain["anatomy_id"]) == crops.sum()


def test_the_cache_writer_writes_each_splits_shard_and_a_retry_leaves_no_duplicate(tmp_path):
    """:class:`CacheShardWriter` (called without Ray) writes one shard per split of the batch and
    returns only accounting; a second attempt of the same batch writes new names, and the driver's
    clean-up keeps only the shards it was told about."""
    import pyarrow.parquet as pq

    from training.roi_pipeline import (
        ACCOUNTING_COLUMNS,
        CacheShardWriter,
        _remove_unreported_shards,
        expected_crop_count,
    )

    films, rows, config = _film_rows(tmp_path)
    with open(films[0].image_uri, "wb") as broken:  # an unreadable film: counted, not written
        broken.write(b"not an image")
    batch = {FILM_COLUMN: np.asarray([r[FILM_COLUMN] for r in rows], dtype=object)}
    splits = sorted({film.split for film in films})
    roots = {split: str(tmp_path / "cache" / split) for split in splits}
    for split in splits:
        (tmp_path / "cache" / split).mkdir(parents=True)

    lost = CacheShardWriter(config, roots)(batch)  # an attempt whose actor died before returning
    accounting = CacheShardWriter(config, roots)(batch)  # the retry, on the restarted actor
    assert set(accounting) == set(ACCOUNTING_COLUMNS) and sorted(accounting["split"]) == splits
    assert not set(lost["shard"]) & set(accounting["shard"])
    for split, shard, written, skipped, films_skipped in zip(*(accounting[c] for c in ACCOUNTING_COLUMNS)):
        split_films = [film for film in films if film.split == split]
        assert written + skipped == expected_crop_count(split_films, config.anatomy_ids)
        assert json.loads(films_skipped) == ([films[0].image_id] if films[0].split == split else [])
        assert len(list((tmp_path / "cache" / split).glob("*.parquet"))) == 2  # both attempts' shards
        assert _remove_unreported_shards(roots[split], {shard}, None) == [
            lost["shard"][list(lost["split"]).index(split)]
        ]
        table = pq.read_table(tmp_path / "cache" / split / shard)
        assert table.num_rows == written and set(table["split"].to_pylist()) == {split}
        assert table.column_names == ["context", "box", "anatomy_id", "image_id", "split"]
