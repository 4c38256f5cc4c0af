"""Ray Data: films in object storage → one row per ROI, streamed or cached as Parquet.

Each film is read and decoded once, in parallel Ray Data actors (set-up — S3 client, torch
threads — happens once per actor), and every region of the requested vocabulary is cut as a
**context crop**: the square crop window of :func:`regionmir.roi_crop.square_crop_box` grown by
``context_scale`` and stored at ``context_scale × crop.size`` pixels as uint8, with the region's box
in context pixels. The training loop then cuts the model input (or an augmented view: box jitter,
rotation) from the context, so augmentation still sees real neighbouring anatomy while the full
film is never decoded twice.

Row schema: ``context`` (uint8, C×C), ``box`` (float32[4], context pixels), ``anatomy_id`` (int32),
``image_id`` (str, never the path: MIMIC paths hold patient ids), ``split``. The films → rows path
(:mod:`regionmir.film_rows`) and the policy for films that cannot be read
(:mod:`regionmir.bad_films`) are those of the index job: logged by image id, counted, and skipped;
when more than ``max_bad_fraction`` of the films an actor has seen are unreadable it stops the job
with a clear error. A storage error (after :func:`regionmir.storage.read_bytes`' retries) stops the
job: an unreachable film is not a bad one.

The optional **crop cache** writes these rows as Parquet shards per split under
``{cache_root}/{split}-{key}/`` (the layout: :mod:`regionmir.crop_cache_layout`); ``key`` hashes
that split's labels and the crop settings, so a later run with the same data and settings reads
the shards instead of decoding films again. The split's ``_COMPLETE.json`` is written only when
every expected crop is accounted for (written, or skipped with its film counted): crops cut +
regions skipped = regions labelled.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from regionmir import storage
from regionmir.bad_films import BadFilms
from regionmir.boxes import Box
from regionmir.crop_cache_layout import CACHE_FORMAT, COMPLETE_MARKER, shard_name, split_folder
from regionmir.errors import DatasetError
from regionmir.film_rows import FilmCropper, film_rows
from regionmir.region_record import ImageRecord, RegionRecord
from regionmir.roi_crop import CropConfig, roi_crop, square_crop_box
from regionmir.storage import S3Options

from .object_store import pyarrow_filesystem

log = logging.getLogger("regionmir.training")


@dataclass(frozen=True)
class RoiPipelineConfig:
    crop: CropConfig
    anatomy_ids: tuple[int, ...]  # the regions to cut (the model's classes)
    context_scale: float = 2.0
    max_bad_fraction: float = 0.05
    min_images_before_stopping: int = 20

    @property
    def context_size(self) -> int:
        return int(round(self.crop.size * self.context_scale))

    def fingerprint(self) -> dict[str, Any]:
        return {
            "crop": asdict(self.crop),
            "anatomy_ids": list(self.anatomy_ids),
            "context_scale": self.context_scale,
            "format": CACHE_FORMAT,
        }


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
    local = np.array(
        [
            (box.x1 - window.x1) * scale,
            (box.y1 - window.y1) * scale,
            (box.x2 - window.x1) * scale,
            (box.y2 - window.y1) * scale,
        ],
        dtype=np.float32,
    )
    return np.round(context * 255.0).astype(np.uint8), local


def crop_from_context(context: np.ndarray, box: np.ndarray, crop: CropConfig) -> np.ndarray:
    """The model input (float32 ``crop.size``², intensity convention) from a context row."""
    return roi_crop(context.astype(np.float32) / 255.0, Box(*[float(v) for v in box]), crop)


class ContextCropper(FilmCropper):
    """Ray Data actor: decode each film once and cut every region's context crop.

    With ``account_skips`` (the crop cache's build) every film whose labelled regions were not all
    cut — unreadable, or boxes dropped by clamping — also yields one **placeholder row**
    (``anatomy_id`` -1, ``skipped`` = how many of its regions are missing) so the consumer can
    prove that nothing went missing on the way; without it the rows are the crops alone. Films
    that cannot be read follow :class:`regionmir.bad_films.BadFilms` here, in each actor (the
    trainers consume the rows; no driver sees them all).
    """

    def __init__(
        self, config: RoiPipelineConfig, s3: dict | None = None, account_skips: bool = False, console: str | None = None
    ):
        import torch

        torch.set_num_threads(1)  # many actors share few cores; one thread each is fastest
        bad_films = BadFilms("data", None, config.max_bad_fraction, min_films=config.min_images_before_stopping)
        super().__init__(
            s3, anatomy_ids=config.anatomy_ids, bad_films=bad_films, log=log, log_clamping=True, console=console
        )
        self.config = config
        self.account_skips = account_skips

    def region_row(self, out: dict[str, list], film: dict[str, Any], pixels: np.ndarray, region: RegionRecord) -> None:
        context, local = cut_context(pixels, region.box, self.config)
        out["context"].append(context)
        out["box"].append(local)
        out["anatomy_id"].append(region.anatomy_id)
        out["image_id"].append(film["image_id"])
        out["split"].append(film["split"])
        out["skipped"].append(0)

    def skipped_row(self, out: dict[str, list], film: dict[str, Any], missing: int, reason: str | None) -> None:
        if self.account_skips:
            out["context"].append(np.zeros((self.config.context_size,) * 2, np.uint8))
            out["box"].append(np.zeros(4, np.float32))
            out["anatomy_id"].append(-1)
            out["image_id"].append(film["image_id"])
            out["split"].append(film["split"])
            out["skipped"].append(missing)

    def columns(self, out: dict[str, list]) -> dict[str, Any]:
        size = self.config.context_size
        columns = {
            "context": np.stack(out["context"]) if out["context"] else np.zeros((0, size, size), np.uint8),
            "box": np.stack(out["box"]) if out["box"] else np.zeros((0, 4), np.float32),
            "anatomy_id": np.asarray(out["anatomy_id"], dtype=np.int32),
            "image_id": np.asarray(out["image_id"], dtype=object),
            "split": np.asarray(out["split"], dtype=object),
        }
        if self.account_skips:
            columns["skipped"] = np.asarray(out["skipped"], dtype=np.int32)
        return columns


def cache_key(records: list[ImageRecord], config: RoiPipelineConfig) -> str:
    """Hash of one split's labels (films, boxes) and the crop settings."""
    digest = hashlib.sha256(json.dumps(config.fingerprint(), sort_keys=True).encode())
    for r in records:
        digest.update(f"{r.split}|{r.image_id}|{r.image_uri}|".encode())
        for region in r.regions:
            digest.update(f"{region.anatomy_id}:{region.box.as_list()};".encode())
    return digest.hexdigest()[:20]


def roi_dataset(
    records: list[ImageRecord],
    config: RoiPipelineConfig,
    s3: S3Options | None,
    concurrency: int = 2,
    account_skips: bool = False,
):
    """A streaming Ray Dataset of ROI rows for these films (decoded as it is consumed); with
    ``account_skips``, plus :class:`ContextCropper`'s placeholder rows of films not fully cut."""
    import ray

    films = ray.data.from_items(film_rows(records), override_num_blocks=max(1, min(len(records), 64)))
    return films.map_batches(
        ContextCropper,
        fn_constructor_args=(config, asdict(s3) if s3 else None, account_skips, "data"),
        batch_size=4,
        compute=ray.data.ActorPoolStrategy(size=concurrency),
        num_cpus=1,
    )


def cached_roi_datasets(
    records: dict[str, list[ImageRecord]],
    config: RoiPipelineConfig,
    cache_root: str,
    s3: S3Options | None,
    concurrency: int = 2,
) -> dict[str, Any]:
    """Per-split Ray Datasets read from the Parquet crop cache, building the missing splits first
    when no complete cache of exactly these films and settings exists.

    Each split lives in ``{cache_root}/{split}-{key}/``; its ``_COMPLETE.json`` is written last,
    so an interrupted build is simply rebuilt. Every missing split is built in ONE pass of the
    cropping pipeline (one pool of actors, each film decoded once) whose rows stream back to this
    process and are written as Parquet shards here: on a small machine each Ray actor or write task
    is a fresh process that imports torch, and starting them once instead of once per split (plus
    a write task per block) is most of a demo-sized build.
    """
    datasets, info, missing = {}, {}, {}
    for split, films in records.items():
        if not films:
            continue
        root = split_folder(cache_root, split, cache_key(films, config))
        marker = storage.join(root, COMPLETE_MARKER)
        if storage.exists(marker, s3):
            info[split] = json.loads(storage.read_text(marker, s3))
            log.info(f"crop cache hit: {root} ({info[split]['rows']} {split} crops)")
        else:
            missing[split] = root
    if missing:
        info.update(_build_cache({s: records[s] for s in missing}, missing, config, s3, concurrency))
    for split, split_info in info.items():
        root = missing.get(split) or split_folder(cache_root, split, cache_key(records[split], config))
        fs, path = pyarrow_filesystem(root, s3)
        if split_info["rows"]:
            datasets[split] = _open_cached_split(path, fs, split_info)
    return {"datasets": datasets, "info": info}


#: Rows per Parquet shard of the crop cache (~2 MB at the default 128-pixel context).
SHARD_ROWS = 2048


def _build_cache(
    records: dict[str, list[ImageRecord]],
    roots: dict[str, str],
    config: RoiPipelineConfig,
    s3: S3Options | None,
    concurrency: int,
) -> dict[str, dict]:
    """Crop the films of every split in ``records`` in one streaming pass; write each split's shards
    under ``roots[split]`` and its ``_COMPLETE.json`` last."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    started = time.perf_counter()
    films = [film for split_films in records.values() for film in split_films]
    expected = {split: expected_crop_count(split_films, config.anatomy_ids) for split, split_films in records.items()}
    log.info(
        f"decoding {len(films)} films ({', '.join(f'{len(v)} {k}' for k, v in records.items())}) "
        f"into the crop cache: {sum(expected.values())} crops expected",
    )
    targets = {}
    for split, root in roots.items():
        fs, path = pyarrow_filesystem(root, s3)
        fs.create_dir(path, recursive=True)
        fs.delete_dir_contents(path, missing_dir_ok=True)  # shards of an interrupted build
        targets[split] = (fs, path)
    pending: dict[str, list] = {split: [] for split in roots}
    buffered = dict.fromkeys(roots, 0)
    rows = dict.fromkeys(roots, 0)
    shards = dict.fromkeys(roots, 0)
    skipped = dict.fromkeys(roots, 0)
    films_skipped: dict[str, set] = {split: set() for split in roots}

    def flush(split: str) -> None:
        if not pending[split]:
            return
        fs, path = targets[split]
        table = pa.concat_tables(pending[split])
        pq.write_table(table, f"{path}/{shard_name(shards[split])}", filesystem=fs)
        shards[split] += 1
        rows[split] += table.num_rows
        pending[split], buffered[split] = [], 0

    last_line = time.perf_counter()
    for batch in roi_dataset(films, config, s3, concurrency, account_skips=True).iter_batches(
        batch_size=None, batch_format="pyarrow"
    ):
        for split in roots:
            part = batch.filter(pc.equal(batch["split"], split))
            placeholders = part.filter(pc.less(part["anatomy_id"], 0))
            if placeholders.num_rows:
                skipped[split] += int(pc.sum(placeholders["skipped"]).as_py())
                films_skipped[split].update(placeholders["image_id"].to_pylist())
                part = part.filter(pc.greater_equal(part["anatomy_id"], 0))
            part = part.drop_columns(["skipped"])
            if part.num_rows:
                pending[split].append(part)
                buffered[split] += part.num_rows
                if buffered[split] >= SHARD_ROWS:
                    flush(split)
        if time.perf_counter() - last_line > 10:
            done = sum(rows.values()) + sum(buffered.values())
            log.info(
                f"crop cache: {done}/{sum(expected.values())} crops "
                f"({done / (time.perf_counter() - started):.0f} crops/s)",
            )
            last_line = time.perf_counter()
    seconds = round(time.perf_counter() - started, 1)
    info = {}
    for split in roots:
        flush(split)
    for split, root in roots.items():
        if rows[split] + skipped[split] != expected[split]:
            raise DatasetError(
                root,
                f"crop cache not marked complete: {rows[split]} {split} crops written and "
                f"{skipped[split]} skipped, but the labels hold {expected[split]}; rows went "
                "missing between the croppers and this process — run again to rebuild it",
            )
        info[split] = {
            "format": CACHE_FORMAT,
            "split": split,
            "films": len(records[split]),
            "rows": rows[split],
            "expected_rows": expected[split],
            "regions_skipped": skipped[split],
            "films_with_skipped_regions": len(films_skipped[split]),
            "shards": shards[split],
            "settings": config.fingerprint(),
            "seconds": seconds,
        }
        storage.write_text(storage.join(root, COMPLETE_MARKER), json.dumps(info[split], indent=1), s3)
        log.info(
            f"crop cache written: {rows[split]} {split} crops from {len(records[split])} films "
            f"in {root}"
            + (f" ({skipped[split]} regions of {len(films_skipped[split])} films skipped)" if skipped[split] else ""),
        )
    log.info(f"crop cache built in {seconds} s")
    return info


#: Cached splits smaller than this are loaded on the driver into the object store in one piece.
IN_MEMORY_LIMIT_BYTES = 1 << 30


def _open_cached_split(path: str, fs, split_info: dict):
    """A small split is read once on the driver (``from_arrow``): no listing or read tasks, so
    the trainers' streaming split starts at once, which matters on a laptop where every Ray task
    may need a fresh worker process. Large splits stream from Parquet (``read_parquet``)."""
    import pyarrow.parquet as pq
    import ray

    size = (
        int(split_info["rows"])
        * int(split_info["settings"]["crop"]["size"] * split_info["settings"]["context_scale"]) ** 2
    )
    if size > IN_MEMORY_LIMIT_BYTES:
        import pyarrow.dataset as pads

        found = pads.dataset(path, filesystem=fs, format="parquet").count_rows()  # shard footers only
        _check_cached_rows(path, found, split_info)
        return ray.data.read_parquet(path, filesystem=fs)
    table = pq.read_table(path, filesystem=fs)
    _check_cached_rows(path, table.num_rows, split_info)
    return ray.data.from_arrow(table)


def _check_cached_rows(path: str, found: int, split_info: dict) -> None:
    """A cache whose shards no longer hold what its marker promises (a shard deleted or cut short
    since) is refused, naming the folder to delete, instead of training on part of the data."""
    if found != int(split_info["rows"]):
        raise DatasetError(
            path,
            f"crop cache damaged: its shards hold {found} rows but {COMPLETE_MARKER} says "
            f"{split_info['rows']}; delete this folder and run again to rebuild it",
        )


def expected_crop_count(records: list[ImageRecord], anatomy_ids: Iterable[int]) -> int:
    wanted = set(anatomy_ids)
    return sum(1 for r in records for region in r.regions if region.anatomy_id in wanted)
