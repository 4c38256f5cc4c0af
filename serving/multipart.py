"""Reading the multipart body of ``POST /v1/search`` and ``POST /v1/preview``.

The routes declare their fields with FastAPI (``File`` / ``Form``, so ``/docs`` shows them), but
the body is parsed first by :class:`MultipartRoute`, with this service's limits (one file, 16
fields of at most :data:`MAX_FIELD_BYTES`) and its own answers: a malformed body is 400
``bad_request``, a chunked body over the upload limit 413 ``upload_too_large`` (the guard's
counting ``receive`` cuts it off while it arrives), a form with neither the file ``image`` nor a
PACS reference (``study_uid``, ``series_uid``, ``sop_instance_uid``: :mod:`serving.pacs`) 422
``missing_field``. FastAPI then binds the declared fields from that parsed form (Starlette keeps
it on the request), so its own parser and its own 422 never see a body this one refused.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from fastapi import Request, UploadFile
from fastapi.responses import Response
from fastapi.routing import APIRoute
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException as StarletteHTTPException

from .errors import ApiError
from .guard import BodyTooLarge, too_large
from .pacs import REFERENCE_FIELDS

#: Non-file form fields are short; anything longer is refused by the parser.
MAX_FIELD_BYTES = 4096
#: What a multipart body may hold: the one file ``image`` (or a PACS reference) and a few short fields.
FORM_LIMITS: dict[str, int] = {"max_files": 1, "max_fields": 16, "max_part_size": MAX_FIELD_BYTES}
#: The reasons reading the body answers with (``bad_request``: 400 only).
MULTIPART_REASONS: tuple[str | tuple[str, int], ...] = (("bad_request", 400), "missing_field", "upload_too_large")
#: The message of a form with neither the file ``image`` nor a PACS reference.
MISSING_IMAGE = (
    "send the radiograph as the multipart file field 'image', or name it in the PACS with "
    "'study_uid' (its frontal film), 'study_uid' + 'series_uid', or 'sop_instance_uid'"
)


async def read_multipart(request: Request, max_upload: int) -> FormData:
    """The request's form, parsed with :data:`FORM_LIMITS` (and kept on ``request`` for FastAPI);
    :class:`~serving.errors.ApiError` for a malformed or oversized body or one with neither ``image``
    nor a PACS reference (which of the two, and not both, the route decides)."""
    try:
        form = await request.form(**FORM_LIMITS)
    except BodyTooLarge:
        raise too_large(max_upload) from None
    except StarletteHTTPException as exc:
        raise ApiError(400, "bad_request", f"malformed multipart body: {exc.detail}") from None
    except Exception as exc:  # the parser's own errors on garbage bodies
        raise ApiError(400, "bad_request", f"malformed request body ({type(exc).__name__})") from None
    names_a_film = any(
        (name == "image" and hasattr(value, "read")) or (name in REFERENCE_FIELDS and str(value).strip())
        for name, value in form.multi_items()
    )
    if not names_a_film:
        await form.close()
        raise ApiError(422, "missing_field", MISSING_IMAGE)
    return form


async def read_upload(upload: UploadFile, max_upload: int) -> bytes:
    """The bytes of the uploaded file (its spooled copy closed at once); 413 over ``max_upload``."""
    try:
        data = await upload.read()
    except BodyTooLarge:
        raise too_large(max_upload) from None
    finally:
        await upload.close()
    if len(data) > max_upload:
        raise too_large(max_upload)
    return data


class MultipartRoute(APIRoute):
    """A route whose multipart body :func:`read_multipart` reads before FastAPI binds its fields.

    Subclassed by :func:`multipart_route` with the upload limit and ``refuse(error, endpoint)``,
    which answers a body it refuses.
    """

    max_upload: int = 0

    @staticmethod
    def refuse(error: ApiError, endpoint: str) -> Response:  # pragma: no cover - set by multipart_route
        raise NotImplementedError

    def get_route_handler(self) -> Callable[[Request], Any]:
        handle = super().get_route_handler()
        endpoint = self.path

        async def read_then_handle(request: Request) -> Response:
            request.state.started = time.perf_counter()  # the request's timings include reading its body
            try:
                await read_multipart(request, self.max_upload)
            except ApiError as error:
                return self.refuse(error, endpoint)
            return await handle(request)

        return read_then_handle


def multipart_route(max_upload: int, refuse: Callable[[ApiError, str], Response]) -> type[MultipartRoute]:
    """The route class of the multipart routes of one app."""
    return type("MultipartRoute", (MultipartRoute,), {"max_upload": max_upload, "refuse": staticmethod(refuse)})
