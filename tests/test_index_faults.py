"""`regionmir index` killed by its surroundings, for real: the S3 endpoint goes away mid-job, and
the job itself is SIGKILLed mid-job (its whole process session, Ray included, as a pod eviction
would). Each time the alias the service reads still points at the previous collection; a re-run
completes the same build collection without duplicates and moves the alias.

Real parts: the `regionmir index` command (its own local Ray, Ray Data, encoder actors), a
milvus-lite server, the moto S3 server behind a TCP relay that resets every connection once the
Nth film was requested. `make test-faults` (CI): about 3 minutes on 2 cores.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from local_process import ahead_of_other_work
from random_model_index import build_random_model_index_subprocess
from tcp_relay import TcpRelay

from indexing.index_schema import model_collection_name
from indexing.region_index import RegionIndex
from regionmir.errors import IndexNotFoundError

pytestmark = [pytest.mark.integration, pytest.mark.slow]

FILMS = 24


@pytest.fixture(scope="module")
def models(milvus_lite_server, tmp_path_factory):
    """An indexed 'old' model on the Milvus server (the previous collection) and a 'new' model."""
    root = tmp_path_factory.mktemp("index-faults")
    old = build_random_model_index_subprocess(
        str(root / "old"), images=FILMS, size=128, seed=31, milvus=milvus_lite_server.uri
    )
    new = build_random_model_index_subprocess(
        str(root / "new"), images=2, size=96, seed=32, milvus=str(root / "new" / "own.db")
    )
    assert new["model_version"] != old["model_version"]
    return {
        "data": old["data"],
        "previous": model_collection_name("regions", old["model_version"]),
        "model": new["model"],
        "version": new["model_version"],
        "uri": milvus_lite_server.uri,
    }


def _command() -> list[str]:
    beside = Path(sys.executable).parent / "regionmir"
    return [str(beside) if beside.exists() else shutil.which("regionmir") or "regionmir"]


def _index_args(models: dict, data: str, alias: str) -> list[str]:
    return [
        *_command(),
        "index",
        "--data",
        data,
        "--model",
        models["model"],
        "--milvus",
        models["uri"],
        "--collection",
        alias,
        "--batch-size",
        "16",
    ]


def _run(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    with ahead_of_other_work():  # the job's Ray starts ahead of whatever else the machine runs
        return subprocess.run(args, capture_output=True, text=True, timeout=600, **kwargs)


def _summary(stdout: str) -> dict:
    return json.loads(stdout[stdout.rindex("\n{") + 1 :])


def _with_alias(models: dict, alias: str) -> RegionIndex:
    index = RegionIndex(models["uri"])
    index.point_alias(alias, models["previous"])  # what the service reads before the new build
    return index


def _rows(index: RegionIndex, name: str) -> int:
    try:
        return index.count(name)
    except IndexNotFoundError:
        return 0


def test_s3_going_away_mid_index_fails_clearly_leaves_the_alias_and_a_rerun_completes(models, s3_server):
    alias = "s3_fault"
    index = _with_alias(models, alias)
    target = model_collection_name(alias, models["version"])
    data = s3_server.make_bucket("films") + "/phantoms"
    s3_server.upload(models["data"], data)
    relay = TcpRelay(int(s3_server.endpoint_url.rsplit(":", 1)[1]))
    env = dict(
        os.environ,
        REGIONMIR_S3_ENDPOINT=relay.endpoint_url,
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
    )
    try:
        relay.trip_after(b".png", FILMS // 2)  # the endpoint resets everything once half the films were asked for
        started = time.perf_counter()
        failed = _run(_index_args(models, data, alias), env=env)
        failed_s = time.perf_counter() - started
        assert relay.down, "the relay never tripped: the job did not read the films through it"
        assert failed.returncode == 2, failed.stdout[-2000:] + failed.stderr[-3000:]
        error = failed.stderr.strip().splitlines()[-1]
        assert error.startswith("regionmir index:") and "storage failed while reading films" in error
        assert "re-run" in error and "nothing was switched over" in error
        assert "Traceback" not in failed.stderr.split("regionmir index:")[-1]
        assert index.alias_target(alias) == models["previous"]
        partial = _rows(index, target)

        relay.bring_up()
        started = time.perf_counter()
        done = _run(_index_args(models, data, alias), env=env)
        rerun_s = time.perf_counter() - started
        assert done.returncode == 0, done.stderr[-3000:]
        summary = _summary(done.stdout)
        assert summary["rows"] == summary["regions_expected"] > partial and summary["films_skipped"] == 0
        assert summary["previous_collection"] == models["previous"]
        assert index.alias_target(alias) == target and index.count(target) == summary["rows"]
        print(
            f"\n[index faults] S3 down after {FILMS // 2} film requests: failed in {failed_s:.0f} s "
            f"({partial} rows written before); re-run {rerun_s:.0f} s → {summary['rows']} rows"
        )
    finally:
        relay.close()
        index.close()


def _session_processes(session: int) -> list[int]:
    """Live (not zombie) processes of a session."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            if os.getsid(int(entry.name)) == session and state not in ("Z", "X"):
                found.append(int(entry.name))
        except (OSError, IndexError):
            pass
    return found


