"""A region search written down: as a DICOM Structured Report a PACS stores, and as a CSV file.

**The SR.** :func:`structured_report` writes an Enhanced SR (``1.2.840.10008.5.1.4.1.1.88.22``,
highdicom's :class:`~highdicom.sr.EnhancedSR`) holding a TID 1500 Measurement Report. Enhanced SR is
the oldest SR class that carries 2D image regions (SCOORD), so every PACS stores it and SR viewers
draw it; the report needs nothing more (no 3D coordinates, no by-reference relationships). Its
measurement groups are TID 1410 Planar ROI Measurements, in this order:

* ``query region``: the box searched with, on the query image;
* ``hit 1``, ``hit 2``, … in rank order, one per hit.

Every group holds an *Image Region*: the box as a closed 5-point ``POLYLINE`` (x1,y1 → x2,y1 →
x2,y2 → x1,y2 → x1,y1) in the DICOM image coordinates of its source image, which are this
library's box coordinates (:mod:`regionmir.boxes`: origin at the top-left corner of the top-left
pixel, ``Columns\\Rows`` at the bottom-right corner of the bottom-right pixel), *selected from* that
image (its SOP class and instance UID). Graphic data are stored as 32-bit floats (DICOM ``FL``), so
boxes come back to float32 precision. The anatomy is the group's *Finding Site*, coded in the
private scheme :data:`CODING_SCHEME` (code value: the name with ``-`` for spaces, e.g.
``left-costophrenic-angle``; code meaning: the name; values over 16 characters go to
``LongCodeValue``, as DICOM asks); the *Finding* is SNOMED CT 91723000 "Anatomical structure". A
hit's group adds two measurements: the similarity score and the rank (both unit UCUM ``1``, "no
units"; the score is kept as a double in ``FloatingPointValue``), and an Algorithm Identification
(TID 4019) naming RegionMIR and the model version. Its tracking identifier reads
``hit 3, index row <key>`` (a reader sees the index row key; :func:`read_structured_report` parses it
back) with a tracking UID derived from the key, so the same index row keeps its UID across reports.
The observer is a device: ``RegionMIR`` whose model name is the model version; the SR's
``SoftwareVersions`` is the software version.

**Patients and studies.** The SR belongs to the query's patient and study: highdicom copies the
Patient and Study modules from the first evidence dataset, which is always the query's. Hits may lie
in other studies of other patients. highdicom (0.28) does not refuse that: it checks no patient
attribute of the evidence, files every evidence instance of the query's study under
``CurrentRequestedProcedureEvidenceSequence`` and every instance of another study under
``PertinentOtherEvidenceSequence``, and both carry only study, series, SOP class and SOP instance
UIDs. It does insist that every image the content references is given as evidence, so every hit's
instance must be in ``evidence``. No other patient's name, id, birth date or any other attribute
enters the SR — only the UIDs of their instances, which a reader needs to open the hit. Evidence
that no region references is left out. Nothing here logs; error messages name the region ("hit 2")
and UIDs, never a patient.

**The CSV.** :func:`results_csv` writes one row for the query and one per hit, with the columns of
:data:`CSV_COLUMNS`, parseable by :func:`csv.DictReader` and openable in a spreadsheet.
"""

from __future__ import annotations

import csv
import io
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from .anatomy import anatomy_name
from .boxes import Box, require_valid_box
from .errors import RegionMIRError

#: The private coding scheme of the anatomy names and of the report's own concepts.
CODING_SCHEME = "99REGIONMIR"
CODING_SCHEME_NAME = "RegionMIR anatomy regions (Chest ImaGenome bbox_name) and search concepts"

#: Tracking identifier of the query's measurement group.
QUERY_TRACKING_ID = "query region"
#: Series number of a new report series when the caller gives none.
DEFAULT_SERIES_NUMBER = 9901
SERIES_DESCRIPTION = "RegionMIR region search"

