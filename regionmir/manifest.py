"""Read a simple region manifest (CSV or JSON Lines) into :class:`ImageRecord` s.

The manifest is how any labelled radiograph collection comes in. One row per region:

==============  ==========  ============================================================
column          required    meaning
==============  ==========  ============================================================
``image``       yes         path relative to the manifest's folder, absolute, or a URI
``bbox_name``   yes         anatomy name, alias (``left_lung``, ``heart``) or id
``x1 y1 x2 y2`` yes         box in pixels of the stored image
``split``       no          ``train``/``valid``/``test`` (``val``, ``validation`` accepted)
``patient_id``  no          hashed on read (salted); never stored in clear
``study_id``    no          hashed on read (salted)
``view``        no          ``PA``/``AP``; anything else stored as ``""`` (counted)
``image_id``    no          default: ``img-`` + 16 hex of SHA-256 of ``image`` as written
``findings``    no          affirmed findings, ``;``-separated (or a JSON list)
==============  ==========  ============================================================

Without a split value the image's split is a deterministic hash (80/10/10) of its
``patient_id`` when given — so one patient's films never straddle train and test — else of the
``image`` value as written (:func:`regionmir.region_record.hash_split`).

Format: ``.csv``/``.tsv`` → CSV, ``.jsonl``/``.ndjson`` → JSON Lines, ``.json`` and anything else
are sniffed (``[`` → a JSON array of objects, ``{`` → JSON Lines, else CSV). A required column
missing from the header (JSONL: from the first object) raises :class:`DatasetError`; a bad row is
skipped and counted in :attr:`ManifestReader.report` with its row number (CSV: line number,
header = line 1). Rows are grouped by image, so one image's rows need not be adjacent; the whole
manifest is held in memory as compact tuples while grouping (a million rows is a few hundred MB).
"""

from __future__ import annotations

import csv
import io
import json
import os
import posixpath
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from . import storage
from .anatomy import ANATOMY_NAMES, anatomy_id
from .boxes import Box
from .errors import DatasetError, MissingImageError, UnknownAnatomyError
from .identifiers import hash_identifier
from .region_record import (
    SPLITS,
    ImageRecord,
    RegionRecord,
    hash_split,
    normalise_split,
    normalise_view,
    sanitize_unsized_box,
    stable_image_id,
)
from .scan_report import ScanReport
from .storage import S3Options

REQUIRED_COLUMNS: tuple[str, ...] = ("image", "bbox_name", "x1", "y1", "x2", "y2")
OPTIONAL_COLUMNS: tuple[str, ...] = ("split", "patient_id", "study_id", "view", "image_id", "findings")
_COORDINATES = ("x1", "y1", "x2", "y2")


@dataclass
class _ImageGroup:
    """The rows of one image while grouping: image fields from its first row, then regions."""

    image_uri: str
    image_id: str
    split: str
    patient_hash: str
    study_hash: str
    view: str
    regions: dict[int, tuple[Box, tuple[str, ...]]] = field(default_factory=dict)


