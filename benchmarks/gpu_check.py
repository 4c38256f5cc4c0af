"""GPU check: the project's GPU code paths, run without Ray, as Ray would run them.

``regionmir pretrain/finetune --gpu`` (bf16 autocast, an NCCL process group), the index job's
encoder actors on a GPU (:class:`indexing.roi_embedding.RegionEmbedder`) and GPU query-service
replicas (:class:`serving.runtime.EncoderRuntime`) are plain PyTorch under Ray's wrappers. This
script calls the same functions Ray calls, in the same order, on one machine with no Ray
installed, and measures them. Each check is its own try-block (one failure never hides the
others; the exception text is recorded):

* ``environment``: CUDA visible, device name, torch/CUDA/cuDNN/NCCL versions, bf16 support, the
  TF32 defaults.
* ``imports``: the project modules each path imports, none of Ray; which third-party module is
  missing where one is.
* ``train_<preset>_<arm>``: ``training.train_loop.training_step``, the step the Ray Train loop
  runs per batch (``torch.autocast(dtype=bfloat16, enabled=device is cuda)``, the contrastive loss
  — NT-Xent or SupCon — on the float32 projections, cross-entropy on the logits, AdamW +
  one-cycle), with the heads the stage does not use frozen as the loop freezes them, on random
  crops of the preset's size; loss, gradients and weights finite; steps/s and crops/s after
  warm-up; peak GPU memory. Arms: pretrain SimCLR, pretrain SupCon, fine-tune, fine-tune
  with co-training (SupCon + cross-entropy). The augmentation (CPU work on films) is left out.
* ``precision_<preset>``: one step's loss and gradients under bf16 autocast against the same
  step in float32 (TF32 off) on the same device, from the same weights and batch.
* ``train_cpu``: the same SupCon step on the CPU (a few steps) for the GPU/CPU ratio, and float32
  CPU against float32 GPU on one small batch.
* ``inference_*``: a model directory written by ``save_model`` (fine-tune stage, the 29 standard
  regions), loaded by ``RegionEmbedder`` (the index job's actor: it picks CUDA when there is one)
  and by ``EncoderRuntime`` (a query-service replica; device picked the same way, and as asked);
  ``embed_crops`` on the GPU against the CPU (float32, eval mode), with cuDNN's default TF32 and
  with it off; crops/s at batch 256 and 1024, GPU and CPU; one film's 29 crops through the
  service's forward (latency).
* ``process_group_world1``: ``torch.distributed`` with NCCL (gloo on ``--device cpu``), world
  size 1, initialised as Ray Train does (tcp:// init method, ``TORCH_NCCL_ASYNC_ERROR_HANDLING=1``):
  ``regionmir.distributed.gather_with_grad``/``gather`` (the identity at world 1, as the training
  loop relies on), the NCCL collectives their world > 1 branch runs (all-gather with gradient,
  all-reduce), the losses on gathered tensors against the plain ones, the loop's epoch all-reduce
  and one DDP step against the bare model. One GPU allows world size 1 only: NCCL refuses two
  ranks on one device.
* ``two_ranks_gloo``: two processes (``torch.multiprocessing``, spawn) with gloo on CUDA tensors
  (CPU tensors on ``--device cpu``): ``gather_with_grad`` + both losses across ranks against the
  single-process loss of the global batch (values; each rank's gradient = world × the global one).

No ``torch.compile``, no downloads (``weights=None`` everywhere: the encoder never fetches any).

Run (repo root; the package need not be installed)::

    PYTHONPATH=$PWD python3 benchmarks/gpu_check.py [--device cuda|cpu] [--quick] [--out DIR]

On a GPU machine without the project's dependencies, the few third-party modules these paths
import that such an image lacks (the Milvus client that ``indexing/__init__`` and
``serving.runtime`` import: pymilvus, orjson, python-dotenv, cachetools; with protobuf and grpcio
of the versions it was built against) travel as wheels in a git-ignored ``.whl/`` (fetched here
with ``pip download --no-deps --only-binary=:all: --python-version 3.12 --platform
manylinux_2_17_x86_64 -d .whl pymilvus==3.0.2 orjson python-dotenv cachetools protobuf grpcio`` at
the versions of the project's environment; the device tool's ``carry`` names ``.whl``)::

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl
    PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 timeout 400 python3 benchmarks/gpu_check.py --out $OUT

Without them ``RegionEmbedder`` is still checked (its module imported without ``indexing/__init__``)
and the service runtime check is skipped, saying why.

``--quick`` shrinks every size (for a CPU smoke run). Progress goes to stderr; stdout is one JSON
line with every figure and each check's ``ok``. ``--out DIR`` also writes it to
``DIR/gpu_check.json`` (and ``DIR/gpu_check.partial.json`` after each check, in case the run is
killed).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import socket
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, replace
from datetime import timedelta

import numpy as np
import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(1, ROOT)

STARTED = time.perf_counter()

# --- the training-loop settings (training.run.TrainOptions defaults) --------------------------
LR = 2e-3
WEIGHT_DECAY = 1e-4
WARMUP_FRACTION = 0.15
TEMPERATURE = 0.2

#: The arms of the training check: (stage, objective, cotrain), as ``PhasePlan`` holds them.
ARMS = {
    "pretrain_simclr": ("pretrain", "simclr", False),
    "pretrain_supcon": ("pretrain", "supcon", False),
    "finetune": ("finetune", "supcon", False),
    "finetune_cotrain": ("finetune", "supcon", True),
}


def say(message: str) -> None:
    print(f"[gpu_check {time.perf_counter() - STARTED:7.1f}s] {message}", file=sys.stderr, flush=True)


def _round(value, digits: int = 6):
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return float(f"{value:.{digits}g}")
    if isinstance(value, dict):
        return {k: _round(v, digits) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_round(v, digits) for v in value]
    return value


class SkipCheck(Exception):
    """Raised inside a check that does not apply here (recorded as skipped, not failed)."""


class Checks:
    """Runs each check in its own try-block and keeps the results (partial file after each)."""

    def __init__(self, out_dir: str | None, header: dict):
        self.out_dir = out_dir
        self.header = header
        self.results: dict[str, dict] = {}

    @contextlib.contextmanager
    def check(self, name: str):
        record: dict = {"ok": None}
        self.results[name] = record
        started = time.perf_counter()
        say(f"{name}: start")
        try:
            yield record
        except SkipCheck as skip:
            record["ok"] = None
            record["skipped"] = str(skip)
        except Exception as exc:  # noqa: BLE001 - every failure is recorded, the next check runs
            record["ok"] = False
            record["error"] = f"{type(exc).__name__}: {exc}"[:3000]
            record["traceback"] = traceback.format_exc()[-4000:]
        else:
            expects = record.get("expect", {})
            record["ok"] = all(expects.values()) if expects else True
        finally:
            record["seconds"] = round(time.perf_counter() - started, 2)
            failed = [k for k, v in record.get("expect", {}).items() if not v]
            status = "skipped" if "skipped" in record else ("ok" if record["ok"] else "FAILED")
            detail = record.get("error") or record.get("skipped") or (f"failed: {failed}" if failed else "")
            say(f"{name}: {status} in {record['seconds']}s {detail}".rstrip())
            self.write("gpu_check.partial.json")

    def summary(self) -> dict:
        failed = sorted(k for k, v in self.results.items() if v["ok"] is False)
        skipped = sorted(k for k, v in self.results.items() if v["ok"] is None)
        return _round(
            {
                **self.header,
                "ok": not failed,
                "failed": failed,
                "skipped": skipped,
                "seconds": round(time.perf_counter() - STARTED, 1),
                "checks": self.results,
            }
        )

    def write(self, filename: str) -> None:
        if not self.out_dir:
            return
        os.makedirs(self.out_dir, exist_ok=True)
        path = os.path.join(self.out_dir, filename)
        with open(path + ".tmp", "w") as handle:
            json.dump(self.summary(), handle, default=str)
        os.replace(path + ".tmp", path)


def expect(record: dict, name: str, condition) -> bool:
    record.setdefault("expect", {})[name] = bool(condition)
    return bool(condition)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def strict_float32():
    """float32 really in float32 on CUDA: TF32 off for cuDNN convolutions and matmuls."""
    saved = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@contextlib.contextmanager
def torch_threads(count: int):
    saved = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def rel_diff(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-12)


def grad_vector(model: torch.nn.Module) -> list[torch.Tensor]:
    """The gradients of the trainable parameters, float64 on the CPU, in parameter order."""
    bare = getattr(model, "module", model)
    return [p.grad.detach().double().flatten().cpu() for p in bare.parameters() if p.grad is not None]


def compare_grads(a: list[torch.Tensor], b: list[torch.Tensor]) -> dict:
    """Whole-gradient cosine and relative L2 difference, and the median per-tensor cosine."""
    flat_a, flat_b = torch.cat(a), torch.cat(b)
    per_tensor = sorted(float(F.cosine_similarity(x, y, dim=0)) for x, y in zip(a, b))
    return {
        "grad_cosine": float(F.cosine_similarity(flat_a, flat_b, dim=0)),
        "grad_cosine_median_per_tensor": per_tensor[len(per_tensor) // 2],
        "grad_rel_l2": float((flat_a - flat_b).norm() / flat_b.norm().clamp_min(1e-30)),
        "grad_max_abs_diff": float((flat_a - flat_b).abs().max()),
    }


# --- the training step, as training.train_loop._train_phase runs it ---------------------------


def build_model(config, stage: str, cotrain: bool, device: torch.device, seed: int):
    """``RegionEncoder`` with the heads the stage does not use frozen, on ``device``.

    As ``_train_phase`` does before ``ray.train.torch.prepare_model`` (which moves the model to the
    worker's device and wraps it in DDP only when the world is larger than one)."""
    from regionmir.encoder import RegionEncoder

    torch.manual_seed(seed)
    model = RegionEncoder(config)
    unused = (
        ("embedding_layer.", "classification_head.")
        if stage == "pretrain"
        else (() if cotrain else ("projection_head.",))
    )
    for parameter_name, parameter in model.named_parameters():
        if parameter_name.startswith(unused):
            parameter.requires_grad_(False)
    return model.to(device)


def make_optimizer(model, total_steps: int):
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=LR, weight_decay=WEIGHT_DECAY)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=LR, total_steps=max(1, total_steps), pct_start=WARMUP_FRACTION
    )
    return optimizer, scheduler


