"""``regionmir index`` and ``evaluate`` end to end: phantom films → Ray Data batch inference →
milvus-lite, with zero-downtime rebuilds, a crashed build that leaves the alias alone, and the
evaluation report. Ray runs locally in this process; milvus-lite is a file in ``tmp_path``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from regionmir.anatomy import STANDARD_29_IDS
from regionmir.encoder import RegionEncoder, load_preset
from regionmir.errors import DatasetError, RegionMIRError
from regionmir.model_contract import ModelContract, save_model
from regionmir.synth.dataset_writer import write_phantom_dataset

pytestmark = [pytest.mark.integration, pytest.mark.slow]  # Ray Data start-up: minutes on 2 cores


def make_model(directory: Path, seed: int) -> str:
    torch.manual_seed(seed)
    config = load_preset("resnet10-cpu")
    model = RegionEncoder(config)
    contract = ModelContract(
        stage="finetune",
        encoder=config.to_dict(),
        class_anatomy_ids=tuple(STANDARD_29_IDS),
        crop={"size": config.crop_size, "margin": 0.15},
        training={"seed": seed},
    )
    save_model(str(directory), model, contract)
    return str(directory)


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    root = tmp_path_factory.mktemp("phantoms")
    info = write_phantom_dataset(str(root), images=10, size=160, seed=3, progress=False)
    return root, info


def test_index_upserts_moves_the_alias_only_when_complete_and_evaluates(tmp_path, phantoms, ray_local):
    from indexing.build import index_data
    from indexing.evaluate import evaluate
    from indexing.jobs import EvaluationJob, IndexJob
    from indexing.region_index import RegionIndex

    data, info = phantoms
    train_regions = info["splits"]["train"] * len(STANDARD_29_IDS)
    db = str(tmp_path / "regions.db")
    first = make_model(tmp_path / "m1", seed=1)
    summary = index_data(IndexJob(str(data), first, db, collection="regions"))
    assert summary["rows"] == summary["rows_written"] == train_regions
    assert summary["regions_skipped"] == 0 and summary["previous_collection"] is None
    again = index_data(IndexJob(str(data), first, db, collection="regions"))
    assert again["collection"] == summary["collection"] and again["rows"] == train_regions  # upserted, not doubled

    # a second model's build fails on an unreadable film: the alias stays on the first build
    second = make_model(tmp_path / "m2", seed=2)
    film = next(p for p in sorted(data.rglob("*.png")) if "/images/" in str(p))
    original = film.read_bytes()
    film.write_bytes(b"not a png")
    try:
        with pytest.raises(DatasetError, match="unreadable"):
            index_data(IndexJob(str(data), second, db, collection="regions", split="all", max_bad_fraction=0.0))
    finally:
        film.write_bytes(original)
    index = RegionIndex(db)
    assert index.alias_target("regions") == summary["collection"]
    assert index.count("regions") == train_regions
    index.close()

    # re-run after the crash: completes without duplicates and only then moves the alias
    rebuilt = index_data(IndexJob(str(data), second, db, collection="regions"))
    assert rebuilt["collection"] != summary["collection"] and rebuilt["previous_collection"] == summary["collection"]
    assert rebuilt["rows"] == train_regions
    index = RegionIndex(db)
    assert index.alias_target("regions") == rebuilt["collection"]
    assert index.count(summary["collection"]) == train_regions  # the old build is intact for a roll-back
    index.close()

    report = tmp_path / "report"
    metrics = evaluate(
        EvaluationJob(str(data), second, db, str(report), collection="regions", embed="ray", localize_films=1)
    )
    saved = json.loads((report / "metrics.json").read_text())
    # the queries embedded in this process (the default for a few films) give the same answers
    local = evaluate(
        EvaluationJob(
            str(data), second, db, str(tmp_path / "report-local"), collection="regions", embed="local", localize_films=0
        )
    )
    for key in ("accuracy", "p@1", "p@10", "map@10", "queries"):
        assert local[key] == pytest.approx(metrics[key], abs=1e-6), key
    for key in ("accuracy", "p@1", "p@5", "p@10", "map@10", "mrr@10", "per_anatomy"):
        assert key in saved
    assert saved["queries"] == info["splits"]["test"] * len(STANDARD_29_IDS)
    assert 0.0 <= saved["p@10"] <= 1.0 and len(saved["per_anatomy"]) == len(STANDARD_29_IDS)
    assert (report / "confusion_matrix.png").stat().st_size > 1000
    assert (report / "retrieval_examples.png").stat().st_size > 1000
    assert "| anatomy |" in (report / "report.md").read_text()
    # no patient or study identifiers in the clear anywhere in the report
    assert metrics["model_version"] == saved["model_version"]


def test_index_into_a_milvus_server_upserts_from_the_workers(tmp_path, phantoms, ray_local, milvus_standalone):
    """Against a server the Ray Data workers write the rows (``upserts_from`` workers): the build
    holds every region, the same rows a milvus-lite build of the same model holds, a film that
    cannot be read is counted from the workers' accounting rows, and a re-run adds nothing."""
    from indexing.build import index_data
    from indexing.jobs import IndexJob
    from indexing.region_index import RegionIndex

    data, info = phantoms
    films = sum(info["splits"].values())
    model = make_model(tmp_path / "m", seed=3)
    film = next(p for p in sorted(data.rglob("*.png")) if "/images/" in str(p))
    original = film.read_bytes()
    film.write_bytes(b"not a png")
    try:
        job = IndexJob(str(data), model, milvus_standalone.uri, collection="workers", split="all", max_bad_fraction=0.5)
        summary = index_data(job)
        lite = index_data(IndexJob(str(data), model, str(tmp_path / "lite.db"), split="all", max_bad_fraction=0.5))
    finally:
        film.write_bytes(original)
    assert summary["upserts_from"] == "workers" and lite["upserts_from"] == "driver"
    assert summary["films_skipped"] == lite["films_skipped"] == 1
    assert summary["films_skipped_by_reason"] == lite["films_skipped_by_reason"]
    expected = (films - 1) * len(STANDARD_29_IDS)
    assert summary["rows"] == summary["rows_written"] == expected == lite["rows"]
    assert summary["regions_skipped"] == len(STANDARD_29_IDS)

    server, own = RegionIndex(milvus_standalone.uri), RegionIndex(str(tmp_path / "lite.db"))
    try:
        assert server.alias_target("workers") == summary["collection"]
        keys = [key for (key,) in own.scan(lite["collection"], ["key"])]
        assert len(keys) == expected
        from_workers, from_driver = server.get("workers", keys), own.get(lite["collection"], keys)
        assert set(from_workers) == set(keys)
        for key in keys:
            a, b = from_workers[key], from_driver[key]
            assert (a.image_id, a.anatomy_id, a.split, a.view, a.image_uri, a.patient_hash) == (
                b.image_id,
                b.anatomy_id,
                b.split,
                b.view,
                b.image_uri,
                b.patient_hash,
            )
    finally:
        server.close()
        own.close()

    again = index_data(IndexJob(str(data), model, milvus_standalone.uri, collection="workers", split="all"))
    assert again["collection"] == summary["collection"] and again["rows"] == films * len(STANDARD_29_IDS)
    assert again["films_skipped"] == 0 and again["rows_of_missing_films_removed"] == 0
    # --upserters 0: this process writes to the server (one only it reaches); the same rows
    driver = index_data(
        IndexJob(str(data), model, milvus_standalone.uri, collection="workers", split="all", upserters=0)
    )
    assert driver["upserts_from"] == "driver" and driver["rows"] == again["rows"] == driver["rows_written"]


