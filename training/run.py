"""One training run on Ray: check storage, stream ROIs, TorchTrainer.fit, export the models.

Output layout (``--out``, local or ``s3://``)::

    OUT/ray/<run name>/...     Ray Train's run folder: every epoch's checkpoint (model + contract +
                               optimizer state); a restarted job resumes from the latest
    OUT/best/                  the best model (finetune: highest validation accuracy; pretrain: last)
    OUT/final/                 the last epoch's model
                               (fine-tuned models also hold atlas.json: the training boxes' atlas)
    OUT/metrics.jsonl          one line of metrics per epoch
    OUT/summary.json           settings, data, timings, final metrics
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from typing import Any

from cluster.ray_runtime import start_ray
from regionmir import storage
from regionmir.anatomy import ANATOMY_NAMES, STANDARD_29_IDS
from regionmir.anatomy_atlas import AnatomyAtlas
from regionmir.augmentation import AugmentationConfig
from regionmir.dataset import films_by_split
from regionmir.encoder import load_preset
from regionmir.errors import DatasetError
from regionmir.model_contract import CONTRACT_FILE, WEIGHTS_FILE, read_contract
from regionmir.roi_crop import CropConfig
from regionmir.storage import S3Options

from .object_store import check_reachable, pyarrow_filesystem
from .roi_pipeline import RoiPipelineConfig, cached_roi_datasets, expected_crop_count, roi_dataset
from .train_loop import PhasePlan, TrainLoopConfig, train_loop_per_worker

log = logging.getLogger(__name__)

RUN_NAME = "run"
PLACEMENTS = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")


@dataclass(frozen=True)
class TrainOptions:
    """One training job's settings: the single home of every training default (the commands'
    flags, ``regionmir ablate`` and the demo take theirs from here). Immutable: derive a variant
    with :func:`dataclasses.replace`."""

    data: str
    out: str
    stage: str = "pretrain"  # pretrain | finetune
    objective: str = "simclr"  # simclr | supcon
    cotrain: bool = False
    init: str | None = None
    workers: int = 2  # Ray Train workers
    gpu: bool = False
    # 8 + 8 epochs with supervised-contrastive pretraining: the arm that reached the paper's 94.12 %
    # on real films and led the phantom label-efficiency table (README, "Choosing the defaults").
    epochs: int = 8
    batch_size: int = 64  # per worker
    lr: float = 2e-3  # peak of the one-cycle schedule (AdamW)
    weight_decay: float = 1e-4
    #: Share of the steps the one-cycle schedule spends warming up to ``lr``.
    warmup_fraction: float = 0.15
    temperature: float = 0.2  # of the contrastive losses (NT-Xent, SupCon)
    seed: int = 0
    preset: str = "resnet10-cpu"  # encoder preset (regionmir/presets)
    regions: str = "standard29"  # standard29 | all36
    crop_cache: str = "auto"  # auto (OUT/../crop-cache beside the data) | off | URI
    max_failures: int = 2  # worker failures Ray Train recovers from
    max_bad_fraction: float = 0.05  # stop when more than this fraction of films cannot be read
    resume: bool = False
    address: str | None = None
    data_concurrency: int = 2
    #: Where the worker group's bundles go: PACK (fewest nodes), SPREAD (as many nodes as possible,
    #: best effort) or STRICT_SPREAD (one node per worker, else wait for nodes).
    placement: str = "PACK"
    #: Splits cached in the same pass as the training splits, for a step that follows (e.g. the
    #: test split the demo and ``ablate`` evaluate on); never handed to the trainer.
    also_cache: tuple[str, ...] = ()
    #: Fine-tuning phases see the labels of this fraction of the training films (rounded up to
    #: whole films, at least one; chosen by ``seed``); pretraining phases still see every film.
    label_fraction: float = 1.0


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


def labelled_films(films: list, fraction: float, seed: int) -> list:
    """The training films whose labels fine-tuning may use: ``ceil(fraction × films)`` of them (at
    least one), drawn without replacement by ``seed`` from the films sorted by image id — the same
    films for the same data, fraction and seed on every machine, and a larger fraction's draw
    contains a smaller one's."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"label fraction must be in (0, 1], got {fraction}")
    if fraction == 1.0 or not films:
        return list(films)
    import math

    import numpy as np

    ordered = sorted(films, key=lambda film: film.image_id)
    count = max(1, math.ceil(fraction * len(ordered)))
    order = np.random.default_rng([int(seed), 0x1ABE1]).permutation(len(ordered))
    return [ordered[i] for i in sorted(order[:count])]


