"""The per-worker training function Ray Train runs on every worker (plain PyTorch otherwise).

A run is a list of **phases** trained one after another by the same worker group (one
``TorchTrainer.fit``): ``regionmir pretrain`` and ``finetune`` are one phase; ``regionmir ablate``
trains all its arms — pretraining then fine-tuning from it in memory — as phases of one run, so
Ray's start-up (seconds on a cluster, minutes on a 2-core laptop) is paid once. What the workers
train is a :class:`TrainLoopConfig` (built by :func:`training.run.run_phases`, whose
:class:`~training.run.TrainOptions` hold every default): the shared settings and one
:class:`PhasePlan` per phase. Ray Train carries it to the workers as the plain dict of
:meth:`TrainLoopConfig.to_dict` (Ray records that dict with the run) and the loop reads it back
first thing.

Ray touch points, and only these: ``ray.train.get_context`` (rank), the runtime context's node id
(printed once per worker, so an operator sees where the group landed), ``get_dataset_shard``
(streamed ROI rows), ``prepare_model`` (DDP), ``get_checkpoint`` (resume after a failure) and
``report`` (metrics + the checkpoint from rank 0). Everything else is the method:

* ``pretrain``: two augmented views of each ROI, one forward pass over both, NT-Xent (SimCLR) or
  supervised-contrastive loss with negatives gathered from every worker.
* ``finetune``: anatomy cross-entropy on one lightly augmented view; ``cotrain`` adds the
  contrastive loss on two views (the paper's co-training baseline). Validation accuracy each
  epoch, all-reduced across workers; the checkpoint records whether it is the best so far.

Every checkpoint is a model directory (``model.pt`` + ``contract.json``, see
:mod:`regionmir.model_contract`) plus ``train_state.pt`` (optimizer, scheduler, epoch, history).
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from regionmir.augmentation import AugmentationConfig, augment_region
from regionmir.boxes import Box
from regionmir.console import configure_logging
from regionmir.contrastive_losses import NTXentLoss, SupervisedContrastiveLoss
from regionmir.distributed import gather, gather_with_grad
from regionmir.encoder import EncoderConfig, RegionEncoder
from regionmir.model_contract import ModelContract, load_model, save_model
from regionmir.roi_crop import CropConfig

from .roi_pipeline import crop_from_context

log = logging.getLogger(__name__)

TRAIN_STATE_FILE = "train_state.pt"
#: Rows each worker shuffles among while streaming its shard (``local_shuffle_buffer_size``).
SHUFFLE_BUFFER_ROWS = 2048


@dataclass(frozen=True)
class PhasePlan:
    """One phase as the workers train it: a :class:`training.run.Phase` resolved by the driver."""

    name: str
    stage: str  # pretrain | finetune
    epochs: int
    objective: str  # simclr | supcon: the contrastive loss (pretraining, or fine-tuning with cotrain)
    cotrain: bool  # fine-tuning adds the contrastive loss on two views
    #: ``None``, ``"dir:PATH"`` (a model directory the driver resolved) or ``"phase:NAME"`` (the
    #: final weights of an earlier phase of this run).
    init: str | None
    #: The Ray Train dataset it reads: ``train``, or ``train_labelled`` (the labelled films of a
    #: label-efficiency run).
    dataset: str
    steps_per_epoch: int
    augmentation: AugmentationConfig
    #: What the model's contract records under ``training`` (data, preset, seed, provenance, ...).
    contract_training: Mapping[str, Any]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PhasePlan:
        return cls(**{**data, "augmentation": AugmentationConfig.from_dict(dict(data["augmentation"]))})


@dataclass(frozen=True)
class TrainLoopConfig:
    """Everything the workers need, typed; the defaults live in :class:`training.run.TrainOptions`."""

    phases: tuple[PhasePlan, ...]
    encoder: EncoderConfig
    crop: CropConfig
    class_ids: tuple[int, ...]  # the anatomy ids the classifier's outputs stand for, in order
    batch_size: int  # per worker
    lr: float
    weight_decay: float
    warmup_fraction: float  # of the one-cycle schedule
    temperature: float  # of the contrastive losses
    seed: int
    has_valid: bool  # a "valid" dataset is there: fine-tuning reports val_accuracy
    threads: int  # torch threads per worker

    def to_dict(self) -> dict[str, Any]:
        """Plain data for ``TorchTrainer(train_loop_config=...)``: Ray Train validates and records it as a dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainLoopConfig:
        """Inverse of :meth:`to_dict`; an unknown or missing key raises (``TypeError``)."""
        return cls(
            **{
                **data,
                "phases": tuple(PhasePlan.from_dict(p) for p in data["phases"]),
                "encoder": EncoderConfig.from_dict(dict(data["encoder"])),
                "crop": CropConfig(**data["crop"]),
                "class_ids": tuple(data["class_ids"]),
            }
        )


