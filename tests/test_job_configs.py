"""The typed job settings, without Ray: training (:class:`TrainOptions`, the train loop's
:class:`TrainLoopConfig`) and the index jobs (:class:`IndexJob`, :class:`EvaluationJob`), each
default written once and read by the commands."""

from __future__ import annotations

import dataclasses
import json

import pytest

from indexing.jobs import DEFAULT_ALIAS, EvaluationJob, IndexJob
from regionmir.augmentation import AugmentationConfig
from regionmir.encoder import load_preset
from regionmir.roi_crop import CropConfig
from training.run import TrainOptions
from training.train_loop import PhasePlan, TrainLoopConfig


def _loop_config() -> TrainLoopConfig:
    encoder = load_preset("resnet10-cpu")
    phase = PhasePlan(
        name="finetune",
        stage="finetune",
        epochs=2,
        objective="simclr",
        cotrain=False,
        init="phase:pretrain",
        dataset="train_labelled",
        steps_per_epoch=3,
        augmentation=AugmentationConfig.fine_tuning(),
        contract_training={"seed": 0, "init": "s3://runs/x/pretrain/final"},
    )
    options = TrainOptions(data="d", out="o")
    return TrainLoopConfig(
        phases=(phase,),
        encoder=encoder,
        crop=CropConfig(size=encoder.crop_size),
        class_ids=(1, 2, 3),
        batch_size=options.batch_size,
        lr=options.lr,
        weight_decay=options.weight_decay,
        warmup_fraction=options.warmup_fraction,
        temperature=options.temperature,
        seed=options.seed,
        has_valid=True,
        threads=1,
    )


def test_the_train_loop_config_travels_as_plain_data_and_comes_back_typed():
    config = _loop_config()
    data = config.to_dict()
    json.dumps(data)  # Ray Train records it with the run: plain JSON-ready data
    again = TrainLoopConfig.from_dict(json.loads(json.dumps(data)))
    assert again == config
    assert isinstance(again.phases[0].augmentation, AugmentationConfig) and isinstance(again.crop, CropConfig)
    assert again.class_ids == (1, 2, 3) and again.phases[0].contract_training["seed"] == 0
    with pytest.raises(TypeError):
        TrainLoopConfig.from_dict({**data, "temprature": 0.5})
    missing = dict(data)
    del missing["temperature"]
    with pytest.raises(TypeError):
        TrainLoopConfig.from_dict(missing)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.lr = 1.0  # type: ignore[misc]


def test_training_options_are_frozen_and_the_commands_take_their_defaults():
    import argparse

    from training.cli import _common

    options = TrainOptions(data="d", out="o")
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.epochs = 1  # type: ignore[misc]
    assert dataclasses.replace(options, seed=3).seed == 3 and options.seed == 0
    parser = argparse.ArgumentParser()
    _common(parser, "pretrain")
    args = vars(parser.parse_args(["--data", "d", "--out", "o"]))
    fields = {f.name for f in dataclasses.fields(TrainOptions)}
    for name, value in args.items():
        if name in fields and name not in ("data", "out"):
            assert value == getattr(options, name), name
    assert args["epochs"] == 8 and args["temperature"] == 0.2 and args["lr"] == 2e-3  # unchanged defaults


def test_the_index_commands_build_their_jobs_from_the_flags(monkeypatch):
    import indexing.build as build
    import indexing.evaluate as evaluate

    jobs = []
    monkeypatch.setattr(build, "index_data", lambda job: jobs.append(job) or {})
    monkeypatch.setattr(evaluate, "evaluate", lambda job: jobs.append(job) or {})
    assert build.index_main(["--data", "d", "--model", "m", "--milvus", "x.db"]) == 0
    assert jobs.pop() == IndexJob("d", "m", "x.db")
    assert (
        build.index_main(["--data", "d", "--model", "m", "--milvus", "x.db", "--split", "all", "--keep-missing"]) == 0
    )
    assert jobs.pop() == IndexJob("d", "m", "x.db", split="all", keep_missing=True)
    assert evaluate.evaluate_main(["--data", "d", "--model", "m", "--milvus", "x.db", "--report", "r"]) == 0
    assert jobs.pop() == EvaluationJob("d", "m", "x.db", "r")
    argv = ["--data", "d", "--model", "m", "--milvus", "x.db", "--report", "r", "--database-split", "all"]
    assert evaluate.evaluate_main([*argv, "--include-same-patient"]) == 0
    assert jobs.pop() == EvaluationJob("d", "m", "x.db", "r", database_split=None, exclude_same_patient=False)
    # the alias the index moves is the one the evaluation and the service query by default
    from serving.config import ServeSettings

    assert IndexJob("d", "m", "x.db").collection == EvaluationJob("d", "m", "x.db", "r").collection == DEFAULT_ALIAS
    assert ServeSettings().collection == DEFAULT_ALIAS
    with pytest.raises(dataclasses.FrozenInstanceError):
        IndexJob("d", "m", "x.db").split = "all"  # type: ignore[misc]
