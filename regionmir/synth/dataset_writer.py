"""Write phantom films as a Chest ImaGenome-layout data set (local folder or ``s3://``).

Layout (what :mod:`regionmir.chest_imagenome` reads back)::

    OUT/silver_dataset/scene_graph/{dicom_id}_SceneGraph.json   36 objects, both coordinate systems
    OUT/silver_dataset/splits/{train,valid,test}.csv              subject_id,study_id,dicom_id,path
    OUT/silver_dataset/splits/images_to_avoid.csv                  empty (header only)
    OUT/images/files/pNN/pNNNNNNNN/sNNNNNNNN/{dicom_id}.png|.dcm
    OUT/synth_info.json                                             generator version, preset, seed, sizes
    OUT/labels_by_sop_instance_uid.csv                              --format dicom: the boxes keyed by SOP
                                                                    Instance UID (a PACS ingest's --labels)

Scene-graph boxes: ``original_*`` are pixels of the written image (``original_width`` /
``original_height`` are the box's, as in Chest ImaGenome); ``x1..y2`` are the same box on the
image rescaled to 224 × 224. Findings and devices drawn on a film are recorded as ``attributes`` of
the regions they change; device boxes are in the scene graph's ``phantom`` section. Identical
``seed`` and ``preset`` → identical bytes, whatever ``workers``: ids come from the seed, films are
rendered independently and written in index order, DICOMs carry no dates.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import math
import os
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import numpy as np
from PIL import Image

from .. import storage
from ..anatomy import ANATOMY_NAMES
from ..console import progress as track
from ..intensity import to_uint8
from .phantom_devices import DEVICE_ATTRIBUTE, DEVICE_REGIONS
from .phantom_film import PhantomFilm, render_film
from .phantom_params import PRESETS, PhantomParams, sample_params

log = logging.getLogger(__name__)

#: Generator 2 draws both presets (``classic`` reproduces generator 1's films).
GENERATOR_VERSION = "regionmir-phantom-2"
DEFAULT_PRESET = "realistic"
# slot = index mod 10 → 70/10/20; interleaved so that even a handful of films fills every split
SPLIT_OF_SLOT = ("train", "test", "train", "valid", "train", "train", "test", "train", "train", "train")
#: Scene-graph size of the rescaled image (Chest ImaGenome's x1..y2).
SCENE_GRAPH_SIZE = 224

_FINDING_REGIONS: dict[str, Callable[[str, str], list[str]]] = {
    "consolidation": lambda side, zone: [f"{side} {zone} lung zone", f"{side} lung"],
    "pleural effusion": lambda side, zone: [
        f"{side} costophrenic angle",
        f"{side} lower lung zone",
        f"{side} hemidiaphragm",
        f"{side} lung",
    ],
    "cardiomegaly": lambda side, zone: ["cardiac silhouette", "left cardiac silhouette", "right cardiac silhouette"],
    "pneumothorax": lambda side, zone: [f"{side} apical zone", f"{side} upper lung zone", f"{side} lung"],
    "atelectasis": lambda side, zone: (
        [f"{side} {zone} lung zone", f"{side} lung"] + ([f"{side} hemidiaphragm"] if zone == "lower" else [])
    ),
    "nodule": lambda side, zone: [f"{side} {zone} lung zone", f"{side} lung"],
}
_FINDING_ATTRIBUTE = {
    "consolidation": ["anatomicalfinding|yes|consolidation", "anatomicalfinding|yes|lung opacity"],
    "pleural effusion": ["anatomicalfinding|yes|pleural effusion"],
    "cardiomegaly": ["anatomicalfinding|yes|enlarged cardiac silhouette"],
    "pneumothorax": ["anatomicalfinding|yes|pneumothorax"],
    "atelectasis": ["anatomicalfinding|yes|atelectasis", "anatomicalfinding|yes|lung opacity"],
    "nodule": ["anatomicalfinding|yes|lung lesion", "anatomicalfinding|yes|mass/nodule (not otherwise specified)"],
}


@dataclass(frozen=True)
class PhantomIdentity:
    subject_id: str
    study_id: str
    dicom_id: str
    split: str

    def relative_path(self, extension: str) -> str:
        return f"files/p{self.subject_id[:2]}/p{self.subject_id}/s{self.study_id}/{self.dicom_id}.{extension}"


def phantom_identity(seed: int, index: int) -> PhantomIdentity:
    digest = hashlib.sha256(f"regionmir-phantom:{seed}:{index}".encode()).hexdigest()
    dicom_id = "-".join(digest[i : i + 8] for i in range(0, 40, 8))
    subject = str(10_000_000 + int(digest[40:48], 16) % 9_000_000)
    study = str(50_000_000 + int(digest[48:56], 16) % 9_000_000)
    return PhantomIdentity(subject, study, dicom_id, SPLIT_OF_SLOT[index % 10])


def phantom_params(seed: int, index: int, preset: str = DEFAULT_PRESET) -> PhantomParams:
    return sample_params(np.random.default_rng(np.random.SeedSequence([int(seed), int(index)])), preset)


def scene_graph(film: PhantomFilm, ident: PhantomIdentity, size: int) -> dict:
    scale = SCENE_GRAPH_SIZE / float(size)
    objects = []
    for name in ANATOMY_NAMES:
        box = film.boxes.get(name)
        if box is None:
            continue
        ox1, oy1, ox2, oy2 = (
            int(math.floor(box.x1)),
            int(math.floor(box.y1)),
            int(math.ceil(box.x2)),
            int(math.ceil(box.y2)),
        )
        x1, y1 = int(round(box.x1 * scale)), int(round(box.y1 * scale))
        x2, y2 = int(round(box.x2 * scale)), int(round(box.y2 * scale))
        objects.append(
            {
                "object_id": f"{ident.dicom_id}_{name}",
                "x1": x1,
                "y1": y1,
                "x2": x2,
                "y2": y2,
                "width": x2 - x1,
                "height": y2 - y1,
                "bbox_name": name,
                "synsets": [],
                "name": name[:1].upper() + name[1:],
                "original_x1": ox1,
                "original_y1": oy1,
                "original_x2": ox2,
                "original_y2": oy2,
                "original_width": ox2 - ox1,
                "original_height": oy2 - oy1,
            }
        )
    findings_by_region: dict[str, list[str]] = {}
    for finding in film.params.findings:
        for region in _FINDING_REGIONS[finding.name](finding.side, finding.zone):
            findings_by_region.setdefault(region, []).extend(_FINDING_ATTRIBUTE[finding.name])
    for device in film.params.devices:
        for region in DEVICE_REGIONS[device]:
            findings_by_region.setdefault(region, []).append(DEVICE_ATTRIBUTE[device])
    attributes = []
    for name in ANATOMY_NAMES:
        found = findings_by_region.get(name)
        values = (found + ["nlp|yes|abnormal"]) if found else ["nlp|yes|normal"]
        phrases = [f"{', '.join(a.split('|')[2] for a in found)} in the {name}."] if found else []
        attributes.append(
            {
                "name": name[:1].upper() + name[1:],
                "bbox_name": name,
                "synsets": [],
                "object_id": f"{ident.dicom_id}_{name}",
                "attributes": [values],
                "phrases": phrases,
            }
        )
    return {
        "image_id": ident.dicom_id,
        "patient_id": int(ident.subject_id),
        "study_id": int(ident.study_id),
        "viewpoint": film.params.view,
        "gender": film.params.sex,
        "objects": objects,
        "attributes": attributes,
        "relationships": [],
        "phantom": {
            "generator": GENERATOR_VERSION,
            "size": size,
            "params": film.params.as_dict(),
            "devices": [
                {"name": name, "x1": b.x1, "y1": b.y1, "x2": b.x2, "y2": b.y2}
                for name, b in sorted(film.device_boxes.items())
            ],
        },
    }


#: The boxes of DICOM phantoms keyed by SOP Instance UID: a region manifest (:mod:`regionmir.manifest`)
#: whose ``image_id`` is the UID, what ``regionmir index --data dicomweb+… --labels`` matches instances by.
SOP_LABELS_FILE = "labels_by_sop_instance_uid.csv"
SOP_LABELS_HEADER = "image,image_id,bbox_name,x1,y1,x2,y2,split,view\n"


def sop_label_rows(graph: dict, relative_path: str, seed: int, index: int, split: str) -> list[str]:
    """The manifest rows (:data:`SOP_LABELS_HEADER`) of one DICOM phantom's regions."""
    from .phantom_dicom import phantom_uid

    uid = phantom_uid(seed, index, "sop")
    image = f"images/{relative_path}"
    return [
        f"{image},{uid},{obj['bbox_name']},{obj['original_x1']},{obj['original_y1']},"
        f"{obj['original_x2']},{obj['original_y2']},{split},{graph['viewpoint']}"
        for obj in graph["objects"]
    ]


