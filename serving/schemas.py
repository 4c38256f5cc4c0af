"""What the query service's routes answer, as pydantic models: the schemas ``/docs`` and
``/openapi.json`` show. The routes send the JSON :class:`~serving.query_service.QueryService`
builds, unchanged (a model never drops or coerces a key of an answer); ``tests/test_openapi.py``
checks real answers against these models. :func:`error_responses` documents each route's error
statuses with the reasons of :data:`serving.errors.ANSWERS`."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from .errors import ANSWERS

# ------------------------------------------------------------------------------------- errors


class ErrorDetail(BaseModel):
    reason: str = Field(description="a short machine key: one of the reasons listed under the answer's status")
    message: str = Field(description="what went wrong and what to change, in words")
    field: str | None = Field(None, description="`unknown_anatomy` only: the form field that named the region")
    suggestions: list[str] | None = Field(None, description="`unknown_anatomy` only: the nearest region names")


class ErrorBody(BaseModel):
    """Every error answer: ``{"error": {"reason", "message"}}``."""

    error: ErrorDetail


#: Headers some error statuses carry.
_ERROR_HEADERS: dict[int, dict[str, Any]] = {
    401: {"WWW-Authenticate": {"description": 'Bearer realm="regionmir"', "schema": {"type": "string"}}},
    503: {"Retry-After": {"description": "seconds to wait before retrying", "schema": {"type": "integer"}}},
}


def error_responses(*reasons: str | tuple[str, int]) -> dict[int | str, dict[str, Any]]:
    """FastAPI ``responses`` for a route's error answers: per status, :class:`ErrorBody` and the
    reasons it carries with when each happens (:data:`serving.errors.ANSWERS`). A reason is a name
    (every status it is answered with) or ``(name, status)`` (that status only)."""
    by_status: dict[int, list[str]] = {}
    for item in reasons:
        reason, statuses = (item, ANSWERS[item].statuses) if isinstance(item, str) else (item[0], (item[1],))
        if reason not in ANSWERS:
            raise KeyError(f"{reason!r} is not a reason of serving.errors.ANSWERS")
        for status in statuses:
            if status not in ANSWERS[reason].statuses:
                raise ValueError(f"{reason!r} is not answered with {status}")
            if reason not in by_status.setdefault(status, []):
                by_status[status].append(reason)
    responses: dict[int | str, dict[str, Any]] = {}
    for status in sorted(by_status):
        lines = "\n".join(f"- `{reason}`: {ANSWERS[reason].when}" for reason in by_status[status])
        entry: dict[str, Any] = {"model": ErrorBody, "description": f"`error.reason` is one of:\n\n{lines}"}
        if status in _ERROR_HEADERS:
            entry["headers"] = _ERROR_HEADERS[status]
        responses[status] = entry
    return responses


# ------------------------------------------------------------------------------------- search


class AppliedFilters(BaseModel):
    anatomy: str | None = Field(description="`filter_anatomy`: only regions of this anatomy (its canonical name)")
    view: str | None = Field(description="`view`: only films of this view (PA or AP)")
    exclude_same_patient: bool = Field(description="the uploaded film's patient was left out")
    group_by: str | None = Field(description="at most one region per study / patient / image")


class LocalizationInfo(BaseModel):
    """How the service found the region of an anatomy-only query (atlas prior + classifier)."""

    method: str = Field(
        description="`atlas prior + classifier`, or the prior alone when the classifier lacks the region"
    )
    confidence: float | None = Field(description="the classifier's probability of the region at the chosen box")
    prior_box: list[float] = Field(description="the atlas's prior box, x1,y1,x2,y2 in film pixels")
    rounds: int = Field(description="coarse-to-fine rounds searched")


class QueryInstance(BaseModel):
    """The PACS instance a query by reference used (the frontal film a study or series resolved to)."""

    study_uid: str
    series_uid: str
    sop_instance_uid: str
    retrieve_url: str = Field(description="its WADO-RS URL")


class HitInstance(QueryInstance):
    """The PACS instance of a hit's film: what a viewer opens."""

    viewer_url: str | None = Field(
        description="the viewer's page of the study (`pacs.viewer_url` filled in); null without that setting"
    )


