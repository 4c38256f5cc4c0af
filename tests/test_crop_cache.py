"""The crop cache on a local Ray: every missing split built in one pass, written as Parquet shards
by the cropping actors (the driver receives only their accounting), complete markers last; a
second call reads them; leftovers of an interrupted build are cleared; the shards of an attempt
that died after writing are removed, not counted twice."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from regionmir.anatomy import STANDARD_29_IDS
from regionmir.crop_cache_layout import COMPLETE_MARKER
from regionmir.dataset import films_by_split
from regionmir.roi_crop import CropConfig
from regionmir.synth.dataset_writer import write_phantom_dataset
from training.roi_pipeline import (
    CacheShardWriter,
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


def test_the_croppers_write_the_shards_and_the_driver_receives_only_their_accounting(tmp_path, ray_local, monkeypatch):
    """Every batch the driver iterates during the build is an accounting row: no ``context`` column,
    and all of them together a sliver of the crops' bytes (a driver that wrote the shards would receive every crop)."""
    import ray

    data = tmp_path / "phantoms"
    write_phantom_dataset(str(data), images=6, size=128, seed=5, progress=False)
    records, _ = films_by_split(str(data), None, ("train", "valid", "test"))
    config = RoiPipelineConfig(crop=CropConfig(size=32), anatomy_ids=tuple(STANDARD_29_IDS))
    received = []
    iter_batches = ray.data.Dataset.iter_batches

    def recorded(self, *args, **kwargs):
        for batch in iter_batches(self, *args, **kwargs):
            received.append(batch)
            yield batch

    monkeypatch.setattr(ray.data.Dataset, "iter_batches", recorded)
    built = cached_roi_datasets(records, config, str(tmp_path / "cache"), None)
    monkeypatch.undo()

    crops = sum(info["rows"] for info in built["info"].values())
    assert crops == sum(expected_crop_count(films, config.anatomy_ids) for films in records.values())
    assert received, "the build's accounting reached the driver through Dataset.iter_batches"
    assert all("context" not in batch.column_names for batch in received)
    crop_bytes = crops * config.context_size**2
    assert sum(batch.nbytes for batch in received) < crop_bytes / 100
    for split, info in built["info"].items():
        shards = list((tmp_path / "cache").glob(f"{split}-*/part-*.parquet"))
        assert len(shards) == info["shards"]
        assert sum(pq.read_metadata(shard).num_rows for shard in shards) == info["rows"]


class DiesAfterItsFirstShards(CacheShardWriter):
    """A cropping actor that dies once (the first batch of the whole build) after writing that
    batch's shards and before returning them: Ray restarts it and runs the batch again."""

    flag = ""  # set by the test: the file that says an actor has died already

    def __call__(self, batch):
        accounting = super().__call__(batch)
        if not os.path.exists(self.flag):
            Path(self.flag).write_text("died")
            os._exit(1)
        return accounting


def test_shards_of_a_retried_attempt_are_removed_not_counted_twice(tmp_path, ray_local, monkeypatch, caplog):
    import ray
    import ray.cloudpickle

    caplog.set_level(logging.INFO, logger="regionmir.training")
    data = tmp_path / "phantoms"
    write_phantom_dataset(str(data), images=8, size=128, seed=9, progress=False)
    records, _ = films_by_split(str(data), None, ("train",))
    config = RoiPipelineConfig(crop=CropConfig(size=32), anatomy_ids=tuple(STANDARD_29_IDS))
    expected = expected_crop_count(records["train"], config.anatomy_ids)
    DiesAfterItsFirstShards.flag = str(tmp_path / "an-actor-died")
    map_batches = ray.data.Dataset.map_batches

    def with_a_dying_writer(self, fn, *args, **kwargs):
        return map_batches(self, DiesAfterItsFirstShards if fn is CacheShardWriter else fn, *args, **kwargs)

    monkeypatch.setattr(ray.data.Dataset, "map_batches", with_a_dying_writer)
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the actors cannot import this test
    try:
        built = cached_roi_datasets(records, config, str(tmp_path / "cache"), None)
    finally:
        ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])

    assert (tmp_path / "an-actor-died").exists()
    logged = [r.getMessage() for r in caplog.records if r.name == "regionmir.training"]
    assert any("of retried attempts removed" in line for line in logged)
    info = built["info"]["train"]
    assert info["rows"] == expected
    shards = list((tmp_path / "cache").glob("train-*/part-*.parquet"))
    assert len(shards) == info["shards"]
    table = pq.read_table(shards[0].parent)
    assert table.num_rows == expected
    pairs = set(zip(table["image_id"].to_pylist(), table["anatomy_id"].to_pylist()))
    assert len(pairs) == expected  # every crop once
