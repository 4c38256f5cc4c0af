"""The rows of a region collection: :class:`RegionRow` (what a job writes, validated on
construction) and :class:`RegionHit` (what a search or a lookup reads back).

Rows carry an image *identifier*, the region, where its box lies, the acquisition view, the data
split, pseudonymous patient/study hashes (never the identifiers themselves: the caller hashes them
with :func:`regionmir.identifiers.hash_identifier`), the model version and the L2-normalised
embedding. The primary key is :func:`~indexing.index_schema.row_key` of (image id, anatomy id,
model version), so indexing the same images again replaces rows instead of duplicating them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from regionmir.anatomy import ANATOMY_NAMES, NUM_ANATOMIES
from regionmir.identifiers import HASH_HEX_CHARS
from regionmir.sealed_location import seal_location

from .index_schema import BOX_SOURCES, CONTROL_RE, HASH_RE, VARCHAR_FIELDS, row_key

#: The longest film path or URI a row takes: sealed (+16 bytes, base64, prefix) it still fits the field.
MAX_LOCATION_BYTES = 1500

_NORM_TOLERANCE = 1e-3


@dataclass(frozen=True, eq=False)
class RegionRow:
    """One ROI embedding to index. Validated on construction (``ValueError`` says which field).

    ``image_id`` is an identifier (a DICOM SOP Instance UID, a data set's image id), not a path:
    where the image lies goes in ``image_uri``. ``box`` is (x1, y1, x2, y2) in image pixels.
    ``patient_hash``/``study_hash`` are :func:`regionmir.identifiers.hash_identifier` outputs
    (16 lowercase hex) or ``""``; clear identifiers are refused. ``vector`` is converted to a
    1-D float32 array and must be L2-normalised.
    """

    image_id: str
    anatomy_id: int
    anatomy: str
    image_uri: str
    box: tuple[float, float, float, float]
    view: str
    split: str
    patient_hash: str
    study_hash: str
    model_version: str
    vector: np.ndarray = field(repr=False)
    box_source: str = "label"  # label | localiser (BOX_SOURCES)

    def __post_init__(self) -> None:
        if isinstance(self.anatomy_id, bool) or not isinstance(self.anatomy_id, (int, np.integer)):
            raise TypeError(f"anatomy_id must be an int, got {self.anatomy_id!r}")
        if not 0 <= int(self.anatomy_id) < NUM_ANATOMIES:
            raise ValueError(f"anatomy_id {self.anatomy_id} is outside 0..{NUM_ANATOMIES - 1}")
        object.__setattr__(self, "anatomy_id", int(self.anatomy_id))
        if self.anatomy != ANATOMY_NAMES[self.anatomy_id]:
            raise ValueError(
                f"anatomy {self.anatomy!r} does not match anatomy_id {self.anatomy_id} "
                f"({ANATOMY_NAMES[self.anatomy_id]!r})"
            )
        for name in ("image_id", "image_uri", "view", "split", "patient_hash", "study_hash", "model_version"):
            value = getattr(self, name)
            if not isinstance(value, str):
                raise TypeError(f"{name} must be a str, got {type(value).__name__}")
            if CONTROL_RE.search(value):
                raise ValueError(f"{name} contains control characters: {value!r}")
            limit = MAX_LOCATION_BYTES if name == "image_uri" else VARCHAR_FIELDS[name]
            if len(value.encode("utf-8")) > limit:
                raise ValueError(f"{name} is longer than {limit} bytes: {value[:80]!r}...")
        if self.box_source not in BOX_SOURCES:
            raise ValueError(f"box_source must be one of {BOX_SOURCES}, got {self.box_source!r}")
        if not self.image_id:
            raise ValueError("image_id is empty")
        if "/" in self.image_id or "\\" in self.image_id:
            raise ValueError(
                f"image_id must be an identifier, not a path: {self.image_id!r} (put the location in image_uri)"
            )
        if not self.model_version:
            raise ValueError("model_version is empty")
        for name in ("patient_hash", "study_hash"):
            if not HASH_RE.match(getattr(self, name)):
                raise ValueError(
                    f"{name} must be a {HASH_HEX_CHARS}-hex regionmir.identifiers.hash_identifier "
                    f"output or empty, got {getattr(self, name)!r} (never store identifiers in clear)"
                )
        box = tuple(float(v) for v in self.box)
        if len(box) != 4 or not all(math.isfinite(v) for v in box):
            raise ValueError(f"box must be 4 finite numbers (x1, y1, x2, y2), got {self.box!r}")
        if not (box[2] > box[0] and box[3] > box[1]):
            raise ValueError(f"box must have x2 > x1 and y2 > y1, got {box!r}")
        object.__setattr__(self, "box", box)
        vector = np.asarray(self.vector, dtype=np.float32)
        if vector.ndim != 1 or vector.size == 0:
            raise ValueError(f"vector must be 1-D and non-empty, got shape {vector.shape}")
        if not np.all(np.isfinite(vector)):
            raise ValueError("vector has NaN or infinite values")
        norm = float(np.linalg.norm(vector))
        if abs(norm - 1.0) > _NORM_TOLERANCE:
            raise ValueError(f"vector must be L2-normalised, its norm is {norm:.4f}")
        object.__setattr__(self, "vector", vector)

    @property
    def key(self) -> str:
        """The primary key, :func:`~indexing.index_schema.row_key` of this row."""
        return row_key(self.image_id, self.anatomy_id, self.model_version)

    def to_entity(self) -> dict[str, Any]:
        """The row as the dict Milvus inserts; ``image_uri`` sealed (:mod:`regionmir.sealed_location`)."""
        return {
            "key": self.key,
            "vector": self.vector,
            "anatomy_id": self.anatomy_id,
            "anatomy": self.anatomy,
            "image_id": self.image_id,
            "image_uri": seal_location(self.image_uri, self.image_id),
            "box": list(self.box),
            "view": self.view,
            "split": self.split,
            "patient_hash": self.patient_hash,
            "study_hash": self.study_hash,
            "model_version": self.model_version,
            "box_source": self.box_source,
        }


#: The text columns of an embedded batch that :func:`region_rows` copies into each row, in its order.
_TEXT_COLUMNS = ("image_id", "image_uri", "view", "split", "patient_hash", "study_hash", "box_source")


def region_rows(batch: dict, model_version: str) -> list[RegionRow]:
    """The index rows of one batch of embedded regions (:mod:`indexing.roi_embedding`'s columns)."""
    # whole columns to Python values at once: indexing numpy arrays element by element costs more
    anatomy_ids = np.asarray(batch["anatomy_id"]).tolist()
    boxes = np.asarray(batch["box"]).tolist()
    texts = [np.asarray(batch[name]).tolist() for name in _TEXT_COLUMNS]
    vectors = batch["vector"]
    return [
        RegionRow(
            image_id=str(image_id),
            anatomy_id=anatomy_id,
            anatomy=ANATOMY_NAMES[anatomy_id],
            image_uri=str(image_uri),
            box=tuple(box),
            view=str(view),
            split=str(split),
            patient_hash=str(patient_hash),
            study_hash=str(study_hash),
            model_version=model_version,
            vector=vectors[i],
            box_source=str(box_source),
        )
        for i, (anatomy_id, box, image_id, image_uri, view, split, patient_hash, study_hash, box_source) in enumerate(
            zip(anatomy_ids, boxes, *texts, strict=True)
        )
    ]


@dataclass(frozen=True)
class RegionHit:
    """One search result. ``score`` is the cosine similarity (1.0 for the same direction).
    ``image_uri`` is the stored, sealed location: :func:`regionmir.sealed_location.open_location`
    (with ``image_id``) gives the path to read."""

    key: str
    score: float
    anatomy: str
    anatomy_id: int
    image_id: str
    image_uri: str
    box: tuple[float, float, float, float]
    view: str
    split: str
    patient_hash: str
    study_hash: str
    model_version: str
    box_source: str = "label"  # label | localiser: where the box came from
