"""The crop cache on a local Ray: every missing split built in one pass, written as Parquet shards
by the driver, complete markers last; a second call reads them; leftovers of an interrupted build
are cleared."""

from __future__ import annotations

import json
import logging

import pytest

from regionmir.anatomy import STANDARD_29_IDS
from regionmir.crop_cache_layout import COMPLETE_MARKER
from regionmir.dataset import films_by_split
from regionmir.roi_crop import CropConfig
from regionmir.synth.dataset_writer import write_phantom_dataset
from training.roi_pipeline import (
    RoiPipelineConfig,
    cache_key,
    cached_roi_datasets,
    expected_crop_count,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]  # Ray Data start-up: minutes on 2 cores


def test_every_split_is_cached_in_one_pass_and_read_back(tmp_path, ray_local, caplog):
    caplog.set_level(logging.INFO, logger="regionmir.training")
    data = tmp_path / "phantoms"
    write_phantom_dataset(str(data), images=10, size=128, seed=7, progress=False)
    records, _ = films_by_split(str(data), None, ("train", "valid", "test"))
    config = RoiPipelineConfig(crop=CropConfig(size=32), anatomy_ids=tuple(STANDARD_29_IDS))
    cache = tmp_path / "cache"
    stale = cache / f"test-{cache_key(records['test'], config)}"
    stale.mkdir(parents=True)
    (stale / "part-99999.parquet").write_bytes(b"left by an interrupted build")

    built = cached_roi_datasets(records, config, str(cache), None)
    logged = [r.getMessage() for r in caplog.records if r.name == "regionmir.training"]
    assert sum("crop cache built in" in line for line in logged) == 1  # one pass for the three splits
    for split, films in records.items():
        expected = expected_crop_count(films, config.anatomy_ids)
        assert built["info"][split]["rows"] == expected > 0
        assert built["datasets"][split].count() == expected
        marker = json.loads(next(cache.glob(f"{split}-*/{COMPLETE_MARKER}")).read_text())
        assert marker["rows"] == expected and marker["films"] == len(films)
    assert not (stale / "part-99999.parquet").exists()
    row = built["datasets"]["valid"].take(1)[0]
    assert row["context"].shape == (config.context_size, config.context_size) and row["split"] == "valid"

    caplog.clear()
    again = cached_roi_datasets(records, config, str(cache), None)
    assert any("crop cache hit" in r.getMessage() for r in caplog.records if r.name == "regionmir.training")
    assert {s: i["rows"] for s, i in again["info"].items()} == {s: i["rows"] for s, i in built["info"].items()}


def test_a_split_is_marked_complete_only_when_every_crop_is_accounted_for(tmp_path, ray_local, monkeypatch):
    import training.roi_pipeline as roi_pipeline
    from regionmir.errors import DatasetError

    data = tmp_path / "phantoms"
    write_phantom_dataset(str(data), images=6, size=128, seed=11, progress=False)
    records, _ = films_by_split(str(data), None, ("train",))
    config = RoiPipelineConfig(crop=CropConfig(size=32), anatomy_ids=tuple(STANDARD_29_IDS))
    expected = expected_crop_count(records["train"], config.anatomy_ids)
    with open(records["train"][0].image_uri, "wb") as broken:  # one unreadable film: skipped and counted
        broken.write(b"not an image")

    built = cached_roi_datasets(records, config, str(tmp_path / "cache"), None)
    info = built["info"]["train"]
    skipped = expected_crop_count(records["train"][:1], config.anatomy_ids)
    assert info["rows"] == expected - skipped and info["regions_skipped"] == skipped
    assert info["films_with_skipped_regions"] == 1 and built["datasets"]["train"].count() == info["rows"]

    # rows that went missing between the croppers and the writer: no marker, a clear error
    monkeypatch.setattr(roi_pipeline, "expected_crop_count", lambda films, ids: expected + 1)
    with pytest.raises(DatasetError, match="not marked complete"):
        cached_roi_datasets(records, config, str(tmp_path / "short"), None)
    assert not list((tmp_path / "short").glob(f"*/{COMPLETE_MARKER}"))
    monkeypatch.undo()

    # a shard lost after the marker was written: the cache is refused, not half-used
    next((tmp_path / "cache").glob("train-*/part-*.parquet")).unlink()
    with pytest.raises(DatasetError, match="crop cache damaged"):
        cached_roi_datasets(records, config, str(tmp_path / "cache"), None)
