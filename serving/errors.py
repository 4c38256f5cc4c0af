"""Every failure a caller can cause becomes ``{"error": {"reason", "message"}}`` with a 4xx status.

``reason`` is a short machine key from a closed set (it is also the label of the errors metric);
``message`` says what to change. The library's typed errors (:mod:`regionmir.errors`) carry both
already; this module only decides the HTTP status. :data:`ANSWERS` lists every reason the service
answers with, its status(es) and when; ``/docs`` shows it per route (:mod:`serving.schemas`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from regionmir.errors import BoxError, RegionIndexError, RegionMIRError, StorageError, UnknownAnatomyError


class ApiError(Exception):
    """An error answered to the caller: HTTP ``status``, ``reason`` key, human ``message``."""

    def __init__(self, status: int, reason: str, message: str, *, retry_after_s: int | None = None, **extra: Any):
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message
        self.retry_after_s = retry_after_s  # sent as Retry-After (503 overloaded / unavailable)
        self.extra = extra

    def body(self) -> dict[str, Any]:
        return {"error": {"reason": self.reason, "message": self.message, **self.extra}}


@dataclass(frozen=True)
class Reason:
    """How the service answers one ``reason``: its HTTP status(es) and when (for ``/docs``)."""

    statuses: tuple[int, ...]
    when: str


def _library(reason: str, when: str) -> Reason:
    """A library error's reason: its status is :data:`STATUS_BY_REASON`'s, as :func:`from_library_error` answers."""
    return Reason((STATUS_BY_REASON.get(reason, 422),), when)


#: The library's reasons a caller can cause, and their HTTP statuses: the one table from a library
#: error's ``reason`` to the status of its answer. Anything a caller sent that the library refuses
#: and that is not listed here is a 422.
STATUS_BY_REASON: dict[str, int] = {
    "image_too_large": 413,  # over max_pixels / max_side: a smaller film will do
    "unsupported_media_type": 415,  # no image at all (empty, text, another file type)
    "unreadable_image": 422,  # an image's signature with damaged content
    "unsupported_image": 422,  # multi-frame, colour, an unknown transfer syntax
    "bad_image_shape": 422,  # a strip no radiograph is
    "bad_pixel_values": 422,  # a rescale that gives NaN / infinite pixels
    "unknown_anatomy": 422,
    "bad_box": 422,
    "box_outside_image": 422,
    "box_inverted": 422,
    "box_zero_area": 422,
    "box_not_finite": 422,
    "missing_image": 404,  # a stored film the index names is gone
}

#: Every reason the service answers with, its status(es) and when: the error table of ``/docs``
#: (each route lists the reasons it can answer, :func:`serving.schemas.error_responses`).
ANSWERS: dict[str, Reason] = {
    "unauthorized": Reason((401,), "an API key is configured and the bearer token is missing or wrong"),
    "missing_field": Reason(
        (422,),
        "neither the file `image` nor a PACS reference (`study_uid`, `series_uid`, `sop_instance_uid`); "
        "neither `box` nor `anatomy`; a `series_uid` without its `study_uid`",
    ),
    "image_and_reference": Reason((422,), "both the file `image` and a PACS reference: send one of them"),
    "bad_uid": Reason((422,), "`study_uid`, `series_uid` or `sop_instance_uid` is not a DICOM UID"),
    "no_pacs": Reason((422,), "a PACS reference or `export=sr`, and the service has no PACS (`pacs.dicomweb_url`)"),
    "bad_export": Reason((422,), "`export` is not `csv` or `sr`"),
    "export_needs_pacs_query": Reason(
        (422,), "`export=sr` for an uploaded film: the report belongs to a PACS study, so query by reference"
    ),
    "not_in_pacs": Reason((404,), "the PACS holds no instance (or study, or series) with these UIDs"),
    "no_frontal_instance": Reason((404,), "the study or series holds no frontal (PA/AP) CR/DX radiograph"),
    "not_dicom": Reason((404,), "the result's film is not a PACS instance (a file or object-store collection)"),
    "bad_request": Reason((400, 422), "a malformed request body (400) or query parameter (422)"),
    "bad_k": Reason((422,), "`k` is not an integer in 1..`limits.max_k`"),
    "bad_filter": Reason(
        (422,), "`view` is not PA/AP, `exclude_same_patient` not a boolean, `group_by` not study/patient/image"
    ),
    "bad_key": Reason((422,), "a result key is not 32 lowercase hex characters"),
    "not_found": Reason((404,), "no indexed region has this key (or no route has this path)"),
    "upload_too_large": Reason(
        (413,), "the request body is over `limits.max_upload_mb` (announced, or counted while it streams)"
    ),
    "image_too_large": _library("image_too_large", "the film is over `limits.max_pixels` or `limits.max_side`"),
    "unreadable_image": _library("unreadable_image", "a corrupt or truncated DICOM, PNG or JPEG"),
    "unsupported_image": _library(
        "unsupported_image", "a multi-frame or non-image DICOM, or an unknown transfer syntax"
    ),
    "missing_image": _library("missing_image", "the indexed film is no longer in storage"),
    "unsupported_media_type": _library("unsupported_media_type", "the file is not a DICOM, PNG or JPEG (or empty)"),
    "bad_image_shape": _library("bad_image_shape", "the film is longer than `limits.max_aspect_ratio` : 1"),
    "bad_pixel_values": _library("bad_pixel_values", "a DICOM rescale that gives NaN or infinite pixels"),
    "bad_box": _library("bad_box", "`box` is not `x1,y1,x2,y2`"),
    "box_outside_image": _library("box_outside_image", "`box` lies outside the film"),
    "box_inverted": _library("box_inverted", "`box` has x1 >= x2 or y1 >= y2"),
    "box_zero_area": _library("box_zero_area", "`box` has no area"),
    "box_not_finite": _library("box_not_finite", "`box` has a NaN or infinite coordinate"),
    "unknown_anatomy": _library(
        "unknown_anatomy", "`anatomy` / `filter_anatomy` is not a region name (`suggestions` lists the nearest)"
    ),
    "no_atlas": Reason((422,), "an anatomy-only query, and the service has no anatomy atlas: draw a box"),
    "no_atlas_entry": _library("no_atlas_entry", "the atlas has no prior for this region: draw a box"),
    "no_candidate": _library("no_candidate", "the region's prior falls outside this film: draw a box"),
    "no_patient_id": Reason((422,), "`exclude_same_patient` for an upload that names no patient"),
    "method_not_allowed": Reason((405,), "the path takes another HTTP method"),
    "index_unavailable": Reason((503,), "the index did not answer; retry after `Retry-After` seconds"),
    "model_unavailable": Reason((503,), "the encoder did not answer; retry after `Retry-After` seconds"),
    "storage_unavailable": Reason((503,), "the film store did not answer; retry after `Retry-After` seconds"),
    "pacs_unavailable": Reason((503,), "the PACS did not answer (or failed); retry after `Retry-After` seconds"),
    "pacs_denied": Reason((502,), "the PACS refused the service's credentials (`REGIONMIR_DICOMWEB_*`)"),
    "pacs_refused": Reason(
        (502,),
        "the PACS refused the request (an HTTP 4xx, e.g. the Structured Report's STOW-RS): retrying does not help",
    ),
    "pacs_requires_api_key": Reason(
        (503,),
        "the index holds PACS instances (or the service has a PACS) and the service has no API key: "
        "it serves no PACS data until it has one (see `/readyz`)",
    ),
    "sealed_location": Reason(
        (500,), "the service's `REGIONMIR_ID_SALT` does not open the index's film locations (see `/readyz`)"
    ),
    "timeout": Reason((504,), "the encoder or the index did not answer within `limits.request_timeout_s`"),
    "overloaded": Reason((503,), "every film slot or the encoder is busy; retry after `Retry-After` seconds"),
    "internal": Reason((500,), "an unexpected error; the service logged it"),
}

#: Reasons the service answers with (the closed label set of ``regionmir_serve_errors``).
REASONS: tuple[str, ...] = tuple(ANSWERS)


def reason_label(reason: str) -> str:
    """``reason`` when it is one of :data:`REASONS`, else ``"other"`` (metric labels stay a closed set)."""
    return reason if reason in REASONS else "other"


#: Seconds a 503 (overloaded, index or model unavailable) asks the caller to wait before retrying.
RETRY_AFTER_S = 2


#: The answers to the storage errors of a PACS (:mod:`regionmir.dicomweb`), by their ``reason``.
PACS_STORAGE_ANSWERS: dict[str, tuple[int, str]] = {
    "pacs_unavailable": (503, "the PACS did not answer; retry shortly"),
    "pacs_denied": (502, "the PACS refused the service's credentials (REGIONMIR_DICOMWEB_TOKEN or _USER/_PASSWORD)"),
    "pacs_refused": (502, "the PACS refused the request; retrying does not help"),
}


def from_storage_error(exc: StorageError) -> ApiError:
    """The answer to a storage failure, the service's trouble: a PACS's by its reason
    (:data:`PACS_STORAGE_ANSWERS`), any other 503 ``storage_unavailable``; 503s with ``Retry-After``.
    The message names neither the server nor the object (a path may hold a patient's id)."""
    status, message = PACS_STORAGE_ANSWERS.get(exc.reason, (503, "the film store did not answer; retry shortly"))
    reason = exc.reason if exc.reason in PACS_STORAGE_ANSWERS else "storage_unavailable"
    return ApiError(status, reason, message, retry_after_s=RETRY_AFTER_S if status == 503 else None)


def from_library_error(exc: RegionMIRError, field: str | None = None) -> ApiError:
    """The answer to a library error: its status from :data:`STATUS_BY_REASON` for what a caller
    sent; the index's own failures (:class:`~regionmir.errors.RegionIndexError`) are the
    service's trouble, 503 ``index_unavailable`` with ``Retry-After`` (the message names no server),
    and so are storage failures (:func:`from_storage_error`)."""
    if isinstance(exc, StorageError):
        return from_storage_error(exc)
    if isinstance(exc, RegionIndexError):
        return ApiError(
            503,
            "index_unavailable",
            f"the index is unavailable ({exc.reason}); retry shortly",
            retry_after_s=RETRY_AFTER_S,
        )
    status = STATUS_BY_REASON.get(exc.reason, 422)
    where = field or (
        "anatomy" if isinstance(exc, UnknownAnatomyError) else "box" if isinstance(exc, BoxError) else "image"
    )
    if isinstance(exc, UnknownAnatomyError):
        return ApiError(status, exc.reason, exc.message, field=where, suggestions=list(exc.matches))
    return ApiError(status, exc.reason, f"{where}: {exc.message}")