def _views(
    batch: dict[str, np.ndarray], crop: CropConfig, aug: AugmentationConfig, rng: np.random.Generator, count: int
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """``count`` augmented views of every row: tensors (B, 1, S, S) and anatomy ids (B,)."""
    views: list[list[np.ndarray]] = [[] for _ in range(count)]
    labels: list[list[int]] = [[] for _ in range(count)]
    for context, box, anatomy in zip(batch["context"], batch["box"], batch["anatomy_id"]):
        image = context.astype(np.float32) / 255.0
        region = Box(*[float(v) for v in box])
        for k in range(count):
            view, label = augment_region(image, region, int(anatomy), crop, aug, rng)
            views[k].append(view)
            labels[k].append(label)
    return (
        [torch.from_numpy(np.stack(v))[:, None] for v in views],
        [torch.as_tensor(lab, dtype=torch.long) for lab in labels],
    )


def _class_index(class_ids: list[int]) -> torch.Tensor:
    lookup = torch.full((64,), -1, dtype=torch.long)
    lookup[torch.as_tensor(class_ids)] = torch.arange(len(class_ids))
    return lookup


def _all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(tensor)
    return tensor.tolist()


def _initial_state(phase: PhasePlan, finished: dict[str, dict]) -> dict[str, torch.Tensor] | None:
    """Backbone (+ projection) weights a phase starts from; new heads stay fresh."""
    init = phase.init
    if not init:
        return None
    if init.startswith("phase:"):
        return finished[init[len("phase:") :]]
    pretrained, _ = load_model(init[len("dir:") :], map_location="cpu")
    return _transferable(pretrained)


def _transferable(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    state = getattr(model, "module", model).state_dict()
    return {k: v.detach().clone() for k, v in state.items() if k.startswith(("backbone.", "projection_head."))}


def _restore(checkpoint) -> dict[str, Any] | None:
    if not checkpoint:
        return None
    with checkpoint.as_directory() as directory:
        restored, _ = load_model(directory, map_location="cpu")
        # tensors, numbers, strings and containers only: a checkpoint cannot run code when loaded
        state = torch.load(os.path.join(directory, TRAIN_STATE_FILE), map_location="cpu", weights_only=True)
    state["model"] = restored.state_dict()
    return state


def train_loop_per_worker(config: Mapping[str, Any]) -> None:
    """Train every phase of ``config`` (:meth:`TrainLoopConfig.to_dict`) on this worker."""
    import ray
    import ray.train

    configure_logging("train")  # our lines as `[train] …` on the worker's stdout, which the driver shows
    loop = TrainLoopConfig.from_dict(config)
    context = ray.train.get_context()
    rank = context.get_world_rank()
    log.info(
        f"worker {rank}/{context.get_world_size()} on node {ray.get_runtime_context().get_node_id()}",
    )
    torch.set_num_threads(loop.threads)
    phases = loop.phases
    resume = _restore(ray.train.get_checkpoint())
    start_phase, start_epoch, finished = 0, 0, {}
    if resume:
        start_phase, start_epoch, finished = resume["phase_index"], resume["epoch"], resume["finished"]
        if rank == 0:
            log.info(
                f"resumed from the checkpoint of epoch {start_epoch} of phase {phases[start_phase].name}",
            )
        if start_epoch >= phases[start_phase].epochs:  # that phase was complete: start the next
            start_phase, start_epoch, resume = start_phase + 1, 0, None
    global_epoch = sum(p.epochs for p in phases[:start_phase]) + start_epoch
    for index in range(start_phase, len(phases)):
        phase = phases[index]
        _train_phase(loop, index, phase, finished, resume if index == start_phase else None, global_epoch)
        global_epoch += phase.epochs - (start_epoch if index == start_phase else 0)


@dataclass
class StepResult:
    """What one optimisation step hands back: the loss (a tensor on the device, not yet synced) and,
    when the classifier head ran, how many of its predictions were right out of how many."""

    loss: torch.Tensor
    correct: int = 0
    classified: int = 0


def training_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    contrastive: Any,
    views: list[torch.Tensor],
    labels: list[torch.Tensor],
    heads: tuple[str, ...],
    device: torch.device,
    *,
    world: int = 1,
    rank: int = 0,
    use_amp: bool = False,
) -> StepResult:
    """One step of a training phase: the views (each ``(B, 1, S, S)``) through ``heads`` under
    bf16 autocast when ``use_amp`` (CUDA), the contrastive loss on the float32 projections —
    gathered across the ``world`` workers with their gradients — plus cross-entropy on the logits,
    backward, optimizer and scheduler steps. ``labels``: each view's anatomy class indices. The
    Ray Train loop calls it per batch; ``benchmarks/gpu_check.py`` calls it without Ray."""
    x = torch.cat(views).to(device)
    labels = [label.to(device) for label in labels]
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_amp):
        out = model(x, heads=heads)
    loss = torch.zeros((), device=device)
    correct = classified = 0
    if "projection" in out:
        z1, z2 = out["projection"].float().chunk(2)
        gathered = None
        if world > 1:
            gathered = (gather_with_grad(z1), gather_with_grad(z2), gather(labels[0]))
        loss = loss + contrastive(z1, z2, labels[0], gathered=gathered, rank=rank)
    if "logits" in out:
        logits = out["logits"].float()
        targets = torch.cat(labels)[: logits.shape[0]]
        loss = loss + F.cross_entropy(logits, targets)
        correct = int((logits.argmax(1) == targets).sum())
        classified = int(targets.numel())
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    scheduler.step()
    return StepResult(loss, correct, classified)


