"""Ray Data: films in object storage → one row per ROI, streamed or cached as Parquet.

Each film is read and decoded once, in parallel Ray Data actors (set-up — S3 client, torch
threads — happens once per actor), and every region of the requested vocabulary is cut as a
**context crop**: the square crop window of :func:`regionmir.roi_crop.square_crop_box` grown by
``context_scale`` and stored at ``context_scale × crop.size`` pixels as uint8, with the region's box
in context pixels. The training loop then cuts the model input (or an augmented view: box jitter,
rotation) from the context, so augmentation still sees real neighbouring anatomy while the full
film is never decoded twice.

Row schema: ``context`` (uint8, C×C), ``box`` (float32[4], context pixels), ``anatomy_id`` (int32),
``image_id`` (str, never the path: MIMIC paths hold patient ids), ``split``. Films that cannot be
read are logged by image id, counted, and skipped; when more than ``max_bad_fraction`` of the
films an actor has seen are unreadable it stops the job with a clear error.

The optional **crop cache** writes these rows as Parquet shards per split under
``{cache_root}/{split}-{key}/``; ``key`` hashes that split's labels and the crop settings, so a
later run with the same data and settings reads the shards instead of decoding films again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass
from typing import Any, Iterable

import numpy as np

from regionmir import storage
from regionmir.boxes import Box
from regionmir.dataset import open_dataset
from regionmir.errors import DatasetError, RegionMIRError
from regionmir.region_record import ImageRecord, RegionRecord, clamp_to_image
from regionmir.roi_crop import CropConfig, roi_crop, square_crop_box
from regionmir.scan_report import ScanReport
from regionmir.storage import S3Options

from .object_store import pyarrow_filesystem

log = logging.getLogger("regionmir.training")

CACHE_FORMAT = "regionmir-crop-cache-1"
COMPLETE_MARKER = "_COMPLETE.json"


@dataclass(frozen=True)
class RoiPipelineConfig:
    crop: CropConfig
    anatomy_ids: tuple[int, ...]          # the regions to cut (the model's classes)
    context_scale: float = 2.0
    max_bad_fraction: float = 0.05
    min_images_before_stopping: int = 20

    @property
    def context_size(self) -> int:
        return int(round(self.crop.size * self.context_scale))

    def fingerprint(self) -> dict[str, Any]:
        return {"crop": asdict(self.crop), "anatomy_ids": list(self.anatomy_ids),
                "context_scale": self.context_scale, "format": CACHE_FORMAT}


def context_window(box: Box, crop: CropConfig, context_scale: float) -> Box:
    """The square context window around ``box`` (the crop window grown by ``context_scale``)."""
    window = square_crop_box(box, crop.margin)
    cx, cy = window.center
    half = window.width * context_scale / 2.0
    return Box(cx - half, cy - half, cx + half, cy + half)


def cut_context(image: np.ndarray, box: Box, config: RoiPipelineConfig) -> tuple[np.ndarray, np.ndarray]:
    """``(context uint8 C×C, box in context pixels)`` for one region of a film."""
    window = context_window(box, config.crop, config.context_scale)
    size = config.context_size
    context = roi_crop(image, window, CropConfig(size=size, margin=0.0, pad_value=config.crop.pad_value))
    scale = size / window.width
    local = np.array([(box.x1 - window.x1) * scale, (box.y1 - window.y1) * scale,
                      (box.x2 - window.x1) * scale, (box.y2 - window.y1) * scale], dtype=np.float32)
    return np.round(context * 255.0).astype(np.uint8), local


def crop_from_context(context: np.ndarray, box: np.ndarray, crop: CropConfig) -> np.ndarray:
    """The model input (float32 ``crop.size``², intensity convention) from a context row."""
    return roi_crop(context.astype(np.float32) / 255.0, Box(*[float(v) for v in box]), crop)


def image_rows(records: Iterable[ImageRecord]) -> list[dict[str, str]]:
    """Films as small JSON rows for ``ray.data.from_items`` (labels only, no pixels)."""
    rows = []
    for record in records:
        rows.append({"record": json.dumps({
            "image_uri": record.image_uri, "image_id": record.image_id, "split": record.split,
            "regions": [[r.anatomy_id, *r.box.as_list()] for r in record.regions]})})
    return rows


class ContextCropper:
    """Ray Data actor: decode each film once and cut every region's context crop."""

    def __init__(self, config: RoiPipelineConfig, s3: dict | None = None):
        import torch

        torch.set_num_threads(1)  # many actors share few cores; one thread each is fastest
        self.config = config
        self.s3 = S3Options(**s3) if s3 else None
        self.wanted = set(config.anatomy_ids)
        self.seen = 0
        self.bad = 0

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        from regionmir.image_reader import read_image

        out: dict[str, list] = {"context": [], "box": [], "anatomy_id": [], "image_id": [], "split": []}
        for text in batch["record"]:
            row = json.loads(str(text))
            self.seen += 1
            try:
                decoded = read_image(row["image_uri"], s3=self.s3)
            except RegionMIRError as exc:
                self.bad += 1
                log.warning("skipping film %s: %s (%s)", row["image_id"], exc.reason, exc.message)
                self._check_fraction()
                continue
            height, width = decoded.pixels.shape
            report = ScanReport(source=row["image_id"])
            record = ImageRecord(image_uri=row["image_uri"], image_id=row["image_id"], split=row["split"],
                                 regions=tuple(RegionRecord(row["image_uri"], row["image_id"], int(a),
                                                            Box(x1, y1, x2, y2), row["split"])
                                               for a, x1, y1, x2, y2 in row["regions"]))
            record = clamp_to_image(record, width, height, report)
            if report.total_issues:
                log.info("film %s: %s", row["image_id"], dict(report.as_dict().get("issues", {})))
            for region in record.regions:
                if region.anatomy_id not in self.wanted:
                    continue
                context, local = cut_context(decoded.pixels, region.box, self.config)
                out["context"].append(context)
                out["box"].append(local)
                out["anatomy_id"].append(region.anatomy_id)
                out["image_id"].append(row["image_id"])
                out["split"].append(row["split"])
        size = self.config.context_size
        return {
            "context": np.stack(out["context"]) if out["context"] else np.zeros((0, size, size), np.uint8),
            "box": np.stack(out["box"]) if out["box"] else np.zeros((0, 4), np.float32),
            "anatomy_id": np.asarray(out["anatomy_id"], dtype=np.int32),
            "image_id": np.asarray(out["image_id"], dtype=object),
            "split": np.asarray(out["split"], dtype=object),
        }

    def _check_fraction(self) -> None:
        if self.seen >= self.config.min_images_before_stopping and \
                self.bad / self.seen > self.config.max_bad_fraction:
            raise DatasetError("data", f"{self.bad} of {self.seen} films were unreadable "
                                       f"(over the allowed {self.config.max_bad_fraction:.0%}); "
                                       "see the 'skipping film' log lines for which and why")


