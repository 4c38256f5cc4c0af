"""What a data set reader yields: one labelled region, and all the regions of one image.

A :class:`RegionRecord` is one anatomical box on one stored radiograph, in pixels of that stored
image, with the pseudonymous context retrieval needs (salted patient/study hashes, split, view).
An :class:`ImageRecord` groups every region of one image, because training decodes each film once
and cuts all its ROIs from it.

Box hygiene happens in two steps because a scene graph does not say how large its image is:

1. :func:`sanitize_unsized_box` — while reading labels: drop non-finite, inverted and zero-area
   boxes, clamp negative coordinates to 0.
2. :func:`clamp_to_image` — once the decode stage knows the image size: clamp boxes past the
   right/bottom edge, drop boxes outside the image, and refuse images whose boxes do not fit at
   all (labels made for another resolution).

Both count every change in a :class:`~regionmir.scan_report.ScanReport`; nothing is dropped
silently.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import posixpath
from dataclasses import dataclass, field

from .anatomy import anatomy_name
from .boxes import CLAMPED, OUTSIDE, Box, sanitize_box
from .scan_report import ScanReport

#: The split names a record may carry; ``""`` means "not assigned".
SPLITS: tuple[str, ...] = ("train", "valid", "test")

# Spellings other data sets use for our split names.
_SPLIT_ALIASES = {"val": "valid", "validation": "valid", "dev": "valid", "training": "train", "testing": "test"}

#: Views a record may carry; anything else becomes ``""``.
VIEWS: tuple[str, ...] = ("PA", "AP")

#: Reason a whole image is refused by :func:`clamp_to_image` (its boxes overshoot the image by
#: more than :data:`SIZE_MISMATCH_TOLERANCE`, i.e. they were drawn on another resolution).
IMAGE_SIZE_MISMATCH = "image_size_mismatch"
#: Reason counted when an image is left with no usable region.
IMAGE_WITHOUT_REGIONS = "image_without_regions"
#: How far (as a fraction of the image size) the union of an image's boxes may overshoot the
#: image before we conclude the labels belong to another resolution. Real Chest ImaGenome boxes
#: overshoot by a few percent; a JPEG resized to half size overshoots by 100 %.
SIZE_MISMATCH_TOLERANCE = 0.25


@dataclass(frozen=True)
class RegionRecord:
    """One anatomical region of one stored image.

    ``image_uri`` is an absolute local path or a URI; ``image_id`` a stable id (the DICOM id for
    Chest ImaGenome). ``box`` is in pixels of the stored image. ``patient_hash`` and
    ``study_hash`` are salted hashes (:func:`regionmir.identifiers.hash_identifier`), never raw
    ids. ``attributes`` are the findings affirmed for this region (e.g. ``"pleural effusion"``).
    """

    image_uri: str
    image_id: str
    anatomy_id: int
    box: Box
    split: str = ""
    patient_hash: str = ""
    study_hash: str = ""
    view: str = ""
    attributes: tuple[str, ...] = ()

    @property
    def anatomy_name(self) -> str:
        return anatomy_name(self.anatomy_id)


@dataclass(frozen=True)
class ImageRecord:
    """All labelled regions of one image (regions sorted by anatomy id)."""

    image_uri: str
    image_id: str
    split: str = ""
    patient_hash: str = ""
    study_hash: str = ""
    view: str = ""
    regions: tuple[RegionRecord, ...] = field(default=())

    @property
    def anatomy_ids(self) -> tuple[int, ...]:
        return tuple(r.anatomy_id for r in self.regions)

    def region(self, anatomy: int) -> RegionRecord | None:
        """The region with this anatomy id, or ``None``."""
        for record in self.regions:
            if record.anatomy_id == anatomy:
                return record
        return None

    def with_regions(self, regions: tuple[RegionRecord, ...] | list[RegionRecord]) -> ImageRecord:
        return dataclasses.replace(self, regions=tuple(regions))


def normalise_split(value: object) -> str | None:
    """``train``/``valid``/``test`` (also ``val``, ``validation``…), ``""`` for empty, ``None`` if invalid."""
    text = str(value if value is not None else "").strip().lower()
    if not text:
        return ""
    text = _SPLIT_ALIASES.get(text, text)
    return text if text in SPLITS else None


def normalise_view(value: object) -> str:
    """``PA`` or ``AP``; anything else (lateral, unknown, empty) gives ``""``."""
    text = str(value if value is not None else "").strip().upper()
    return text if text in VIEWS else ""


def hash_split(key: str, train: int = 80, valid: int = 10) -> str:
    """Deterministic split of ``key``: ``train``/``valid``/``test`` in ``train``/``valid``/rest percent.

    Uses an *unsalted* SHA-256 bucket (0–99) so the split never changes when a deployment changes
    its identifier salt. The key is only bucketed, never stored.
    """
    bucket = int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big") % 100
    if bucket < train:
        return "train"
    if bucket < train + valid:
        return "valid"
    return "test"


def stable_image_id(reference: str) -> str:
    """A stable, content-free id for an image known only by its path: ``img-`` + 16 hex of SHA-256.

    ``reference`` should be the path as the data set writes it (relative paths stay stable when
    the data moves). The path itself may hold names, so only its hash becomes the id.
    """
    normalised = posixpath.normpath(str(reference).strip().replace("\\", "/"))
    return "img-" + hashlib.sha256(normalised.encode("utf-8")).hexdigest()[:16]


def sanitize_unsized_box(box: Box, report: ScanReport, example: str) -> Box | None:
    """Clean a box before the image size is known; counts what it changes or refuses.

    Negative coordinates are clamped to 0 (``box_clamped``, detail ``negative coordinates``);
    non-finite, inverted and zero-area boxes are refused (``None``), counted under the reason
    :func:`regionmir.boxes.sanitize_box` gives.
    """
    cleaned, reason = sanitize_box(box, math.inf, math.inf)
    if reason == CLAMPED:
        report.issue(CLAMPED, example, detail="negative coordinates")
    elif reason is not None:
        report.issue(reason, example)
    return cleaned


def clamp_to_image(image: ImageRecord, width: float, height: float, report: ScanReport) -> ImageRecord:
    """Fit an image's boxes to its decoded size; call once the image has been read.

    Boxes past the right/bottom edge are clamped (``box_clamped``, detail ``past image edge``),
    boxes with less than a pixel inside are dropped (``box_outside_image``). When the union of the
    boxes overshoots the image by more than :data:`SIZE_MISMATCH_TOLERANCE` the labels were made
    for another resolution (e.g. a downsized JPEG): every region is dropped and the image counted
    once as ``image_size_mismatch``. An image left without regions is counted as
    ``image_without_regions``; the caller skips it.
    """
    if not image.regions:
        return image
    example = image.image_id
    right = max(r.box.x2 for r in image.regions)
    bottom = max(r.box.y2 for r in image.regions)
    if right > width * (1 + SIZE_MISMATCH_TOLERANCE) or bottom > height * (1 + SIZE_MISMATCH_TOLERANCE):
        report.issue(
            IMAGE_SIZE_MISMATCH,
            example,
            detail=f"boxes reach {right:.0f}x{bottom:.0f}, image is {width:.0f}x{height:.0f}",
        )
        return image.with_regions(())
    kept: list[RegionRecord] = []
    for record in image.regions:
        region_example = f"{example}/{record.anatomy_name}"
        box, reason = sanitize_box(record.box, width, height)
        if box is None:
            report.issue(reason or OUTSIDE, region_example)
            continue
        if reason == CLAMPED:
            report.issue(CLAMPED, region_example, detail="past image edge")
            record = dataclasses.replace(record, box=box)
        kept.append(record)
    if not kept:
        report.issue(IMAGE_WITHOUT_REGIONS, example)
    return image.with_regions(kept)