def _train_phase(
    config: TrainLoopConfig,
    index: int,
    phase: PhasePlan,
    finished: dict[str, dict],
    resume: dict[str, Any] | None,
    global_epoch: int,
) -> None:
    import ray.train
    import ray.train.torch

    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    name, stage, cotrain = phase.name, phase.stage, phase.cotrain
    torch.manual_seed(config.seed + index)
    crop = config.crop
    encoder_config = config.encoder
    class_ids = list(config.class_ids)
    lookup = _class_index(class_ids)

    model = RegionEncoder(encoder_config)
    initial = _initial_state(phase, finished) if resume is None else None
    if initial is not None:
        model.load_state_dict(initial, strict=False)
    if resume is not None:
        model.load_state_dict(resume["model"])
    # DDP reduces gradients of every trainable parameter each step: heads this stage does not use
    # are frozen, so the reduction never waits for gradients that will not come.
    unused = (
        ("embedding_layer.", "classification_head.")
        if stage == "pretrain"
        else (() if cotrain else ("projection_head.",))
    )
    for parameter_name, parameter in model.named_parameters():
        if parameter_name.startswith(unused):
            parameter.requires_grad_(False)
    model = ray.train.torch.prepare_model(model)
    device = ray.train.torch.get_device()
    use_amp = device.type == "cuda"

    contrastive = (SupervisedContrastiveLoss if phase.objective == "supcon" else NTXentLoss)(
        temperature=config.temperature
    )
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=config.lr, weight_decay=config.weight_decay
    )
    epochs = phase.epochs
    steps = phase.steps_per_epoch
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=config.lr, total_steps=max(1, epochs * steps), pct_start=config.warmup_fraction
    )
    aug = phase.augmentation

    start_epoch, best_val, history = 0, float("-inf"), []
    if resume is not None:
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        start_epoch, best_val, history = resume["epoch"], resume["best_val"], resume["history"]

    train_shard = ray.train.get_dataset_shard(phase.dataset)
    valid_shard = ray.train.get_dataset_shard("valid") if config.has_valid else None
    batch_size = config.batch_size
    n_views = 2 if (stage == "pretrain" or cotrain) else 1
    heads = ("projection",) if stage == "pretrain" else (("projection", "logits") if cotrain else ("logits",))

    for epoch in range(start_epoch, epochs):
        model.train()
        rng = np.random.default_rng([config.seed, index, epoch, rank])
        started = time.perf_counter()
        seen, loss_sum, correct, classified, steps_done = 0, 0.0, 0, 0, 0
        for batch in train_shard.iter_batches(
            batch_size=batch_size,
            batch_format="numpy",
            drop_last=True,
            local_shuffle_buffer_size=SHUFFLE_BUFFER_ROWS,
            local_shuffle_seed=config.seed * 1000 + epoch * 10 + rank,
            prefetch_batches=2,
        ):
            if steps_done >= steps:
                break  # equal step counts on every worker keep DDP and the gathers in lock-step
            views, anatomy = _views(batch, crop, aug, rng, n_views)
            step = training_step(
                model,
                optimizer,
                scheduler,
                contrastive,
                views,
                [lookup[a] for a in anatomy],
                heads,
                device,
                world=world,
                rank=rank,
                use_amp=use_amp,
            )
            correct += step.correct
            classified += step.classified
            seen += views[0].shape[0]
            loss_sum += float(step.loss.detach()) * views[0].shape[0]
            steps_done += 1  # noqa: SIM113 (the batches of an epoch come from an iterator; this counts the steps run)
        elapsed = time.perf_counter() - started
        seen_all, loss_all, correct_all, classified_all, time_sum = _all_reduce_sum(
            [seen, loss_sum, correct, classified, elapsed], device
        )
        metrics: dict[str, Any] = {
            "phase": name,
            "stage": stage,
            "epoch": epoch + 1,
            "global_epoch": global_epoch + epoch - start_epoch + 1,
            "loss": loss_all / max(1.0, seen_all),
            "crops_per_s": seen_all / max(1e-9, time_sum / world),
            "train_crops": int(seen_all),
        }
        if stage == "finetune":
            metrics["train_accuracy"] = correct_all / max(1.0, classified_all)
        if valid_shard is not None and stage == "finetune":
            metrics["val_accuracy"] = _validate(model, valid_shard, crop, lookup, device)
        score = metrics.get("val_accuracy", -metrics["loss"])
        metrics["is_best"] = bool(score > best_val)
        best_val = max(best_val, score)
        history.append(metrics)
        if epoch + 1 == epochs:
            finished[name] = _transferable(model)  # later phases may start from it
        if rank == 0:
            parts = [
                f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                for k, v in metrics.items()
                if k not in ("phase", "stage", "epoch", "global_epoch")
            ]
            log.info(f"{name} epoch {epoch + 1}/{epochs}: " + ", ".join(parts))
            with tempfile.TemporaryDirectory() as directory:
                contract = ModelContract(
                    stage=stage,
                    encoder=encoder_config.to_dict(),
                    class_anatomy_ids=tuple(class_ids),
                    crop=asdict(crop),
                    training={
                        **phase.contract_training,
                        "phase": name,
                        "epoch": epoch + 1,
                        "metrics": metrics,
                    },
                )
                save_model(directory, model, contract)
                torch.save(
                    {
                        "phase_index": index,
                        "epoch": epoch + 1,
                        "best_val": best_val,
                        "history": history,
                        "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(),
                        "finished": finished,
                    },
                    os.path.join(directory, TRAIN_STATE_FILE),
                )
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(directory))
        else:
            ray.train.report(metrics)


def _validate(model, valid_shard, crop: CropConfig, lookup: torch.Tensor, device: torch.device) -> float:
    """Accuracy on the validation shards, all-reduced over the workers (eval mode: BN running stats)."""
    model.eval()
    correct, total = 0, 0
    with torch.no_grad():
        for batch in valid_shard.iter_batches(batch_size=256, batch_format="numpy"):
            x = torch.from_numpy(
                np.stack([crop_from_context(c, b, crop) for c, b in zip(batch["context"], batch["box"])])
            )[:, None].to(device)
            targets = lookup[torch.as_tensor(batch["anatomy_id"], dtype=torch.long)].to(device)
            logits = getattr(model, "module", model).classify(x)
            correct += int((logits.argmax(1) == targets).sum())
            total += int(targets.numel())
    correct, total = _all_reduce_sum([correct, total], device)
    return correct / max(1.0, total)
