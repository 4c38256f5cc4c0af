"""The HTTP API (FastAPI) of the query service, independent of how the model and index are reached.

:func:`create_app` takes a *backend* — an object with ``embed``, ``search``, ``get_rows``,
``index_status`` and ``encoder_status`` coroutines — so the same routes run inside the Ray Serve
ingress (holding the encoder, or calling the encoder deployment; :mod:`serving.deployments`) and
in-process (:func:`serving.backends.local_backend`); see :mod:`serving.backends`.

Routes (see ``serving/README.md``, and ``/docs`` of a running service): ``POST /v1/search``,
``POST /v1/preview``, ``GET /v1/anatomies``, ``GET /v1/results/{key}/crop``,
``GET /v1/results/{key}/image``, ``GET /v1/results/{key}/dicom``, ``GET /healthz``, ``GET /readyz``,
``GET /`` (the web page). The query film is an upload or a PACS reference (:mod:`serving.pacs`). Every
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

import json
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
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
from .pacs import parse_reference, reference_given
from .query_service import QueryFilm, QueryService, SearchFields
from .schemas import (
    AnatomiesResponse,
    HealthResponse,
    HitInstance,
    ReadyResponse,
    SearchResponse,
    error_responses,
    png_response,
)
from .search_export import EXPORTS

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
_PACS_REASONS = ("pacs_unavailable", "pacs_denied", "pacs_requires_api_key")
_REFERENCE_REASONS = ("image_and_reference", "bad_uid", "no_pacs", "not_in_pacs", "no_frontal_instance", *_PACS_REASONS)
SEARCH_REASONS = (
    *_POST_REASONS,
    *_DECODE_REASONS,
    *_REFERENCE_REASONS,
    "bad_export",
    "export_needs_pacs_query",
    "pacs_refused",
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
PREVIEW_REASONS = (*_POST_REASONS, *_DECODE_REASONS, *_REFERENCE_REASONS)
ANATOMIES_REASONS = (*GUARD_REASONS, "internal")
RESULT_IMAGE_REASONS = (
    *GUARD_REASONS,
    "bad_key",
    "not_found",
    "missing_image",
    "overloaded",
    "storage_unavailable",
    *_PACS_REASONS,
    "index_unavailable",
    "timeout",
    "sealed_location",
    "internal",
)
RESULT_CROP_REASONS = (*RESULT_IMAGE_REASONS, ("bad_request", 422))
RESULT_DICOM_REASONS = (
    *GUARD_REASONS,
    "bad_key",
    "not_found",
    "not_dicom",
    "pacs_requires_api_key",
    "index_unavailable",
    "timeout",
    "internal",
)


def _plain(value: Any) -> Any:
    """What ``json`` cannot write itself in an answer: a NumPy scalar or array."""
    if isinstance(value, np.generic | np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


class AnswerJSON(JSONResponse):
    """A JSON answer built from plain dicts, lists, strings and numbers (NumPy scalars allowed),
    written by ``json.dumps`` directly: FastAPI's ``jsonable_encoder`` would first copy the whole
    answer, value by value, looking for models and dataclasses it holds none of."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=False, allow_nan=False, separators=(",", ":"), default=_plain).encode()


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
            "Region retrieval on chest radiographs: upload a film (or name one in the hospital's PACS) with a box "
            "drawn on it, or name a region, and get the nearest indexed regions. Every `/v1/*` route needs `Authorization: Bearer <API key>` "
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
        errors = exc.errors()  # query and path parameters (multipart fields: serving.multipart.FormBinder)
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
            None,
            description=(
                "the radiograph: DICOM, PNG or JPEG (the format is sniffed from the bytes), at most "
                f"`limits.max_upload_mb` ({limits.max_upload_mb:g} MiB) and `limits.max_pixels` ({limits.max_pixels} px). "
                "Or name a film in the PACS instead (`study_uid`, `series_uid`, `sop_instance_uid`): one of the two"
            ),
        )

    def study_field() -> Any:
        return Form(
            None,
            description="instead of `image`: a study in the PACS (`pacs.dicomweb_url`); alone, its frontal "
            "(PA/AP) CR/DX film, the first by series and instance number",
        )

    def series_field() -> Any:
        return Form(None, description="with `study_uid`: that series' frontal film (the first by instance number)")

    def sop_field() -> Any:
        return Form(
            None,
            description="instead of `image`: this SOP Instance UID's film in the PACS (with or without its "
            "`study_uid` / `series_uid`)",
        )

    async def query_film(
        image: UploadFile | None, study_uid: str | None, series_uid: str | None, sop_instance_uid: str | None
    ) -> QueryFilm:
        """The uploaded bytes, or the PACS reference; 422 for both or neither."""
        uploaded = image is not None and bool(image.filename or image.size)
        if uploaded and reference_given(study_uid, series_uid, sop_instance_uid):
            await image.close()
            raise ApiError(
                422,
                "image_and_reference",
                "send the file 'image' or a PACS reference (study_uid / series_uid / sop_instance_uid), not both",
            )
        reference = parse_reference(study_uid, series_uid, sop_instance_uid)
        if reference is not None:
            return reference
        if image is None:
            raise ApiError(422, "missing_field", MISSING_IMAGE)
        return await read_upload(image, settings.max_upload_bytes)

    @post_multipart(
        "/v1/search",
        summary="Find the indexed regions most like a region of an uploaded film (or a film in the PACS)",
        description=(
            "Send the film (or name it in the PACS: `study_uid`, `series_uid`, `sop_instance_uid`) with a `box`, "
            "an `anatomy`, or both. With a box, that box is cropped and embedded "
            "(the classifier says what it takes the region to be); with only `anatomy`, the service finds the "
            "box with its anatomy atlas and classifier (`box_source: atlas`, `query.localization`). "
            "`export=csv` answers the results as CSV; `export=sr` stores them into the PACS as a DICOM "
            "Structured Report (`export.sr`)."
        ),
        response_model=SearchResponse,
        responses={
            200: {
                "description": "the results (JSON); with `export=csv`, CSV text: a row for the query, one per hit",
                "content": {"text/csv": {"schema": {"type": "string"}}},
            },
            **error_responses(*SEARCH_REASONS),
        },
    )
    async def search(
        request: Request,
        image: UploadFile | None = image_field(),
        study_uid: str | None = study_field(),
        series_uid: str | None = series_field(),
        sop_instance_uid: str | None = sop_field(),
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
        export: str | None = Form(
            None,
            description=f"{' or '.join(EXPORTS)}: `csv` answers the results as `text/csv`; `sr` stores them into "
            "the PACS as a DICOM Structured Report of the query's study (a query by reference only; hits outside "
            "the PACS are left out) and names it in `export.sr`. Default: the JSON answer only",
        ),
    ):
        async def work():
            film = await query_film(image, study_uid, series_uid, sop_instance_uid)
            fields = SearchFields(
                box=box,
                anatomy=anatomy,
                k=k,
                filter_anatomy=filter_anatomy,
                view=view,
                exclude_same_patient=exclude_same_patient,
                group_by=group_by,
                export=export,
            )
            found = await service.search(film, fields, started=getattr(request.state, "started", None))
            return found if isinstance(found, Response) else AnswerJSON(found)

        return await guarded("/v1/search", work)

    @post_multipart(
        "/v1/preview",
        summary="The uploaded film (or a film in the PACS) as a PNG (lets a browser show a DICOM)",
        response_class=Response,
        responses={
            200: png_response(
                f"the decoded film as an 8-bit PNG, longest side at most {DISPLAY_MAX_SIDE}",
                {
                    "X-Image-Width": "the film's own width in pixels",
                    "X-Image-Height": "the film's own height in pixels",
                    "X-Preview-Scale": "the PNG's size over the film's",
                    "X-Study-UID": "a film from the PACS: its Study Instance UID",
                    "X-Series-UID": "a film from the PACS: its Series Instance UID",
                    "X-SOP-Instance-UID": "a film from the PACS: its SOP Instance UID (search with it)",
                },
            ),
            **error_responses(*PREVIEW_REASONS),
        },
    )
    async def preview(
        image: UploadFile | None = image_field(),
        study_uid: str | None = study_field(),
        series_uid: str | None = series_field(),
        sop_instance_uid: str | None = sop_field(),
    ):
        async def work():
            return await service.preview(await query_film(image, study_uid, series_uid, sop_instance_uid))

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

    @app.get(
        "/v1/results/{key}/dicom",
        summary="The PACS instance of an indexed region's film: UIDs, WADO-RS URL, viewer link",
        response_model=HitInstance,
        responses=error_responses(*RESULT_DICOM_REASONS),
    )
    async def result_dicom(key: str = _key()):
        async def work():
            return JSONResponse(await service.result_dicom(key))

        return await guarded("/v1/results/{key}/dicom", work)

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