def png_bytes(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(to_uint8(image), mode="L").save(buffer, format="PNG", optimize=False, compress_level=6)
    return buffer.getvalue()


def render_phantom(seed: int, index: int, size: int, fmt: str, preset: str) -> tuple[bytes, dict]:
    """One film of the data set: its file bytes and its scene graph (runs in a worker process)."""
    from .phantom_dicom import dicom_bytes  # pydicom only when DICOMs are asked for

    ident = phantom_identity(seed, index)
    film = render_film(phantom_params(seed, index, preset), size)
    data = png_bytes(film.image) if fmt == "png" else dicom_bytes(film, ident, seed, index)
    return data, scene_graph(film, ident, size)


def _render_star(job: tuple) -> tuple[bytes, dict]:
    return render_phantom(*job)


def default_workers(images: int) -> int:
    """Processes worth starting: one per core, none for a handful of films (start-up costs more)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return 1 if images < 8 else max(1, min(cores, images // 4))


def write_phantom_dataset(
    out: str,
    images: int,
    size: int = 512,
    seed: int = 0,
    fmt: str = "png",
    progress: bool = True,
    s3: storage.S3Options | None = None,
    preset: str = DEFAULT_PRESET,
    workers: int | None = None,
) -> dict:
    """Render ``images`` films of ``preset`` into ``out`` with ``workers`` processes (default: one
    per core); returns a summary (counts, split sizes, seconds)."""
    if fmt not in ("png", "dicom"):
        raise ValueError(f"--format must be png or dicom, got {fmt!r}")
    if preset not in PRESETS:
        raise ValueError(f"--preset must be one of {', '.join(PRESETS)}, got {preset!r}")
    if images < 1 or size < 64:
        raise ValueError("need at least 1 image of at least 64 px")
    workers = default_workers(images) if workers is None else max(1, int(workers))

    extension = "png" if fmt == "png" else "dcm"
    splits: dict[str, list[str]] = {"train": [], "valid": [], "test": []}
    sop_labels: list[str] = []  # --format dicom: manifest rows keyed by SOP Instance UID
    start = time.perf_counter()
    findings = devices = 0
    jobs = [(seed, index, size, fmt, preset) for index in range(images)]
    with contextlib.ExitStack() as stack:
        counter = (
            stack.enter_context(track(f"synthesising films into {out}", total=images, unit="films", logger=log))
            if progress
            else None
        )
        if workers > 1:
            import multiprocessing

            pool = stack.enter_context(ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")))
            rendered = pool.map(_render_star, jobs, chunksize=2)
        else:
            rendered = map(_render_star, jobs)
        for index, (data, graph) in enumerate(rendered):
            ident = phantom_identity(seed, index)
            findings += len(graph["phantom"]["params"]["findings"])
            devices += len(graph["phantom"]["devices"])
            rel = ident.relative_path(extension)
            storage.write_bytes(storage.join(out, "images", rel), data, s3)
            storage.write_text(
                storage.join(out, "silver_dataset", "scene_graph", f"{ident.dicom_id}_SceneGraph.json"),
                json.dumps(graph, indent=1),
                s3,
            )
            splits[ident.split].append(f"{ident.subject_id},{ident.study_id},{ident.dicom_id},{rel}")
            if fmt == "dicom":
                sop_labels.extend(sop_label_rows(graph, rel, seed, index, ident.split))
            if counter is not None:
                counter.update()
    header = "subject_id,study_id,dicom_id,path\n"
    for split, rows in splits.items():
        storage.write_text(
            storage.join(out, "silver_dataset", "splits", f"{split}.csv"), header + "".join(r + "\n" for r in rows), s3
        )
    storage.write_text(storage.join(out, "silver_dataset", "splits", "images_to_avoid.csv"), header, s3)
    if fmt == "dicom":
        storage.write_text(
            storage.join(out, SOP_LABELS_FILE), SOP_LABELS_HEADER + "".join(r + "\n" for r in sop_labels), s3
        )
    summary = {
        "generator": GENERATOR_VERSION,
        "preset": preset,
        "images": images,
        "size": size,
        "seed": seed,
        "format": fmt,
        "splits": {k: len(v) for k, v in splits.items()},
        "findings": findings,
        "devices": devices,
    }
    storage.write_text(storage.join(out, "synth_info.json"), json.dumps(summary, indent=1, sort_keys=True), s3)
    summary["out"] = out
    summary["seconds"] = round(time.perf_counter() - start, 2)
    return summary