def test_upserting_workers_get_the_drivers_milvus_token_not_the_jobs_runtime_env(
    tmp_path, phantoms, ray_local, monkeypatch
):
    """A Milvus server that wants a token, a driver that has one and Ray workers that do not (a
    cluster started elsewhere): the upserting actors write with the driver's token, handed to them
    alone — it is not in the job's runtime_env, which the Ray dashboard shows."""
    import os

    import ray

    from cluster.ray_runtime import JOB_FORWARDED_ENV
    from indexing.build import index_data
    from indexing.jobs import IndexJob
    from indexing.local_milvus import MilvusStandaloneServer
    from indexing.region_index import RegionIndex

    if os.environ.get("MILVUS_TOKEN"):
        pytest.skip("this shell exports MILVUS_TOKEN, so this module's Ray workers have one too")
    data, info = phantoms
    server = MilvusStandaloneServer(
        tmp_path / "milvus",
        tmp_path,
        extra_config=("common.security.authorizationEnabled=true",),
        token="root:Milvus",
    )
    server.start()
    try:
        with pytest.raises(RegionMIRError):
            RegionIndex(server.uri, token="")  # the server does want a token
        monkeypatch.setenv("MILVUS_TOKEN", "root:Milvus")  # the driver's; this module's Ray started without it
        assert ray.get(ray.remote(num_cpus=0)(lambda: os.environ.get("MILVUS_TOKEN")).remote()) is None
        summary = index_data(IndexJob(str(data), make_model(tmp_path / "m", seed=4), server.uri, collection="secured"))
        assert summary["upserts_from"] == "workers"
        assert summary["rows"] == summary["rows_written"] == info["splits"]["train"] * len(STANDARD_29_IDS)
        # and a job joining a cluster does not put it into its runtime_env either
        assert "MILVUS_TOKEN" not in JOB_FORWARDED_ENV
    finally:
        server.stop()


@pytest.mark.parametrize("failure", ["refused upsert", "server unreachable from the workers"])
def test_an_upserting_workers_error_reaches_the_driver_as_itself(
    tmp_path, phantoms, ray_local, milvus_standalone, failure
):
    """An error inside an upserting actor (a refused upsert; a server its worker cannot reach) ends
    the job with that RegionMIRError — the command's one clear line — not Ray's wrapped traceback."""
    from cluster.local_cluster import free_ports
    from indexing.build import _upsert_from_workers
    from indexing.jobs import IndexJob
    from indexing.roi_embedding import embedding_dataset
    from regionmir.bad_films import BadFilms
    from regionmir.dataset import open_dataset
    from regionmir.errors import IndexNotFoundError, IndexUnavailableError
    from regionmir.model_contract import read_contract

    data, _ = phantoms
    model_dir, contract = read_contract(make_model(tmp_path / "m", seed=5))
    records = list(open_dataset(str(data)).iter_images(split="train"))
    dataset = embedding_dataset(
        records, model_dir, contract.crop_config, contract.class_anatomy_ids, None, keep_crops=False
    )
    if failure == "refused upsert":  # the build collection is not there
        uri, expected, match = milvus_standalone.uri, IndexNotFoundError, "no_such_build"
    else:
        uri, expected, match = f"http://127.0.0.1:{free_ports(1)[0]}", IndexUnavailableError, "cannot connect"
    job = IndexJob(str(data), model_dir, uri)
    with pytest.raises(expected, match=match):
        _upsert_from_workers(dataset, "no_such_build", job, contract.version_id, BadFilms(str(data), len(records), 0.5))
