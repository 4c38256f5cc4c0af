"""Training ingest benchmark: is Ray Data → Ray Train as fast as the model itself?

Three ways to feed the same model (the CPU preset, anatomy cross-entropy, AdamW) the same batches of
ROI crops, measured side by side in one run:

* ``floor``: crops already in memory as tensors — the model step alone, the best any input
  pipeline can do;
* ``dataloader``: a plain ``torch.utils.data.DataLoader`` (one worker process) over the same
  Parquet crop-cache files, cutting model inputs from the context crops;
* ``ray``: Ray Data reading those files and cutting model inputs in its own tasks, streamed into a
  one-worker Ray Train ``TorchTrainer`` (``iter_torch_batches``) — what ``regionmir finetune`` uses.

Every path trains with the same number of torch threads (``--threads``, default 1 so that the
input pipeline has the other core of a 2-core laptop) and times ``--steps`` steps after
``--warmup`` steps. The last line printed is one JSON object::

    {"ray_crops_per_s", "floor_crops_per_s", "dataloader_crops_per_s",
     "ratio_to_floor", "ratio_to_dataloader", ...}

Run: ``.venv/bin/python benchmarks/train_ingest.py`` (synthesises 120 phantom films in a temporary
folder) or ``--data DATA`` for any data set the library reads.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F

from regionmir.anatomy import STANDARD_29_IDS
from regionmir.dataset import films_by_split
from regionmir.encoder import RegionEncoder, load_preset
from regionmir.roi_crop import CropConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from cluster.ray_runtime import start_ray  # noqa: E402
from training.roi_pipeline import RoiPipelineConfig, cached_roi_datasets, crop_from_context  # noqa: E402

PRESET = "resnet10-cpu"


def model_inputs(batch: dict, crop: CropConfig, lookup: np.ndarray) -> dict[str, np.ndarray]:
    """Context rows → model inputs: float32 crops (B, 1, S, S) and class indices (B,)."""
    crops = np.stack([crop_from_context(c, b, crop) for c, b in zip(batch["context"], batch["box"])])
    return {"x": crops[:, None].astype(np.float32), "y": lookup[np.asarray(batch["anatomy_id"])].astype(np.int64)}


class Stepper:
    """The model and one optimiser step, identical for every path."""

    def __init__(self, threads: int, seed: int = 0):
        torch.set_num_threads(threads)
        torch.manual_seed(seed)
        config = load_preset(PRESET)
        self.model = RegionEncoder(config).train()
        for name, parameter in self.model.named_parameters():
            if name.startswith("projection_head."):
                parameter.requires_grad_(False)
        self.optimizer = torch.optim.AdamW([p for p in self.model.parameters() if p.requires_grad], lr=1e-3)

    def step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        loss = F.cross_entropy(self.model(x, heads=("logits",))["logits"], y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()


def timed(batches, stepper: Stepper, warmup: int, steps: int) -> float:
    """Crops per second over ``steps`` steps after ``warmup`` steps (waiting for data included)."""
    iterator = iter(batches)
    for _ in range(warmup):
        x, y = next(iterator)
        stepper.step(x, y)
    started, crops = time.perf_counter(), 0
    for _ in range(steps):
        x, y = next(iterator)
        stepper.step(x, y)
        crops += int(x.shape[0])
    return crops / (time.perf_counter() - started)


def class_lookup() -> np.ndarray:
    lookup = np.full(64, -1, dtype=np.int64)
    lookup[list(STANDARD_29_IDS)] = np.arange(len(STANDARD_29_IDS))
    return lookup


def floor_rate(files: list[str], crop: CropConfig, args) -> float:
    import pyarrow.parquet as pq

    table = pq.read_table(files).to_pydict()
    batch = {
        "context": [np.asarray(c, dtype=np.uint8).reshape(crop.size * 2, crop.size * 2) for c in table["context"]],
        "box": [np.asarray(b, dtype=np.float32) for b in table["box"]],
        "anatomy_id": table["anatomy_id"],
    }
    inputs = model_inputs(batch, crop, class_lookup())
    x, y = torch.from_numpy(inputs["x"]), torch.from_numpy(inputs["y"])
    n, bs = len(y), args.batch_size

    def forever():
        while True:
            for start in range(0, n - bs + 1, bs):
                yield x[start : start + bs], y[start : start + bs]

    return timed(forever(), Stepper(args.threads), args.warmup, args.steps)


class ParquetCrops(torch.utils.data.IterableDataset):
    """Batches of model inputs read from crop-cache Parquet files, forever (for the DataLoader)."""

    def __init__(self, files: list[str], crop: CropConfig, batch_size: int):
        self.files, self.crop, self.batch_size = files, crop, batch_size

    def __iter__(self):
        import pyarrow.parquet as pq

        torch.set_num_threads(1)
        lookup, side = class_lookup(), self.crop.size * 2
        while True:
            for path in self.files:
                for record_batch in pq.ParquetFile(path).iter_batches(batch_size=self.batch_size):
                    rows = record_batch.to_pydict()
                    if len(rows["anatomy_id"]) < self.batch_size:
                        continue
                    batch = {
                        "context": [np.asarray(c, dtype=np.uint8).reshape(side, side) for c in rows["context"]],
                        "box": [np.asarray(b, dtype=np.float32) for b in rows["box"]],
                        "anatomy_id": rows["anatomy_id"],
                    }
                    inputs = model_inputs(batch, self.crop, lookup)
                    yield torch.from_numpy(inputs["x"]), torch.from_numpy(inputs["y"])


def dataloader_rate(files: list[str], crop: CropConfig, args) -> float:
    loader = torch.utils.data.DataLoader(
        ParquetCrops(files, crop, args.batch_size),
        batch_size=None,
        num_workers=1,
        prefetch_factor=4,
        persistent_workers=False,
    )
    return timed(loader, Stepper(args.threads), args.warmup, args.steps)


def _ray_loop(config: dict) -> None:
    import ray.train

    shard = ray.train.get_dataset_shard("train")
    stepper = Stepper(config["threads"])

    def batches():
        while True:  # epochs until the timed steps are done
            for batch in shard.iter_torch_batches(batch_size=config["batch_size"], drop_last=True, prefetch_batches=4):
                yield batch["x"], batch["y"]

    rate = timed(batches(), stepper, config["warmup"], config["steps"])
    # Ray Train V2 hands back (Result.metrics) only metrics reported with a checkpoint.
    with tempfile.TemporaryDirectory() as folder:
        with open(os.path.join(folder, "rate.json"), "w") as f:
            json.dump({"crops_per_s": rate}, f)
        ray.train.report({"crops_per_s": rate}, checkpoint=ray.train.Checkpoint.from_directory(folder))


def ray_rate(dataset, crop: CropConfig, args, storage: str) -> float:
    from dataclasses import asdict

    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    lookup = class_lookup()
    prepared = dataset.map_batches(
        model_inputs,
        fn_args=(crop, lookup),
        batch_size=args.batch_size,
        batch_format="numpy",
        compute=ray.data.TaskPoolStrategy(size=1),
    )
    trainer = TorchTrainer(
        _ray_loop,
        train_loop_config={
            "crop": asdict(crop),
            "threads": args.threads,
            "batch_size": args.batch_size,
            "warmup": args.warmup,
            "steps": args.steps,
        },
        scaling_config=ScalingConfig(num_workers=1, resources_per_worker={"CPU": 1}),
        run_config=RunConfig(name="ingest", storage_path=storage),
        datasets={"train": prepared},
    )
    result = trainer.fit()
    if result.error:
        raise result.error
    if not result.metrics:
        raise RuntimeError(f"the Ray Train run reported no rate (result: {result})")
    return float(result.metrics["crops_per_s"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="data set (default: phantom films synthesised in a temporary folder)")
    parser.add_argument("--films", type=int, default=120, help="phantom films to synthesise without --data")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the training step (every path)")
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="regionmir-ingest-")
    data = args.data
    if not data:
        from regionmir.synth.dataset_writer import write_phantom_dataset

        data = os.path.join(work, "data")
        print(f"[bench] synthesising {args.films} phantom films into {data}", flush=True)
        write_phantom_dataset(data, images=args.films, size=256, seed=0, progress=False)
    crop = CropConfig(size=load_preset(PRESET).crop_size)
    pipeline = RoiPipelineConfig(crop=crop, anatomy_ids=tuple(STANDARD_29_IDS))
    start_ray()
    records, _ = films_by_split(data, None, ("train",))
    cached = cached_roi_datasets(records, pipeline, os.path.join(work, "crop-cache"), None)
    files = sorted(glob.glob(os.path.join(work, "crop-cache", "train-*", "*.parquet")))
    rows = cached["info"]["train"]["rows"]
    print(
        f"[bench] {rows} training crops in {len(files)} Parquet file(s); batch {args.batch_size}, "
        f"{args.steps} timed steps after {args.warmup}, {args.threads} torch thread(s)",
        flush=True,
    )
    results = {}
    results["floor_crops_per_s"] = floor_rate(files, crop, args)
    print(f"[bench] floor (in-memory tensors): {results['floor_crops_per_s']:.1f} crops/s", flush=True)
    results["dataloader_crops_per_s"] = dataloader_rate(files, crop, args)
    print(f"[bench] torch DataLoader: {results['dataloader_crops_per_s']:.1f} crops/s", flush=True)

    # The same source the trainers read: the crop cache as opened by training.roi_pipeline (small
    # splits are read once into the object store, large ones stream from Parquet).
    results["ray_crops_per_s"] = ray_rate(cached["datasets"]["train"], crop, args, os.path.join(work, "ray"))
    print(f"[bench] Ray Data -> Ray Train: {results['ray_crops_per_s']:.1f} crops/s", flush=True)
    results = {k: round(v, 1) for k, v in results.items()}
    results["ratio_to_floor"] = round(results["ray_crops_per_s"] / results["floor_crops_per_s"], 3)
    results["ratio_to_dataloader"] = round(results["ray_crops_per_s"] / results["dataloader_crops_per_s"], 3)
    results.update(
        {
            "preset": PRESET,
            "batch_size": args.batch_size,
            "steps": args.steps,
            "threads": args.threads,
            "train_crops": rows,
            "cpu_count": os.cpu_count(),
        }
    )
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