def _export(checkpoint, target: str, s3: S3Options | None) -> None:
    """Copy a checkpoint's model to ``target``. The contract marks a complete model: it is removed
    first and written last (each file whole, see :func:`storage.write_bytes`), so a reader of
    ``target`` sees the old model, no model, or the new one, never new weights under an old contract."""
    with checkpoint.as_directory() as directory:
        storage.remove(storage.join(target, CONTRACT_FILE), s3)
        for name in (WEIGHTS_FILE, CONTRACT_FILE):
            with open(os.path.join(directory, name), "rb") as handle:
                storage.write_bytes(storage.join(target, name), handle.read(), s3)


@dataclass(frozen=True)
class Phase:
    """One model trained in a run (see :mod:`training.train_loop`). ``init``: ``None``,
    ``"dir:URI"`` (a model directory) or ``"phase:NAME"`` (an earlier phase's final weights)."""

    name: str
    stage: str  # pretrain | finetune
    epochs: int
    objective: str = "simclr"
    cotrain: bool = False
    init: str | None = None

    def __post_init__(self) -> None:
        if self.stage not in ("pretrain", "finetune"):
            raise ValueError(f"unknown stage {self.stage!r}")
        if self.epochs < 1:
            raise ValueError(f"phase {self.name}: epochs must be at least 1, got {self.epochs}")


def _init_provenance(init: str | None, out: str) -> str | None:
    """What a model's contract records as its starting point: the model URI the user gave, or the
    exported model of the earlier phase (never the internal ``dir:``/``phase:`` encoding)."""
    if not init:
        return None
    kind, _, value = init.partition(":")
    return value if kind == "dir" else storage.join(out, value, "final")


def run_training(options: TrainOptions, s3: S3Options | None = None) -> dict[str, Any]:
    """``regionmir pretrain`` / ``finetune``: one phase, exported to ``OUT/best`` and ``OUT/final``."""
    if options.stage not in ("pretrain", "finetune"):
        raise ValueError(f"unknown stage {options.stage!r}")
    phase = Phase(
        name=options.stage,
        stage=options.stage,
        epochs=options.epochs,
        objective=options.objective,
        cotrain=options.cotrain,
        init=f"dir:{options.init}" if options.init else None,
    )
    summary = run_phases(options, [phase], s3)
    only = summary["phases"][phase.name]
    return {**summary, "stage": options.stage, **only}