SCORE_CONCEPT = hd.sr.CodedConcept("similarity", CODING_SCHEME, "Region similarity score")
RANK_CONCEPT = hd.sr.CodedConcept("rank", CODING_SCHEME, "Search result rank")
SEARCH_PROCEDURE = hd.sr.CodedConcept("region-search", CODING_SCHEME, "Region similarity search")
NO_UNITS = hd.sr.CodedConcept("1", "UCUM", "no units")

#: Columns of :func:`results_csv`, in order. ``role`` is ``query`` or ``hit``.
CSV_COLUMNS = (
    "role",
    "rank",
    "score",
    "anatomy",
    "key",
    "study_instance_uid",
    "series_instance_uid",
    "sop_instance_uid",
    "x1",
    "y1",
    "x2",
    "y2",
)

_HIT_TRACKING_RE = re.compile(r"hit (\d+), index row (.*)", re.DOTALL)
# Patient and study attributes highdicom reads from the first evidence dataset with plain attribute
# access; WADO-RS metadata often lacks the type 2 ones (a phantom has no birth date or study date).
_TYPE2_FROM_QUERY = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
)


@dataclass(frozen=True)
class ReportRegion:
    """One region of a search: the query's (``rank``, ``score``, ``key`` left ``None``) or a hit's.

    ``box`` is ``(x1, y1, x2, y2)`` in pixels of the image ``sop_instance_uid``
    (:mod:`regionmir.boxes` coordinates); ``anatomy`` a name of :mod:`regionmir.anatomy`;
    ``key`` the hit's index row key; ``rank`` counts from 1.
    """

    sop_instance_uid: str
    series_instance_uid: str
    study_instance_uid: str
    sop_class_uid: str
    box: tuple[float, float, float, float]
    anatomy: str
    rank: int | None = None
    score: float | None = None
    key: str | None = None

    @property
    def is_hit(self) -> bool:
        return self.rank is not None


def anatomy_concept(name: str) -> hd.sr.CodedConcept:
    """The coded concept of an anatomy name in :data:`CODING_SCHEME` (value: the name, ``-`` for spaces)."""
    return hd.sr.CodedConcept(name.replace(" ", "-"), CODING_SCHEME, name)