class ManifestReader:
    """Streams :class:`ImageRecord` s from a CSV/JSONL manifest (local path or URI).

    ``format`` forces ``"csv"``, ``"jsonl"`` or ``"json"``; ``salt`` overrides the identifier
    salt (tests).
    """

    def __init__(
        self, path_or_uri: str, s3: S3Options | None = None, *, salt: str | None = None, format: str | None = None
    ):
        self.path = str(path_or_uri).strip()
        if self.path.startswith("file://"):
            self.path = self.path[len("file://") :]
        if not storage.is_remote(self.path):
            self.path = os.path.abspath(self.path)
        self.s3 = s3
        self.salt = salt
        self.base_dir = storage.parent(self.path)
        self.name = posixpath.basename(self.path.replace("\\", "/"))
        self.report = ScanReport(source=self.path)
        try:
            self._text = storage.read_text(self.path, s3)
        except MissingImageError as exc:  # read_bytes names every missing file an image
            raise DatasetError(self.path, "manifest not found") from exc
        self.format = format or _detect_format(self.path, self._text)
        self.columns = self._check_columns()

    # -- parsing -----------------------------------------------------------------------------

    def _check_columns(self) -> tuple[str, ...]:
        if self.format == "csv":
            header = next(csv.reader(io.StringIO(self._text), dialect=self._dialect()), [])
            columns = tuple(_column(c) for c in header)
            where = "header"
        else:
            first = next((row for _, row in self._json_rows(ScanReport()) if row), None)
            columns = tuple(_column(c) for c in (first or {}))
            where = "first object"
        for column in REQUIRED_COLUMNS:
            if column not in columns:
                raise DatasetError(
                    self.path,
                    f"required column {column!r} missing from the {where} "
                    f"(found: {', '.join(columns) or 'nothing'}; required: "
                    f"{', '.join(REQUIRED_COLUMNS)})",
                )
        return columns

    def _dialect(self) -> type[csv.Dialect]:
        return csv.excel_tab if self.path.lower().endswith(".tsv") else csv.excel

    def _rows(self, report: ScanReport) -> Iterator[tuple[int, dict[str, Any]]]:
        """``(row number, row)`` with lower-case column names."""
        if self.format == "csv":
            reader = csv.reader(io.StringIO(self._text), dialect=self._dialect())
            header = [_column(c) for c in next(reader, [])]
            for values in reader:
                if not any(v.strip() for v in values):
                    continue  # blank lines are layout, not data
                yield reader.line_num, dict(zip(header, values))
        else:
            yield from self._json_rows(report)

    def _json_rows(self, report: ScanReport) -> Iterator[tuple[int, dict[str, Any]]]:
        if self.format == "json":
            try:
                items = json.loads(self._text)
            except ValueError as exc:
                raise DatasetError(self.path, f"not valid JSON: {exc}") from exc
            if not isinstance(items, list):
                raise DatasetError(self.path, "a .json manifest must be an array of row objects")
            numbered = enumerate(items, start=1)
        else:
            numbered = ((n, line) for n, line in enumerate(self._text.splitlines(), start=1) if line.strip())
        for number, item in numbered:
            if isinstance(item, str):
                try:
                    item = json.loads(item)
                except ValueError:
                    report.issue("bad_row", f"{self.name}:{number}", detail="not valid JSON")
                    continue
            if not isinstance(item, dict):
                report.issue("bad_row", f"{self.name}:{number}", detail="not an object")
                continue
            yield number, {_column(k): v for k, v in item.items()}

    # -- scanning ----------------------------------------------------------------------------

    def iter_images(self, split: str | None = None) -> Iterator[ImageRecord]:
        """The images of ``split`` (default: all), in order of first appearance.

        Starts a fresh :attr:`report`; it is complete once the iterator is exhausted.
        """
        if split is not None and split not in SPLITS:
            raise DatasetError(self.path, f"unknown split {split!r}; use {', '.join(SPLITS)}")
        report = ScanReport(source=self.path)
        self.report = report
        for group in self._groups(report).values():
            if split is not None and group.split != split:
                continue
            if not group.regions:
                report.issue("image_without_regions", group.image_id)
                continue
            regions = tuple(
                RegionRecord(
                    image_uri=group.image_uri,
                    image_id=group.image_id,
                    anatomy_id=aid,
                    box=box,
                    split=group.split,
                    patient_hash=group.patient_hash,
                    study_hash=group.study_hash,
                    view=group.view,
                    attributes=attrs,
                )
                for aid, (box, attrs) in sorted(group.regions.items())
            )
            report.count("images")
            report.count("regions", len(regions))
            yield ImageRecord(
                image_uri=group.image_uri,
                image_id=group.image_id,
                split=group.split,
                patient_hash=group.patient_hash,
                study_hash=group.study_hash,
                view=group.view,
                regions=regions,
            )

    def _groups(self, report: ScanReport) -> dict[str, _ImageGroup]:
        groups: dict[str, _ImageGroup] = {}
        for number, row in self._rows(report):
            report.count("rows")
            example = f"{self.name}:{number}"
            values = {c: _text(row.get(c)) for c in REQUIRED_COLUMNS}
            empty = [c for c in REQUIRED_COLUMNS if not values[c]]
            if empty:
                report.issue("missing_value", example, detail=", ".join(empty))
                continue
            try:
                aid = anatomy_id(values["bbox_name"])
            except UnknownAnatomyError:
                report.issue("unknown_anatomy", example, detail=values["bbox_name"])
                continue
            try:
                box = Box(*(float(values[c]) for c in _COORDINATES))
            except ValueError:
                report.issue("bad_box", example, detail="coordinate not a number")
                continue
            raw_split = _text(row.get("split"))
            split = normalise_split(raw_split)
            if split is None:
                report.issue("invalid_split", example, detail=raw_split)
                continue
            box = sanitize_unsized_box(box, report, example)
            if box is None:
                continue
            group = self._group_for(groups, values["image"], row, split, example, report)
            if aid in group.regions:
                report.issue("duplicate_region", example, detail=ANATOMY_NAMES[aid])
                continue
            group.regions[aid] = (box, _findings(row.get("findings")))
        return groups

    def _group_for(
        self,
        groups: dict[str, _ImageGroup],
        image: str,
        row: dict[str, Any],
        split: str,
        example: str,
        report: ScanReport,
    ) -> _ImageGroup:
        """The image's group, created from this row; later rows that disagree are counted."""
        image_uri = storage.resolve(self.base_dir, image)
        patient = _text(row.get("patient_id"))
        study = _text(row.get("study_id"))
        raw_view = _text(row.get("view"))
        view = normalise_view(raw_view)
        group = groups.get(image_uri)
        if group is None:
            if raw_view and not view:
                report.issue("unknown_view", example, detail=raw_view)
            group = _ImageGroup(
                image_uri=image_uri,
                image_id=_text(row.get("image_id")) or stable_image_id(image),
                split=split or hash_split(patient or image),
                patient_hash=hash_identifier(patient, self.salt),
                study_hash=hash_identifier(study, self.salt),
                view=view,
            )
            groups[image_uri] = group
            return group
        disagree = [
            name
            for name, mine, first in (
                ("split", split, group.split if split else ""),
                ("patient_id", hash_identifier(patient, self.salt), group.patient_hash),
                ("study_id", hash_identifier(study, self.salt), group.study_hash),
                ("view", view, group.view),
            )
            if mine != first
        ]
        if disagree:
            report.issue("inconsistent_image", example, detail=", ".join(disagree))
        return group

    # -- description -------------------------------------------------------------------------

    def describe(self) -> str:
        optional = [c for c in OPTIONAL_COLUMNS if c in self.columns]
        ignored = [c for c in self.columns if c not in REQUIRED_COLUMNS + OPTIONAL_COLUMNS]
        lines = [
            f"Manifest {self.path} ({self.format})",
            f"  images relative to: {self.base_dir}",
            f"  optional columns: {', '.join(optional) or 'none'}",
        ]
        if "split" not in self.columns:
            lines.append("  splits: no split column; hash split 80/10/10 by patient_id (else image)")
        if ignored:
            lines.append(f"  ignored columns: {', '.join(ignored)}")
        return "\n".join(lines)


def _detect_format(path: str, text: str) -> str:
    lower = path.lower()
    if lower.endswith((".csv", ".tsv")):
        return "csv"
    if lower.endswith((".jsonl", ".ndjson")):
        return "jsonl"
    start = text.lstrip()[:1]
    if start == "[":
        return "json"
    if start == "{":
        return "jsonl"
    return "csv"


def _column(name: Any) -> str:
    return str(name).strip().lower()


def _text(value: Any) -> str:
    """A cell as stripped text; ``None`` and JSON ``null`` give ``""``."""
    if value is None:
        return ""
    return str(value).strip()


def _findings(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    items = value if isinstance(value, list) else str(value).split(";")
    return tuple(sorted({str(v).strip() for v in items if str(v).strip()}))
