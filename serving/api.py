"""The HTTP API (FastAPI) of the query service, independent of how the model and index are reached.

:func:`create_app` takes a *backend* — an object with ``embed``, ``search``, ``get_rows``,
``index_status`` and ``encoder_status`` coroutines — so the same routes run inside the Ray Serve
ingress (holding the encoder, or calling the encoder deployment; :mod:`serving.deployments`) and
in-process (:func:`serving.backends.local_backend`); see :mod:`serving.backends`.

Routes (see ``serving/README.md``, and ``/docs`` of a running service): ``POST /v1/search``,
``POST /v1/preview``, ``GET /v1/anatomies``, ``GET /v1/results/{key}/crop``,
``GET /v1/results/{key}/image``, ``GET /healthz``, ``GET /readyz``, ``GET /`` (the web page). Every
``/v1/*`` route needs ``Authorization: Bearer <key>`` when an API key is configured. Every error is
``{"error": {"reason", "message"}}`` with a 4xx (caller) or 5xx (service) status; nothing a caller
sends can take the service down.

Each route declares its parameters (``File``, ``Form``, ``Query``, ``Path``), its answer
(:mod:`serving.schemas`) and its error reasons (:data:`serving.errors.ANSWERS`), so ``/docs`` and
``/openapi.json`` describe the API. The values are still checked by the service's own parsers
(:mod:`serving.form_fields`), so a bad value gets its named ``reason``, never FastAPI's generic 422.
The pieces: :mod:`serving.guard` (auth and upload size, before any body is read),
:mod:`serving.multipart` (reading the multipart body), :mod:`serving.query_service` (the work),
:mod:`serving.images` (PNGs), :mod:`serving.film_cache`.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from fastapi import FastAPI, File, Form, Query, Request, UploadFile
from fastapi import Path as PathParam
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from regionmir.anatomy_atlas import AnatomyAtlas
from regionmir.errors import RegionMIRError
from regionmir.model_contract import ModelContract

from .config import ServeSettings
from .errors import ApiError, from_library_error
from .form_fields import GROUP_BY_CHOICES
from .guard import GUARD_REASONS, BodyTooLarge, GuardMiddleware, too_large
from .images import DISPLAY_MAX_SIDE
from .multipart import FORM_LIMITS, MISSING_IMAGE, MULTIPART_REASONS, multipart_route, read_upload
from .query_service import QueryService, SearchFields
from .schemas import (
    AnatomiesResponse,
    HealthResponse,
    ReadyResponse,
    SearchResponse,
    error_responses,
    png_response,
)

log = logging.getLogger("ray.serve")

PAGE_FILE = Path(__file__).with_name("page.html")

# The error reasons of each route (``/docs`` lists them under their statuses).
_DECODE_REASONS = (
    "image_too_large",
    "unsupported_media_type",
    "unreadable_image",
    "unsupported_image",
    "bad_image_shape",
    "bad_pixel_values",
)
_BOX_REASONS = ("bad_box", "box_outside_image", "box_inverted", "box_zero_area", "box_not_finite")
_POST_REASONS = (*GUARD_REASONS, *MULTIPART_REASONS, "method_not_allowed", "overloaded", "internal")
SEARCH_REASONS = (
    *_POST_REASONS,
    *_DECODE_REASONS,
    *_BOX_REASONS,
    "bad_k",
    "bad_filter",
    "unknown_anatomy",
    "no_atlas",
    "no_atlas_entry",
    "no_candidate",
    "no_patient_id",
    "model_unavailable",
    "index_unavailable",
    "timeout",
)
PREVIEW_REASONS = (*_POST_REASONS, *_DECODE_REASONS)
ANATOMIES_REASONS = (*GUARD_REASONS, "internal")
RESULT_IMAGE_REASONS = (
    *GUARD_REASONS,
    "bad_key",
    "not_found",
    "missing_image",
    "overloaded",
    "storage_unavailable",
    "index_unavailable",
    "timeout",
    "sealed_location",
    "internal",
)
RESULT_CROP_REASONS = (*RESULT_IMAGE_REASONS, ("bad_request", 422))


def _key() -> Any:
    return PathParam(description="a result's `key` (32 lowercase hex characters), from a search's `results`")


def create_app(settings: ServeSettings, backend: Any, contract: ModelContract, atlas: AnatomyAtlas | None) -> Any:
    """The ASGI app: FastAPI routes wrapped in :class:`~serving.guard.GuardMiddleware` (auth + upload limit)."""
    service = QueryService(settings, backend, contract, atlas)
    metrics = service.metrics
    limits = settings.limits
    app = FastAPI(
        title="RegionMIR query service",
        version="1",
        description=(
            "Region retrieval on chest radiographs: upload a film with a box drawn on it, or name a region, "
            "and get the nearest indexed regions. Every `/v1/*` route needs `Authorization: Bearer <API key>` "
            'when the service has one. Every error is `{"error": {"reason", "message"}}`; each route '
            "lists its reasons under their statuses."
        ),
        docs_url="/docs",
        redoc_url=None,
        openapi_url="/openapi.json",
    )
    app.state.service = service

    def answer(error: ApiError, endpoint: str) -> JSONResponse:
        metrics.error(error.reason)
        metrics.requests.inc(1, tags={"endpoint": endpoint, "status": f"{error.status // 100}xx"})
        headers = {"WWW-Authenticate": 'Bearer realm="regionmir"'} if error.status == 401 else {}
        if error.retry_after_s is not None:
            headers["Retry-After"] = str(error.retry_after_s)
        return JSONResponse(error.body(), status_code=error.status, headers=headers or None)

    async def guarded(endpoint: str, work: Callable[[], Awaitable[Any]]) -> Any:
        try:
            result = await work()
        except ApiError as exc:
            return answer(exc, endpoint)
        except BodyTooLarge:
            return answer(too_large(settings.max_upload_bytes), endpoint)
        except RegionMIRError as exc:
            return answer(from_library_error(exc), endpoint)
        except Exception:
            log.exception("unexpected error in %s", endpoint)
            return answer(ApiError(500, "internal", "internal error; the service logged it"), endpoint)
        status = getattr(result, "status_code", 200)
        metrics.requests.inc(1, tags={"endpoint": endpoint, "status": f"{status // 100}xx"})
        return result

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        reason = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "bad_request")
        return answer(ApiError(exc.status_code, reason, str(exc.detail)), "other")

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        if any(tuple(e.get("loc", ())) == ("body", "image") for e in errors):
            # the form has a file 'image' (MultipartRoute checked), but not one FastAPI binds: an
            # empty file input, or a text field 'image' after the file
            route = request.scope.get("route")
            return answer(ApiError(422, "missing_field", MISSING_IMAGE), getattr(route, "path", "other"))
        first = errors[0] if errors else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return answer(ApiError(422, "bad_request", f"{where}: {first.get('msg', 'invalid')}"), "other")

    form_route = multipart_route(settings.max_upload_bytes, answer)

    def post_multipart(path: str, **options: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """``@app.post`` for a multipart route (its body read first by :class:`~serving.multipart.MultipartRoute`)."""

        def register(endpoint: Callable[..., Any]) -> Callable[..., Any]:
            app.router.add_api_route(
                path, endpoint, methods=["POST"], route_class_override=form_route, form_limits=FORM_LIMITS, **options
            )
            return endpoint

        return register

    def image_field() -> Any:
        return File(
            description=(
                "the radiograph: DICOM, PNG or JPEG (the format is sniffed from the bytes), at most "
                f"`limits.max_upload_mb` ({limits.max_upload_mb:g} MiB) and `limits.max_pixels` ({limits.max_pixels} px)"
            )
        )

    @post_multipart(
        "/v1/search",
        summary="Find the indexed regions most like a region of an uploaded film",
        description=(
            "Send the film with a `box`, an `anatomy`, or both. With a box, that box is cropped and embedded "
            "(the classifier says what it takes the region to be); with only `anatomy`, the service finds the "
            "box with its anatomy atlas and classifier (`box_source: atlas`, `query.localization`)."
        ),
        response_model=SearchResponse,
        responses=error_responses(*SEARCH_REASONS),
    )
    async def search(
        request: Request,
        image: UploadFile = image_field(),
        box: str | None = Form(
            None,
            description="`x1,y1,x2,y2` in pixels of the uploaded film (origin top-left)",
            examples=["30,30,80,100"],
        ),
        anatomy: str | None = Form(
            None,
            description="a region name or alias (`left lung`, `lcpa`, `heart`, …; see `GET /v1/anatomies`): "
            "without a box the service finds it on the film",
        ),
        k: str | None = Form(
            None,
            description=f"number of results: an integer in 1..{limits.max_k} (`limits.max_k`), "
            f"default {limits.default_k}",
        ),
        filter_anatomy: str | None = Form(None, description="only return regions of this anatomy (name or alias)"),
        view: str | None = Form(None, description="only return films of this view: `PA` or `AP`"),
        exclude_same_patient: str | None = Form(
            None,
            description="`true`: leave out every region of the uploaded film's patient (a DICOM with PatientID); "
            "default `false`",
        ),
        group_by: str | None = Form(
            None,
            description=f"at most one region per group, the best one: {', '.join(GROUP_BY_CHOICES)} (default none)",
        ),
    ):
        async def work():
            data = await read_upload(image, settings.max_upload_bytes)
            fields = SearchFields(
                box=box,
                anatomy=anatomy,
                k=k,
                filter_anatomy=filter_anatomy,
                view=view,
                exclude_same_patient=exclude_same_patient,
                group_by=group_by,
            )
            found = await service.search(data, fields, started=getattr(request.state, "started", None))
            return JSONResponse(jsonable_encoder(found))

        return await guarded("/v1/search", work)

    @post_multipart(
        "/v1/preview",
        summary="The uploaded film as a PNG (lets a browser show a DICOM)",
        response_class=Response,
        responses={
            200: png_response(
                f"the decoded film as an 8-bit PNG, longest side at most {DISPLAY_MAX_SIDE}",
                {
                    "X-Image-Width": "the film's own width in pixels",
                    "X-Image-Height": "the film's own height in pixels",
                    "X-Preview-Scale": "the PNG's size over the film's",
                },
            ),
            **error_responses(*PREVIEW_REASONS),
        },
    )
    async def preview(image: UploadFile = image_field()):
        async def work():
            return await service.preview(await read_upload(image, settings.max_upload_bytes))

        return await guarded("/v1/preview", work)

    @app.get(
        "/v1/anatomies",
        summary="The regions, what the model and atlas know of each, the limits",
        response_model=AnatomiesResponse,
        responses=error_responses(*ANATOMIES_REASONS),
    )
    async def anatomies():
        async def work():
            return JSONResponse(jsonable_encoder(service.anatomies()))

        return await guarded("/v1/anatomies", work)

    @app.get(
        "/v1/results/{key}/crop",
        summary="A PNG crop of an indexed region (the window the model sees)",
        response_class=Response,
        responses={200: png_response("the region's square crop"), **error_responses(*RESULT_CROP_REASONS)},
    )
    async def result_crop(
        key: str = _key(),
        size: str | None = Query(None, description="the crop's side in pixels: an integer in 16..512, default 192"),
    ):
        async def work():
            try:
                value = None if size is None else int(size)
            except ValueError:
                raise ApiError(422, "bad_request", "size must be an integer") from None
            return await service.result_crop(key, value)

        return await guarded("/v1/results/{key}/crop", work)

    @app.get(
        "/v1/results/{key}/image",
        summary="A PNG of an indexed region's whole film with its box drawn",
        response_class=Response,
        responses={
            200: png_response(
                f"the film, longest side at most {DISPLAY_MAX_SIDE}, with the region's box in orange",
                {"X-Image-Width": "the film's own width in pixels", "X-Image-Height": "the film's own height"},
            ),
            **error_responses(*RESULT_IMAGE_REASONS),
        },
    )
    async def result_image(key: str = _key()):
        return await guarded("/v1/results/{key}/image", lambda: service.result_image(key))

    @app.get("/healthz", summary="Liveness: the ingress runs", response_model=HealthResponse)
    async def healthz():
        return {"status": "ok"}

    @app.get(
        "/readyz",
        summary="Readiness: the model loaded, the index reachable and holding the served model's rows",
        response_model=ReadyResponse,
        responses={503: {"model": ReadyResponse, "description": "not ready: `checks` names the failing check"}},
    )
    async def readyz():
        status, body = await service.ready()
        return JSONResponse(body, status_code=status)

    @app.get("/", response_class=HTMLResponse, summary="The web page")
    async def page():
        return HTMLResponse(PAGE_FILE.read_text(encoding="utf-8"), headers={"Cache-Control": "no-cache"})

    return GuardMiddleware(app, settings.auth.api_key, settings.max_upload_bytes)