def structured_report(
    query: ReportRegion,
    hits: Sequence[ReportRegion],
    evidence: Sequence[Dataset],
    *,
    series_number: int = DEFAULT_SERIES_NUMBER,
    instance_number: int = 1,
    manufacturer: str = "RegionMIR",
    software_version: str,
    model_version: str,
    series_instance_uid: str | None = None,
    sop_instance_uid: str | None = None,
) -> hd.sr.EnhancedSR:
    """The search as a TID 1500 Measurement Report in an Enhanced SR of the query's patient and study.

    ``evidence`` holds a dataset (header metadata is enough, e.g. WADO-RS JSON metadata through
    :meth:`pydicom.Dataset.from_json`) for the query image and for every hit image; it is not
    modified. New series and instance UIDs are made unless given. Raises :class:`ValueError`
    naming the region ("query region", "hit 2") when a region is unusable: a box that is not
    finite, has no area or leaves its image; an unknown anatomy; a hit without rank, score or key;
    a repeated rank; no evidence for its image, or evidence whose study, series or SOP class
    disagrees with the region.
    """
    if not software_version or not model_version:
        raise ValueError("software_version and model_version must be given")
    by_uid: dict[str, Dataset] = {}
    for ds in evidence:
        by_uid.setdefault(str(ds.SOPInstanceUID), ds)
    regions = [(QUERY_TRACKING_ID, query)] + [(_hit_label(hit, i), hit) for i, hit in enumerate(hits)]
    _check_hit_fields(query, hits)
    anatomies = [_checked_anatomy(label, region) for label, region in regions]
    used: dict[str, Dataset] = {}
    for label, region in regions:
        ds = _checked_evidence(label, region, by_uid)
        _checked_box(label, region, ds)
        used.setdefault(region.sop_instance_uid, ds)

    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=generate_uid(entropy_srcs=["regionmir-device", manufacturer, software_version, model_version]),
        name="RegionMIR",
        manufacturer_name=manufacturer,
        model_name=model_version,
    )
    observation_context = hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(
            observer_type=codes.DCM.Device, observer_identifying_attributes=device
        )
    )
    algorithm = hd.sr.AlgorithmIdentification(name="RegionMIR region search", version=model_version)
    groups = [_group(QUERY_TRACKING_ID, query, anatomies[0], generate_uid(), None)]
    for (label, hit), anatomy in zip(regions[1:], anatomies[1:], strict=True):
        tracking = f"{label}, index row {hit.key}"
        tracking_uid = generate_uid(entropy_srcs=["regionmir-index-row", hit.key])
        groups.append(_group(tracking, hit, anatomy, tracking_uid, algorithm))
    report = hd.sr.MeasurementReport(
        observation_context=observation_context,
        procedure_reported=[codes.SCT.PlainRadiography, SEARCH_PROCEDURE],
        imaging_measurements=groups,
    )
    query_ds = _query_header(used.pop(query.sop_instance_uid))
    sr = hd.sr.EnhancedSR(
        evidence=[query_ds, *used.values()],
        content=report[0],
        series_instance_uid=series_instance_uid or generate_uid(),
        series_number=series_number,
        sop_instance_uid=sop_instance_uid or generate_uid(),
        instance_number=instance_number,
        manufacturer=manufacturer,
        is_complete=True,
        series_description=SERIES_DESCRIPTION,
        manufacturer_model_name="RegionMIR",
        software_versions=software_version,
    )
    scheme = Dataset()
    scheme.CodingSchemeDesignator = CODING_SCHEME
    scheme.CodingSchemeName = CODING_SCHEME_NAME
    scheme.CodingSchemeResponsibleOrganization = "RegionMIR"
    sr.CodingSchemeIdentificationSequence = [scheme]
    return sr


def read_structured_report(ds: Dataset) -> tuple[ReportRegion, list[ReportRegion]]:
    """The query and the hits (by rank) of an SR written by :func:`structured_report`.

    Boxes come back to float32 precision, scores exactly. Raises :class:`ValueError` when ``ds`` is
    not such a report.
    """
    if "ContentSequence" not in ds or "ContentTemplateSequence" not in ds:
        raise ValueError("not a structured report with a content template")
    if ds.ContentTemplateSequence[0].TemplateIdentifier != "1500":
        raise ValueError("not a TID 1500 Measurement Report")
    root = Dataset()
    for keyword in ("ConceptNameCodeSequence", "ContentSequence", "ValueType", "ContinuityOfContent"):
        setattr(root, keyword, getattr(ds, keyword))
    root.ContentTemplateSequence = ds.ContentTemplateSequence
    report = hd.sr.MeasurementReport.from_sequence([root])
    places = _evidence_places(ds)

    query: ReportRegion | None = None
    hits: list[ReportRegion] = []
    for group in report.get_planar_roi_measurement_groups():
        tracking = group.tracking_identifier or ""
        region = group.roi
        if region is None:
            raise ValueError(f"{tracking or 'a measurement group'}: no image region")
        points = np.asarray(region.value, dtype=np.float64).reshape(-1, 2)
        box = (
            float(points[:, 0].min()),
            float(points[:, 1].min()),
            float(points[:, 0].max()),
            float(points[:, 1].max()),
        )
        source = region.ContentSequence[0].ReferencedSOPSequence[0]
        sop_uid = str(source.ReferencedSOPInstanceUID)
        study_uid, series_uid = places.get(sop_uid, ("", ""))
        sites = group.finding_sites
        if not sites:
            raise ValueError(f"{tracking}: no finding site")
        fields = {
            "sop_instance_uid": sop_uid,
            "series_instance_uid": series_uid,
            "study_instance_uid": study_uid,
            "sop_class_uid": str(source.ReferencedSOPClassUID),
            "box": box,
            "anatomy": str(sites[0].value.meaning),
        }
        if tracking == QUERY_TRACKING_ID:
            query = ReportRegion(**fields)
            continue
        match = _HIT_TRACKING_RE.fullmatch(tracking)
        scores = group.get_measurements(name=SCORE_CONCEPT)
        ranks = group.get_measurements(name=RANK_CONCEPT)
        if match is None or not scores or not ranks:
            raise ValueError(f"{tracking!r}: not a query region or a hit of a RegionMIR search report")
        hits.append(ReportRegion(**fields, rank=int(ranks[0].value), score=float(scores[0].value), key=match[2]))
    if query is None:
        raise ValueError(f"no {QUERY_TRACKING_ID!r} measurement group")
    return query, sorted(hits, key=lambda hit: hit.rank)


