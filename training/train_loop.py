"""The per-worker training function Ray Train runs on every worker (plain PyTorch otherwise).

A run is a list of **phases** trained one after another by the same worker group (one
``TorchTrainer.fit``): ``regionmir pretrain`` and ``finetune`` are one phase; ``regionmir ablate``
trains all its arms — pretraining then fine-tuning from it in memory — as phases of one run, so
Ray's start-up (seconds on a cluster, minutes on a 2-core laptop) is paid once. A phase is a dict:
``name``, ``stage`` (pretrain | finetune), ``objective``, ``cotrain``, ``epochs``,
``steps_per_epoch``, ``dataset`` (the Ray Train dataset it reads: ``train``, or
``train_labelled`` — the labelled films of a label-efficiency run), ``augmentation``, ``init``
(``None``, ``"dir:URI"`` a model directory, or ``"phase:NAME"`` the final weights of an earlier
phase) and ``contract_training``.

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

import os
import tempfile
import time
from dataclasses import asdict
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from regionmir.augmentation import AugmentationConfig, augment_region
from regionmir.boxes import Box
from regionmir.contrastive_losses import NTXentLoss, SupervisedContrastiveLoss
from regionmir.distributed import gather, gather_with_grad
from regionmir.encoder import EncoderConfig, RegionEncoder
from regionmir.model_contract import ModelContract, load_model, save_model
from regionmir.roi_crop import CropConfig

from .roi_pipeline import crop_from_context

TRAIN_STATE_FILE = "train_state.pt"
#: Rows each worker shuffles among while streaming its shard (``local_shuffle_buffer_size``).
SHUFFLE_BUFFER_ROWS = 2048


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


def _initial_state(phase: dict[str, Any], finished: dict[str, dict]) -> dict[str, torch.Tensor] | None:
    """Backbone (+ projection) weights a phase starts from; new heads stay fresh."""
    init = phase.get("init")
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


def train_loop_per_worker(config: dict[str, Any]) -> None:
    import ray
    import ray.train

    context = ray.train.get_context()
    rank = context.get_world_rank()
    print(
        f"[train] worker {rank}/{context.get_world_size()} on node {ray.get_runtime_context().get_node_id()}",
        flush=True,
    )
    torch.set_num_threads(int(config.get("threads", 1)))
    phases = config["phases"]
    resume = _restore(ray.train.get_checkpoint())
    start_phase, start_epoch, finished = 0, 0, {}
    if resume:
        start_phase, start_epoch, finished = resume["phase_index"], resume["epoch"], resume["finished"]
        if rank == 0:
            print(
                f"[train] resumed from the checkpoint of epoch {start_epoch} of phase {phases[start_phase]['name']}",
                flush=True,
            )
        if start_epoch >= int(phases[start_phase]["epochs"]):  # that phase was complete: start the next
            start_phase, start_epoch, resume = start_phase + 1, 0, None
    global_epoch = sum(int(p["epochs"]) for p in phases[:start_phase]) + start_epoch
    for index in range(start_phase, len(phases)):
        phase = phases[index]
        _train_phase(config, index, phase, finished, resume if index == start_phase else None, global_epoch)
        global_epoch += int(phase["epochs"]) - (start_epoch if index == start_phase else 0)


def _train_phase(
    config: dict[str, Any],
    index: int,
    phase: dict[str, Any],
    finished: dict[str, dict],
    resume: dict[str, Any] | None,
    global_epoch: int,
) -> None:
    import ray.train
    import ray.train.torch

    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    name, stage, cotrain = phase["name"], phase["stage"], bool(phase.get("cotrain"))
    torch.manual_seed(int(config["seed"]) + index)
    crop = CropConfig(**config["crop"])
    encoder_config = EncoderConfig.from_dict(config["encoder"])
    class_ids = list(config["class_ids"])
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

    contrastive = (SupervisedContrastiveLoss if phase.get("objective") == "supcon" else NTXentLoss)(
        temperature=float(config["temperature"])
    )
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad],
        lr=float(config["lr"]),
        weight_decay=float(config.get("weight_decay", 1e-4)),
    )
    epochs = int(phase["epochs"])
    steps = int(phase["steps_per_epoch"])
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=float(config["lr"]), total_steps=max(1, epochs * steps), pct_start=0.15
    )
    aug = AugmentationConfig.from_dict(phase["augmentation"])

    start_epoch, best_val, history = 0, float("-inf"), []
    if resume is not None:
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        start_epoch, best_val, history = resume["epoch"], resume["best_val"], resume["history"]

    train_shard = ray.train.get_dataset_shard(phase.get("dataset", "train"))
    valid_shard = ray.train.get_dataset_shard("valid") if config.get("has_valid") else None
    batch_size = int(config["batch_size"])
    n_views = 2 if (stage == "pretrain" or cotrain) else 1
    heads = ("projection",) if stage == "pretrain" else (("projection", "logits") if cotrain else ("logits",))

    for epoch in range(start_epoch, epochs):
        model.train()
        rng = np.random.default_rng([config["seed"], index, epoch, rank])
        started = time.perf_counter()
        seen, loss_sum, correct, classified, steps_done = 0, 0.0, 0, 0, 0
        for batch in train_shard.iter_batches(
            batch_size=batch_size,
            batch_format="numpy",
            drop_last=True,
            local_shuffle_buffer_size=SHUFFLE_BUFFER_ROWS,
            local_shuffle_seed=int(config["seed"]) * 1000 + epoch * 10 + rank,
            prefetch_batches=2,
        ):
            if steps_done >= steps:
                break  # equal step counts on every worker keep DDP and the gathers in lock-step
            views, anatomy = _views(batch, crop, aug, rng, n_views)
            x = torch.cat(views).to(device)
            labels = [lookup[a].to(device) for a in anatomy]
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_amp):
                out = model(x, heads=heads)
            loss = torch.zeros((), device=device)
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
                correct += int((logits.argmax(1) == targets).sum())
                classified += int(targets.numel())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            seen += views[0].shape[0]
            loss_sum += float(loss.detach()) * views[0].shape[0]
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
            print(f"[train] {name} epoch {epoch + 1}/{epochs}: " + ", ".join(parts), flush=True)
            with tempfile.TemporaryDirectory() as directory:
                contract = ModelContract(
                    stage=stage,
                    encoder=encoder_config.to_dict(),
                    class_anatomy_ids=tuple(class_ids),
                    crop=asdict(crop),
                    training={
                        **phase.get("contract_training", {}),
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