def make_contrastive(objective: str):
    from regionmir.contrastive_losses import NTXentLoss, SupervisedContrastiveLoss

    return (SupervisedContrastiveLoss if objective == "supcon" else NTXentLoss)(temperature=TEMPERATURE)


def heads_for(stage: str, cotrain: bool) -> tuple[tuple[str, ...], int]:
    n_views = 2 if (stage == "pretrain" or cotrain) else 1
    heads = ("projection",) if stage == "pretrain" else (("projection", "logits") if cotrain else ("logits",))
    return heads, n_views


def random_batch(rows: int, size: int, n_views: int, class_ids: list[int], seed: int):
    """``n_views`` views (CPU tensors (B, 1, S, S) in [0, 1]) and anatomy ids, like ``_views`` returns."""
    rng = np.random.default_rng(seed)
    anatomy = rng.choice(np.asarray(class_ids), size=rows)
    views = [torch.from_numpy(rng.random((rows, size, size), dtype=np.float32))[:, None] for _ in range(n_views)]
    return views, [torch.as_tensor(anatomy, dtype=torch.long) for _ in range(n_views)]


def train_step(
    model, optimizer, scheduler, contrastive, views, anatomy, lookup, heads, device, world=1, rank=0, use_amp=None
):
    """One step of the Ray Train loop: :func:`training.train_loop.training_step`, called as the loop
    calls it (labels through the loop's anatomy → class lookup). Returns the float loss.

    ``use_amp`` defaults to the loop's ``device.type == "cuda"``."""
    from training.train_loop import training_step

    if use_amp is None:
        use_amp = device.type == "cuda"
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
    return float(step.loss.detach())  # the loop's `loss_sum += float(loss.detach()) * B` (a sync per step)


