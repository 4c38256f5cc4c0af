"""Distributed training on a real local Ray cluster: 2 CPU workers, data and checkpoints in an
S3 test server, fine-tuning from the pretrained checkpoint, and recovery from a killed worker.

These start Ray Train worker groups, which takes minutes on a 2-core machine: they are marked
``slow`` and run with ``make test-slow`` (``pytest -m slow``), not in the default ``make test``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def regionmir(args: list[str], env: dict[str, str], timeout: float = 1500) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "regionmir.cli", *args], env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture()
def s3_env(s3_server):
    env = dict(
        os.environ,
        REGIONMIR_S3_ENDPOINT=s3_server.endpoint_url,
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        RAY_AUTH_MODE="disabled",
    )
    env.pop("RAY_ADDRESS", None)
    return env


def test_two_workers_pretrain_from_s3_then_finetune_from_its_checkpoint(s3_server, s3_env):
    bucket = s3_server.make_bucket("train")
    data, pre, fine = f"{bucket}/phantoms", f"{bucket}/runs/pretrain", f"{bucket}/runs/finetune"
    assert regionmir(["synth", "--out", data, "--images", "20", "--size", "160", "--quiet"], s3_env).returncode == 0

    run = regionmir(
        ["pretrain", "--data", data, "--out", pre, "--workers", "2", "--epochs", "1", "--batch-size", "16"], s3_env
    )
    assert run.returncode == 0, run.stderr[-3000:] + run.stdout[-3000:]
    summary = json.loads(run.stdout[run.stdout.index("{") :])
    assert summary["final_metrics"]["epoch"] == 1 and summary["model_version"].startswith("pretrain-")

    fs = s3_server.filesystem()
    fs.invalidate_cache()
    root = pre.split("://", 1)[1]
    contract = json.loads(fs.cat_file(f"{root}/best/contract.json"))
    assert contract["stage"] == "pretrain" and contract["intensity_convention"].startswith("float32")
    assert len(contract["class_anatomy_ids"]) == 29
    assert fs.glob(f"{root}/ray/run/**/contract.json"), "epoch checkpoints are written to S3"
    assert fs.exists(f"{root.split('/')[0]}/phantoms/crop-cache")  # the crop cache sits beside the data

    run = regionmir(
        [
            "finetune",
            "--data",
            data,
            "--init",
            pre,
            "--out",
            fine,
            "--workers",
            "2",
            "--epochs",
            "1",
            "--batch-size",
            "16",
        ],
        s3_env,
    )
    assert run.returncode == 0, run.stderr[-3000:] + run.stdout[-3000:]
    summary = json.loads(run.stdout[run.stdout.index("{") :])
    assert 0.0 <= summary["best_metrics"]["val_accuracy"] <= 1.0
    fs.invalidate_cache()
    contract = json.loads(fs.cat_file(f"{fine.split('://', 1)[1]}/best/contract.json"))
    assert contract["stage"] == "finetune" and contract["training"]["init"] == pre


def _registered_checkpoints(snapshot: Path) -> int:
    try:
        return len(json.loads(snapshot.read_text()).get("checkpoint_results", []))
    except (OSError, ValueError):  # not written yet, or caught mid-write
        return 0


def test_a_killed_worker_resumes_from_its_checkpoint_and_finishes_every_epoch(tmp_path):
    import psutil

    env = dict(os.environ, RAY_AUTH_MODE="disabled")
    env.pop("RAY_ADDRESS", None)
    data, out = tmp_path / "phantoms", tmp_path / "run"
    assert regionmir(["synth", "--out", str(data), "--images", "20", "--size", "160", "--quiet"], env).returncode == 0
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "regionmir.cli",
            "pretrain",
            "--data",
            str(data),
            "--out",
            str(out),
            "--workers",
            "2",
            "--epochs",
            "3",
            "--batch-size",
            "16",
            "--max-failures",
            "2",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    killed = None
    deadline = time.monotonic() + 1200
    snapshot = out / "ray" / "run" / "checkpoint_manager_snapshot.json"
    while killed is None and time.monotonic() < deadline and process.poll() is None:
        # Kill only once Ray Train has *registered* the first checkpoint (its manager snapshot
        # lists it); a checkpoint still being uploaded is not one a restart can resume from.
        if _registered_checkpoints(snapshot):
            for proc in psutil.process_iter(["pid", "cmdline"]):
                if any("RayTrainWorker" in part for part in (proc.info["cmdline"] or [])):
                    proc.kill()
                    killed = proc.info["pid"]
                    break
        time.sleep(0.5)
    output, _ = process.communicate(timeout=1500)
    assert killed is not None, "no training worker was found to kill:\n" + output[-3000:]
    assert process.returncode == 0, output[-5000:]
    resumed = re.search(r"resumed from the checkpoint of epoch (\d+)", output)
    assert resumed, output[-5000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["phases"]["pretrain"]["final_metrics"]["epoch"] == 3
    # Resumed, not restarted: no epoch up to the checkpoint it resumed from was trained again. The
    # epoch under way when the worker died may have written a checkpoint Ray Train never
    # registered: that one, and only that one, is trained twice.
    trained = sorted(
        json.loads(path.read_text())["training"]["epoch"]
        for path in (out / "ray" / "run").glob("checkpoint_*/contract.json")
    )
    resumed_epoch = int(resumed.group(1))
    assert resumed_epoch >= 1 and sorted(set(trained)) == [1, 2, 3], (resumed_epoch, trained)
    assert all(trained.count(epoch) == 1 for epoch in range(1, resumed_epoch + 1)), (resumed_epoch, trained)
    assert len(trained) <= 4, (resumed_epoch, trained)
    epochs = [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert epochs[-1] == 3


def test_ablate_grid_fine_tunes_on_the_labelled_films_and_summarises_seeds(tmp_path):
    """``ablate --seeds 2 --label-fraction 0.25,1.0`` on tiny phantoms: four runs, the fine-tuning
    of the 0.25 runs reads only a quarter of the training films' crops, and the summary holds a
    mean ± sd per arm and the paired interval between the arms."""
    env = dict(os.environ, RAY_AUTH_MODE="disabled")
    env.pop("RAY_ADDRESS", None)
    data, out = str(tmp_path / "data"), str(tmp_path / "out")
    assert regionmir(["synth", "--out", data, "--images", "20", "--size", "160", "--quiet"], env).returncode == 0
    run = regionmir(
        [
            "ablate",
            "--data",
            data,
            "--out",
            out,
            "--arms",
            "ac",
            "--pretrain-epochs",
            "1",
            "--finetune-epochs",
            "1",
            "--batch-size",
            "16",
            "--seeds",
            "2",
            "--label-fraction",
            "0.25,1",
        ],
        env,
    )
    assert run.returncode == 0, run.stderr[-3000:] + run.stdout[-3000:]
    train_films = json.loads((tmp_path / "out" / "fraction-1" / "seed-0" / "summary.json").read_text())["films"][
        "train"
    ]
    quarter = json.loads((tmp_path / "out" / "fraction-0.25" / "seed-1" / "summary.json").read_text())
    assert quarter["labelled_train_films"] == -(-train_films // 4)  # ceil
    epochs = [
        json.loads(line)
        for line in (tmp_path / "out" / "fraction-0.25" / "seed-1" / "metrics.jsonl").read_text().splitlines()
    ]
    fine = next(m for m in epochs if m["phase"] == "c-supcon-finetune")
    pre = next(m for m in epochs if m["phase"] == "c-supcon-pretrain")
    assert fine["train_crops"] < pre["train_crops"]  # fine-tuning saw the labelled quarter, pretraining all
    summary = json.loads((tmp_path / "out" / "ablation_summary.json").read_text())
    assert [t["label_fraction"] for t in summary["fractions"]] == [1.0, 0.25]
    for table in summary["fractions"]:
        assert table["seeds"] == [0, 1] and [a["arm"] for a in table["arms"]] == ["a", "c"]
        [difference] = table["differences"]
        assert difference["low"] <= difference["mean"] <= difference["high"] and "map@10" in difference
    assert "± " in (tmp_path / "out" / "ablation_summary.md").read_text()
    again = regionmir(
        [
            "ablate",
            "--data",
            data,
            "--out",
            out,
            "--arms",
            "ac",
            "--pretrain-epochs",
            "1",
            "--finetune-epochs",
            "1",
            "--batch-size",
            "16",
            "--seeds",
            "2",
            "--label-fraction",
            "0.25,1",
            "--resume",
        ],
        env,
    )
    assert again.returncode == 0 and again.stdout.count("exists: kept (--resume)") == 4
