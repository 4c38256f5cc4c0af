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
the shards instead of decoding films again. The cropping actors write the shards themselves
(:class:`CacheShardWriter`) and send this process only a few numbers per batch; the split's
``_COMPLETE.json`` is written only when every expected crop is accounted for (written, or skipped
with its film counted): crops cut + regions skipped = regions labelled.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import uuid
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from regionmir import storage
from regionmir.bad_films import BadFilms
from regionmir.boxes import Box
from regionmir.crop_cache_layout import CACHE_FORMAT, COMPLETE_MARKER, SHARD_GLOB, shard_name, split_folder
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


def _film_dataset(records: list[ImageRecord]):
    """The films as a Ray Dataset of :func:`regionmir.film_rows.film_rows` rows (labels, no pixels)."""
    import ray

    return ray.data.from_items(film_rows(records), override_num_blocks=max(1, min(len(records), 64)))


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

    return _film_dataset(records).map_batches(
        ContextCropper,
        fn_constructor_args=(config, asdict(s3) if s3 else None, account_skips, "data"),
        batch_size=4,
        compute=ray.data.ActorPoolStrategy(size=concurrency),
        num_cpus=1,
    )


#: The columns of :class:`CacheShardWriter`'s accounting rows, the only rows of the cache build
#: that reach the driver: one per split per batch of films.
ACCOUNTING_COLUMNS = ("split", "shard", "rows", "regions_skipped", "films_skipped")


class CacheShardWriter(ContextCropper):
    """Ray Data actor of the crop cache's build: crops a batch of films like :class:`ContextCropper`
    (``account_skips``) and writes each split's crops of the batch as one Parquet shard straight
    into that split's folder (``roots``: split → folder, local or ``s3://``), named
    :func:`~regionmir.crop_cache_layout.shard_name` with this actor's random id and a counter, so no
    two attempts ever write the same file.

    It returns only accounting rows (:data:`ACCOUNTING_COLUMNS`), one per split of the batch:
    ``shard`` (its file name, ``""`` when the batch cut none of that split's regions), ``rows`` (crops
    in it), ``regions_skipped`` (summed from the placeholder rows) and ``films_skipped`` (JSON list of
    the image ids of the films not fully cut). A shard is reported only once it is fully written.
    """

    def __init__(
        self, config: RoiPipelineConfig, roots: dict[str, str], s3: dict | None = None, console: str | None = None
    ):
        super().__init__(config, s3, account_skips=True, console=console)
        self.targets = {split: pyarrow_filesystem(root, self.s3) for split, root in roots.items()}
        self.writer = uuid.uuid4().hex[:12]
        self.shards_written = 0

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import pyarrow.compute as pc
        import pyarrow.parquet as pq
        from ray.data.block import BlockAccessor

        # the same Arrow table (tensor columns) as Ray Data makes of a cropper's output
        table = BlockAccessor.batch_to_block(super().__call__(batch))
        accounting: dict[str, list] = {name: [] for name in ACCOUNTING_COLUMNS}
        for split in sorted(set(table["split"].to_pylist())):
            part = table.filter(pc.equal(table["split"], split))
            placeholders = part.filter(pc.less(part["anatomy_id"], 0))
            crops = part.filter(pc.greater_equal(part["anatomy_id"], 0)).drop_columns(["skipped"])
            shard = ""
            if crops.num_rows:
                fs, folder = self.targets[split]
                shard = shard_name(self.writer, self.shards_written)
                self.shards_written += 1
                pq.write_table(crops, f"{folder}/{shard}", filesystem=fs)
            accounting["split"].append(split)
            accounting["shard"].append(shard)
            accounting["rows"].append(crops.num_rows)
            accounting["regions_skipped"].append(int(pc.sum(placeholders["skipped"]).as_py() or 0))
            accounting["films_skipped"].append(json.dumps(sorted(set(placeholders["image_id"].to_pylist()))))
        return {
            "split": np.asarray(accounting["split"], dtype=object),
            "shard": np.asarray(accounting["shard"], dtype=object),
            "rows": np.asarray(accounting["rows"], dtype=np.int64),
            "regions_skipped": np.asarray(accounting["regions_skipped"], dtype=np.int64),
            "films_skipped": np.asarray(accounting["films_skipped"], dtype=object),
        }


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
    cropping pipeline (one pool of actors, each film decoded once; on a small machine each Ray
    actor is a fresh process that imports torch, so starting them once instead of once per split
    is much of a demo-sized build). The crops never come back to this process: the actors write
    them as Parquet shards into the split folders themselves (:class:`CacheShardWriter`) and hand
    back a few numbers per batch, so the driver's network and memory stay out of the build's way
    however many actors or nodes crop (see :func:`_build_cache` for how retried tasks are counted).
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


#: Crops a cache shard holds at most, roughly (uint8 contexts: 2048 × context² bytes, 33 MB at a
#: 128-pixel context): the cache build gives each cropping batch about this many crops' films
#: (:func:`films_per_batch`).
SHARD_ROWS = 2048