def params_finite(model) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


def grads_finite(model) -> bool:
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    return bool(grads) and all(g is not None and bool(torch.isfinite(g).all()) for g in grads)


def class_lookup(num_classes: int):
    from training.train_loop import _class_index

    class_ids = list(range(num_classes))  # the anatomy ids the classifier's outputs stand for
    return class_ids, _class_index(class_ids)


def run_training(config, arm: str, device: torch.device, rows: int, warmup: int, steps: int, seed: int = 0) -> dict:
    stage, objective, cotrain = ARMS[arm]
    heads, n_views = heads_for(stage, cotrain)
    class_ids, lookup = class_lookup(config.num_classes)
    model = build_model(config, stage, cotrain, device, seed)
    model.train()
    optimizer, scheduler = make_optimizer(model, warmup + steps)
    contrastive = make_contrastive(objective)
    batches = [random_batch(rows, config.crop_size, n_views, class_ids, seed + k) for k in range(2)]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    losses = []
    for k in range(warmup):
        losses.append(train_step(model, optimizer, scheduler, contrastive, *batches[k % 2], lookup, heads, device))
    sync(device)
    started = time.perf_counter()
    for k in range(steps):
        losses.append(train_step(model, optimizer, scheduler, contrastive, *batches[k % 2], lookup, heads, device))
    sync(device)
    elapsed = time.perf_counter() - started
    result = {
        "device": str(device),
        "bf16_autocast": device.type == "cuda",
        "rows_per_step": rows,
        "images_per_step": rows * n_views,
        "heads": list(heads),
        "loss": objective if "projection" in heads else "cross_entropy",
        "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "warmup_steps": warmup,
        "timed_steps": steps,
        "first_loss": losses[0],
        "last_loss": losses[-1],
        "steps_per_s": steps / elapsed,
        "crops_per_s": rows * steps / elapsed,  # what train_loop reports as crops_per_s (rows)
        "images_per_s": rows * n_views * steps / elapsed,  # network inputs (views)
        "losses_finite": all(math.isfinite(v) for v in losses),
        "grads_finite": grads_finite(model),
        "params_finite": params_finite(model),
    }
    if device.type == "cuda":
        result["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return result


def first_step(
    config, arm: str, device: torch.device, batch, amp: bool, seed: int = 0
) -> tuple[float, list[torch.Tensor]]:
    """Loss and gradients of one step from seeded weights: bf16 autocast (``amp``; on the CPU too,
    where the training loop itself never enables it) or float32 with TF32 off."""
    stage, objective, cotrain = ARMS[arm]
    heads, _ = heads_for(stage, cotrain)
    _, lookup = class_lookup(config.num_classes)
    model = build_model(config, stage, cotrain, device, seed)
    model.train()
    optimizer, scheduler = make_optimizer(model, 1)
    contrastive = make_contrastive(objective)
    with contextlib.nullcontext() if amp else strict_float32():
        loss = train_step(model, optimizer, scheduler, contrastive, *batch, lookup, heads, device, use_amp=amp)
    return loss, grad_vector(model)


# --- two ranks: gather_with_grad across processes ---------------------------------------------


def _rank_worker(rank: int, world: int, port: int, device_kind: str, out_dir: str) -> None:
    """One rank of ``two_ranks_gloo`` (spawned: module level, picklable)."""
    import torch.distributed as dist

    from regionmir import distributed
    from regionmir.distributed import gather, gather_with_grad
    from training.train_loop import _all_reduce_sum

    if device_kind == "cuda":
        torch.cuda.set_device(0)
        device = torch.device("cuda", 0)
    else:
        device = torch.device("cpu")
    payload = torch.load(os.path.join(out_dir, "payload.pt"), weights_only=True)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world, timeout=timedelta(seconds=60)
    )
    try:
        batch = payload["z1"].shape[0] // world
        rows = slice(rank * batch, (rank + 1) * batch)
        results: dict = {"rank": distributed.rank(), "world": distributed.world_size()}
        for objective in ("simclr", "supcon"):
            z1 = payload["z1"][rows].clone().to(device).requires_grad_()
            z2 = payload["z2"][rows].clone().to(device).requires_grad_()
            labels = payload["labels"][rows].clone().to(device)
            gathered = (gather_with_grad(z1), gather_with_grad(z2), gather(labels))
            loss = make_contrastive(objective)(z1, z2, labels, gathered=gathered, rank=distributed.rank())
            loss.backward()
            results[objective] = {
                "loss": float(loss.detach()),
                "z1_grad": z1.grad.detach().cpu(),
                "z2_grad": z2.grad.detach().cpu(),
                "gathered_z1": gathered[0].detach().cpu(),
                "gathered_labels": gathered[2].cpu(),
                "device": str(gathered[0].device),
            }
        results["all_reduce_sum"] = _all_reduce_sum([float(rank), 1.0], device)
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


# --- the checks -------------------------------------------------------------------------------


