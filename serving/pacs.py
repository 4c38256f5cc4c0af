"""The query service's link to the hospital's PACS over DICOMweb (:mod:`regionmir.dicomweb`).

* **A query by reference**: the form fields ``study_uid``, ``series_uid`` and ``sop_instance_uid``
  (:func:`parse_reference`) name the query film instead of an upload. A SOP Instance UID names that
  instance (with or without its study and series); a series (with its study) or a study alone names
  its frontal (PA/AP) CR/DX film, the first by series and instance number. :meth:`PacsLink.resolve`
  finds it by QIDO-RS, :meth:`PacsLink.retrieve` fetches it by WADO-RS.
* **Hits a viewer can open**: :meth:`PacsLink.instance_of` opens an index row's sealed location
  (:mod:`regionmir.sealed_location`); a PACS instance's UIDs, WADO-RS URL and viewer link
  (``pacs.viewer_url``) are what :meth:`PacsLink.describe` answers.
* **The evidence and the store of a Structured Report** (:mod:`serving.search_export`):
  :meth:`PacsLink.metadata` (WADO-RS metadata, no pixels) and :meth:`PacsLink.store` (STOW-RS).

**Policy**: PACS data — a film fetched by reference, a hit's UIDs, a PACS row's film — is served only
by a service with an API key (:meth:`PacsLink.require_api_key`, 503 ``pacs_requires_api_key``); the
start-up and readiness checks say the same earlier (:mod:`serving.startup_checks`,
:meth:`serving.query_service.QueryService.ready`). Every PACS call runs in a worker thread; every
failure is an :class:`~serving.errors.ApiError` (``not_in_pacs``, ``no_frontal_instance``,
``pacs_unavailable`` …). Messages and log lines name UIDs, never a patient.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from regionmir.dicomweb import (
    DicomWebClient,
    InstanceReference,
    PacsInstance,
    check_uid,
    client_for,
    is_dicomweb,
    parse_instance_uri,
    same_root,
)
from regionmir.errors import ImageTooLargeError, MissingImageError, StorageError
from regionmir.sealed_location import SealedLocationError, open_location

from .config import ServeSettings
from .errors import RETRY_AFTER_S, ApiError, from_storage_error

#: The form fields of a query by reference, in the order a reference narrows.
REFERENCE_FIELDS = ("study_uid", "series_uid", "sop_instance_uid")
#: WADO-RS metadata requests in flight at once for one report's evidence.
METADATA_CONCURRENCY = 8
#: Threads a replica gives to PACS calls (their own: a PACS that hangs never takes the threads that
#: decode and crop uploads), and the seconds a PACS call may take before the caller gets 503
#: ``pacs_unavailable`` (the client itself gives up on a read after
#: :data:`regionmir.dicomweb.INTERACTIVE_READ_TIMEOUT_S`).
PACS_THREADS = 4
PACS_DEADLINE_S = 20.0


@dataclass(frozen=True)
class PacsReference:
    """The query film named by UIDs (each checked, or ``None`` when not given)."""

    study_uid: str | None = None
    series_uid: str | None = None
    sop_instance_uid: str | None = None

    def describe(self) -> str:
        if self.sop_instance_uid:
            return f"SOP instance {self.sop_instance_uid}"
        if self.series_uid:
            return f"series {self.series_uid} of study {self.study_uid}"
        return f"study {self.study_uid}"


def reference_given(*values: str | None) -> bool:
    """Whether any of the reference fields was sent with a value."""
    return any(value is not None and str(value).strip() for value in values)


def parse_reference(
    study_uid: str | None, series_uid: str | None, sop_instance_uid: str | None
) -> PacsReference | None:
    """The reference the form names (``None`` when it names none); 422 ``bad_uid`` for a value
    that is not a DICOM UID, 422 ``missing_field`` for a series without its study."""
    sent = dict(zip(REFERENCE_FIELDS, (study_uid, series_uid, sop_instance_uid), strict=True))
    if not reference_given(*sent.values()):
        return None
    checked: dict[str, str] = {}
    for name, value in sent.items():
        if value is None or not str(value).strip():
            continue
        try:
            checked[name] = check_uid(value, name)
        except ValueError as exc:
            raise ApiError(422, "bad_uid", str(exc)) from None
    if "series_uid" in checked and "study_uid" not in checked and "sop_instance_uid" not in checked:
        raise ApiError(422, "missing_field", "series_uid needs its study_uid (or give sop_instance_uid)")
    return PacsReference(**checked)


def _not_in_pacs(what: str) -> ApiError:
    return ApiError(404, "not_in_pacs", f"the PACS holds no {what}")


class PacsLink:
    """The PACS of ``settings.pacs`` (may be unset: then only hits' locations are read) and the
    service's policy on PACS data (an API key, ``settings.auth.api_key``)."""

    def __init__(self, settings: ServeSettings):
        self.settings = settings.pacs
        self.root = settings.pacs.dicomweb_url
        self.has_api_key = bool(settings.auth.api_key)
        self.max_pixels = settings.limits.max_pixels  # an instance over it is not fetched (413)
        self.deadline_s = min(PACS_DEADLINE_S, 0.8 * settings.limits.request_timeout_s)
        self._threads = ThreadPoolExecutor(PACS_THREADS, thread_name_prefix="regionmir-pacs")

    async def call(self, what: str, work: Callable[..., Any], *args: Any) -> Any:
        """``work(*args)`` on the PACS threads, at most :attr:`deadline_s`: then 503
        ``pacs_unavailable`` (the thread ends with the client's own read timeout)."""
        loop = asyncio.get_running_loop()
        try:
            return await asyncio.wait_for(
                loop.run_in_executor(self._threads, functools.partial(work, *args)), self.deadline_s
            )
        except TimeoutError:
            raise ApiError(
                503,
                "pacs_unavailable",
                f"the PACS did not answer {what} within {self.deadline_s:g} s; retry shortly",
                retry_after_s=RETRY_AFTER_S,
            ) from None

    # -- policy

    def require_api_key(self) -> None:
        """503 ``pacs_requires_api_key`` unless the service has an API key."""
        if not self.has_api_key:
            raise ApiError(
                503,
                "pacs_requires_api_key",
                "this service serves PACS data only with an API key (REGIONMIR_API_KEY); it has none",
                retry_after_s=RETRY_AFTER_S,
            )

    def client(self) -> DicomWebClient:
        """The configured PACS's client; 422 ``no_pacs`` without one, 503 without an API key."""
        if not self.root:
            raise ApiError(422, "no_pacs", "this service has no PACS (pacs.dicomweb_url): upload the film instead")
        self.require_api_key()
        return client_for(self.root, interactive=True)

    # -- a query by reference

    async def resolve(self, reference: PacsReference) -> PacsInstance:
        """The instance ``reference`` names (QIDO-RS)."""
        client = self.client()
        try:
            return await self.call("a QIDO-RS search", _resolve, client, reference)
        except StorageError as exc:
            raise from_storage_error(exc) from None

    async def retrieve(self, instance: PacsInstance) -> bytes:
        """The instance's DICOM file (WADO-RS); 413 ``image_too_large`` without fetching it when its
        metadata says it is over ``limits.max_pixels``, as an upload over it would be."""
        client = self.client()
        try:
            return await self.call(
                "a WADO-RS retrieve", functools.partial(client.retrieve, max_pixels=self.max_pixels), instance.reference
            )
        except ImageTooLargeError as exc:
            raise ApiError(413, "image_too_large", exc.message) from None
        except MissingImageError:
            raise _not_in_pacs(f"SOP instance {instance.reference.sop_instance_uid} (any more)") from None
        except StorageError as exc:
            raise from_storage_error(exc) from None

    # -- hits

    def instance_of(self, row: dict[str, Any]) -> InstanceReference | None:
        """The PACS instance an index row's film is (``None`` for a file or object-store film, or a
        location this service's salt does not open: ``/readyz`` reports that). 503 without an API key."""
        try:
            location = open_location(str(row["image_uri"]), str(row["image_id"]))
        except (SealedLocationError, KeyError):
            return None
        if not is_dicomweb(location):
            return None
        try:
            reference = parse_instance_uri(location)
        except ValueError:
            return None
        self.require_api_key()
        return reference

    def client_of(self, reference: InstanceReference) -> DicomWebClient:
        """The interactive client for the PACS an index row names: with the service's credentials
        only when that is the configured PACS (``pacs.dicomweb_url``) — an index built against
        another PACS never receives them."""
        return client_for(reference.root, interactive=True, credentials=same_root(reference.root, self.root))

    def describe(self, reference: InstanceReference) -> dict[str, str | None]:
        """The ``dicom`` object of a hit: its UIDs, WADO-RS URL and viewer link (``None`` without ``pacs.viewer_url``)."""
        return {
            **reference.as_dict(),
            "viewer_url": self.settings.viewer_link(
                reference.study_uid, reference.series_uid, reference.sop_instance_uid
            ),
        }

    # -- a Structured Report

    async def metadata(self, references: Sequence[InstanceReference]) -> dict[str, Any]:
        """SOP Instance UID → the instance's attributes (pydicom Dataset, no pixels) for each
        reference the PACS still holds (each from the PACS its location names)."""
        self.require_api_key()
        gate = asyncio.Semaphore(METADATA_CONCURRENCY)

        async def one(reference: InstanceReference) -> tuple[str, Any]:
            async with gate:
                try:
                    found = await self.call("a WADO-RS metadata request", self.client_of(reference).metadata, reference)
                except MissingImageError:
                    found = None
            return reference.sop_instance_uid, found

        unique = {r.sop_instance_uid: r for r in references}
        try:
            answers = await asyncio.gather(*(one(r) for r in unique.values()))
        except StorageError as exc:
            raise from_storage_error(exc) from None
        return {uid: ds for uid, ds in answers if ds is not None}

    async def store(self, datasets: Sequence[Any]) -> list[str]:
        """STOW-RS into the configured PACS: the SOP Instance UIDs it took."""
        client = self.client()
        try:
            return await self.call("a STOW-RS store", client.store, list(datasets))
        except StorageError as exc:
            raise from_storage_error(exc) from None


def _resolve(client: DicomWebClient, reference: PacsReference) -> PacsInstance:
    """:meth:`PacsLink.resolve` in a worker thread (ApiError for what the PACS does not hold)."""
    if reference.sop_instance_uid:
        try:
            if reference.study_uid and reference.series_uid:
                return client.instance(reference.study_uid, reference.series_uid, reference.sop_instance_uid)
            found = client.find_instance(reference.sop_instance_uid)
        except MissingImageError:
            raise _not_in_pacs(reference.describe()) from None
        place = found.reference
        if (reference.study_uid and place.study_uid != reference.study_uid) or (
            reference.series_uid and place.series_uid != reference.series_uid
        ):
            raise _not_in_pacs(f"{reference.describe()} in the study/series given (it lies in another)")
        return found
    assert reference.study_uid  # parse_reference: a series comes with its study
    try:
        return client.frontal_instance(reference.study_uid, reference.series_uid)
    except MissingImageError:
        filters = {"StudyInstanceUID": reference.study_uid}
        if reference.series_uid:
            filters["SeriesInstanceUID"] = reference.series_uid
        if not client.search_instances(**filters):
            raise _not_in_pacs(reference.describe()) from None
        raise ApiError(
            404,
            "no_frontal_instance",
            f"{reference.describe()} holds no frontal (PA/AP) CR/DX radiograph: name its SOP instance instead",
        ) from None
