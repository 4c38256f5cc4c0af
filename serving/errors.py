"""Every failure a caller can cause becomes ``{"error": {"reason", "message"}}`` with a 4xx status.

``reason`` is a short machine key from a closed set (it is also the label of the errors metric);
``message`` says what to change. The library's typed errors (:mod:`regionmir.errors`) carry both
already; this module only decides the HTTP status.
"""

from __future__ import annotations

from typing import Any

from indexing.region_index import RegionIndexError
from regionmir.errors import BoxError, RegionMIRError, UnknownAnatomyError


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


#: Reasons the service answers with (the closed label set of ``regionmir_serve_errors``).
REASONS: tuple[str, ...] = (
    "unauthorized",
    "missing_field",
    "bad_request",
    "bad_k",
    "bad_filter",
    "bad_key",
    "not_found",
    "upload_too_large",
    "image_too_large",
    "unreadable_image",
    "unsupported_image",
    "missing_image",
    "unsupported_media_type",
    "bad_image_shape",
    "bad_pixel_values",
    "bad_box",
    "box_outside_image",
    "box_inverted",
    "box_zero_area",
    "box_not_finite",
    "unknown_anatomy",
    "no_atlas",
    "no_atlas_entry",
    "no_candidate",
    "no_patient_id",
    "method_not_allowed",
    "index_unavailable",
    "model_unavailable",
    "storage_unavailable",
    "timeout",
    "overloaded",
    "internal",
)


def reason_label(reason: str) -> str:
    """``reason`` when it is one of :data:`REASONS`, else ``"other"`` (metric labels stay a closed set)."""
    return reason if reason in REASONS else "other"


#: The one table from a library error's ``reason`` to the HTTP status of its answer. Anything a
#: caller sent that the library refuses and that is not listed here is a 422.
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


#: Seconds a 503 (overloaded, index or model unavailable) asks the caller to wait before retrying.
RETRY_AFTER_S = 2


def from_library_error(exc: RegionMIRError, field: str | None = None) -> ApiError:
    """The answer to a library error: its status from :data:`STATUS_BY_REASON` for what a caller
    sent; the index's own failures (:class:`~indexing.region_index.RegionIndexError`) are the
    service's trouble, 503 ``index_unavailable`` with ``Retry-After`` (the message names no server)."""
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
