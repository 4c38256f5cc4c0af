"""The query service's work behind the routes of :mod:`serving.api`: decode an upload (or fetch the
film a PACS reference names, :mod:`serving.pacs`), crop its box or localise its region with the
atlas, embed, search, format (and export, :mod:`serving.search_export`); and read indexed films for
the result routes. ``backend``: an object with ``embed``, ``search``, ``get_rows``, ``index_status``
and ``encoder_status`` coroutines (see :func:`serving.api.create_app`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from fastapi.responses import Response

from regionmir.anatomy import ANATOMY_NAMES
from regionmir.anatomy_atlas import AnatomyAtlas, AtlasError
from regionmir.boxes import Box
from regionmir.decoded_image import DecodedImage
from regionmir.dicomweb import InstanceReference, PacsInstance, is_dicomweb, parse_instance_uri
from regionmir.errors import MissingImageError, RegionIndexError, RegionMIRError, StorageError
from regionmir.image_reader import read_image
from regionmir.model_contract import ModelContract
from regionmir.roi_crop import CropConfig, roi_crop, roi_crops
from regionmir.sealed_location import SealedLocationError, open_location

from .config import ServeSettings
from .errors import RETRY_AFTER_S, ApiError, from_library_error, from_storage_error
from .film_cache import FilmCache
from .form_fields import parse_anatomy, parse_box, parse_flag, parse_group_by, parse_k, parse_view
from .images import DISPLAY_MAX_SIDE, film_with_box, png_bytes
from .metrics import anatomy_label, get_metrics
from .pacs import PacsLink, PacsReference
from .runtime import KEY_RE, SearchFilters
from .search_export import csv_response, parse_export, store_report
from .startup_checks import PACS_REQUIRES_API_KEY

log = logging.getLogger("ray.serve")

#: Films kept decoded for the crop/image endpoints (a result grid asks for many crops of few films).
FILM_CACHE_SIZE = 4


@dataclass(frozen=True)
class SearchFields:
    """The text fields of a search form as sent (``None``: absent); :meth:`QueryService.search` parses them."""

    box: str | None = None
    anatomy: str | None = None
    k: str | None = None
    filter_anatomy: str | None = None
    view: str | None = None
    exclude_same_patient: str | None = None
    group_by: str | None = None
    export: str | None = None


#: The query film: the uploaded bytes, or the PACS instance a reference names.
QueryFilm = bytes | PacsReference


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
        self.films = FilmCache(FILM_CACHE_SIZE)
        self.metrics = get_metrics()
        self.timeout = settings.limits.request_timeout_s
        self.film_slots = asyncio.Semaphore(settings.limits.films_in_memory)
        self.pacs = PacsLink(settings)

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

    def decode_now(self, data: bytes, source: str = "upload") -> DecodedImage:
        """The film decoded with the limits of an upload, its failures as the API's errors. Blocks:
        call it in a worker thread (:meth:`read_film`, :meth:`cut_box`)."""
        try:
            return read_image(data, source=source, limits=self.settings.limits.decode_limits())
        except RegionMIRError as exc:
            raise from_library_error(exc, "image") from None
        except MemoryError:
            raise ApiError(413, "image_too_large", "image: too large to decode") from None
        except Exception as exc:  # a decoder plug-in failing on hostile bytes
            raise ApiError(422, "unreadable_image", f"image: cannot decode ({type(exc).__name__})") from None

    def cut_box(self, data: bytes, source: str, box_text: str, exclude_same_patient: bool) -> BoxCrop:
        """A box query's film work in one worker-thread call (one hop off the event loop, not one
        per step): decode, check the film names a patient when ``exclude_same_patient`` asks, parse
        the box against the film's size, crop it. The decoded pixels go when it returns."""
        started = time.perf_counter()
        decoded = self.decode_now(data, source)
        decoded_at = time.perf_counter()
        height, width = decoded.pixels.shape
        require_patient(exclude_same_patient, decoded.info.patient_hash)
        box = parse_box(box_text, width, height)
        crops = roi_crops(decoded.pixels, [box], self.crop)
        return BoxCrop(
            width=width,
            height=height,
            patient_hash=decoded.info.patient_hash,
            box=box,
            crops=crops,
            decode_ms=(decoded_at - started) * 1000.0,
            crop_ms=(time.perf_counter() - decoded_at) * 1000.0,
        )

    async def resolve(self, film: QueryFilm) -> PacsInstance | None:
        """The PACS instance a reference names (QIDO-RS; no film slot needed); ``None`` for an upload."""
        return await self.pacs.resolve(film) if isinstance(film, PacsReference) else None

    async def film_bytes(self, film: QueryFilm, instance: PacsInstance | None, timings: dict[str, float]) -> bytes:
        """The query film's bytes: the upload, or the PACS instance fetched (WADO-RS) — before a
        film slot is taken, so a slow PACS holds no slot an upload waits for (the bytes are held
        as an upload's are while it waits)."""
        if instance is None:
            assert isinstance(film, bytes)
            return film
        t = time.perf_counter()
        data = await self.pacs.retrieve(instance)
        timings["fetch"] = _ms(t)
        return data

    async def read_film(self, data: bytes, pacs: bool, timings: dict[str, float]) -> DecodedImage:
        """The query film decoded with the limits of an upload. Call it holding a film slot."""
        t = time.perf_counter()
        decoded = await asyncio.to_thread(self.decode_now, data, film_source(pacs))
        timings["decode"] = _ms(t)
        return decoded

    def hit_instances(self, hits: list[dict[str, Any]]) -> list[InstanceReference | None]:
        """Each hit's PACS instance (``None`` for a film outside a PACS); 503 ``pacs_requires_api_key``
        for a PACS hit on a service without an API key."""
        return [self.pacs.instance_of(hit) for hit in hits]

    # -- routes

    async def search(self, film: QueryFilm, fields: SearchFields, started: float | None = None) -> Any:
        """``POST /v1/search``: the query ``film`` (uploaded bytes or a PACS reference) and the
        form's text ``fields``, as sent. ``started``: when the request began (its upload was read
        before this call). The answer's JSON as a dict, or a response for ``export=csv``."""
        started = time.perf_counter() if started is None else started
        timings: dict[str, float] = {}
        limits = self.settings.limits
        k = parse_k(fields.k, limits.default_k, limits.max_k)
        anatomy = parse_anatomy(fields.anatomy, "anatomy")
        filter_anatomy = parse_anatomy(fields.filter_anatomy, "filter_anatomy")
        view = parse_view(fields.view)
        exclude_same_patient = parse_flag(fields.exclude_same_patient, "exclude_same_patient")
        group_by = parse_group_by(fields.group_by)
        export = parse_export(fields.export)
        box_text = (fields.box or "").strip()
        if not box_text and anatomy is None:
            raise ApiError(
                422, "missing_field", "give a 'box' (x1,y1,x2,y2 in image pixels), an 'anatomy' name, or both"
            )
        if not box_text and self.atlas is None:
            raise ApiError(422, "no_atlas", "this service has no anatomy atlas: draw a box instead of naming a region")
        if export == "sr" and not isinstance(film, PacsReference):
            raise ApiError(
                422,
                "export_needs_pacs_query",
                "export=sr writes a report into the query's PACS study: query by study_uid/sop_instance_uid, "
                "not an upload",
            )

        instance = await self.resolve(film)
        data = await self.film_bytes(film, instance, timings)
        del film
        # a box query announces itself to the encoder batcher while its film decodes: a pass about to
        # start may wait for it (serving.encoder_batcher)
        with self.backend.arriving() if box_text else contextlib.nullcontext() as arrival:
            async with self.film_slot():  # the decoded film lives only inside this block
                if box_text:
                    cut = await asyncio.to_thread(
                        self.cut_box, data, film_source(instance is not None), box_text, exclude_same_patient
                    )
                    del data
                    timings["decode"], timings["crop"] = round(cut.decode_ms, 2), round(cut.crop_ms, 2)
                    width, height, patient_hash, box, crops = (
                        cut.width,
                        cut.height,
                        cut.patient_hash,
                        cut.box,
                        cut.crops,
                    )
                    del cut
                else:
                    decoded = await self.read_film(data, instance is not None, timings)
                    del data
                    pixels = decoded.pixels
                    height, width = pixels.shape
                    patient_hash = decoded.info.patient_hash
                    require_patient(exclude_same_patient, patient_hash)
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
                out = await self._call("encoder", self.backend.embed(crops, arrival))
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
        hit_instances = self.hit_instances(hits)

        query_anatomy = ANATOMY_NAMES[anatomy] if anatomy is not None else predicted
        self.metrics.queries.inc(1, tags={"anatomy": anatomy_label(query_anatomy), "source": source})
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
        query["dicom"] = None if instance is None else instance.reference.as_dict()
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
                "box_source": h.get("box_source") or "label",
                "dicom": None if ref is None else self.pacs.describe(ref),
            }
            for i, (h, ref) in enumerate(zip(hits, hit_instances, strict=True))
        ]
        answer: dict[str, Any] = {"query": query, "results": results, "timings_ms": timings}
        if export == "sr":
            t = time.perf_counter()
            report = await store_report(self.pacs, answer, instance, hit_instances, self.contract.version_id)
            answer["export"] = {"sr": report}
            timings["export"] = _ms(t)
        timings["total"] = _ms(started)
        for stage, value in timings.items():
            self.metrics.observe_stage(stage, value / 1000.0)
        log.info(
            "search: film=%s anatomy=%s source=%s k=%d hits=%d export=%s total_ms=%.1f",
            "upload" if instance is None else "pacs",
            anatomy_label(query_anatomy),
            source,
            k,
            len(hits),
            export or "none",
            timings["total"],
        )
        return csv_response(answer) if export == "csv" else answer

    async def localize(self, anatomy: int, pixels: np.ndarray):
        """Atlas + classifier: the best box of ``anatomy``, its embedding and class probabilities.

        The search is the atlas's own (:meth:`~regionmir.anatomy_atlas.AnatomyAtlas.localization`,
        the loop ``localization_miou`` measures); each round's crops go to the batched encoder, whose
        probabilities of the region's class score them. A region the classifier has no class for
        gets its prior box (one round of one box, still embedded for the search)."""
        atlas = self.atlas
        assert atlas is not None
        height, width = pixels.shape
        cfg = self.settings.atlas
        column = self.class_column.get(anatomy)
        encode_ms = 0.0
        try:
            search = atlas.localization(
                anatomy,
                width,
                height,
                n=cfg.candidates,
                rounds=cfg.rounds,
                prior_weight=cfg.prior_weight,
                classify=column is not None,
            )
        except AtlasError as exc:
            raise from_library_error(exc, "anatomy") from None
        outputs: list[dict[str, np.ndarray]] = []  # the encoder's answer of each round
        while not search.done:
            crops = await asyncio.to_thread(roi_crops, pixels, search.boxes, self.crop)
            t = time.perf_counter()
            out = await self._call("encoder", self.backend.embed(crops))
            encode_ms += _ms(t)
            outputs.append(out)
            search.score(out["probabilities"][:, column] if column is not None else None)
        found = search.result
        chosen = outputs[found.round]
        if found.confidence is not None:
            self.metrics.localized.observe(float(found.confidence))
        info = {
            "method": "atlas prior + classifier"
            if column is not None
            else "atlas prior (the classifier has no class for this region)",
            "confidence": None if found.confidence is None else round(found.confidence, 4),
            "prior_box": [round(float(v), 2) for v in found.prior_box.as_list()],
            "rounds": search.rounds,
        }
        return found.box, chosen["embeddings"][found.index], chosen["probabilities"][found.index], info, encode_ms

    async def preview(self, film: QueryFilm) -> Response:
        """``POST /v1/preview``: the query film (an upload or the PACS instance a reference names)
        as a PNG of at most :data:`DISPLAY_MAX_SIDE`; a PACS film's UIDs in ``X-Study-UID``,
        ``X-Series-UID``, ``X-SOP-Instance-UID``."""
        instance = await self.resolve(film)
        data = await self.film_bytes(film, instance, {})
        del film
        async with self.film_slot():
            pixels = (await self.read_film(data, instance is not None, {})).pixels
            del data
            height, width = pixels.shape
            png, scale = await asyncio.to_thread(png_bytes, pixels, DISPLAY_MAX_SIDE)
            del pixels
        headers = {
            "X-Image-Width": str(width),
            "X-Image-Height": str(height),
            "X-Preview-Scale": f"{scale:.6f}",
            "Cache-Control": "no-store",
        }
        if instance is not None:
            place = instance.reference
            headers.update(
                {
                    "X-Study-UID": place.study_uid,
                    "X-Series-UID": place.series_uid,
                    "X-SOP-Instance-UID": place.sop_instance_uid,
                }
            )
        return Response(png, media_type="image/png", headers=headers)

    async def row(self, key: str) -> dict[str, Any]:
        if not KEY_RE.fullmatch(key):  # match() would let "key\n" through: "$" matches before a final newline
            raise ApiError(422, "bad_key", "a result key is 32 lowercase hex characters")
        rows = await self._call("index", self.backend.get_rows([key]))
        if key not in rows:
            raise ApiError(404, "not_found", "no indexed region has this key")
        self.pacs.instance_of(rows[key])  # a PACS row's film only with an API key (serving.pacs)
        return rows[key]

    async def result_dicom(self, key: str) -> dict[str, Any]:
        """``GET /v1/results/{key}/dicom``: the PACS instance of a result's film (404 ``not_dicom``
        for a film outside a PACS)."""
        reference = self.pacs.instance_of(await self.row(key))
        if reference is None:
            raise ApiError(404, "not_dicom", "this result's film is not a PACS instance (a file or object-store film)")
        return self.pacs.describe(reference)

    def _load_film(self, row: dict[str, Any]) -> Callable[[str], np.ndarray]:
        """The loader of one indexed film: its sealed location opened (with this replica's salt and
        the row's image id), read and decoded; errors name the image id, never the path."""

        def load(sealed: str) -> np.ndarray:
            path = open_location(sealed, row["image_id"])
            if is_dicomweb(path):  # a PACS instance: the interactive client (one attempt, a short read timeout)
                reference = parse_instance_uri(path)
                path = self.pacs.client_of(reference).retrieve(reference, max_pixels=self.settings.limits.max_pixels)
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
            # the message may name the object (a path with a patient's id): neither the log nor the caller sees it
            log.warning("result film unreadable: %s", exc.reason)
            raise from_storage_error(exc) from None
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
            elif status.get("pacs_connected") and not self.settings.auth.api_key:
                ok = False
                checks["index"]["reason"] = PACS_REQUIRES_API_KEY
                checks["index"]["problem"] = (
                    "the index holds PACS instances (SOP Instance UIDs, WADO-RS locations) and this service "
                    "has no API key: a PACS-connected index is served only with one (REGIONMIR_API_KEY), "
                    "--insecure-dev or not"
                )
        except Exception as exc:
            ok = False
            checks["index"] = {"reachable": False, "error": getattr(exc, "message", type(exc).__name__)}
        checks["atlas"] = {
            "loaded": self.atlas is not None,
            "regions": 0 if self.atlas is None else len(self.atlas.entries),
        }
        return (200 if ok else 503), {"status": "ready" if ok else "not ready", "checks": checks}


@dataclass(frozen=True)
class BoxCrop:
    """What :meth:`QueryService.cut_box` made of a box query's film: its size, its patient's salted
    hash (``None``: it names none), the checked box, the crop, and the milliseconds of each step."""

    width: int
    height: int
    patient_hash: str | None
    box: Box
    crops: np.ndarray
    decode_ms: float
    crop_ms: float


def film_source(pacs: bool) -> str:
    """How a decode error names the film."""
    return "PACS instance" if pacs else "upload"


def require_patient(exclude_same_patient: bool, patient_hash: str | None) -> None:
    """422 ``no_patient_id`` when ``exclude_same_patient`` asks to leave out a film's patient and the
    film names none."""
    if exclude_same_patient and not patient_hash:
        raise ApiError(
            422,
            "no_patient_id",
            "exclude_same_patient: the upload names no patient (a DICOM "
            "with PatientID is needed to leave that patient's films out)",
        )


def _ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000.0, 2)