def list_images(data: str, s3: S3Options | None, splits: Iterable[str]) -> tuple[dict[str, list[ImageRecord]], ScanReport]:
    """Read the labels on the driver (cheap: no pixels) and group films by split."""
    reader = open_dataset(data, s3=s3)
    by_split: dict[str, list[ImageRecord]] = {s: [] for s in splits}
    for record in reader.iter_images():
        if record.split in by_split:
            by_split[record.split].append(record)
    return by_split, reader.report


def cache_key(records: list[ImageRecord], config: RoiPipelineConfig) -> str:
    """Hash of one split's labels (films, boxes) and the crop settings."""
    digest = hashlib.sha256(json.dumps(config.fingerprint(), sort_keys=True).encode())
    for r in records:
        digest.update(f"{r.split}|{r.image_id}|{r.image_uri}|".encode())
        for region in r.regions:
            digest.update(f"{region.anatomy_id}:{region.box.as_list()};".encode())
    return digest.hexdigest()[:20]


def roi_dataset(records: list[ImageRecord], config: RoiPipelineConfig, s3: S3Options | None,
                concurrency: int = 2):
    """A streaming Ray Dataset of ROI rows for these films (decoded as it is consumed)."""
    import ray

    films = ray.data.from_items(image_rows(records), override_num_blocks=max(1, min(len(records), 64)))
    return films.map_batches(ContextCropper, fn_constructor_args=(config, asdict(s3) if s3 else None),
                             batch_size=4, compute=ray.data.ActorPoolStrategy(size=concurrency), num_cpus=1)