def films_per_batch(records: list[ImageRecord], config: RoiPipelineConfig, concurrency: int) -> int:
    """Films per batch of the cache build (one shard per split per batch): enough films for about
    :data:`SHARD_ROWS` crops, but no more than a quarter of one actor's share of the films (so the
    actors finish together), and at least 4 (as the streaming pipeline)."""
    crops_per_film = max(1.0, expected_crop_count(records, config.anatomy_ids) / max(1, len(records)))
    return max(4, min(int(SHARD_ROWS // crops_per_film), len(records) // (4 * max(1, concurrency))))


def _build_cache(
    records: dict[str, list[ImageRecord]],
    roots: dict[str, str],
    config: RoiPipelineConfig,
    s3: S3Options | None,
    concurrency: int,
) -> dict[str, dict]:
    """Crop the films of every split in ``records`` in one streaming pass whose actors write each
    split's shards under ``roots[split]``; check the accounting and write each ``_COMPLETE.json`` last.

    Retries: Ray restarts a cropping actor that died and runs its batch again, so an attempt that
    died after writing a shard (or whose output was lost) may leave a shard nobody reported, and
    its batch's crops are written again under other names. This process therefore counts only the
    shards reported in the accounting rows it received (each batch's once), and once the pipeline
    is done it deletes every other shard file of the split's folder before writing the marker: the
    marker's ``rows`` is then exactly the rows of the shards on disk. (Writing to a temporary name
    and renaming would not be enough: a fully written shard of a lost attempt would still be a
    duplicate, and a rename is a copy on S3.)
    """
    import ray

    started = time.perf_counter()
    films = [film for split_films in records.values() for film in split_films]
    expected = {split: expected_crop_count(split_films, config.anatomy_ids) for split, split_films in records.items()}
    log.info(
        f"decoding {len(films)} films ({', '.join(f'{len(v)} {k}' for k, v in records.items())}) "
        f"into the crop cache: {sum(expected.values())} crops expected",
    )
    for root in roots.values():
        fs, path = pyarrow_filesystem(root, s3)
        fs.create_dir(path, recursive=True)
        fs.delete_dir_contents(path, missing_dir_ok=True)  # shards of an interrupted build
    rows = dict.fromkeys(roots, 0)
    skipped = dict.fromkeys(roots, 0)
    shards: dict[str, set[str]] = {split: set() for split in roots}
    films_skipped: dict[str, set[str]] = {split: set() for split in roots}
    accounting = _film_dataset(films).map_batches(
        CacheShardWriter,
        fn_constructor_args=(config, roots, asdict(s3) if s3 else None, "data"),
        batch_size=films_per_batch(films, config, concurrency),
        compute=ray.data.ActorPoolStrategy(size=concurrency),
        num_cpus=1,
    )
    last_line = time.perf_counter()
    for batch in accounting.iter_batches(batch_size=None, batch_format="pyarrow"):
        for row in batch.to_pylist():
            split = row["split"]
            rows[split] += row["rows"]
            skipped[split] += row["regions_skipped"]
            films_skipped[split].update(json.loads(row["films_skipped"]))
            if row["shard"]:
                shards[split].add(row["shard"])
        if time.perf_counter() - last_line > 10:
            done = sum(rows.values())
            log.info(
                f"crop cache: {done}/{sum(expected.values())} crops "
                f"({done / (time.perf_counter() - started):.0f} crops/s)",
            )
            last_line = time.perf_counter()
    seconds = round(time.perf_counter() - started, 1)
    info = {}
    for split, root in roots.items():
        if rows[split] + skipped[split] != expected[split]:
            raise DatasetError(
                root,
                f"crop cache not marked complete: {rows[split]} {split} crops written and "
                f"{skipped[split]} skipped, but the labels hold {expected[split]}; rows went "
                "missing between the croppers and their shards — run again to rebuild it",
            )
        _remove_unreported_shards(root, shards[split], s3)
        info[split] = {
            "format": CACHE_FORMAT,
            "split": split,
            "films": len(records[split]),
            "rows": rows[split],
            "expected_rows": expected[split],
            "regions_skipped": skipped[split],
            "films_with_skipped_regions": len(films_skipped[split]),
            "shards": len(shards[split]),
            "settings": config.fingerprint(),
            "seconds": seconds,
        }
        storage.write_text(storage.join(root, COMPLETE_MARKER), json.dumps(info[split], indent=1), s3)
        log.info(
            f"crop cache written: {rows[split]} {split} crops from {len(records[split])} films "
            f"in {root}"
            + (f" ({skipped[split]} regions of {len(films_skipped[split])} films skipped)" if skipped[split] else ""),
        )
    log.info(f"crop cache built in {seconds} s ({sum(rows.values()) / max(seconds, 0.1):.0f} crops/s)")
    return info


def _remove_unreported_shards(root: str, reported: set[str], s3: S3Options | None) -> list[str]:
    """Delete the shard files of ``root`` that no accounting row reported (written by an attempt
    that died or whose output was lost, so its batch was cropped again); returns their names. A
    reported shard that is missing raises :class:`DatasetError`: its rows would be counted but absent."""
    import fnmatch

    import pyarrow.fs as pafs

    fs, path = pyarrow_filesystem(root, s3)
    present = {
        entry.base_name
        for entry in fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
        if entry.type == pafs.FileType.File and fnmatch.fnmatch(entry.base_name, SHARD_GLOB)
    }
    if reported - present:
        raise DatasetError(
            root,
            f"crop cache not marked complete: {len(reported - present)} shard(s) reported written are "
            "missing — the cropping actors write the shards themselves, so on a cluster of several "
            "nodes the cache must be on storage every node reaches (s3://, or a shared filesystem); "
            "else run again to rebuild it",
        )
    strays = sorted(present - reported)
    for name in strays:
        fs.delete_file(f"{path}/{name}")
    if strays:
        log.info(f"crop cache: {len(strays)} shard(s) of retried attempts removed from {root}")
    return strays


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
