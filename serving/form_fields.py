"""The text fields of the search form, parsed and checked: each parser takes the field as sent
(``None`` when absent) and returns its value or raises :class:`~serving.errors.ApiError` with the
reason and message the caller sees."""

from __future__ import annotations

import math

from regionmir.anatomy import anatomy_id
from regionmir.boxes import Box, require_valid_box
from regionmir.errors import BoxError, RegionMIRError
from regionmir.region_record import normalise_view

from .errors import ApiError, from_library_error

#: ``group_by`` values the API accepts (one hit per …).
GROUP_BY_CHOICES = ("study", "patient", "image")
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("", "0", "false", "no", "off")


def parse_k(text: str | None, default: int, max_k: int) -> int:
    if text is None or str(text).strip() == "":
        return default
    try:
        value = float(str(text).strip())
    except ValueError:
        raise ApiError(422, "bad_k", f"k must be an integer in 1..{max_k}, got {text!r}") from None
    if not math.isfinite(value) or value != int(value) or not 1 <= value <= max_k:
        raise ApiError(422, "bad_k", f"k must be an integer in 1..{max_k}, got {text!r}")
    return int(value)


def parse_anatomy(text: str | None, field: str) -> int | None:
    if text is None or str(text).strip() == "":
        return None
    try:
        return anatomy_id(str(text))
    except RegionMIRError as exc:
        raise from_library_error(exc, field) from None


def parse_view(text: str | None) -> str | None:
    if text is None or str(text).strip() == "":
        return None
    view = normalise_view(text)
    if not view:
        raise ApiError(422, "bad_filter", f"view must be PA or AP, got {str(text)[:40]!r}")
    return view


def parse_flag(text: str | None, field: str) -> bool:
    value = "" if text is None else str(text).strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ApiError(422, "bad_filter", f"{field} must be true or false, got {str(text)[:40]!r}")


def parse_group_by(text: str | None) -> str | None:
    value = "" if text is None else str(text).strip().lower()
    if not value or value == "none":
        return None
    if value not in GROUP_BY_CHOICES:
        raise ApiError(
            422, "bad_filter", f"group_by must be one of {', '.join(GROUP_BY_CHOICES)}, got {str(text)[:40]!r}"
        )
    return value


def parse_box(text: str, width: int, height: int) -> Box:
    try:
        box = Box.parse(text)
        return require_valid_box(box, width, height)
    except BoxError as exc:
        raise from_library_error(exc, "box") from None