def results_csv(query: ReportRegion, hits: Sequence[ReportRegion]) -> str:
    """The search as CSV text: a header (:data:`CSV_COLUMNS`), the query's row, then one row per hit.

    The query's ``rank``, ``score`` and ``key`` are empty; numbers are written so that ``float()``
    gives them back exactly.
    """
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS)
    writer.writeheader()
    for region in [query, *hits]:
        x1, y1, x2, y2 = (float(v) for v in region.box)
        writer.writerow(
            {
                "role": "hit" if region.is_hit else "query",
                "rank": "" if region.rank is None else int(region.rank),
                "score": "" if region.score is None else repr(float(region.score)),
                "anatomy": region.anatomy,
                "key": region.key or "",
                "study_instance_uid": region.study_instance_uid,
                "series_instance_uid": region.series_instance_uid,
                "sop_instance_uid": region.sop_instance_uid,
                "x1": repr(x1),
                "y1": repr(y1),
                "x2": repr(x2),
                "y2": repr(y2),
            }
        )
    return out.getvalue()


# -- building blocks ---------------------------------------------------------------------------


def region_problem(region: ReportRegion, evidence: dict[str, Dataset]) -> str | None:
    """Why :func:`structured_report` would refuse ``region`` with this evidence (SOP Instance UID →
    dataset): its anatomy, its evidence (missing, or of another study, series or SOP class — a
    film moved since it was indexed) or its box on that image; ``None`` when it would take it.
    A caller leaves such a hit out rather than lose the whole report."""
    label = _hit_label(region, 0) if region.is_hit else QUERY_TRACKING_ID
    try:
        _checked_anatomy(label, region)
        _checked_box(label, region, _checked_evidence(label, region, evidence))
    except ValueError as exc:
        return str(exc)
    return None


def _hit_label(hit: ReportRegion, position: int) -> str:
    return f"hit {hit.rank}" if hit.rank is not None else f"hit #{position + 1} (no rank)"


def _check_hit_fields(query: ReportRegion, hits: Sequence[ReportRegion]) -> None:
    if query.rank is not None or query.score is not None or query.key is not None:
        raise ValueError(f"{QUERY_TRACKING_ID}: rank, score and key belong to hits, not to the query")
    seen: set[int] = set()
    for position, hit in enumerate(hits):
        label = _hit_label(hit, position)
        if hit.rank is None or hit.score is None or not hit.key:
            raise ValueError(f"{label}: a hit needs a rank, a score and a key")
        if isinstance(hit.rank, bool) or int(hit.rank) != hit.rank or hit.rank < 1:
            raise ValueError(f"{label}: rank must be a whole number from 1, got {hit.rank!r}")
        if hit.rank in seen:
            raise ValueError(f"{label}: rank {hit.rank} given twice")
        seen.add(hit.rank)
        if not math.isfinite(float(hit.score)):
            raise ValueError(f"{label}: score must be finite, got {hit.score!r}")


