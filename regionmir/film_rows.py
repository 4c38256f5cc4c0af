"""Films → ROI rows: the one path from labelled films to one row per region, shared by the
training crop pipeline (:mod:`training.roi_pipeline`: context crops) and the index job's embedder
(:mod:`indexing.roi_embedding`: model-size crops). No Ray here: Ray Data calls a cropper through
``map_batches``, and a plain loop can call it too.

1. :func:`film_rows`: films as small JSON rows (labels only, no pixels) in the column
   :data:`FILM_COLUMN`, e.g. for ``ray.data.from_items``;
2. a :class:`FilmCropper` subclass, called on a batch of those rows: decodes each film once, fits
   its boxes to the decoded size (:func:`regionmir.region_record.clamp_to_image`) and adds one row
   per wanted region (:meth:`FilmCropper.region_row`); a film whose wanted regions were not all cut
   may add a placeholder row (:meth:`FilmCropper.skipped_row`). Films that cannot be read follow
   the one policy of :mod:`regionmir.bad_films`.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

import numpy as np

from .bad_films import BadFilms, log_skipped
from .boxes import Box
from .errors import RegionMIRError
from .region_record import ImageRecord, RegionRecord, clamp_to_image
from .scan_report import ScanReport
from .storage import S3Options

#: The column of :func:`film_rows`' rows (one JSON object per film).
FILM_COLUMN = "film"

#: What a film row carries of its film besides its regions (one value per row it yields).
FILM_FIELDS: tuple[str, ...] = ("image_uri", "image_id", "split", "view", "patient_hash", "study_hash")


def film_rows(
    records: Iterable[ImageRecord], anatomy_ids: Iterable[int] | None = None, *, localise_unlabelled: bool = False
) -> list[dict[str, str]]:
    """Films as small JSON rows (labels only, no pixels): ``{FILM_COLUMN: json}`` per film, with
    :data:`FILM_FIELDS`, ``regions`` (``[anatomy_id, x1, y1, x2, y2]`` each) and ``box_source``
    (``label``).

    ``localise_unlabelled``: films without any labelled region are kept too, with no regions and
    ``box_source`` ``localiser``: a localiser stage fills in their regions before the cropper
    (:class:`indexing.roi_embedding.RegionLocaliser`).

    ``anatomy_ids``: keep only those regions, and only the films that have one; ``None`` keeps
    every film with all its regions (the cropper then picks the wanted ones after fitting the boxes).
    """
    wanted = None if anatomy_ids is None else set(anatomy_ids)
    rows = []
    for record in records:
        regions = [[r.anatomy_id, *r.box.as_list()] for r in record.regions if wanted is None or r.anatomy_id in wanted]
        localise = localise_unlabelled and not record.regions
        if regions or wanted is None or localise:
            film = {name: getattr(record, name) for name in FILM_FIELDS}
            film["box_source"] = "localiser" if localise else "label"
            rows.append({FILM_COLUMN: json.dumps({**film, "regions": regions})})
    return rows


def film_record(film: dict[str, Any]) -> ImageRecord:
    """The :class:`ImageRecord` (uri, id, split, regions) of one decoded :func:`film_rows` row."""
    return ImageRecord(
        image_uri=film["image_uri"],
        image_id=film["image_id"],
        split=film["split"],
        regions=tuple(
            RegionRecord(film["image_uri"], film["image_id"], int(a), Box(x1, y1, x2, y2), film["split"])
            for a, x1, y1, x2, y2 in film["regions"]
        ),
    )


class FilmCropper:
    """Base of the croppers: a batch of :func:`film_rows` rows → columns of one row per region.

    ``s3``: :class:`~regionmir.storage.S3Options` as a dict (what Ray ships to an actor).
    ``anatomy_ids``: the regions to cut (``None``: every region of the rows). ``bad_films``: the
    policy applied here, where the films are read (:meth:`BadFilms.failed`: bad films counted,
    storage errors and too many bad films stop the job); ``None`` hands every film that cannot be
    read (storage errors too) to :meth:`skipped_row` with its reason, for the consumer's
    :meth:`BadFilms.filter` to count. Either way the film is logged by image id on ``log``.
    ``log_clamping``: also log (info) the boxes fitted or dropped by clamping, per film.
    ``console``: set in a Ray worker only: its log lines as ``[console] …`` (the bad films'
    warnings reach the driver's console; :func:`cluster.ray_runtime.forward_own_lines_only`).

    Subclasses define :meth:`region_row`, :meth:`skipped_row` and :meth:`columns`.
    """

    def __init__(
        self,
        s3: dict | None,
        *,
        anatomy_ids: Iterable[int] | None = None,
        bad_films: BadFilms | None = None,
        log: logging.Logger,
        log_clamping: bool = False,
        console: str | None = None,
    ):
        if console:  # in a Ray worker: our `[console] …` lines, which the driver's console shows
            from .console import configure_logging

            configure_logging(console)
        self.s3 = S3Options(**s3) if s3 else None
        self.wanted = None if anatomy_ids is None else frozenset(anatomy_ids)
        self.bad_films = bad_films
        self.log = log
        self.log_clamping = log_clamping

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        out: dict[str, list] = defaultdict(list)
        for text in batch[FILM_COLUMN]:
            film = json.loads(str(text))
            if film.get("unreadable"):  # a stage before this one (the localiser) could not read it
                self.skipped_row(out, film, 1, film["unreadable"])
                continue
            labelled = sum(1 for region in film["regions"] if self._wanted(int(region[0])))
            cut, reason = self._cut_film(film, out)
            if cut < labelled:
                self.skipped_row(out, film, labelled - cut, reason)
        return self.columns(out)

    def _wanted(self, anatomy_id: int) -> bool:
        return self.wanted is None or anatomy_id in self.wanted

    def _cut_film(self, film: dict[str, Any], out: dict[str, list]) -> tuple[int, str | None]:
        """Add the rows of one film's wanted regions to ``out``: ``(how many, None)``, or
        ``(0, the reason)`` when the film could not be read."""
        from .image_reader import read_image

        if self.bad_films is not None:
            self.bad_films.tried()
        try:
            pixels = read_image(film["image_uri"], s3=self.s3).pixels
        except RegionMIRError as exc:
            if self.bad_films is not None:
                self.bad_films.failed(film["image_id"], exc, self.log)
            else:
                log_skipped(self.log, film["image_id"], exc)
            return 0, exc.reason
        height, width = pixels.shape
        report = ScanReport(source=film["image_id"])
        record = clamp_to_image(film_record(film), width, height, report)
        if self.log_clamping and report.total_issues:
            self.log.info("film %s: %s", film["image_id"], dict(report.as_dict().get("issues", {})))
        cut = 0
        for region in record.regions:
            if self._wanted(region.anatomy_id):
                self.region_row(out, film, pixels, region)
                cut += 1
        return cut, None

    def region_row(self, out: dict[str, list], film: dict[str, Any], pixels: np.ndarray, region: RegionRecord) -> None:
        """Append the row of one region (``region.box`` fitted to ``pixels``) to ``out``."""
        raise NotImplementedError

    def skipped_row(self, out: dict[str, list], film: dict[str, Any], missing: int, reason: str | None) -> None:
        """``missing`` wanted regions of ``film`` were not cut: the film could not be read
        (``reason``, e.g. ``unreadable_image``), or clamping dropped them (``reason`` ``None``).
        Append a placeholder row to ``out`` if the consumer needs one."""
        raise NotImplementedError

    def columns(self, out: dict[str, list]) -> dict[str, Any]:
        """The batch's columns from the lists in ``out`` (a key never appended to reads as empty)."""
        raise NotImplementedError