def run_phases(options: TrainOptions, phases: list[Phase], s3: S3Options | None = None) -> dict[str, Any]:
    """Train ``phases`` in order in one Ray Train run (one worker group, one ``fit``).

    With one phase its models go to ``OUT/best`` and ``OUT/final``; with several, to
    ``OUT/<phase>/best`` and ``OUT/<phase>/final``. Returns (and writes as ``OUT/summary.json``)
    the settings, data, timings and, per phase, the best model, its version and metrics.
    """
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    started = time.perf_counter()
    if options.placement not in PLACEMENTS:
        raise ValueError(f"placement must be one of {', '.join(PLACEMENTS)}, got {options.placement!r}")
    s3 = s3 or S3Options.from_env()
    names = [p.name for p in phases]
    if len(set(names)) != len(names):
        raise ValueError(f"phase names must be unique, got {names}")
    for phase in phases:
        if phase.init and phase.init.startswith("phase:") and phase.init[6:] not in names[: names.index(phase.name)]:
            raise ValueError(f"phase {phase.name} starts from {phase.init[6:]!r}, which is not an earlier phase")
    # Fail fast on the driver: storage problems surface here, not in ten workers' logs.
    check_reachable(options.data, s3)
    check_reachable(options.out, s3, write=True)
    run_dir = storage.join(options.out, "ray", RUN_NAME)
    if storage.exists(run_dir, s3) and not options.resume:
        raise DatasetError(
            options.out, "already holds a training run: pass --resume to continue it, or choose another --out"
        )
    encoder = load_preset(options.preset)
    class_ids = region_ids(options.regions)
    init_dirs = {}
    for phase in phases:
        if phase.init and phase.init.startswith("dir:"):
            init_dir, init_contract = read_contract(phase.init[4:], s3)
            init_dirs[phase.name] = init_dir
            encoder = init_contract.encoder_config
    from dataclasses import replace

    encoder = replace(encoder, num_classes=len(class_ids))
    crop = CropConfig(size=encoder.crop_size)
    pipeline = RoiPipelineConfig(crop=crop, anatomy_ids=class_ids, max_bad_fraction=options.max_bad_fraction)

    start_ray(options.address)
    needs_valid = any(p.stage == "finetune" for p in phases)
    splits = ("train", "valid") if needs_valid else ("train",)
    cache_root = default_cache_root(options)
    extra = tuple(s for s in options.also_cache if s not in splits) if cache_root else ()
    records, label_report = films_by_split(options.data, s3, splits + extra)
    if not records["train"]:
        raise DatasetError(options.data, "no training films found (split 'train' is empty)")
    if label_report.total_issues:
        log.info("label scan:\n" + label_report.summary())
    if cache_root:
        cached = cached_roi_datasets(records, pipeline, cache_root, s3, options.data_concurrency)
        datasets = {k: v for k, v in cached["datasets"].items() if k in splits}
        train_rows = cached["info"]["train"]["rows"]
        records = {k: v for k, v in records.items() if k in splits}
    else:
        datasets = {
            split: roi_dataset(films, pipeline, s3, options.data_concurrency)
            for split, films in records.items()
            if films
        }
        train_rows = expected_crop_count(records["train"], class_ids)
    steps = max(1, train_rows // options.workers // options.batch_size)
    # Label-efficiency runs: fine-tuning reads only the crops of the labelled films (a filtered view
    # of the same training data), with as many steps per epoch as those crops fill.
    labelled = labelled_films(records["train"], options.label_fraction, options.seed)
    labelled_steps = steps
    if len(labelled) < len(records["train"]) and any(p.stage == "finetune" for p in phases):
        chosen = frozenset(film.image_id for film in labelled)
        datasets["train_labelled"] = datasets["train"].filter(lambda row: row["image_id"] in chosen)
        labelled_rows = expected_crop_count(labelled, class_ids)
        labelled_steps = max(1, labelled_rows // options.workers // options.batch_size)
        log.info(
            f"fine-tuning sees the labels of {len(labelled)} of {len(records['train'])} training films "
            f"({options.label_fraction:g}; {labelled_rows} crops, {labelled_steps} step(s) per epoch); "
            "pretraining sees every film",
        )
    aug_threads = 1 if options.gpu else max(1, (os.cpu_count() or 2) // options.workers)
    phase_plans = []
    for phase in phases:
        contrastive_views = phase.stage == "pretrain" or phase.cotrain
        augmentation = AugmentationConfig.contrastive() if contrastive_views else AugmentationConfig.fine_tuning()
        dataset = "train_labelled" if phase.stage == "finetune" and "train_labelled" in datasets else "train"
        phase_plans.append(
            PhasePlan(
                name=phase.name,
                stage=phase.stage,
                epochs=phase.epochs,
                objective=phase.objective,
                cotrain=phase.cotrain,
                init=f"dir:{init_dirs[phase.name]}" if phase.name in init_dirs else phase.init,
                dataset=dataset,
                steps_per_epoch=labelled_steps if dataset == "train_labelled" else steps,
                augmentation=augmentation,
                contract_training={
                    "stage": phase.stage,
                    "objective": phase.objective,
                    "cotrain": phase.cotrain,
                    "data": options.data,
                    "preset": options.preset,
                    "regions": options.regions,
                    "seed": options.seed,
                    "init": _init_provenance(phase.init, options.out),
                    "label_fraction": options.label_fraction if dataset == "train_labelled" else 1.0,
                    "labelled_films": len(labelled) if dataset == "train_labelled" else len(records["train"]),
                },
            )
        )
    config = TrainLoopConfig(
        phases=tuple(phase_plans),
        encoder=encoder,
        crop=crop,
        class_ids=tuple(class_ids),
        batch_size=options.batch_size,
        lr=options.lr,
        weight_decay=options.weight_decay,
        warmup_fraction=options.warmup_fraction,
        temperature=options.temperature,
        seed=options.seed,
        has_valid="valid" in datasets,
        threads=aug_threads,
    )
    storage_fs, storage_path = pyarrow_filesystem(storage.join(options.out, "ray"), s3)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=config.to_dict(),
        torch_config=TorchConfig(backend="nccl" if options.gpu else "gloo"),
        scaling_config=ScalingConfig(
            num_workers=options.workers,
            use_gpu=options.gpu,
            resources_per_worker={"CPU": 1, **({"GPU": 1} if options.gpu else {})},
            placement_strategy=options.placement,
        ),
        run_config=RunConfig(
            name=RUN_NAME,
            storage_path=storage_path,
            storage_filesystem=storage_fs,
            failure_config=FailureConfig(max_failures=options.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=None),
        ),
        datasets=datasets,
    )
    plan = ", ".join(f"{p.name} ({p.epochs} epoch{'s' if p.epochs > 1 else ''})" for p in phases)
    log.info(
        f"{options.workers} worker(s) ({options.placement}), {'GPU' if options.gpu else 'CPU'}, "
        f"{steps} step(s) of {options.batch_size} per epoch, {len(class_ids)} regions, preset {options.preset}: {plan}",
    )
    result = trainer.fit()
    if result.error:
        raise result.error
    reported = [(checkpoint, metrics) for checkpoint, metrics in result.best_checkpoints]
    # Fine-tuned models carry the anatomy atlas of their training boxes (atlas.json): the service
    # uses it to find a region on a film when a user names the region without drawing a box.
    atlas = (
        AnatomyAtlas.fit_records(records["train"], s3=s3, source=f"train split of {options.data}")
        if any(p.stage == "finetune" for p in phases)
        else None
    )
    per_phase: dict[str, Any] = {}
    history = []
    for phase in phases:
        mine = sorted(((c, m) for c, m in reported if m.get("phase") == phase.name), key=lambda cm: cm[1]["epoch"])
        if not mine:
            raise DatasetError(options.out, f"the run reported no checkpoint for phase {phase.name}")
        history += [m for _, m in mine]
        final = mine[-1]
        best = max(mine, key=lambda cm: _score(cm[1])) if phase.stage == "finetune" else final
        target = options.out if len(phases) == 1 else storage.join(options.out, phase.name)
        _export(final[0], storage.join(target, "final"), s3)
        _export(best[0], storage.join(target, "best"), s3)
        if atlas is not None and phase.stage == "finetune":
            for kind in ("best", "final"):
                atlas.save(storage.join(target, kind), s3)
        _, contract = read_contract(storage.join(target, "best"), s3)
        per_phase[phase.name] = {
            "best": storage.join(target, "best"),
            "model_version": contract.version_id,
            "best_metrics": best[1],
            "final_metrics": final[1],
        }
    storage.write_text(
        storage.join(options.out, "metrics.jsonl"), "".join(json.dumps(m, sort_keys=True) + "\n" for m in history), s3
    )
    summary = {
        "options": asdict(options),
        "phases": per_phase,
        "films": {k: len(v) for k, v in records.items()},
        "train_crops": train_rows,
        "labelled_train_films": len(labelled),
        "seconds": round(time.perf_counter() - started, 1),
    }
    storage.write_text(storage.join(options.out, "summary.json"), json.dumps(summary, indent=1, default=str), s3)
    return summary


def _score(metrics: dict[str, Any]) -> tuple[float, int]:
    """Best = highest validation accuracy, the later epoch on a tie (no validation: the last)."""
    return float(metrics.get("val_accuracy", 0.0)), int(metrics.get("epoch", 0))
