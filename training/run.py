"""One training run on Ray: check storage, stream ROIs, TorchTrainer.fit, export the models.

Output layout (``--out``, local or ``s3://``)::

    OUT/ray/<run name>/...     Ray Train's run folder: every epoch's checkpoint (model + contract +
                               optimizer state); a restarted job resumes from the latest
    OUT/best/                  the best model (finetune: highest validation accuracy; pretrain: last)
    OUT/final/                 the last epoch's model
    OUT/metrics.jsonl          one line of metrics per epoch
    OUT/summary.json           settings, data, timings, final metrics
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from typing import Any

from regionmir import storage
from regionmir.anatomy import ANATOMY_NAMES, STANDARD_29_IDS
from regionmir.augmentation import AugmentationConfig
from regionmir.encoder import load_preset
from regionmir.errors import DatasetError
from regionmir.model_contract import CONTRACT_FILE, WEIGHTS_FILE, read_contract
from regionmir.roi_crop import CropConfig
from regionmir.storage import S3Options

from .object_store import check_reachable, pyarrow_filesystem
from .roi_pipeline import RoiPipelineConfig, cached_roi_datasets, expected_crop_count, list_images, roi_dataset
from .ray_runtime import start_ray
from .train_loop import train_loop_per_worker

RUN_NAME = "run"


@dataclass
class TrainOptions:
    data: str
    out: str
    stage: str = "pretrain"                 # pretrain | finetune
    objective: str = "simclr"               # simclr | supcon
    cotrain: bool = False
    init: str | None = None
    workers: int = 2
    gpu: bool = False
    epochs: int = 3
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 1e-4
    temperature: float = 0.2
    seed: int = 0
    preset: str = "resnet10-cpu"
    regions: str = "standard29"             # standard29 | all36
    crop_cache: str = "auto"                # auto (OUT/../crop-cache beside the data) | off | URI
    max_failures: int = 2
    max_bad_fraction: float = 0.05
    resume: bool = False
    address: str | None = None
    data_concurrency: int = 2


def region_ids(regions: str) -> tuple[int, ...]:
    if regions == "standard29":
        return tuple(STANDARD_29_IDS)
    if regions == "all36":
        return tuple(range(len(ANATOMY_NAMES)))
    raise ValueError(f"--regions must be standard29 or all36, got {regions!r}")


def default_cache_root(options: TrainOptions) -> str | None:
    if options.crop_cache == "off":
        return None
    if options.crop_cache != "auto":
        return options.crop_cache
    data = options.data.rstrip("/")
    root = data if not data.lower().endswith((".csv", ".jsonl", ".json")) else storage.parent(data)
    return storage.join(root, "crop-cache")


def _export(checkpoint, target: str, s3: S3Options | None) -> None:
    with checkpoint.as_directory() as directory:
        for name in (WEIGHTS_FILE, CONTRACT_FILE):  # contract last: it marks a complete model
            with open(os.path.join(directory, name), "rb") as handle:
                storage.write_bytes(storage.join(target, name), handle.read(), s3)


def run_training(options: TrainOptions, s3: S3Options | None = None) -> dict[str, Any]:
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    started = time.perf_counter()
    s3 = s3 or S3Options.from_env()
    if options.stage not in ("pretrain", "finetune"):
        raise ValueError(f"unknown stage {options.stage!r}")
    # Fail fast on the driver: storage problems surface here, not in ten workers' logs.
    check_reachable(options.data, s3)
    check_reachable(options.out, s3, write=True)
    run_dir = storage.join(options.out, "ray", RUN_NAME)
    if storage.exists(run_dir, s3) and not options.resume:
        raise DatasetError(options.out, "already holds a training run: pass --resume to continue it, "
                                        "or choose another --out")
    encoder = load_preset(options.preset)
    class_ids = region_ids(options.regions)
    init_dir = None
    if options.init:
        init_dir, init_contract = read_contract(options.init, s3)
        encoder = init_contract.encoder_config
    from dataclasses import replace

    encoder = replace(encoder, num_classes=len(class_ids))
    crop = CropConfig(size=encoder.crop_size, margin=0.15)
    pipeline = RoiPipelineConfig(crop=crop, anatomy_ids=class_ids, max_bad_fraction=options.max_bad_fraction)

    start_ray(options.address)
    splits = ("train", "valid") if options.stage == "finetune" else ("train",)
    records, label_report = list_images(options.data, s3, splits)
    if not records["train"]:
        raise DatasetError(options.data, "no training films found (split 'train' is empty)")
    if label_report.total_issues:
        print("[data] label scan:\n" + label_report.summary(), flush=True)
    cache_root = default_cache_root(options)
    if cache_root:
        cached = cached_roi_datasets(records, pipeline, cache_root, s3, options.data_concurrency)
        datasets, train_rows = cached["datasets"], cached["info"]["train"]["rows"]
    else:
        datasets = {split: roi_dataset(films, pipeline, s3, options.data_concurrency)
                    for split, films in records.items() if films}
        train_rows = expected_crop_count(records["train"], class_ids)
    steps = max(1, train_rows // options.workers // options.batch_size)
    if options.gpu:
        aug_threads = 1
    else:
        aug_threads = max(1, (os.cpu_count() or 2) // options.workers)
    if options.stage == "pretrain" or options.cotrain:
        augmentation = AugmentationConfig.contrastive()
    else:
        augmentation = AugmentationConfig.fine_tuning()
    config = {
        "stage": options.stage, "objective": options.objective, "cotrain": options.cotrain,
        "encoder": encoder.to_dict(), "crop": asdict(crop), "class_ids": list(class_ids),
        "epochs": options.epochs, "steps_per_epoch": steps, "batch_size": options.batch_size,
        "lr": options.lr, "weight_decay": options.weight_decay, "temperature": options.temperature,
        "seed": options.seed, "augmentation": augmentation.to_dict(), "init_dir": init_dir,
        "has_valid": "valid" in datasets, "threads": aug_threads,
        "contract_training": {"stage": options.stage, "objective": options.objective, "cotrain": options.cotrain,
                              "data": options.data, "preset": options.preset, "regions": options.regions,
                              "seed": options.seed, "init": options.init},
    }
    storage_fs, storage_path = pyarrow_filesystem(storage.join(options.out, "ray"), s3)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=config,
        torch_config=TorchConfig(backend="nccl" if options.gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=options.workers, use_gpu=options.gpu,
                                     resources_per_worker={"CPU": 1, **({"GPU": 1} if options.gpu else {})}),
        run_config=RunConfig(name=RUN_NAME, storage_path=storage_path, storage_filesystem=storage_fs,
                             failure_config=FailureConfig(max_failures=options.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=None)),
        datasets=datasets,
    )
    print(f"[train] {options.stage}{' (co-training)' if options.cotrain else ''}: {options.workers} worker(s), "
          f"{'GPU' if options.gpu else 'CPU'}, {options.epochs} epoch(s) x {steps} step(s) of "
          f"{options.batch_size}, {len(class_ids)} regions, preset {options.preset}", flush=True)
    result = trainer.fit()
    if result.error:
        raise result.error
    history = []
    best = None
    for checkpoint, metrics in result.best_checkpoints:
        history.append(metrics)
        if best is None or _score(metrics) > _score(best[1]):
            best = (checkpoint, metrics)
    history.sort(key=lambda m: m.get("epoch", 0))
    _export(result.checkpoint, storage.join(options.out, "final"), s3)
    if best is not None:
        _export(best[0] if options.stage == "finetune" else result.checkpoint, storage.join(options.out, "best"), s3)
    _, contract = read_contract(storage.join(options.out, "best"), s3)
    storage.write_text(storage.join(options.out, "metrics.jsonl"),
                       "".join(json.dumps(m, sort_keys=True) + "\n" for m in history), s3)
    summary = {
        "stage": options.stage, "options": asdict(options),
        "model_version": contract.version_id, "best": storage.join(options.out, "best"),
        "best_metrics": best[1] if best else {}, "final_metrics": result.metrics,
        "films": {k: len(v) for k, v in records.items()}, "train_crops": train_rows,
        "seconds": round(time.perf_counter() - started, 1),
    }
    storage.write_text(storage.join(options.out, "summary.json"), json.dumps(summary, indent=1, default=str), s3)
    return summary


def _score(metrics: dict[str, Any]) -> float:
    if "val_accuracy" in metrics:
        return float(metrics["val_accuracy"])
    return float(metrics.get("epoch", 0))
