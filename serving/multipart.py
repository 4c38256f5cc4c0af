"""Reading the multipart body of ``POST /v1/search`` and ``POST /v1/preview``.

The routes declare their fields with FastAPI (``File`` / ``Form``, so ``/docs`` shows them), but
the body is parsed first by :class:`MultipartRoute`, with this service's limits (one file, 16
fields of at most :data:`MAX_FIELD_BYTES`) and its own answers: a malformed body is 400
``bad_request``, a chunked body over the upload limit 413 ``upload_too_large`` (the guard's
counting ``receive`` cuts it off while it arrives), a form with neither the file ``image`` nor a
PACS reference (``study_uid``, ``series_uid``, ``sop_instance_uid``: :mod:`serving.pacs`) 422
``missing_field``. :class:`FormBinder` then fills the declared fields from that parsed form, with
FastAPI's rules and answers, so FastAPI's parser, dependency solver and 422 never run on it.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable
from typing import Any

from fastapi import Request, UploadFile, params
from fastapi.responses import Response
from fastapi.routing import APIRoute
from starlette.datastructures import FormData
from starlette.datastructures import UploadFile as StarletteUploadFile
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


#: How :class:`FormBinder` fills each kind of declared parameter.
_REQUEST, _FILE, _TEXT = "request", "file", "text"


class FormBinder:
    """The declared parameters of a multipart route, filled from the form :func:`read_multipart`
    parsed — what FastAPI's dependency solver would bind, without running it on every request
    (it costs ~0.5 ms a query here, a tenth of a box query's time).

    The parameters a multipart route may declare: ``request: Request``, files (``File(...)``) and
    text fields (``Form(...)``); anything else is refused when the route is built. Each field takes
    the last value sent under its name, an empty value counts as absent (``None``), and a value of
    the wrong kind gets FastAPI's answer: text where the file ``image`` belongs is 422
    ``missing_field``, a file where text belongs 422 ``bad_request``.
    """

    def __init__(self, endpoint: Callable[..., Any]):
        self.name = getattr(endpoint, "__name__", repr(endpoint))
        self.fields: list[tuple[str, str]] = []
        for name, parameter in inspect.signature(endpoint).parameters.items():
            default = parameter.default
            if isinstance(default, params.File):  # a File is also a Form: test it first
                kind = _FILE
            elif isinstance(default, params.Form):
                kind = _TEXT
            elif name == "request":
                kind = _REQUEST
            else:
                raise TypeError(
                    f"multipart route {self.name}: cannot bind parameter {name!r} (File, Form or request only)"
                )
            self.fields.append((name, kind))

    def bind(self, request: Request, form: FormData) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for name, kind in self.fields:
            if kind == _REQUEST:
                values[name] = request
                continue
            sent = form.getlist(name)
            value = sent[-1] if sent else None
            if isinstance(value, str) and value == "":
                value = None
            is_file = isinstance(value, StarletteUploadFile)
            if kind == _FILE and value is not None and not is_file:
                if name == "image":
                    raise ApiError(422, "missing_field", MISSING_IMAGE)
                raise ApiError(422, "bad_request", f"body.{name}: expected a file, got text")
            if kind == _TEXT and is_file:
                raise ApiError(422, "bad_request", f"body.{name}: Input should be a valid string")
            values[name] = value
        return values


class MultipartRoute(APIRoute):
    """A route whose multipart body :func:`read_multipart` reads, whose declared fields
    :class:`FormBinder` fills from it, and whose endpoint answers a ``Response`` itself. FastAPI
    still documents the declared fields (``/docs``); its dependency solver and response
    serialisation are not run.

    Subclassed by :func:`multipart_route` with the upload limit and ``refuse(error, endpoint)``,
    which answers a body it refuses.
    """

    max_upload: int = 0

    @staticmethod
    def refuse(error: ApiError, endpoint: str) -> Response:  # pragma: no cover - set by multipart_route
        raise NotImplementedError

    def get_route_handler(self) -> Callable[[Request], Any]:
        binder = FormBinder(self.endpoint)
        endpoint, path = self.endpoint, self.path

        async def read_then_handle(request: Request) -> Response:
            request.state.started = time.perf_counter()  # the request's timings include reading its body
            try:
                form = await read_multipart(request, self.max_upload)
            except ApiError as error:
                return self.refuse(error, path)
            try:
                try:
                    values = binder.bind(request, form)
                except ApiError as error:
                    return self.refuse(error, path)
                response = await endpoint(**values)
            finally:
                await form.close()
            if not isinstance(response, Response):
                raise TypeError(f"multipart route {binder.name} returned {type(response).__name__}, not a Response")
            return response

        return read_then_handle


def multipart_route(max_upload: int, refuse: Callable[[ApiError, str], Response]) -> type[MultipartRoute]:
    """The route class of the multipart routes of one app."""
    return type("MultipartRoute", (MultipartRoute,), {"max_upload": max_upload, "refuse": staticmethod(refuse)})