class SearchQuery(BaseModel):
    box: list[float] = Field(description="the query box, x1,y1,x2,y2 in the uploaded film's pixels")
    box_source: Literal["user", "atlas"] = Field(description="`user`: the box sent; `atlas`: found by the service")
    anatomy: str | None = Field(description="the region named by `anatomy` (canonical name), if any")
    predicted_anatomy: str = Field(description="what the classifier takes the box's region to be")
    confidence: float = Field(description="the classifier's probability of `predicted_anatomy`")
    model_version: str
    image_size: list[int] = Field(description="the uploaded film's width and height in pixels")
    k: int
    filters: AppliedFilters
    localization: LocalizationInfo | None = Field(
        None, description="anatomy-only queries (`box_source: atlas`) only; absent otherwise"
    )
    dicom: QueryInstance | None = Field(
        None, description="a query by reference: the PACS instance searched with; null for an upload"
    )


class SearchHit(BaseModel):
    rank: int = Field(description="1 for the nearest region")
    score: float = Field(description="cosine similarity of the embeddings")
    anatomy: str
    image_id: str
    box: list[float] = Field(description="the region's box, x1,y1,x2,y2 in its film's pixels")
    view: str
    key: str = Field(description="the region's key: 32 lowercase hex characters")
    crop_url: str = Field(description="`GET` it for a PNG crop of the region")
    image_url: str = Field(description="`GET` it for a PNG of the whole film with the box drawn")
    box_source: str = Field(
        description="where the indexed box came from: `label` (a labelled box) or `localiser` "
        "(found by the model's atlas and classifier when a PACS film was indexed without labels)"
    )
    dicom: HitInstance | None = Field(
        description="the film's PACS instance (UIDs, WADO-RS URL, viewer link); null for a file or object-store film"
    )


class StoredReport(BaseModel):
    """The Structured Report ``export=sr`` stored into the PACS."""

    sop_instance_uid: str
    series_uid: str
    study_uid: str = Field(description="the query's study: the report belongs to it")
    retrieve_url: str = Field(description="its WADO-RS URL")
    hits_included: int = Field(description="hits in the report (their films are PACS instances)")
    hits_left_out: int = Field(description="hits left out: their films are not PACS instances (or no longer in it)")


class SearchExport(BaseModel):
    sr: StoredReport


class SearchResponse(BaseModel):
    query: SearchQuery
    results: list[SearchHit]
    timings_ms: dict[str, float] = Field(
        description="milliseconds per stage: fetch (a PACS film), decode, crop or localize, encode, search, "
        "export (`export=sr`), total"
    )
    export: SearchExport | None = Field(None, description="`export=sr` only: the report stored; absent otherwise")


# ------------------------------------------------------------------------------------- other routes


class AnatomyItem(BaseModel):
    id: int
    name: str
    classifier: bool = Field(description="the model's classifier has a class for this region")
    atlas: bool = Field(description="the atlas can find this region without a box")


class ServiceLimits(BaseModel):
    max_k: int
    default_k: int
    max_upload_mb: float
    max_pixels: int


class AnatomiesResponse(BaseModel):
    anatomies: list[AnatomyItem]
    model_version: str
    limits: ServiceLimits


class HealthResponse(BaseModel):
    status: Literal["ok"]


class AtlasCheck(BaseModel):
    loaded: bool
    regions: int


class ReadyChecks(BaseModel):
    model: dict[str, Any] = Field(description="`loaded`, and the encoder's version and device (or `error`)")
    index: dict[str, Any] = Field(
        description="`reachable`, `rows`, `model_rows`, `locations_open`, `pacs_connected` (or `error`); "
        "`problem` when not ready, with `reason` when no wait fixes it (`pacs_requires_api_key`)"
    )
    atlas: AtlasCheck


class ReadyResponse(BaseModel):
    status: Literal["ready", "not ready"]
    checks: ReadyChecks


def png_response(description: str, headers: dict[str, str] | None = None) -> dict[str, Any]:
    """FastAPI ``responses`` entry of the 200 of a route that answers a PNG (and these headers)."""
    entry: dict[str, Any] = {
        "description": description,
        "content": {"image/png": {"schema": {"type": "string", "format": "binary"}}},
    }
    if headers:
        entry["headers"] = {name: {"description": text, "schema": {"type": "string"}} for name, text in headers.items()}
    return entry
