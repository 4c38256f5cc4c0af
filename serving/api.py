"""The HTTP API (FastAPI) of the query service, independent of how the model and index are reached.

:func:`create_app` takes a *backend* — an object with ``embed``, ``search``, ``get_rows``,
``index_status`` and ``encoder_status`` coroutines — so the same routes run inside the Ray Serve
ingress (whose backend calls the encoder and search deployments through their handles,
:mod:`serving.deployments`) and in-process (:class:`serving.runtime.LocalBackend`).

Routes (see ``serving/README.md``): ``POST /v1/search``, ``POST /v1/preview``, ``GET /v1/anatomies``,
``GET /v1/results/{key}/crop``, ``GET /v1/results/{key}/image``, ``GET /healthz``, ``GET /readyz``,
``GET /`` (the web page). Every ``/v1/*`` route needs ``Authorization: Bearer <key>`` when an API
key is configured. Every error is ``{"error": {"reason", "message"}}`` with a 4xx (caller) or 5xx
(service) status; nothing a caller sends can take the service down.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import io
import json
import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from indexing.region_index import RegionIndexError
from regionmir.anatomy import ANATOMY_NAMES, anatomy_id
from regionmir.anatomy_atlas import AnatomyAtlas, AtlasError
from regionmir.boxes import Box, require_valid_box
from regionmir.decoded_image import DecodedImage
from regionmir.errors import BoxError, MissingImageError, RegionMIRError, StorageError
from regionmir.image_reader import read_image
from regionmir.intensity import to_uint8
from regionmir.model_contract import ModelContract
from regionmir.region_record import normalise_view
from regionmir.roi_crop import CropConfig, roi_crop, roi_crops
from regionmir.sealed_location import SealedLocationError, open_location

from .config import ServeSettings
from .errors import RETRY_AFTER_S, ApiError, from_library_error
from .metrics import anatomy_label, get_metrics
from .runtime import KEY_RE, SearchFilters

log = logging.getLogger("ray.serve")

PAGE_FILE = Path(__file__).with_name("page.html")
#: Longest side of the preview and result-image PNGs (the page scales them; boxes stay in film pixels).
DISPLAY_MAX_SIDE = 1024
#: Films kept decoded for the crop/image endpoints (a result grid asks for many crops of few films).
FILM_CACHE_SIZE = 4
#: Non-file form fields are short; anything longer is refused by the parser.
MAX_FIELD_BYTES = 4096


class BodyTooLarge(Exception):
    pass


# -------------------------------------------------------------------------------- middleware


class GuardMiddleware:
    """Pure ASGI: bearer auth for ``/v1/*`` and the upload size limit, before any body is read.

    A body announced (``Content-Length``) over the limit is refused at once; a chunked body is
    counted as it arrives and the read fails with :class:`BodyTooLarge` (answered 413 by the route).
    """

    def __init__(self, app: Any, api_key: str | None, max_body: int):
        self.app = app
        self.api_key = api_key.encode() if api_key else None
        self.max_body = max_body

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        root = scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root) :]
        if path.startswith("/v1/") or path == "/v1":
            headers = {k.decode("latin-1").lower(): v for k, v in scope.get("headers", [])}
            if self.api_key is not None and not self._authorised(headers.get("authorization")):
                get_metrics().error("unauthorized")
                get_metrics().requests.inc(1, tags={"endpoint": "guard", "status": "4xx"})
                await _send_json(
                    send,
                    401,
                    ApiError(401, "unauthorized", "this service needs 'Authorization: Bearer <API key>'").body(),
                    extra_headers=[(b"www-authenticate", b'Bearer realm="regionmir"')],
                )
                return
            length = headers.get("content-length")
            if length is not None:
                try:
                    announced = int(length)
                except ValueError:
                    announced = -1
                if announced > self.max_body:
                    get_metrics().error("upload_too_large")
                    get_metrics().requests.inc(1, tags={"endpoint": "guard", "status": "4xx"})
                    await _send_json(send, 413, _too_large(self.max_body).body())
                    return
            receive = self._counting(receive)
        await self.app(scope, receive, send)

    def _authorised(self, header: bytes | None) -> bool:
        if not header:
            return False
        scheme, _, token = header.partition(b" ")
        return scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self.api_key or b"")

    def _counting(self, receive: Callable) -> Callable:
        seen = 0
        limit = self.max_body

        async def counted() -> dict:
            nonlocal seen
            message = await receive()
            if message.get("type") == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge()
            return message

        return counted


def _too_large(limit: int) -> ApiError:
    return ApiError(
        413, "upload_too_large", f"the request body exceeds the upload limit of {limit / (1024 * 1024):.1f} MiB"
    )


async def _send_json(send: Callable, status: int, body: dict, extra_headers: list | None = None) -> None:
    payload = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers + (extra_headers or [])})
    await send({"type": "http.response.body", "body": payload})


# ------------------------------------------------------------------------------------ helpers


def png_bytes(image: np.ndarray, max_side: int | None = None) -> tuple[bytes, float]:
    """An 8-bit PNG of a [0, 1] grey image (or uint8 RGB), downscaled to ``max_side``; and the scale."""
    from PIL import Image

    pil = Image.fromarray(to_uint8(image) if image.dtype != np.uint8 else image)
    scale = 1.0
    if max_side and max(pil.size) > max_side:
        scale = max_side / max(pil.size)
        pil = pil.resize(
            (max(1, round(pil.size[0] * scale)), max(1, round(pil.size[1] * scale))), Image.Resampling.BILINEAR
        )
    buffer = io.BytesIO()
    pil.save(buffer, format="PNG", compress_level=3)
    return buffer.getvalue(), scale


def film_with_box(pixels: np.ndarray, box: tuple[float, ...], max_side: int) -> bytes:
    """The film as an RGB PNG (≤ ``max_side``) with ``box`` drawn in orange."""
    from PIL import Image, ImageDraw

    grey = Image.fromarray(to_uint8(pixels))
    scale = min(1.0, max_side / max(grey.size))
    if scale < 1.0:
        grey = grey.resize(
            (max(1, round(grey.size[0] * scale)), max(1, round(grey.size[1] * scale))), Image.Resampling.BILINEAR
        )
    rgb = grey.convert("RGB")
    x1, y1, x2, y2 = (v * scale for v in box)
    width = max(2, round(max(rgb.size) / 250))
    ImageDraw.Draw(rgb).rectangle([x1, y1, x2, y2], outline=(255, 140, 0), width=width)
    buffer = io.BytesIO()
    rgb.save(buffer, format="PNG", compress_level=3)
    return buffer.getvalue()


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


#: ``group_by`` values the API accepts (one hit per …).
GROUP_BY_CHOICES = ("study", "patient", "image")
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("", "0", "false", "no", "off")


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


class _FilmCache:
    """A few decoded films by URI (the result grid asks for many crops of the same films)."""

    def __init__(self, size: int):
        self.size = size
        self.items: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()  # get() runs in worker threads (asyncio.to_thread)

    def get(self, uri: str, load: Callable[[str], np.ndarray]) -> np.ndarray:
        with self._lock:
            if uri in self.items:
                self.items.move_to_end(uri)
                return self.items[uri]
        pixels = load(uri)  # outside the lock: one slow read does not hold up the others
        with self._lock:
            self.items[uri] = pixels
            self.items.move_to_end(uri)
            while len(self.items) > self.size:
                self.items.popitem(last=False)
        return pixels


# ------------------------------------------------------------------------------------ the app


class QueryService:
    """The routes' logic: decode, crop or localise, embed, search, format. ``backend``: see module doc."""

    def __init__(self, settings: ServeSettings, backend: Any, contract: ModelContract, atlas: AnatomyAtlas | None):
        from regionmir.storage import S3Options

        self.settings = settings
        self.backend = backend
        self.contract = contract
        self.atlas = atlas
        self.crop = contract.crop_config
        self.class_ids = [int(c) for c in contract.class_anatomy_ids]
        self.class_column = {aid: i for i, aid in enumerate(self.class_ids)}
        self.s3 = S3Options.from_env()
        self.films = _FilmCache(FILM_CACHE_SIZE)
        self.metrics = get_metrics()
        self.timeout = settings.limits.request_timeout_s
        self.film_slots = asyncio.Semaphore(settings.limits.films_in_memory)

    async def _call(self, what: str, awaitable: Awaitable[Any]) -> Any:
        try:
            return await asyncio.wait_for(awaitable, timeout=self.timeout)
        except TimeoutError:
            raise ApiError(504, "timeout", f"the {what} did not answer within {self.timeout:g} s") from None
        except ApiError:
            raise
        except RegionMIRError as exc:
            if isinstance(exc, RegionIndexError):
                log.warning("%s call failed: %s (%s)", what, type(exc).__name__, exc.reason)
            raise from_library_error(exc) from exc
        except Exception as exc:
            name = type(exc).__name__
            if "BackPressure" in name:
                raise ApiError(
                    503, "overloaded", f"the {what} is overloaded; retry shortly", retry_after_s=RETRY_AFTER_S
                ) from exc
            reason = "index_unavailable" if what == "index" else "model_unavailable"
            log.warning("%s call failed: %s", what, name)
            raise ApiError(503, reason, f"the {what} is unavailable ({name})", retry_after_s=RETRY_AFTER_S) from exc

    # -- form handling

    async def read_form(self, request: Request) -> tuple[bytes, dict[str, str]]:
        try:
            form = await request.form(max_files=1, max_fields=16, max_part_size=MAX_FIELD_BYTES)
        except BodyTooLarge:
            raise _too_large(self.settings.max_upload_bytes) from None
        except StarletteHTTPException as exc:
            raise ApiError(400, "bad_request", f"malformed multipart body: {exc.detail}") from None
        except Exception as exc:  # the parser's own errors on garbage bodies
            raise ApiError(400, "bad_request", f"malformed request body ({type(exc).__name__})") from None
        try:
            fields: dict[str, str] = {}
            upload = None
            for name, value in form.multi_items():
                if hasattr(value, "read"):
                    if name == "image":
                        upload = value
                    continue
                fields[name] = str(value)
            if upload is None:
                raise ApiError(422, "missing_field", "send the radiograph as the multipart file field 'image'")
            try:
                data = await upload.read()
            except BodyTooLarge:
                raise _too_large(self.settings.max_upload_bytes) from None
            if len(data) > self.settings.max_upload_bytes:
                raise _too_large(self.settings.max_upload_bytes)
            return data, fields
        finally:
            await form.close()

    @contextlib.asynccontextmanager
    async def film_slot(self) -> AsyncIterator[None]:
        """One of ``limits.films_in_memory`` places for a decoded film (decode → crops or
        localisation), so concurrent big uploads cannot add up past the replica's memory. A
        request that waits ``limits.film_wait_s`` without one gets 503 + Retry-After."""
        limits = self.settings.limits
        try:
            await asyncio.wait_for(self.film_slots.acquire(), timeout=limits.film_wait_s)
        except TimeoutError:
            raise ApiError(
                503,
                "overloaded",
                f"this replica is decoding {limits.films_in_memory} films already; retry shortly",
                retry_after_s=RETRY_AFTER_S,
            ) from None
        try:
            yield
        finally:
            self.film_slots.release()

    async def decode(self, data: bytes) -> DecodedImage:
        try:
            decoded = await asyncio.to_thread(
                read_image, data, source="upload", limits=self.settings.limits.decode_limits()
            )
        except RegionMIRError as exc:
            raise from_library_error(exc, "image") from None
        except MemoryError:
            raise ApiError(413, "image_too_large", "image: too large to decode") from None
        except Exception as exc:  # a decoder plug-in failing on hostile bytes
            raise ApiError(422, "unreadable_image", f"image: cannot decode ({type(exc).__name__})") from None
        return decoded

    # -- routes

    async def search(self, request: Request) -> dict[str, Any]:
        started = time.perf_counter()
        timings: dict[str, float] = {}
        data, fields = await self.read_form(request)
        limits = self.settings.limits
        k = parse_k(fields.get("k"), limits.default_k, limits.max_k)
        anatomy = parse_anatomy(fields.get("anatomy"), "anatomy")
        filter_anatomy = parse_anatomy(fields.get("filter_anatomy"), "filter_anatomy")
        view = parse_view(fields.get("view"))
        exclude_same_patient = parse_flag(fields.get("exclude_same_patient"), "exclude_same_patient")
        group_by = parse_group_by(fields.get("group_by"))
        box_text = (fields.get("box") or "").strip()
        if not box_text and anatomy is None:
            raise ApiError(
                422, "missing_field", "give a 'box' (x1,y1,x2,y2 in image pixels), an 'anatomy' name, or both"
            )
        if not box_text and self.atlas is None:
            raise ApiError(422, "no_atlas", "this service has no anatomy atlas: draw a box instead of naming a region")

        async with self.film_slot():  # the decoded film lives only inside this block
            t = time.perf_counter()
            decoded = await self.decode(data)
            del data
            pixels = decoded.pixels
            timings["decode"] = _ms(t)
            height, width = pixels.shape
            patient_hash = decoded.info.patient_hash
            if exclude_same_patient and not patient_hash:
                raise ApiError(
                    422,
                    "no_patient_id",
                    "exclude_same_patient: the upload names no patient (a DICOM "
                    "with PatientID is needed to leave that patient's films out)",
                )
            if box_text:
                box = parse_box(box_text, width, height)
                t = time.perf_counter()
                crops = await asyncio.to_thread(roi_crops, pixels, [box], self.crop)
                timings["crop"] = _ms(t)
                del decoded, pixels
            else:
                t = time.perf_counter()
                box, vector, probabilities, localization, encode_ms = await self.localize(anatomy, pixels)
                timings["localize"] = _ms(t)
                timings["encode"] = encode_ms
                source = "atlas"
                del decoded, pixels
        filters = SearchFilters(
            anatomy=filter_anatomy,
            view=view,
            group_by=group_by,
            exclude_patient_hash=patient_hash if exclude_same_patient else None,
        )
        if box_text:
            t = time.perf_counter()
            out = await self._call("encoder", self.backend.embed(crops))
            timings["encode"] = _ms(t)
            vector = out["embeddings"][0]
            probabilities = out["probabilities"][0]
            source, localization = "user", None

        column = int(np.argmax(probabilities))
        predicted = ANATOMY_NAMES[self.class_ids[column]]
        confidence = float(probabilities[column])
        t = time.perf_counter()
        hits = await self._call("index", self.backend.search(vector, k, filters))
        timings["search"] = _ms(t)
        timings["total"] = _ms(started)

        query_anatomy = ANATOMY_NAMES[anatomy] if anatomy is not None else predicted
        self.metrics.queries.inc(1, tags={"anatomy": anatomy_label(query_anatomy), "source": source})
        for stage, value in timings.items():
            self.metrics.observe_stage(stage, value / 1000.0)
        query: dict[str, Any] = {
            "box": [round(float(v), 2) for v in box.as_list()],
            "box_source": source,
            "anatomy": ANATOMY_NAMES[anatomy] if anatomy is not None else None,
            "predicted_anatomy": predicted,
            "confidence": round(confidence, 4),
            "model_version": self.contract.version_id,
            "image_size": [width, height],
            "k": k,
            "filters": {
                "anatomy": ANATOMY_NAMES[filter_anatomy] if filter_anatomy is not None else None,
                "view": view,
                "exclude_same_patient": exclude_same_patient,
                "group_by": group_by,
            },
        }
        if localization is not None:
            query["localization"] = localization
        log.info(
            "search: anatomy=%s source=%s k=%d hits=%d total_ms=%.1f",
            anatomy_label(query_anatomy),
            source,
            k,
            len(hits),
            timings["total"],
        )
        results = [
            {
                "rank": i + 1,
                "score": round(float(h["score"]), 5),
                "anatomy": h["anatomy"],
                "image_id": h["image_id"],
                "box": [round(float(v), 2) for v in h["box"]],
                "view": h["view"],
                "key": h["key"],
                "crop_url": f"/v1/results/{h['key']}/crop",
                "image_url": f"/v1/results/{h['key']}/image",
            }
            for i, h in enumerate(hits)
        ]
        return {"query": query, "results": results, "timings_ms": timings}

    async def localize(self, anatomy: int, pixels: np.ndarray):
        """Atlas + classifier: the best box of ``anatomy``, its embedding and class probabilities."""
        atlas = self.atlas
        assert atlas is not None
        height, width = pixels.shape
        cfg = self.settings.atlas
        column = self.class_column.get(anatomy)
        encode_ms = 0.0
        try:
            # Without a class for this region only the prior box can be chosen: embed just that one.
            boxes = atlas.propose(anatomy, width, height, n=cfg.candidates if column is not None else 1)
        except AtlasError as exc:
            raise from_library_error(exc, "anatomy") from None
        best = None
        step = 1.0
        for round_ in range(cfg.rounds if column is not None else 1):
            if round_:
                step /= 2
                boxes = atlas.refine(anatomy, best["box"], width, height, n=cfg.candidates, step=step)
            crops = await asyncio.to_thread(roi_crops, pixels, boxes, self.crop)
            t = time.perf_counter()
            out = await self._call("encoder", self.backend.embed(crops))
            encode_ms += _ms(t)
            probs = out["probabilities"][:, column] if column is not None else None
            chosen = atlas.choose(anatomy, boxes, probs, width, height, prior_weight=cfg.prior_weight)
            if best is None or chosen.score >= best["score"]:
                best = {
                    "box": chosen.box,
                    "score": chosen.score,
                    "confidence": chosen.confidence,
                    "vector": out["embeddings"][chosen.index],
                    "probabilities": out["probabilities"][chosen.index],
                    "prior_box": chosen.prior_box,
                }
            if column is None:
                break
        assert best is not None
        if best["confidence"] is not None:
            self.metrics.localized.observe(float(best["confidence"]))
        info = {
            "method": "atlas prior + classifier"
            if column is not None
            else "atlas prior (the classifier has no class for this region)",
            "confidence": None if best["confidence"] is None else round(best["confidence"], 4),
            "prior_box": [round(float(v), 2) for v in best["prior_box"].as_list()],
            "rounds": cfg.rounds if column is not None else 1,
        }
        return best["box"], best["vector"], best["probabilities"], info, encode_ms

    async def preview(self, request: Request) -> Response:
        data, _ = await self.read_form(request)
        async with self.film_slot():
            pixels = (await self.decode(data)).pixels
            height, width = pixels.shape
            png, scale = await asyncio.to_thread(png_bytes, pixels, DISPLAY_MAX_SIDE)
            del pixels
        return Response(
            png,
            media_type="image/png",
            headers={
                "X-Image-Width": str(width),
                "X-Image-Height": str(height),
                "X-Preview-Scale": f"{scale:.6f}",
                "Cache-Control": "no-store",
            },
        )

    async def row(self, key: str) -> dict[str, Any]:
        if not KEY_RE.fullmatch(key):  # match() would let "key\n" through: "$" matches before a final newline
            raise ApiError(422, "bad_key", "a result key is 32 lowercase hex characters")
        rows = await self._call("index", self.backend.get_rows([key]))
        if key not in rows:
            raise ApiError(404, "not_found", "no indexed region has this key")
        return rows[key]

    def _load_film(self, row: dict[str, Any]) -> Callable[[str], np.ndarray]:
        """The loader of one indexed film: its sealed location opened (with this replica's salt and
        the row's image id), read and decoded; errors name the image id, never the path."""

        def load(sealed: str) -> np.ndarray:
            path = open_location(sealed, row["image_id"])
            return read_image(
                path, source=f"indexed film {row['image_id']}", s3=self.s3, max_pixels=self.settings.limits.max_pixels
            ).pixels

        return load

    async def film(self, row: dict[str, Any]) -> np.ndarray:
        """The decoded film of an index row (cached by its sealed location)."""
        sealed = row["image_uri"]
        try:
            if sealed in self.films.items:  # a cached film costs nothing more
                return await asyncio.to_thread(self.films.get, sealed, self._load_film(row))
            async with self.film_slot():  # decoding an indexed film counts against the replica's films too
                return await asyncio.to_thread(self.films.get, sealed, self._load_film(row))
        except MissingImageError:
            raise ApiError(404, "missing_image", "the indexed film is no longer in storage") from None
        except StorageError as exc:
            # the message may name the object (a path with a patient's id): it goes to the log, not the caller
            log.warning("result film unreadable: %s", exc.reason)
            raise ApiError(
                503, "storage_unavailable", "the film store did not answer; retry shortly", retry_after_s=RETRY_AFTER_S
            ) from None
        except SealedLocationError:
            raise ApiError(
                500,
                "sealed_location",
                "this service's REGIONMIR_ID_SALT does not open the index's film locations (see /readyz)",
            ) from None
        except RegionMIRError as exc:
            raise ApiError(500, "internal", f"the indexed film cannot be read ({exc.reason})") from None

    async def result_crop(self, key: str, size: int | None) -> Response:
        row = await self.row(key)
        pixels = await self.film(row)
        size = 192 if size is None else size
        if not 16 <= size <= 512:
            raise ApiError(422, "bad_request", "size must lie in 16..512")
        config = CropConfig(size=size, margin=self.crop.margin, pad_value=self.crop.pad_value)
        patch = await asyncio.to_thread(roi_crop, pixels, Box(*row["box"]), config)
        png, _ = await asyncio.to_thread(png_bytes, patch)
        return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})

    async def result_image(self, key: str) -> Response:
        row = await self.row(key)
        pixels = await self.film(row)
        png = await asyncio.to_thread(film_with_box, pixels, tuple(row["box"]), DISPLAY_MAX_SIDE)
        height, width = pixels.shape
        return Response(
            png,
            media_type="image/png",
            headers={
                "Cache-Control": "private, max-age=3600",
                "X-Image-Width": str(width),
                "X-Image-Height": str(height),
            },
        )

    def anatomies(self) -> dict[str, Any]:
        items = []
        for aid, name in enumerate(ANATOMY_NAMES):
            items.append(
                {
                    "id": aid,
                    "name": name,
                    "classifier": aid in self.class_column,
                    "atlas": self.atlas is not None and aid in self.atlas.entries,
                }
            )
        return {
            "anatomies": items,
            "model_version": self.contract.version_id,
            "limits": {
                "max_k": self.settings.limits.max_k,
                "default_k": self.settings.limits.default_k,
                "max_upload_mb": self.settings.limits.max_upload_mb,
                "max_pixels": self.settings.limits.max_pixels,
            },
        }

    async def ready(self) -> tuple[int, dict[str, Any]]:
        checks: dict[str, Any] = {}
        ok = True
        try:
            checks["model"] = await asyncio.wait_for(self.backend.encoder_status(), timeout=10)
            checks["model"]["loaded"] = True
        except Exception as exc:
            ok = False
            checks["model"] = {"loaded": False, "error": type(exc).__name__}
        try:
            status = await asyncio.wait_for(self.backend.index_status(), timeout=10)
            checks["index"] = {**status, "reachable": True}
            self.metrics.index_rows.set(status["rows"], tags={"scope": "collection"})
            self.metrics.index_rows.set(status["model_rows"], tags={"scope": "model"})
            if status["rows"] <= 0:
                ok = False
                checks["index"]["problem"] = "the collection is empty"
            elif status["model_rows"] <= 0:
                ok = False
                checks["index"]["problem"] = (
                    f"no rows of the served model {self.contract.version_id}: "
                    "index the data with this model, or serve the model it was built with"
                )
            elif status.get("locations_open") is False:
                ok = False
                checks["index"]["problem"] = (
                    "the index's film locations were sealed with another REGIONMIR_ID_SALT "
                    "than this service's: give the service the index job's salt"
                )
        except Exception as exc:
            ok = False
            checks["index"] = {"reachable": False, "error": getattr(exc, "message", type(exc).__name__)}
        checks["atlas"] = {
            "loaded": self.atlas is not None,
            "regions": 0 if self.atlas is None else len(self.atlas.entries),
        }
        return (200 if ok else 503), {"status": "ready" if ok else "not ready", "checks": checks}


def _ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000.0, 2)


def create_app(settings: ServeSettings, backend: Any, contract: ModelContract, atlas: AnatomyAtlas | None) -> Any:
    """The ASGI app: FastAPI routes wrapped in :class:`GuardMiddleware` (auth + upload limit)."""
    service = QueryService(settings, backend, contract, atlas)
    metrics = service.metrics
    app = FastAPI(
        title="RegionMIR query service", version="1", docs_url="/docs", redoc_url=None, openapi_url="/openapi.json"
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
            return answer(_too_large(settings.max_upload_bytes), endpoint)
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
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return answer(ApiError(422, "bad_request", f"{where}: {first.get('msg', 'invalid')}"), "other")

    @app.post("/v1/search")
    async def search(request: Request):
        return await guarded("/v1/search", lambda: service.search(request))

    @app.post("/v1/preview")
    async def preview(request: Request):
        return await guarded("/v1/preview", lambda: service.preview(request))

    @app.get("/v1/anatomies")
    async def anatomies():
        return await guarded("/v1/anatomies", _wrap(service.anatomies))

    @app.get("/v1/results/{key}/crop")
    async def result_crop(key: str, size: str | None = None):
        async def work():
            try:
                value = None if size is None else int(size)
            except ValueError:
                raise ApiError(422, "bad_request", "size must be an integer") from None
            return await service.result_crop(key, value)

        return await guarded("/v1/results/{key}/crop", work)

    @app.get("/v1/results/{key}/image")
    async def result_image(key: str):
        return await guarded("/v1/results/{key}/image", lambda: service.result_image(key))

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz():
        status, body = await service.ready()
        return JSONResponse(body, status_code=status)

    @app.get("/", response_class=HTMLResponse)
    async def page():
        return HTMLResponse(PAGE_FILE.read_text(encoding="utf-8"), headers={"Cache-Control": "no-cache"})

    return GuardMiddleware(app, settings.auth.api_key, settings.max_upload_bytes)


def _wrap(fn: Callable[[], Any]) -> Callable[[], Awaitable[Any]]:
    async def run() -> Any:
        return fn()

    return run
