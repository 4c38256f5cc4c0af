"""Every failure a caller can cause becomes ``{"error": {"reason", "message"}}`` with a 4xx status.

``reason`` is a short machine key from a closed set (it is also the label of the errors metric);
``message`` says what to change. The library's typed errors (:mod:`regionmir.errors`) carry both
already; this module only decides the HTTP status.
"""

from __future__ import annotations

from typing import Any

from regionmir.errors import (
    BoxError,
    ImageReadError,
    ImageTooLargeError,
    RegionMIRError,
    UnknownAnatomyError,
    UnsupportedImageError,
)


class ApiError(Exception):
    """An error answered to the caller: HTTP ``status``, ``reason`` key, human ``message``."""

    def __init__(self, status: int, reason: str, message: str, **extra: Any):
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message
        self.extra = extra

    def body(self) -> dict[str, Any]:
        return {"error": {"reason": self.reason, "message": self.message, **self.extra}}


#: Reasons the service answers with (the closed label set of ``regionmir_serve_errors``).
REASONS: tuple[str, ...] = (
    "unauthorized", "missing_field", "bad_request", "bad_k", "bad_filter", "bad_key", "not_found",
    "upload_too_large", "image_too_large", "unreadable_image", "unsupported_image", "missing_image",
    "unsupported_media_type", "bad_box", "box_outside_image", "box_inverted", "box_zero_area", "box_not_finite",
    "unknown_anatomy", "no_atlas", "no_atlas_entry", "no_candidate", "no_patient_id", "method_not_allowed",
    "index_unavailable", "model_unavailable", "storage_unavailable", "timeout", "overloaded", "internal",
)


def reason_label(reason: str) -> str:
    """``reason`` when it is one of :data:`REASONS`, else ``"other"`` (metric labels stay a closed set)."""
    return reason if reason in REASONS else "other"


def from_library_error(exc: RegionMIRError, field: str | None = None) -> ApiError:
    """The answer to a library error raised on user input."""
    if isinstance(exc, ImageTooLargeError):
        return ApiError(413, exc.reason, exc.message)
    if isinstance(exc, UnsupportedImageError):
        return ApiError(422, exc.reason, exc.message)
    if isinstance(exc, ImageReadError):
        # Bytes that are not an image at all: the media type is wrong; a damaged image: unprocessable.
        if "not a DICOM, PNG or JPEG" in exc.message or "empty file" in exc.message:
            return ApiError(415, "unsupported_media_type", f"{field or 'image'}: {exc.message}")
        return ApiError(422, exc.reason, f"{field or 'image'}: {exc.message}")
    if isinstance(exc, UnknownAnatomyError):
        return ApiError(422, exc.reason, exc.message, field=field or "anatomy", suggestions=list(exc.matches))
    if isinstance(exc, BoxError):
        return ApiError(422, exc.reason, f"{field or 'box'}: {exc.message}")
    return ApiError(422, exc.reason, exc.message)