def cached_roi_datasets(records: dict[str, list[ImageRecord]], config: RoiPipelineConfig,
                        cache_root: str, s3: S3Options | None, concurrency: int = 2) -> dict[str, Any]:
    """Per-split Ray Datasets read from the Parquet crop cache, building a split's shards first
    when no complete cache of exactly these films and settings exists.

    Each split lives in ``{cache_root}/{split}-{key}/``; its ``_COMPLETE.json`` is written last,
    so an interrupted build is simply rebuilt.
    """
    import ray

    datasets, info = {}, {}
    for split, films in records.items():
        if not films:
            continue
        root = storage.join(cache_root, f"{split}-{cache_key(films, config)}")
        marker = storage.join(root, COMPLETE_MARKER)
        fs, path = pyarrow_filesystem(root, s3)
        if storage.exists(marker, s3):
            split_info = json.loads(storage.read_text(marker, s3))
            print(f"[data] crop cache hit: {root} ({split_info['rows']} {split} crops)", flush=True)
        else:
            started = time.perf_counter()
            print(f"[data] decoding {len(films)} {split} films into the crop cache {root}", flush=True)
            roi_dataset(films, config, s3, concurrency).write_parquet(path, filesystem=fs)
            rows = ray.data.read_parquet(path, filesystem=fs).count()
            split_info = {"format": CACHE_FORMAT, "split": split, "films": len(films), "rows": rows,
                          "expected_rows": expected_crop_count(films, config.anatomy_ids),
                          "settings": config.fingerprint(), "seconds": round(time.perf_counter() - started, 1)}
            storage.write_text(marker, json.dumps(split_info, indent=1), s3)
            print(f"[data] crop cache written: {rows} {split} crops from {len(films)} films "
                  f"in {split_info['seconds']} s", flush=True)
        info[split] = split_info
        datasets[split] = _open_cached_split(path, fs, split_info) if split_info["rows"] else None
    return {"datasets": {k: v for k, v in datasets.items() if v is not None}, "info": info}


#: Cached splits smaller than this are loaded on the driver into the object store in one piece.
IN_MEMORY_LIMIT_BYTES = 1 << 30


def _open_cached_split(path: str, fs, split_info: dict):
    """A small split is read once on the driver (``from_arrow``): no listing or read tasks, so
    the trainers' streaming split starts at once, which matters on a laptop where every Ray task
    may need a fresh worker process. Large splits stream from Parquet (``read_parquet``)."""
    import pyarrow.parquet as pq
    import ray

    size = int(split_info["rows"]) * int(split_info["settings"]["crop"]["size"] *
                                         split_info["settings"]["context_scale"]) ** 2
    if size > IN_MEMORY_LIMIT_BYTES:
        return ray.data.read_parquet(path, filesystem=fs)
    table = pq.read_table(path, filesystem=fs)
    return ray.data.from_arrow(table)


def expected_crop_count(records: list[ImageRecord], anatomy_ids: Iterable[int]) -> int:
    wanted = set(anatomy_ids)
    return sum(1 for r in records for region in r.regions if region.anatomy_id in wanted)
