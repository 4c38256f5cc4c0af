"""Ray Data batch inference: every ROI of a data set → its retrieval embedding.

Two stages, both streaming:

1. :class:`RegionCropper` (CPU tasks): decode each film once, clamp its boxes, and cut every
   region of the model's vocabulary at the model's crop size (the same :func:`roi_crop` the
   training pipeline and the service use; the films → rows path of :mod:`regionmir.film_rows`,
   which the training pipeline shares);
2. :class:`RegionEmbedder` (an actor pool, one GPU per actor when ``gpu``): load the model once
   per actor and write L2-normalised embeddings (``eval()`` mode: BatchNorm running statistics).

Rows carry what the index stores — anatomy, image id and URI, the box in the film's pixels, view,
split, salted patient/study hashes — never raw identifiers. An unreadable film is logged by image
id and becomes one placeholder row (``anatomy_id`` -1, ``skip_reason`` set) that the consumer
counts and drops (:meth:`regionmir.bad_films.BadFilms.filter`: the one bad-film policy), stopping
the job when there are too many, or at once on a storage error.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import asdict
from typing import Any

import numpy as np

from regionmir.errors import DatasetError
from regionmir.film_rows import FILM_COLUMN, FilmCropper, film_rows
from regionmir.region_record import ImageRecord, RegionRecord
from regionmir.roi_crop import CropConfig, roi_crop
from regionmir.storage import S3Options

log = logging.getLogger("regionmir.indexing")

#: The film's values (:data:`regionmir.film_rows.FILM_FIELDS`) every row of it carries, in column order.
_FILM_COLUMNS = ("image_id", "image_uri", "view", "split", "patient_hash", "study_hash", "box_source")


class RegionCropper(FilmCropper):
    """Ray Data callable class: films → one row per region with its model-size crop.

    Cuts every region of its rows (:func:`~regionmir.film_rows.film_rows` kept the model's own).
    A film that cannot be read (storage errors too) becomes one placeholder row (``anatomy_id``
    -1, ``skip_reason``) that tells the driver which film was skipped and why; the driver counts
    them (:meth:`~regionmir.bad_films.BadFilms.filter`) and stops the job when there are too many.
    (An error raised here would reach the driver only as Ray's text.) Regions that clamping drops
    leave no row.
    """

    def __init__(self, crop: dict, s3: dict | None = None, console: str | None = None):
        super().__init__(s3, log=log, console=console)
        self.crop = CropConfig(**crop)

    def region_row(self, out: dict[str, list], film: dict[str, Any], pixels: np.ndarray, region: RegionRecord) -> None:
        out["crop"].append(roi_crop(pixels, region.box, self.crop))
        out["skip_reason"].append("")
        out["anatomy_id"].append(region.anatomy_id)
        out["box"].append(np.asarray(region.box.as_list(), dtype=np.float32))
        for name in _FILM_COLUMNS:
            out[name].append(film[name])

    def skipped_row(self, out: dict[str, list], film: dict[str, Any], missing: int, reason: str | None) -> None:
        if reason is None:
            return  # regions dropped by clamping: the film itself was read
        out["crop"].append(np.zeros((self.crop.size, self.crop.size), np.float32))
        out["skip_reason"].append(reason)
        out["anatomy_id"].append(-1)
        out["box"].append(np.asarray([0, 0, 1, 1], dtype=np.float32))
        for name in _FILM_COLUMNS:
            out[name].append(film[name])

    def columns(self, out: dict[str, list]) -> dict[str, Any]:
        size = self.crop.size
        return {
            "crop": np.stack(out["crop"]) if out["crop"] else np.zeros((0, size, size), np.float32),
            "box": np.stack(out["box"]) if out["box"] else np.zeros((0, 4), np.float32),
            "anatomy_id": np.asarray(out["anatomy_id"], dtype=np.int32),
            **{name: np.asarray(out[name], dtype=object) for name in (*_FILM_COLUMNS, "skip_reason")},
        }


class RegionEmbedder:
    """Ray Data actor: the encoder, loaded once; crops → L2-normalised embeddings (+ the classifier's
    anatomy and confidence). The crops stay in the rows (4 KB each at 32 px) for pictures, unless
    ``keep_crops`` is False (the index job: it stores no pixels, and every column kept is
    serialised by this actor and read back by the driver)."""

    def __init__(self, model_dir: str, s3: dict | None = None, threads: int = 1, keep_crops: bool = True):
        import torch

        from regionmir.model_contract import load_model

        torch.set_num_threads(threads)
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model, self.contract = load_model(model_dir, S3Options(**s3) if s3 else None)
        self.model.eval().to(self.device)
        self.class_ids = np.asarray(self.contract.class_anatomy_ids, dtype=np.int32)
        self.keep_crops = keep_crops

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        from regionmir.inference import embed_crops

        predicted = embed_crops(self.model, batch["crop"], device=self.device)
        index = predicted.probabilities.argmax(axis=1)
        batch["vector"] = predicted.embeddings
        batch["predicted_anatomy_id"] = self.class_ids[index]
        batch["confidence"] = predicted.probabilities[np.arange(index.size), index].astype(np.float32)
        if not self.keep_crops:
            del batch["crop"]
        return batch


class RegionLocaliser:
    """Ray Data actor before the cropper: films that came without boxes (``box_source``
    ``localiser``, e.g. from a PACS) get one box per region of the model's vocabulary, found by
    the atlas and the classifier (:func:`regionmir.film_localisation.localise_film`); labelled
    films pass through untouched. A film it cannot read is marked ``unreadable`` with the reason,
    for the cropper to count as skipped (:meth:`regionmir.film_rows.FilmCropper.__call__`)."""

    def __init__(self, model_dir: str, s3: dict | None = None, threads: int = 1, console: str | None = None):
        import torch

        from regionmir.anatomy_atlas import AnatomyAtlas
        from regionmir.model_contract import load_model

        if console:
            from regionmir.console import configure_logging

            configure_logging(console)
        torch.set_num_threads(threads)
        self.s3 = S3Options(**s3) if s3 else None
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model, self.contract = load_model(model_dir, self.s3)
        self.model.eval().to(self.device)
        self.atlas = AnatomyAtlas.load(model_dir, self.s3)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        import json

        from regionmir.errors import RegionMIRError
        from regionmir.film_localisation import localise_film
        from regionmir.image_reader import read_image

        films = []
        for text in batch[FILM_COLUMN]:
            film = json.loads(str(text))
            if film.get("box_source") == "localiser" and not film["regions"]:
                try:
                    pixels = read_image(film["image_uri"], s3=self.s3).pixels
                except RegionMIRError as exc:
                    log.warning("skipping film %s: %s", film["image_id"], exc.reason)
                    film["unreadable"] = exc.reason
                else:
                    found = localise_film(
                        pixels,
                        self.atlas,
                        self.model,
                        self.contract.class_anatomy_ids,
                        self.contract.crop_config,
                        device=self.device,
                    )
                    film["regions"] = [[place.anatomy_id, *place.box.as_list()] for place in found]
            films.append(json.dumps(film))
        return {FILM_COLUMN: np.asarray(films, dtype=object)}


#: Films per cropper task of :func:`embedding_dataset` (a chest film has ~30 regions: ~450 rows a task).
FILMS_PER_CROP_TASK = 16

#: Cropper tasks at least (fewer films a task) for a small job, so its crops still reach the
#: encoder, and its rows Milvus, in a stream rather than in one block at the end.
MIN_CROP_TASKS = 8


def embedding_dataset(
    records: list[ImageRecord],
    model_dir: str,
    crop: CropConfig,
    anatomy_ids: Iterable[int],
    s3: S3Options | None,
    *,
    gpu: bool = False,
    encoders: int = 1,
    batch_size: int = 256,
    keep_crops: bool = True,
    localise_unlabelled: bool = False,
):
    """A streaming Ray Dataset of ROI rows with ``vector`` (and the classifier's prediction);
    ``keep_crops=False`` leaves the ``crop`` column out of them. ``localise_unlabelled``: films
    without labelled regions get theirs from :class:`RegionLocaliser` (the model directory holds
    its ``atlas.json``) instead of being left out."""
    import ray

    films = film_rows(records, anatomy_ids, localise_unlabelled=localise_unlabelled)
    if not films:
        raise DatasetError("data", "no films with regions of the model's vocabulary in this split")
    s3_dict = asdict(s3) if s3 else None
    # one cropper call (and task) per block of FILMS_PER_CROP_TASK films, MIN_CROP_TASKS blocks at
    # least: tasks of a few films each spend more on Ray's per-task round trips (scheduled from the
    # driver, which may also be upserting) than on cropping; batch_size=None keeps a block whole
    # (a batch size would merge smaller blocks)
    tasks = min(len(films), max(-(-len(films) // FILMS_PER_CROP_TASK), MIN_CROP_TASKS))
    dataset = ray.data.from_items(films, override_num_blocks=tasks)
    if localise_unlabelled and any(not record.regions for record in records):
        # the localiser and the encoders share the GPUs (half each): N GPUs hold N of both
        dataset = dataset.map_batches(
            RegionLocaliser,
            fn_constructor_kwargs={"model_dir": model_dir, "s3": s3_dict, "console": "index"},
            batch_size=None,
            compute=ray.data.ActorPoolStrategy(size=encoders),
            num_gpus=0.5 if gpu else 0,
            num_cpus=0 if gpu else 1,
        )
        encoder_gpus = 0.5
    else:
        encoder_gpus = 1
    crops = dataset.map_batches(
        RegionCropper,
        fn_constructor_kwargs={"crop": asdict(crop), "s3": s3_dict, "console": "index"},
        batch_size=None,
        compute=ray.data.ActorPoolStrategy(size=1),
        num_cpus=1,
    )
    return crops.map_batches(
        RegionEmbedder,
        fn_constructor_kwargs={"model_dir": model_dir, "s3": s3_dict, "keep_crops": keep_crops},
        batch_size=batch_size,
        compute=ray.data.ActorPoolStrategy(size=encoders),
        num_gpus=encoder_gpus if gpu else 0,
        num_cpus=0 if gpu else 1,
    )


#: Query sets up to this many films are embedded in the calling process by default: starting Ray
#: and its actors (each a fresh process importing torch) costs more than the work itself.
IN_PROCESS_MAX_FILMS = 32


def embedded_batches(
    records: list[ImageRecord],
    model_dir: str,
    crop: CropConfig,
    anatomy_ids: Iterable[int],
    s3: S3Options | None,
    *,
    mode: str = "auto",
    batch_size: int = 256,
    films_per_batch: int = 8,
):
    """Numpy batches of embedded ROI rows (as :func:`embedding_dataset` streams them).

    ``mode``: ``"ray"`` (Ray Data, the caller has started Ray), ``"local"`` (the same cropper and
    embedder called in this process, every core for torch) or ``"auto"`` (local up to
    :data:`IN_PROCESS_MAX_FILMS` films)."""
    if mode not in ("auto", "ray", "local"):
        raise ValueError(f"embedding mode must be auto, ray or local, got {mode!r}")
    if mode == "ray" or (mode == "auto" and len(records) > IN_PROCESS_MAX_FILMS):
        yield from embedding_dataset(records, model_dir, crop, anatomy_ids, s3, batch_size=batch_size).iter_batches(
            batch_size=batch_size, batch_format="numpy"
        )
        return
    import os

    films = film_rows(records, anatomy_ids)
    if not films:
        raise DatasetError("data", "no films with regions of the model's vocabulary in this split")
    s3_dict = asdict(s3) if s3 else None
    cropper = RegionCropper(asdict(crop), s3_dict)
    embedder = RegionEmbedder(model_dir, s3_dict, threads=os.cpu_count() or 1)
    for start in range(0, len(films), films_per_batch):
        chunk = np.asarray([f[FILM_COLUMN] for f in films[start : start + films_per_batch]], dtype=object)
        batch = cropper({FILM_COLUMN: chunk})
        if len(batch["anatomy_id"]):
            yield embedder(batch)