def _checked_anatomy(label: str, region: ReportRegion) -> str:
    try:
        return anatomy_name(region.anatomy)
    except RegionMIRError as exc:
        raise ValueError(f"{label}: {exc.message}") from exc


def _checked_evidence(label: str, region: ReportRegion, by_uid: dict[str, Dataset]) -> Dataset:
    ds = by_uid.get(region.sop_instance_uid)
    if ds is None:
        raise ValueError(f"{label}: no evidence dataset for its image {region.sop_instance_uid}")
    for keyword, value in (
        ("StudyInstanceUID", region.study_instance_uid),
        ("SeriesInstanceUID", region.series_instance_uid),
        ("SOPClassUID", region.sop_class_uid),
    ):
        if str(ds.get(keyword, "")) != value:
            raise ValueError(f"{label}: its {keyword} {value} differs from its evidence's {ds.get(keyword)}")
    return ds


def _checked_box(label: str, region: ReportRegion, ds: Dataset) -> None:
    if len(region.box) != 4:
        raise ValueError(f"{label}: box must be (x1, y1, x2, y2), got {region.box!r}")
    try:
        box = Box(*(float(v) for v in region.box))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{label}: box coordinates must be numbers, got {region.box!r}") from exc
    width = float(ds.Columns) if "Columns" in ds else math.inf
    height = float(ds.Rows) if "Rows" in ds else math.inf
    try:
        require_valid_box(box, width, height, source=label)
    except RegionMIRError as exc:
        raise ValueError(f"{label}: {exc.message}") from exc


def _group(
    tracking: str,
    region: ReportRegion,
    anatomy: str,
    tracking_uid: str,
    algorithm: hd.sr.AlgorithmIdentification | None,
) -> hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations:
    x1, y1, x2, y2 = (float(v) for v in region.box)
    outline = np.array([[x1, y1], [x2, y1], [x2, y2], [x1, y2], [x1, y1]], dtype=np.float32)
    image_region = hd.sr.ImageRegion(
        graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
        graphic_data=outline,
        source_image=hd.sr.SourceImageForRegion(
            referenced_sop_class_uid=region.sop_class_uid,
            referenced_sop_instance_uid=region.sop_instance_uid,
        ),
    )
    measurements = None
    if region.is_hit:
        measurements = [
            hd.sr.Measurement(name=SCORE_CONCEPT, value=float(region.score), unit=NO_UNITS),
            hd.sr.Measurement(name=RANK_CONCEPT, value=int(region.rank), unit=NO_UNITS),
        ]
    return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=tracking_uid, identifier=tracking),
        referenced_region=image_region,
        finding_type=codes.SCT.AnatomicalStructure,
        finding_sites=[hd.sr.FindingSite(anatomic_location=anatomy_concept(anatomy))],
        algorithm_id=algorithm,
        measurements=measurements,
    )


def _query_header(ds: Dataset) -> Dataset:
    """A copy of the query's header (no pixel data) with the type 2 attributes highdicom reads present."""
    header = Dataset()
    for element in ds:
        if element.tag.group != 0x7FE0:
            header.add(element)
    for keyword in _TYPE2_FROM_QUERY:
        if keyword not in header:
            setattr(header, keyword, None)
    return header


def _evidence_places(ds: Dataset) -> dict[str, tuple[str, str]]:
    """SOP instance UID → (study, series) over both evidence sequences of an SR."""
    places: dict[str, tuple[str, str]] = {}
    for keyword in ("CurrentRequestedProcedureEvidenceSequence", "PertinentOtherEvidenceSequence"):
        for study in ds.get(keyword, []):
            for series in study.get("ReferencedSeriesSequence", []):
                for sop in series.get("ReferencedSOPSequence", []):
                    places[str(sop.ReferencedSOPInstanceUID)] = (
                        str(study.StudyInstanceUID),
                        str(series.SeriesInstanceUID),
                    )
    return places