def check_environment(checks: Checks, device: torch.device) -> None:
    with checks.check("environment") as r:
        r["python"] = platform.python_version()
        r["torch"] = torch.__version__
        r["numpy"] = np.__version__
        r["torch_cuda"] = torch.version.cuda
        r["cuda_available"] = torch.cuda.is_available()
        r["cpu_count"] = os.cpu_count()
        r["torch_threads"] = torch.get_num_threads()
        r["cudnn_allow_tf32_default"] = torch.backends.cudnn.allow_tf32
        r["matmul_allow_tf32_default"] = torch.backends.cuda.matmul.allow_tf32
        r["cudnn_benchmark"] = torch.backends.cudnn.benchmark
        r["nccl_available"] = torch.distributed.is_available() and torch.distributed.is_nccl_available()
        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            r["device_name"] = props.name
            r["capability"] = f"{props.major}.{props.minor}"
            r["memory_gib"] = props.total_memory / 2**30
            r["multiprocessors"] = props.multi_processor_count
            r["device_count"] = torch.cuda.device_count()
            r["bf16_supported"] = torch.cuda.is_bf16_supported()
            r["cudnn"] = torch.backends.cudnn.version()
            with contextlib.suppress(Exception):
                version = torch.cuda.nccl.version()
                r["nccl"] = ".".join(map(str, version)) if isinstance(version, tuple) else str(version)
        if device.type == "cuda":
            expect(r, "cuda_available", r["cuda_available"])
            expect(r, "bf16_supported", r.get("bf16_supported"))
            expect(r, "nccl_available", r["nccl_available"])


def import_runtime_modules(checks: Checks) -> dict:
    """Import what each GPU path imports; returns the modules (None where one failed)."""
    found: dict = {}
    with checks.check("imports") as r:
        import importlib

        for name in (
            "regionmir.encoder",
            "regionmir.inference",
            "regionmir.model_contract",
            "regionmir.contrastive_losses",
            "regionmir.distributed",
            "training.train_loop",
        ):
            try:
                found[name] = importlib.import_module(name)
            except Exception as exc:  # noqa: BLE001
                r.setdefault("errors", {})[name] = f"{type(exc).__name__}: {exc}"
                found[name] = None
            expect(r, f"import {name}", found[name] is not None)
        # serving.runtime imports the Milvus client (indexing.region_index) at module level
        try:
            found["serving.runtime"] = importlib.import_module("serving.runtime")
        except Exception as exc:  # noqa: BLE001
            r["serving_runtime_error"] = f"{type(exc).__name__}: {exc}"
            found["serving.runtime"] = None
        # indexing/__init__ imports the Milvus client too; roi_embedding itself does not need it
        try:
            found["indexing.roi_embedding"] = importlib.import_module("indexing.roi_embedding")
            r["roi_embedding_import"] = "package"
        except Exception as exc:  # noqa: BLE001 - pymilvus missing, or too old a grpcio/protobuf for it
            r["indexing_package_error"] = f"{type(exc).__name__}: {exc}"
            try:
                found["indexing.roi_embedding"] = _import_roi_embedding_alone()
                r["roi_embedding_import"] = "module alone (indexing/__init__ skipped: it imports pymilvus)"
            except Exception as exc2:  # noqa: BLE001
                r["roi_embedding_error"] = f"{type(exc2).__name__}: {exc2}"
                found["indexing.roi_embedding"] = None
        expect(r, "import indexing.roi_embedding", found["indexing.roi_embedding"] is not None)
        with contextlib.suppress(Exception):
            import pymilvus

            r["pymilvus"] = pymilvus.__version__
        r["serving_runtime_imported"] = found["serving.runtime"] is not None
        r["ray_imported"] = "ray" in sys.modules
        expect(r, "ray not imported", "ray" not in sys.modules)
    return found


def _import_roi_embedding_alone():
    """``indexing.roi_embedding`` without running ``indexing/__init__`` (which imports pymilvus)."""
    import importlib
    import types

    package = types.ModuleType("indexing")
    package.__path__ = [os.path.join(ROOT, "indexing")]
    sys.modules["indexing"] = package
    return importlib.import_module("indexing.roi_embedding")


