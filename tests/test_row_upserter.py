"""Upserts from the workers (:mod:`indexing.row_upserter`), against a real Milvus standalone: one
upserting actor's call, in this process — what it writes, what it hands back (no vector), a
skipped film passing through, the same batch again. ``regionmir index`` end to end through Ray
with upserting workers is in ``tests/test_index_evaluate.py`` (``make test-ray``)."""

from __future__ import annotations

import numpy as np
import pytest
from random_model_index import build_random_model_index

from indexing.index_rows import region_rows
from indexing.index_schema import model_collection_name
from indexing.region_index import RegionIndex
from indexing.roi_embedding import embedded_batches
from indexing.row_upserter import ACCOUNTING_COLUMNS, RegionUpserter, upserts_from_workers
from regionmir.dataset import open_dataset
from regionmir.model_contract import read_contract

pytestmark = pytest.mark.integration


def _embedded_batch(built: dict) -> tuple[dict, str, int]:
    """One batch of embedded train regions, as the encoders hand them on, with one skipped film's
    placeholder row appended; the model version and the embedding dimension."""
    model_dir, contract = read_contract(built["model"])
    records = list(open_dataset(built["data"]).iter_images(split="train"))
    batches = list(
        embedded_batches(records, model_dir, contract.crop_config, contract.class_anatomy_ids, None, mode="local")
    )
    batch = {name: np.concatenate([b[name] for b in batches]) for name in batches[0]}
    placeholder = {name: values[:1].copy() for name, values in batch.items()}
    placeholder["anatomy_id"][:] = -1
    placeholder["image_id"][:] = "film-that-could-not-be-read"
    placeholder["skip_reason"][:] = "unreadable"
    batch = {name: np.concatenate([batch[name], placeholder[name]]) for name in batch}
    return batch, contract.version_id, contract.encoder_config.embedding_dim


def test_only_a_server_is_written_from_the_workers(tmp_path):
    assert upserts_from_workers("http://127.0.0.1:19530")
    assert not upserts_from_workers(str(tmp_path / "regions.db"))
    with pytest.raises(ValueError, match="milvus-lite file"):
        RegionUpserter(str(tmp_path / "regions.db"), "regions__x", "x")


def test_an_upserting_actor_writes_its_batch_and_hands_back_keys_not_vectors(milvus_standalone, tmp_path):
    built = build_random_model_index(str(tmp_path / "built"), images=4, size=128, seed=5)
    batch, version, dim = _embedded_batch(built)
    good = batch["anatomy_id"] >= 0
    expected = region_rows({name: values[good] for name, values in batch.items()}, version)
    collection = model_collection_name("upserted", version)
    index = RegionIndex(milvus_standalone.uri)
    try:
        index.create_collection(collection, dim, index_type="FLAT", exist_ok=True)
        upserter = RegionUpserter(milvus_standalone.uri, collection, version)
        accounting = upserter(batch)

        # what goes back to the driver: one small row per region, placeholders included; no vector
        assert tuple(accounting) == ACCOUNTING_COLUMNS
        assert len(accounting["key"]) == len(batch["anatomy_id"])
        assert accounting["key"][~good].tolist() == [""]
        assert accounting["skip_reason"][~good].tolist() == ["unreadable"]
        assert accounting["image_id"][~good].tolist() == ["film-that-could-not-be-read"]
        assert accounting["key"][good].tolist() == [row.key for row in expected]

        # what reached the server: every region's row, as the driver's writer would have made it
        index.flush(collection)
        assert index.count(collection) == len(expected)
        stored = index.get(collection, [row.key for row in expected])
        for row in expected:
            hit = stored[row.key]
            assert (hit.image_id, hit.anatomy_id, hit.split, hit.model_version, hit.box_source) == (
                row.image_id,
                row.anatomy_id,
                row.split,
                version,
                row.box_source,
            )
            assert hit.box == pytest.approx(row.box)
        probe = expected[len(expected) // 2]
        top = index.search(collection, probe.vector, k=1)[0][0]
        assert top.key == probe.key and top.score == pytest.approx(1.0, abs=1e-4)

        # a batch Ray Data runs again (a worker died) writes the same rows, not new ones
        again = upserter(batch)
        assert again["key"].tolist() == accounting["key"].tolist()
        index.flush(collection)
        assert index.count(collection) == len(expected)
    finally:
        index.drop(collection, missing_ok=True)
        index.close()


def test_an_index_job_refuses_a_negative_number_of_upserters(tmp_path):
    from indexing.jobs import IndexJob

    assert IndexJob("d", "m", "http://127.0.0.1:19530", upserters=0).upserters == 0
    with pytest.raises(ValueError, match="upserters"):
        IndexJob("d", "m", "http://127.0.0.1:19530", upserters=-1)
    assert not upserts_from_workers("http://127.0.0.1:19530", upserters=0)
