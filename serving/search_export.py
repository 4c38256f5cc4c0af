"""What the ``export`` field of ``POST /v1/search`` makes of a search.

* ``csv``: the answer is CSV text (:func:`regionmir.search_report.results_csv`: a row for the query,
  one per hit, with UIDs where the film is a PACS instance) instead of JSON, for any query.
* ``sr``: the search as a DICOM Structured Report (:func:`regionmir.search_report.structured_report`,
  TID 1500: the query region and each hit's region), stored into the PACS by STOW-RS; the JSON
  answer names it under ``export.sr``. The report belongs to the query's patient and study, so the
  query must be a PACS reference (422 ``export_needs_pacs_query`` for an upload); hits whose film is
  not a PACS instance (or no longer in the PACS) are left out, and the answer says how many.

The evidence of the report is each instance's WADO-RS metadata (no pixels). Nothing here logs a
patient: the report itself carries the query patient's header, as any report of that study does.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import logging
from collections.abc import Sequence
from typing import Any

from fastapi.responses import Response

from regionmir.dicomweb import InstanceReference, PacsInstance
from regionmir.search_report import ReportRegion, region_problem, results_csv, structured_report

from .errors import ApiError
from .pacs import PacsLink

log = logging.getLogger("ray.serve")

#: The values of ``export``.
EXPORTS = ("csv", "sr")


def parse_export(text: str | None) -> str | None:
    """``csv``, ``sr`` or ``None`` (absent, empty or ``none``); 422 ``bad_export`` otherwise."""
    value = "" if text is None else str(text).strip().lower()
    if not value or value == "none":
        return None
    if value not in EXPORTS:
        raise ApiError(422, "bad_export", f"export must be one of {', '.join(EXPORTS)}, got {str(text)[:40]!r}")
    return value


def software_version() -> str:
    try:
        return f"regionmir {importlib.metadata.version('regionmir')}"
    except importlib.metadata.PackageNotFoundError:
        return "regionmir"


def _region(found: dict[str, Any], sop_class_uid: str, anatomy: str, **hit: Any) -> ReportRegion:
    """The :class:`ReportRegion` of the answer's query or of one of its results (``found``)."""
    dicom = found.get("dicom") or {}
    return ReportRegion(
        sop_instance_uid=dicom.get("sop_instance_uid", ""),
        series_instance_uid=dicom.get("series_uid", ""),
        study_instance_uid=dicom.get("study_uid", ""),
        sop_class_uid=sop_class_uid,
        box=tuple(found["box"]),
        anatomy=anatomy,
        **hit,
    )


def _query_region(answer: dict[str, Any], sop_class_uid: str) -> ReportRegion:
    query = answer["query"]
    return _region(query, sop_class_uid, query["anatomy"] or query["predicted_anatomy"])


def _hit_region(hit: dict[str, Any], sop_class_uid: str) -> ReportRegion:
    return _region(hit, sop_class_uid, hit["anatomy"], rank=hit["rank"], score=hit["score"], key=hit["key"])


def csv_response(answer: dict[str, Any]) -> Response:
    """``export=csv``: the search's answer as ``text/csv`` (UID columns empty for films outside a PACS)."""
    query = _query_region(answer, "")
    hits = [_hit_region(hit, "") for hit in answer["results"]]
    return Response(
        results_csv(query, hits),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": 'attachment; filename="regionmir-search.csv"', "Cache-Control": "no-store"},
    )


async def store_report(
    pacs: PacsLink,
    answer: dict[str, Any],
    query_instance: PacsInstance,
    hit_instances: Sequence[InstanceReference | None],
    model_version: str,
) -> dict[str, Any]:
    """``export=sr``: build the search's Structured Report and store it into the PACS; the
    ``export.sr`` object of the answer. ``query_instance``: the PACS instance the query named (the
    search refused ``export=sr`` for an upload before any work, 422 ``export_needs_pacs_query``);
    ``hit_instances``: each result's PACS instance or ``None``."""
    pacs.client()  # a configured PACS, and an API key, before any request to it
    references = [query_instance.reference, *(r for r in hit_instances if r is not None)]
    evidence = await pacs.metadata(references)
    query_uid = query_instance.reference.sop_instance_uid
    if query_uid not in evidence:
        raise ApiError(404, "not_in_pacs", f"the PACS holds no SOP instance {query_uid} any more")
    query = _query_region(answer, str(evidence[query_uid].SOPClassUID))
    hits = []
    for hit, ref in zip(answer["results"], hit_instances, strict=True):
        if ref is None or ref.sop_instance_uid not in evidence:
            continue  # not a PACS instance, or no longer in the PACS
        region = _hit_region(hit, str(evidence[ref.sop_instance_uid].SOPClassUID))
        problem = region_problem(region, evidence)
        if problem is None:
            hits.append(region)
        else:  # e.g. moved to another series since it was indexed: the report goes without it
            log.warning("search export: hit left out of the report: %s", problem)
    used = [evidence[uid] for uid in dict.fromkeys([query_uid, *(hit.sop_instance_uid for hit in hits)])]
    try:
        report = await asyncio.to_thread(
            structured_report,
            query,
            hits,
            used,
            software_version=software_version(),
            model_version=model_version,
        )
    except ValueError as exc:  # names a region ("hit 2") and UIDs, never a patient
        log.error("search export: the structured report could not be built: %s", exc)
        raise ApiError(500, "internal", "the structured report could not be built; the service logged why") from None
    await pacs.store([report])
    reference = InstanceReference(
        pacs.root or "", str(report.StudyInstanceUID), str(report.SeriesInstanceUID), str(report.SOPInstanceUID)
    )
    left_out = len(answer["results"]) - len(hits)
    log.info("search export: sr stored, hits_included=%d hits_left_out=%d", len(hits), left_out)
    return {
        "sop_instance_uid": reference.sop_instance_uid,
        "series_uid": reference.series_uid,
        "study_uid": reference.study_uid,
        "retrieve_url": reference.retrieve_url,
        "hits_included": len(hits),
        "hits_left_out": left_out,
    }