def check_training(checks: Checks, device: torch.device, presets: list[str], sizes: dict) -> dict:
    from regionmir.encoder import load_preset

    speeds = {}
    for preset in presets:
        config = load_preset(preset)
        for arm in ARMS:
            name = f"train_{preset}_{arm}"
            with checks.check(name) as r:
                r["preset"] = preset
                r["crop_size"] = config.crop_size
                steps = sizes["train_steps"] if preset == presets[0] else max(2, sizes["train_steps"] // 2)
                result = run_training(config, arm, device, sizes["train_rows"], sizes["train_warmup"], steps)
                r.update(result)
                for key in ("losses_finite", "grads_finite", "params_finite"):
                    expect(r, key, result[key])
                speeds[(preset, arm)] = result["images_per_s"]
                if device.type == "cuda" and arm == "pretrain_supcon":
                    # informational: what cudnn.benchmark (autotuned convolutions; the project leaves it off) gives
                    saved = torch.backends.cudnn.benchmark
                    torch.backends.cudnn.benchmark = True
                    try:
                        tuned = run_training(config, arm, device, sizes["train_rows"], sizes["train_warmup"], steps)
                    finally:
                        torch.backends.cudnn.benchmark = saved
                    r["cudnn_benchmark_images_per_s"] = tuned["images_per_s"]
            if device.type == "cuda":
                torch.cuda.empty_cache()
        with checks.check(f"precision_{preset}") as r:
            r["what"] = "one step from the same weights and batch: bf16 autocast vs float32 (TF32 off), same device"
            r["device"] = str(device)
            rows = sizes["train_rows"]
            for arm in ("pretrain_supcon", "pretrain_simclr"):
                batch = random_batch(rows, config.crop_size, 2, list(range(config.num_classes)), 123)
                amp_loss, amp_grads = first_step(config, arm, device, batch, amp=True)
                fp32_loss, fp32_grads = first_step(config, arm, device, batch, amp=False)
                figures = {
                    "grads_finite": all(bool(torch.isfinite(g).all()) for g in amp_grads),
                    "bf16_loss": amp_loss,
                    "float32_loss": fp32_loss,
                    "loss_rel_diff": rel_diff(amp_loss, fp32_loss),
                    **compare_grads(amp_grads, fp32_grads),
                }
                r[arm] = figures
                expect(r, f"{arm} losses finite", math.isfinite(amp_loss) and math.isfinite(fp32_loss))
                expect(r, f"{arm} loss within 5%", figures["loss_rel_diff"] < 0.05)
                # bf16 rounds every activation and its gradient (8-bit mantissa): at initialisation the
                # weight gradients are sums of large cancelling terms, so they differ by tens of percent
                # (CPU bf16, 16 crops: cosine 0.92); this only catches a gross error (sign, scale)
                expect(r, f"{arm} gradients finite", figures["grads_finite"])
                expect(r, f"{arm} gradient cosine > 0.5", figures["grad_cosine"] > 0.5)
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return speeds


def check_training_cpu(
    checks: Checks, device: torch.device, preset: str, sizes: dict, speeds: dict, compare_cpu: bool
) -> None:
    from regionmir.encoder import load_preset

    with checks.check("train_cpu") as r:
        if not compare_cpu:
            raise SkipCheck("the CPU comparison needs --device cuda (or --compare-cpu)")
        config = load_preset(preset)
        cpu = torch.device("cpu")
        result = run_training(config, "pretrain_supcon", cpu, sizes["cpu_train_rows"], 1, sizes["cpu_train_steps"])
        r["preset"] = preset
        r["cpu_threads"] = torch.get_num_threads()
        r["cpu"] = result
        gpu_speed = speeds.get((preset, "pretrain_supcon"))
        if gpu_speed:
            r["gpu_images_per_s"] = gpu_speed
            r["gpu_over_cpu"] = gpu_speed / result["images_per_s"]
        expect(r, "cpu losses finite", result["losses_finite"] and result["grads_finite"])
        # float32 on the CPU against float32 (TF32 off) on the GPU, one small batch, same weights
        rows = sizes["compare_rows"]
        batch = random_batch(rows, config.crop_size, 2, list(range(config.num_classes)), 7)
        cpu_loss, cpu_grads = first_step(config, "pretrain_supcon", cpu, batch, amp=False)
        gpu_loss, gpu_grads = first_step(config, "pretrain_supcon", device, batch, amp=False)
        r["float32_cpu_vs_cuda"] = {
            "rows": rows,
            "cpu_loss": cpu_loss,
            "cuda_loss": gpu_loss,
            "loss_rel_diff": rel_diff(gpu_loss, cpu_loss),
            **compare_grads(gpu_grads, cpu_grads),
        }
        expect(r, "float32 loss cpu vs cuda within 1e-4", r["float32_cpu_vs_cuda"]["loss_rel_diff"] < 1e-4)
        expect(r, "float32 gradient cosine cpu vs cuda > 0.999", r["float32_cpu_vs_cuda"]["grad_cosine"] > 0.999)


def make_model_dir(directory: str, preset: str, device: torch.device) -> str:
    """A fine-tune-stage model directory (as tests/random_model_index.py writes one), with BatchNorm
    running statistics from a few train-mode passes so eval mode sees realistic scales."""
    from regionmir.anatomy import STANDARD_29_IDS
    from regionmir.encoder import RegionEncoder, load_preset
    from regionmir.model_contract import ModelContract, save_model
    from regionmir.roi_crop import CropConfig

    config = replace(load_preset(preset), num_classes=len(STANDARD_29_IDS))
    torch.manual_seed(0)
    model = RegionEncoder(config).to(device).train()
    rng = np.random.default_rng(5)
    with torch.no_grad():
        for _ in range(3):
            x = torch.from_numpy(rng.random((64, config.crop_size, config.crop_size), dtype=np.float32))[:, None]
            model(x.to(device), heads=("embedding", "logits"))
    contract = ModelContract(
        stage="finetune",
        encoder=config.to_dict(),
        class_anatomy_ids=tuple(STANDARD_29_IDS),
        crop=asdict(CropConfig(size=config.crop_size)),
        training={"gpu_check": "random init"},
    )
    save_model(directory, model.cpu(), contract)
    return directory


def embedding_diff(a, b) -> dict:
    cosine = (a.embeddings * b.embeddings).sum(axis=1)
    return {
        "embeddings_max_abs_diff": float(np.abs(a.embeddings - b.embeddings).max()),
        "probabilities_max_abs_diff": float(np.abs(a.probabilities - b.probabilities).max()),
        "min_cosine": float(cosine.min()),
        "top1_agreement": float((a.probabilities.argmax(1) == b.probabilities.argmax(1)).mean()),
    }


def crops_per_s(model, crops: np.ndarray, device: torch.device, warmup: int, reps: int) -> float:
    from regionmir.inference import embed_crops

    for _ in range(warmup):
        embed_crops(model, crops, device=device)
    sync(device)
    started = time.perf_counter()
    for _ in range(reps):
        embed_crops(model, crops, device=device)  # returns numpy: includes the copies back
    sync(device)
    return crops.shape[0] * reps / (time.perf_counter() - started)


def check_inference(
    checks: Checks, device: torch.device, modules: dict, preset: str, sizes: dict, scratch: str, compare_cpu: bool
):
    from regionmir.inference import embed_crops
    from regionmir.model_contract import load_model

    state: dict = {}
    with checks.check("inference_model_dir") as r:
        model_dir = make_model_dir(os.path.join(scratch, "model"), preset, device)
        cpu_model, contract = load_model(model_dir)
        cpu_model.eval()
        r.update({"preset": preset, "version_id": contract.version_id, "classes": len(contract.class_anatomy_ids)})
        state.update(model_dir=model_dir, cpu_model=cpu_model, contract=contract)
    if "model_dir" not in state:
        return
    size = state["contract"].crop_config.size
    rng = np.random.default_rng(11)
    crops = rng.random((max(sizes["infer_batches"]), size, size), dtype=np.float32)
    batch = crops[: sizes["infer_batches"][0]]

    with checks.check("inference_region_embedder") as r:
        module = modules.get("indexing.roi_embedding")
        if module is None:
            raise RuntimeError("indexing.roi_embedding could not be imported (see imports)")
        saved_threads = torch.get_num_threads()
        try:
            embedder = module.RegionEmbedder(state["model_dir"])  # the index job's actor (threads=1)
        finally:
            torch.set_num_threads(saved_threads)
        r["device"] = str(embedder.device)
        expect(r, "picked the run's device", embedder.device.type == device.type)
        out = embedder({"crop": batch.copy(), "anatomy_id": np.zeros(len(batch), np.int32)})
        vectors = out["vector"]
        norms = np.linalg.norm(vectors, axis=1)
        r["rows"] = int(vectors.shape[0])
        r["vector_dim"] = int(vectors.shape[1])
        r["norm_max_abs_error"] = float(np.abs(norms - 1).max())
        expect(r, "vectors finite", np.isfinite(vectors).all())
        expect(r, "vectors L2-normalised", r["norm_max_abs_error"] < 1e-4)
        expect(r, "predictions in the model's classes", set(out["predicted_anatomy_id"]) <= set(embedder.class_ids))
        expect(r, "confidence in [0, 1]", ((out["confidence"] >= 0) & (out["confidence"] <= 1)).all())
        state["embedder"] = embedder
        state["embedder_vectors"] = vectors

    with checks.check("inference_service_runtime") as r:
        module = modules.get("serving.runtime")
        if module is None:
            raise SkipCheck(
                "serving.runtime could not be imported (it imports the Milvus client, indexing.region_index, at "
                "module level); see imports.serving_runtime_error"
            )
        auto = module.EncoderRuntime(state["model_dir"])  # as serving.deployments builds a replica
        r["auto_device"] = str(auto.device)
        expect(r, "auto device is the run's device", auto.device.type == device.type)
        runtime = module.EncoderRuntime(state["model_dir"], device=str(device))
        r["info"] = runtime.info()
        served = runtime.forward(batch)
        if "embedder_vectors" in state:
            diff = float(np.abs(served["embeddings"] - state["embedder_vectors"]).max())
            r["vs_region_embedder_max_abs_diff"] = diff
            expect(r, "service == index job embeddings (same device)", diff < 1e-5)
        film = crops[:29]  # one film's 29 standard regions: a query's forward
        for _ in range(3):
            runtime.forward(film)
        timings = []
        for _ in range(sizes["latency_reps"]):
            sync(device)
            started = time.perf_counter()
            runtime.forward(film)
            timings.append(time.perf_counter() - started)
        r["film_29_crops_ms_p50"] = 1000 * float(np.median(timings))
        if compare_cpu:
            cpu_runtime = module.EncoderRuntime(state["model_dir"], device="cpu")
            cpu_runtime.forward(film)
            cpu_timings = []
            for _ in range(max(3, sizes["latency_reps"] // 4)):
                started = time.perf_counter()
                cpu_runtime.forward(film)
                cpu_timings.append(time.perf_counter() - started)
            r["cpu_film_29_crops_ms_p50"] = 1000 * float(np.median(cpu_timings))
            r["cpu_threads"] = torch.get_num_threads()

    with checks.check("inference_cuda_vs_cpu") as r:
        device_model = state["embedder"].model if "embedder" in state else None
        if device_model is None:
            device_model, _ = load_model(state["model_dir"])
            device_model.eval().to(device)
        r["device"] = str(device)
        r["same_device"] = device.type == "cpu"
        reference = embed_crops(state["cpu_model"], batch, device="cpu")
        on_device = embed_crops(device_model, batch, device=device)
        r["rows"] = int(batch.shape[0])
        r["default_tf32"] = {
            "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
            **embedding_diff(on_device, reference),
        }
        with strict_float32():
            strict = embed_crops(device_model, batch, device=device)
        r["tf32_off"] = embedding_diff(strict, reference)
        expect(r, "float32 (TF32 off) embeddings within 1e-4", r["tf32_off"]["embeddings_max_abs_diff"] < 1e-4)
        expect(r, "float32 (TF32 off) probabilities within 1e-4", r["tf32_off"]["probabilities_max_abs_diff"] < 1e-4)
        expect(r, "default (as served) min cosine > 0.999", r["default_tf32"]["min_cosine"] > 0.999)

    with checks.check("inference_throughput") as r:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        device_model = state["embedder"].model if "embedder" in state else None
        if device_model is None:
            device_model, _ = load_model(state["model_dir"])
            device_model.eval().to(device)
        for rows in sizes["infer_batches"]:
            r[f"{device.type}_crops_per_s_batch{rows}"] = crops_per_s(
                device_model, crops[:rows], device, sizes["infer_warmup"], sizes["infer_reps"]
            )
        if compare_cpu:
            r["cpu_threads"] = torch.get_num_threads()
            for k, rows in enumerate(sizes["infer_batches"]):
                cpu_speed = crops_per_s(
                    state["cpu_model"], crops[:rows], torch.device("cpu"), 1 if k == 0 else 0, sizes["cpu_infer_reps"]
                )
                r[f"cpu_crops_per_s_batch{rows}"] = cpu_speed
                r[f"{device.type}_over_cpu_batch{rows}"] = r[f"{device.type}_crops_per_s_batch{rows}"] / cpu_speed
        if device.type == "cuda":
            r["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30


def check_process_group(checks: Checks, device: torch.device, preset: str, sizes: dict) -> None:
    import torch.distributed as dist

    from regionmir import distributed
    from regionmir.encoder import load_preset
    from training.train_loop import _all_reduce_sum

    backend = "nccl" if device.type == "cuda" else "gloo"
    with checks.check("process_group_world1") as r:
        r["backend"] = backend
        r["world_size"] = 1
        r["note"] = "one GPU allows world size 1 only: NCCL refuses two ranks on the same device"
        if backend == "nccl":
            # Ray Train's _setup_torch_process_group sets this for NCCL unless told otherwise
            os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")
            torch.cuda.set_device(device.index or 0)
        dist.init_process_group(
            backend, init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1, timeout=timedelta(seconds=60)
        )
        try:
            expect(r, "is_distributed", distributed.is_distributed())
            expect(r, "rank 0 of 1", distributed.rank() == 0 and distributed.world_size() == 1)
            gen = torch.Generator().manual_seed(3)
            batch, dim = 16, 32
            z1 = torch.randn(batch, dim, generator=gen).to(device)
            z2 = torch.randn(batch, dim, generator=gen).to(device)
            labels = torch.randint(0, 5, (batch,), generator=gen).to(device)
            # at world 1 the helpers are the identity (the training loop gathers only when world > 1)
            expect(r, "gather_with_grad is the identity at world 1", distributed.gather_with_grad(z1) is z1)
            expect(r, "gather is the identity at world 1", distributed.gather(labels) is labels)
            # the collectives of their world > 1 branch, on this backend
            leaf = z1.clone().requires_grad_()
            parts = distributed._AllGatherWithGrad.apply(leaf)  # all_gather forward, all_reduce backward
            joined = torch.cat(parts)
            weights = torch.randn(joined.shape, generator=gen).to(device)
            (joined * weights).sum().backward()
            r["all_gather_max_abs_diff"] = float((joined.detach() - z1).abs().max())
            r["all_gather_grad_max_abs_diff"] = float((leaf.grad - weights).abs().max())
            expect(r, "all_gather values", r["all_gather_max_abs_diff"] == 0.0)
            expect(r, "all_gather gradient (summed over 1 rank)", r["all_gather_grad_max_abs_diff"] == 0.0)
            slices = [torch.empty_like(labels)]
            dist.all_gather(slices, labels.contiguous())  # gather()'s body: int64 labels
            expect(r, "all_gather int64 labels", torch.equal(slices[0], labels))
            for objective in ("simclr", "supcon"):
                loss_fn = make_contrastive(objective)
                a1, a2 = z1.clone().requires_grad_(), z2.clone().requires_grad_()
                gathered = (
                    torch.cat(distributed._AllGatherWithGrad.apply(a1)),
                    torch.cat(distributed._AllGatherWithGrad.apply(a2)),
                    torch.cat([labels]),
                )
                loss_gathered = loss_fn(a1, a2, labels, gathered=gathered, rank=0)
                loss_gathered.backward()
                b1, b2 = z1.clone().requires_grad_(), z2.clone().requires_grad_()
                loss_plain = loss_fn(b1, b2, labels)
                loss_plain.backward()
                figures = {
                    "loss_abs_diff": float((loss_gathered - loss_plain).detach().abs()),
                    "grad_max_abs_diff": float(max((a1.grad - b1.grad).abs().max(), (a2.grad - b2.grad).abs().max())),
                }
                r[f"{objective}_gathered_vs_plain"] = figures
                expect(r, f"{objective} gathered == plain", figures["loss_abs_diff"] < 1e-5)
                expect(r, f"{objective} gradients gathered == plain", figures["grad_max_abs_diff"] < 1e-6)
            sums = _all_reduce_sum([1.5, 2.0, 3.0], device)  # the epoch metrics' all-reduce (float64)
            r["all_reduce_sum"] = sums
            expect(r, "all_reduce_sum float64", sums == [1.5, 2.0, 3.0])
            # DDP as ray.train.torch.prepare_model wraps a model when the world is larger than one
            config = load_preset(preset)
            rows = sizes["ddp_rows"]
            batch_data = random_batch(rows, config.crop_size, 2, list(range(config.num_classes)), 21)
            _, lookup = class_lookup(config.num_classes)
            heads, _ = heads_for("pretrain", False)
            grads = {}
            losses = {}
            for wrapped in (False, "again", True):  # the bare model twice: the run-to-run noise floor
                model = build_model(config, "pretrain", False, device, seed=5)
                model.train()
                if wrapped is True:
                    kwargs = {"device_ids": [device], "output_device": device} if device.type == "cuda" else {}
                    model = torch.nn.parallel.DistributedDataParallel(model, **kwargs)
                optimizer, scheduler = make_optimizer(model, 1)
                losses[wrapped] = train_step(
                    model, optimizer, scheduler, make_contrastive("supcon"), *batch_data, lookup, heads, device
                )
                grads[wrapped] = grad_vector(model)
            r["ddp"] = {
                "rows": rows,
                "loss_bare": losses[False],
                "loss_ddp": losses[True],
                "loss_rel_diff": rel_diff(losses[True], losses[False]),
                **compare_grads(grads[True], grads[False]),
                "bare_twice_grad_rel_l2": compare_grads(grads["again"], grads[False])["grad_rel_l2"],
            }
            expect(r, "ddp loss == bare", r["ddp"]["loss_rel_diff"] < 1e-4)
            noise = r["ddp"]["bare_twice_grad_rel_l2"]
            expect(
                r,
                "ddp gradients == bare (within the run-to-run noise)",
                r["ddp"]["grad_rel_l2"] <= max(1e-3, 3 * noise),
            )
        finally:
            dist.destroy_process_group()
        expect(r, "group destroyed", not distributed.is_distributed())


def check_two_ranks(checks: Checks, device: torch.device, scratch: str, timeout_s: float = 180) -> None:
    import torch.multiprocessing as mp

    with checks.check("two_ranks_gloo") as r:
        world, batch, dim = 2, 8, 16
        r.update({"backend": "gloo", "world_size": world, "tensors_on": device.type, "rows_per_rank": batch})
        gen = torch.Generator().manual_seed(17)
        payload = {
            "z1": torch.randn(world * batch, dim, generator=gen),
            "z2": torch.randn(world * batch, dim, generator=gen),
            "labels": torch.randint(0, 4, (world * batch,), generator=gen),
        }
        out_dir = os.path.join(scratch, "two_ranks")
        os.makedirs(out_dir, exist_ok=True)
        torch.save(payload, os.path.join(out_dir, "payload.pt"))
        context = mp.start_processes(
            _rank_worker,
            args=(world, free_port(), device.type, out_dir),
            nprocs=world,
            join=False,
            start_method="spawn",
        )
        deadline = time.monotonic() + timeout_s
        try:
            while not context.join(timeout=1):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the two ranks did not finish in {timeout_s:.0f}s")
        finally:
            for process in context.processes:
                if process.is_alive():
                    process.kill()
        results = [torch.load(os.path.join(out_dir, f"rank{k}.pt"), weights_only=True) for k in range(world)]
        r["ranks"] = [res["rank"] for res in results]
        r["all_reduce_sum"] = results[0]["all_reduce_sum"]
        expect(r, "ranks 0 and 1 of 2", r["ranks"] == [0, 1] and all(res["world"] == world for res in results))
        expect(r, "epoch all-reduce", r["all_reduce_sum"] == [1.0, 2.0])
        for objective in ("simclr", "supcon"):
            # the single-process loss of the global batch, in float64
            z1 = payload["z1"].double().requires_grad_()
            z2 = payload["z2"].double().requires_grad_()
            reference = make_contrastive(objective)(z1, z2, payload["labels"])
            reference.backward()
            ranks = [res[objective] for res in results]
            mean_loss = sum(res["loss"] for res in ranks) / world
            grad_err = 0.0
            for k, res in enumerate(ranks):
                rows = slice(k * batch, (k + 1) * batch)
                # each rank's gradient of its own slice = world x the global batch loss's gradient
                grad_err = max(
                    grad_err,
                    float((res["z1_grad"].double() - world * z1.grad[rows]).abs().max()),
                    float((res["z2_grad"].double() - world * z2.grad[rows]).abs().max()),
                )
            gathered_err = max(float((res["gathered_z1"] - payload["z1"]).abs().max()) for res in ranks)
            labels_ok = all(torch.equal(res["gathered_labels"], payload["labels"]) for res in ranks)
            figures = {
                "devices": sorted({res["device"] for res in ranks}),
                "mean_rank_loss": mean_loss,
                "global_loss": float(reference),
                "loss_abs_diff": abs(mean_loss - float(reference)),
                "grad_max_abs_diff": grad_err,
                "gathered_max_abs_diff": gathered_err,
            }
            r[objective] = figures
            expect(
                r, f"{objective} tensors on {device.type}", all(d.startswith(device.type) for d in figures["devices"])
            )
            expect(r, f"{objective} gathered values", gathered_err == 0.0 and labels_ok)
            expect(r, f"{objective} mean of rank losses == global loss", figures["loss_abs_diff"] < 1e-5)
            expect(r, f"{objective} rank gradients == world x global", grad_err < 1e-5)


SIZES = {
    "full": {
        "train_rows": 256,
        "train_warmup": 3,
        "train_steps": 10,
        "cpu_train_rows": 64,
        "cpu_train_steps": 2,
        "compare_rows": 32,
        "ddp_rows": 64,
        "infer_batches": [256, 1024],
        "infer_warmup": 2,
        "infer_reps": 10,
        "cpu_infer_reps": 2,
        "latency_reps": 20,
    },
    "quick": {
        "train_rows": 8,
        "train_warmup": 1,
        "train_steps": 2,
        "cpu_train_rows": 8,
        "cpu_train_steps": 1,
        "compare_rows": 8,
        "ddp_rows": 8,
        "infer_batches": [32, 64],
        "infer_warmup": 1,
        "infer_reps": 2,
        "cpu_infer_reps": 1,
        "latency_reps": 4,
    },
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--quick", action="store_true", help="small sizes (a CPU smoke run)")
    parser.add_argument("--out", help="also write gpu_check.json (and the partial file) into this folder")
    parser.add_argument(
        "--presets", help="training presets, comma-separated (default resnet18,resnet50; --quick resnet10-cpu)"
    )
    parser.add_argument("--infer-preset", help="the model directory's preset (default resnet18; --quick resnet10-cpu)")
    parser.add_argument(
        "--compare-cpu",
        action="store_true",
        help="run the CPU comparisons also with --device cpu (CPU against CPU: tests this script's code)",
    )
    parser.add_argument(
        "--only",
        help="comma-separated groups: environment,training,inference,process_group,two_ranks (default all)",
    )
    args = parser.parse_args(argv)
    sizes = SIZES["quick" if args.quick else "full"]
    presets = (args.presets or ("resnet10-cpu" if args.quick else "resnet18,resnet50")).split(",")
    infer_preset = args.infer_preset or ("resnet10-cpu" if args.quick else "resnet18")
    groups = set((args.only or "environment,training,inference,process_group,two_ranks").split(","))
    device = torch.device("cuda", 0) if args.device == "cuda" else torch.device("cpu")
    compare_cpu = args.device == "cuda" or args.compare_cpu

    header = {
        "benchmark": "gpu_check",
        "device": args.device,
        "quick": args.quick,
        "presets": presets,
        "infer_preset": infer_preset,
        "sizes": sizes,
        "torch_compile": False,
        "downloads": "none (weights=None)",
        "ray": "not used: the functions Ray calls, called directly",
    }
    checks = Checks(args.out, header)
    say(f"device {args.device}, presets {presets}, inference preset {infer_preset}, quick={args.quick}")
    check_environment(checks, device)
    if args.device == "cuda" and not torch.cuda.is_available():
        say("CUDA is not available: the remaining checks would fail; stopping")
    else:
        modules = import_runtime_modules(checks)
        with tempfile.TemporaryDirectory(prefix="regionmir-gpu-check-") as scratch:
            if "training" in groups:
                speeds = check_training(checks, device, presets, sizes)
                check_training_cpu(checks, device, presets[0], sizes, speeds, compare_cpu)
            if "inference" in groups:
                check_inference(checks, device, modules, infer_preset, sizes, scratch, compare_cpu)
            if "process_group" in groups:
                check_process_group(checks, device, presets[0], sizes)
            if "two_ranks" in groups:
                check_two_ranks(checks, device, scratch)
    summary = checks.summary()
    summary["checks"].setdefault("imports", {})["ray_imported_at_end"] = "ray" in sys.modules
    checks.write("gpu_check.json")
    print(json.dumps(summary, default=str), flush=True)
    say(f"done: ok={summary['ok']} failed={summary['failed']} skipped={summary['skipped']}")
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