def _kill_session(session: int, within_s: float = 15.0) -> list[int]:
    """SIGKILL every process of a session (the job, its Ray head and workers) until none is left;
    returns those still alive after ``within_s``."""
    deadline = time.monotonic() + within_s
    while (alive := _session_processes(session)) and time.monotonic() < deadline:
        for pid in alive:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.2)
    return _session_processes(session)


def test_index_sigkilled_mid_way_leaves_the_alias_and_a_rerun_completes_without_duplicates(models, tmp_path):
    alias = "killed"
    index = _with_alias(models, alias)
    target = model_collection_name(alias, models["version"])
    log = (tmp_path / "index.log").open("w")
    with ahead_of_other_work():
        job = subprocess.Popen(
            _index_args(models, models["data"], alias), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        deadline = time.monotonic() + 420
        while _rows(index, target) == 0:  # rows are landing: the job is mid-way
            assert job.poll() is None, (tmp_path / "index.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "no rows written in 7 minutes"
            time.sleep(0.2)
        assert _kill_session(job.pid) == []
        job.wait(timeout=30)
    finally:
        _kill_session(job.pid)
        log.close()
    try:
        partial = _rows(index, target)
        assert index.alias_target(alias) == models["previous"]
        started = time.perf_counter()
        done = _run(_index_args(models, models["data"], alias))
        assert done.returncode == 0, done.stderr[-3000:]
        summary = _summary(done.stdout)
        assert 0 < partial < summary["rows"] == summary["regions_expected"]
        assert index.count(target) == summary["rows"]  # the killed run's rows were upserted over, not added
        assert index.alias_target(alias) == target
        print(
            f"\n[index faults] SIGKILL with {partial} of {summary['rows']} rows written; "
            f"re-run {time.perf_counter() - started:.0f} s"
        )
    finally:
        index.close()


def test_reindexing_after_films_left_the_data_removes_their_rows(models, tmp_path):
    """After the SIGKILL test, alias `killed` already holds the complete build of the full data;
    run alone (or after that test failed) it builds it first."""
    alias = "killed"
    index = RegionIndex(models["uri"])
    target = model_collection_name(alias, models["version"])
    try:
        if index.alias_target(alias) != target:  # no complete build yet: make one
            full = _run(_index_args(models, models["data"], alias))
            assert full.returncode == 0, full.stderr[-3000:]
        before = index.count(target)
        data = tmp_path / "data"
        shutil.copytree(models["data"], data)
        listing = data / "silver_dataset" / "splits" / "train.csv"
        header, *films = listing.read_text().splitlines()
        left = [line.split(",")[2] for line in films[:1]]  # dicom_id column: one film leaves the data
        listing.write_text("\n".join([header, *films[1:]]) + "\n")  # (more than 10 % needs --allow-mass-removal)
        their_rows = len([k for k, image in index.tally(target, ("key", "image_id"), split="train") if image in left])
        done = _run(_index_args(models, str(data), alias))
        assert done.returncode == 0, done.stderr[-3000:]
        summary = _summary(done.stdout)
        assert summary["rows_of_missing_films_removed"] == their_rows > 0
        assert "no longer in the data" in done.stdout
        assert index.count(target) == before - their_rows == summary["rows"]
        assert all(index.images_of(target, image_id=image) == [] for image in left)
        assert index.alias_target(alias) == target
    finally:
        index.close()
