"""A hospital PACS over DICOMweb: find radiographs (QIDO-RS), fetch them (WADO-RS), store (STOW-RS).

Films in a PACS are named by **instance URIs**: ``dicomweb+http://host:port/dicom-web/studies/S/
series/R/instances/I`` — the WADO-RS URL of the instance behind a ``dicomweb+`` marker, so
:func:`regionmir.storage.read_bytes` (and with it every film reader, the index job's Ray tasks and
the query service) reads them like any other location. :func:`retrieve_url` drops the marker:
that is the URL a viewer or ``curl`` retrieves.

A data source (``regionmir index --data``) is the service root with its search as query
parameters (:class:`DicomWebSource`)::

    dicomweb+http://pacs:8042/dicom-web?modality=CR,DX&study_date=20240101-20241231&study_uid=1.2.3

Credentials come from the environment, read on every call (never stored in a URI or a row):
``REGIONMIR_DICOMWEB_TOKEN`` (``Authorization: Bearer``) or ``REGIONMIR_DICOMWEB_USER`` /
``REGIONMIR_DICOMWEB_PASSWORD`` (HTTP basic). A server that does not answer is a
:class:`~regionmir.errors.StorageError` with reason ``pacs_unavailable`` naming the server, never
the patient; an instance it does not hold is a :class:`~regionmir.errors.MissingImageError`.

What a search hands back is reduced at once to what RegionMIR keeps (:class:`PacsInstance`): the
three UIDs, the view, the modality, series/instance numbers, and the *salted hash* of the patient
id. Patient names, ids and accession numbers never leave this module.
"""

from __future__ import annotations

import io
import os
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

from .errors import DatasetError, ImageTooLargeError, MissingImageError, StorageError
from .identifiers import hash_identifier
from .region_record import normalise_view

#: The marker of a DICOMweb location (``dicomweb+http://…``, ``dicomweb+https://…``).
SCHEME_PREFIX = "dicomweb+"

#: Modalities of a chest radiograph: computed and digital radiography.
RADIOGRAPH_MODALITIES: tuple[str, ...] = ("CR", "DX")

#: Seconds to connect to / wait for an answer from the PACS, per request.
CONNECT_TIMEOUT_S = 5.0
READ_TIMEOUT_S = 60.0

#: Attempts of a request that found the PACS unreachable or busy (503, 504, 429, 408), and the
#: first pause between them in milliseconds (doubling).
ATTEMPTS = 2
RETRY_PAUSE_MS = 250

#: The environment variables holding the PACS credentials.
TOKEN_ENV = "REGIONMIR_DICOMWEB_TOKEN"
USER_ENV = "REGIONMIR_DICOMWEB_USER"
PASSWORD_ENV = "REGIONMIR_DICOMWEB_PASSWORD"

#: A DICOM UID: digits and dots, at most 64 characters (PS3.5 9.1).
UID_RE = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_INSTANCE_PATH_RE = re.compile(
    r"^(?P<root>.*)/studies/(?P<study>[^/]+)/series/(?P<series>[^/]+)/instances/(?P<sop>[^/]+)$"
)
_DATE_RANGE_RE = re.compile(r"^(\d{8})?-?(\d{8})?$")

# QIDO-RS attribute tags (DICOM JSON keys)
_SOP_CLASS, _SOP_INSTANCE, _STUDY, _SERIES = "00080016", "00080018", "0020000D", "0020000E"
_MODALITY, _PATIENT_ID, _VIEW = "00080060", "00100020", "00185101"
_SERIES_NUMBER, _INSTANCE_NUMBER = "00200011", "00200013"
_SEARCH_FIELDS = ("SOPClassUID", "Modality", "PatientID", "ViewPosition", "SeriesNumber", "InstanceNumber")


def check_uid(value: object, field: str) -> str:
    """``value`` stripped when it is a DICOM UID, else ``ValueError`` naming ``field``."""
    text = str(value if value is not None else "").strip().strip("\x00")
    if not text or len(text) > 64 or not UID_RE.match(text):
        raise ValueError(f"{field} must be a DICOM UID (digits and dots, at most 64 characters)")
    return text


def is_dicomweb(uri: object) -> bool:
    """True for a ``dicomweb+http(s)://`` location or source."""
    text = str(uri)
    return text.startswith(SCHEME_PREFIX + "http://") or text.startswith(SCHEME_PREFIX + "https://")


def _service_root(url: str) -> str:
    """The DICOMweb service root without the marker or a trailing slash."""
    text = str(url).strip()
    if text.startswith(SCHEME_PREFIX):
        text = text[len(SCHEME_PREFIX) :]
    if not (text.startswith("http://") or text.startswith("https://")):
        raise ValueError("a DICOMweb service root is http(s)://host[:port]/path")
    parts = urlsplit(text)
    if parts.username is not None or parts.password is not None:
        # it would travel into logs, error messages, sealed locations and every hit's retrieve URL
        raise ValueError(
            f"a DICOMweb URL carries no credentials: give them as {TOKEN_ENV} or {USER_ENV}/{PASSWORD_ENV}"
        )
    if parts.query or parts.fragment:
        raise ValueError("a DICOMweb service root has no query or fragment")
    return text.rstrip("/")


@dataclass(frozen=True)
class InstanceReference:
    """One instance in a PACS: its service root (``http(s)://host:port/dicom-web``) and UIDs."""

    root: str
    study_uid: str
    series_uid: str
    sop_instance_uid: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", _service_root(self.root))
        for name in ("study_uid", "series_uid", "sop_instance_uid"):
            object.__setattr__(self, name, check_uid(getattr(self, name), name))

    @property
    def retrieve_url(self) -> str:
        """The WADO-RS URL of the instance (what a viewer or ``curl`` retrieves)."""
        return f"{self.root}/studies/{self.study_uid}/series/{self.series_uid}/instances/{self.sop_instance_uid}"

    @property
    def uri(self) -> str:
        """The location RegionMIR stores (sealed) and reads: the retrieve URL behind ``dicomweb+``."""
        return SCHEME_PREFIX + self.retrieve_url

    def as_dict(self) -> dict[str, str]:
        return {
            "study_uid": self.study_uid,
            "series_uid": self.series_uid,
            "sop_instance_uid": self.sop_instance_uid,
            "retrieve_url": self.retrieve_url,
        }


def parse_instance_uri(uri: str) -> InstanceReference:
    """The :class:`InstanceReference` of a ``dicomweb+…/studies/S/series/R/instances/I`` location
    (``ValueError`` for anything else)."""
    if not is_dicomweb(uri):
        raise ValueError("not a dicomweb+http(s):// location")
    found = _INSTANCE_PATH_RE.match(str(uri)[len(SCHEME_PREFIX) :].rstrip("/"))
    if not found:
        raise ValueError("a DICOMweb location names …/studies/UID/series/UID/instances/UID")
    return InstanceReference(found["root"], found["study"], found["series"], found["sop"])


@dataclass(frozen=True)
class PacsInstance:
    """What RegionMIR keeps of one instance a QIDO-RS search found: never the patient in clear."""

    reference: InstanceReference
    sop_class_uid: str
    modality: str
    view: str  # PA, AP or "" (lateral, unknown)
    patient_hash: str  # salted hash of PatientID (regionmir.identifiers), "" without one
    series_number: int | None
    instance_number: int | None

    @property
    def order(self) -> tuple:
        """Series then instance number (missing last), then the UIDs: "the first" of several."""
        big = 1 << 62
        return (
            self.series_number if self.series_number is not None else big,
            self.instance_number if self.instance_number is not None else big,
            self.reference.series_uid,
            self.reference.sop_instance_uid,
        )


@dataclass(frozen=True)
class DicomWebSource:
    """A ``--data dicomweb+http://host/dicom-web?modality=CR,DX&study_date=FROM-TO&study_uid=UID``
    source: the service root and the QIDO-RS search of the films to index."""

    root: str
    modalities: tuple[str, ...] = RADIOGRAPH_MODALITIES
    study_date: str = ""  # "YYYYMMDD-YYYYMMDD", either end may be left open
    study_uids: tuple[str, ...] = ()

    @classmethod
    def parse(cls, source: str) -> DicomWebSource:
        """The source of a ``dicomweb+`` URI; :class:`DatasetError` naming the bad parameter."""
        if not is_dicomweb(source):
            raise DatasetError(source, "a DICOMweb source starts with dicomweb+http:// or dicomweb+https://")
        parts = urlsplit(str(source)[len(SCHEME_PREFIX) :])
        try:
            root = _service_root(f"{parts.scheme}://{parts.netloc}{parts.path}")
        except ValueError as exc:
            raise DatasetError(f"{parts.scheme}://{parts.hostname}", str(exc)) from None
        params = parse_qs(parts.query, keep_blank_values=True)
        known = {"modality", "study_date", "study_uid"}
        unknown = sorted(set(params) - known)
        if unknown:
            raise DatasetError(source, f"unknown parameter(s) {unknown}; a DICOMweb source takes {sorted(known)}")
        modalities = (
            tuple(m.strip().upper() for value in params.get("modality", []) for m in value.split(",") if m.strip())
            or RADIOGRAPH_MODALITIES
        )
        if any(not re.fullmatch(r"[A-Z0-9_]{1,16}", m) for m in modalities):
            raise DatasetError(source, f"modality must be DICOM modality codes like CR,DX, got {modalities}")
        study_date = ",".join(params.get("study_date", [])).strip()
        found = _DATE_RANGE_RE.match(study_date) if study_date else None
        if study_date and (not found or not (found.group(1) or found.group(2))):
            raise DatasetError(
                source, f"study_date must be YYYYMMDD, YYYYMMDD-YYYYMMDD or an open range, got {study_date!r}"
            )
        try:
            uids = tuple(
                check_uid(u, "study_uid")
                for value in params.get("study_uid", [])
                for u in value.split(",")
                if u.strip()
            )
        except ValueError as exc:
            raise DatasetError(source, str(exc)) from None
        return cls(root=root, modalities=modalities, study_date=study_date, study_uids=uids)

    @property
    def narrowed(self) -> bool:
        """True when the search names dates, studies or other modalities than every radiograph:
        an instance it does not list may still be in the PACS."""
        return bool(self.study_date or self.study_uids) or set(self.modalities) != set(RADIOGRAPH_MODALITIES)

    def describe(self) -> str:
        what = f"modality {','.join(self.modalities)}"
        if self.study_date:
            what += f", study date {self.study_date}"
        if self.study_uids:
            what += f", {len(self.study_uids)} study UID(s)"
        return f"DICOMweb {self.root} ({what})"


def _first(attributes: dict[str, Any], tag: str) -> Any:
    values = (attributes.get(tag) or {}).get("Value") or []
    return values[0] if values else None


def _number(value: Any) -> int | None:
    try:
        return int(str(value).strip())
    except (TypeError, ValueError):
        return None


def pacs_instance(root: str, attributes: dict[str, Any]) -> PacsInstance:
    """One QIDO-RS answer (DICOM JSON) reduced to a :class:`PacsInstance` (patient id hashed here);
    ``ValueError`` when its UIDs are missing or malformed."""
    reference = InstanceReference(
        root, _first(attributes, _STUDY), _first(attributes, _SERIES), _first(attributes, _SOP_INSTANCE)
    )
    return PacsInstance(
        reference=reference,
        sop_class_uid=str(_first(attributes, _SOP_CLASS) or ""),
        modality=str(_first(attributes, _MODALITY) or "").upper(),
        view=normalise_view(_first(attributes, _VIEW)),
        patient_hash=hash_identifier(_first(attributes, _PATIENT_ID)),
        series_number=_number(_first(attributes, _SERIES_NUMBER)),
        instance_number=_number(_first(attributes, _INSTANCE_NUMBER)),
    )


class DicomWebClient:
    """The PACS at one service root: QIDO-RS searches, WADO-RS retrieves, STOW-RS stores
    (``dicomweb-client`` underneath), every failure a RegionMIR error naming the server."""

    def __init__(
        self,
        root: str,
        *,
        timeout: tuple[float, float] = (CONNECT_TIMEOUT_S, READ_TIMEOUT_S),
        attempts: int = ATTEMPTS,
        credentials: bool = True,
    ):
        import requests
        from dicomweb_client.api import DICOMwebClient

        self.root = _service_root(root)
        session = requests.Session()
        token = os.environ.get(TOKEN_ENV) if credentials else None
        if token:
            session.headers["Authorization"] = f"Bearer {token}"
        elif credentials and os.environ.get(USER_ENV):
            session.auth = (os.environ[USER_ENV], os.environ.get(PASSWORD_ENV, ""))
        #: Whether this client sends the environment's credentials (``credentials=False``: a PACS
        #: other than the one they are for, e.g. a root named by an index row the service did not expect).
        self.sends_credentials = bool(token) or session.auth is not None
        self._client = DICOMwebClient(self.root, session=session, timeout=timeout)
        # dicomweb-client retries 5 times with 1-2-4-8 s pauses (30 s for a PACS that is down);
        # a query is waiting: ATTEMPTS attempts, RETRY_PAUSE_MS apart (doubling)
        self._client.set_http_retry_params(
            retry=attempts > 1, max_attempts=attempts, wait_exponential_multiplier=RETRY_PAUSE_MS
        )

    def _call(self, what: str, call, *args: Any, missing: str | None = None, **kwargs: Any) -> Any:
        import requests

        try:
            return call(*args, **kwargs)
        except requests.HTTPError as exc:
            status = exc.response.status_code if exc.response is not None else None
            if status == 404 and missing is not None:
                raise MissingImageError(missing, "the PACS does not hold this instance") from None
            if status in (401, 403):
                raise StorageError(
                    self.root,
                    f"the PACS refused {what} (HTTP {status}): check {TOKEN_ENV} or {USER_ENV}/{PASSWORD_ENV}",
                    reason="pacs_denied",
                ) from None
            if status is not None and 400 <= status < 500 and status not in (408, 429):
                # the PACS understood and said no: asking again changes nothing
                raise StorageError(
                    self.root, f"the PACS refused {what} (HTTP {status})", reason="pacs_refused"
                ) from None
            raise StorageError(
                self.root, f"the PACS failed {what} (HTTP {status})", reason="pacs_unavailable"
            ) from None
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise StorageError(
                self.root,
                f"the DICOMweb server did not answer {what} ({type(exc).__name__})",
                reason="pacs_unavailable",
            ) from None
        except (requests.RequestException, ValueError, OSError) as exc:
            raise StorageError(
                self.root, f"unusable answer to {what} ({type(exc).__name__})", reason="pacs_unavailable"
            ) from None

    def search_instances(self, **filters: str) -> list[PacsInstance]:
        """Every instance matching the QIDO-RS ``filters`` (DICOM keywords: ``Modality``,
        ``StudyDate``, ``StudyInstanceUID``, ``SeriesInstanceUID``…), all pages; answers without
        usable UIDs are left out."""
        study = filters.pop("StudyInstanceUID", None)
        series = filters.pop("SeriesInstanceUID", None)
        answers = self._call(
            "a QIDO-RS instance search",
            self._client.search_for_instances,
            study_instance_uid=study,
            series_instance_uid=series,
            fields=list(_SEARCH_FIELDS),
            search_filters=filters or None,
            get_remaining=True,
        )
        found = []
        for attributes in answers or []:
            try:
                found.append(pacs_instance(self.root, attributes))
            except ValueError:
                continue
        return found

    def source_instances(self, source: DicomWebSource) -> list[PacsInstance]:
        """The instances of a :class:`DicomWebSource`, each once, in UID order."""
        seen: dict[str, PacsInstance] = {}
        for study in source.study_uids or (None,):
            for modality in source.modalities:
                filters = {"Modality": modality}
                if source.study_date:
                    filters["StudyDate"] = source.study_date
                if study:
                    filters["StudyInstanceUID"] = study
                for instance in self.search_instances(**filters):
                    seen.setdefault(instance.reference.sop_instance_uid, instance)
        return [seen[uid] for uid in sorted(seen)]

    def frontal_instance(self, study_uid: str, series_uid: str | None = None) -> PacsInstance:
        """The frontal (PA/AP) radiograph of a study or series — the first by series and instance
        number when there are several; :class:`MissingImageError` when it has none."""
        filters = {"StudyInstanceUID": check_uid(study_uid, "study_uid")}
        if series_uid:
            filters["SeriesInstanceUID"] = check_uid(series_uid, "series_uid")
        instances = [
            i for i in self.search_instances(**filters) if i.modality in RADIOGRAPH_MODALITIES or not i.modality
        ]
        frontal = sorted((i for i in instances if i.view in ("PA", "AP")), key=lambda i: i.order)
        if not frontal:
            what = "series" if series_uid else "study"
            raise MissingImageError(
                series_uid or study_uid,
                f"the {what} holds no frontal (PA/AP) CR/DX instance"
                + (f" ({len(instances)} other instance(s))" if instances else ""),
            )
        return frontal[0]

    def instance(self, study_uid: str, series_uid: str, sop_instance_uid: str) -> PacsInstance:
        """The instance with these UIDs (``MissingImageError`` when the PACS does not hold it)."""
        found = self.search_instances(
            StudyInstanceUID=check_uid(study_uid, "study_uid"),
            SeriesInstanceUID=check_uid(series_uid, "series_uid"),
            SOPInstanceUID=check_uid(sop_instance_uid, "sop_instance_uid"),
        )
        if not found:
            raise MissingImageError(sop_instance_uid, "the PACS does not hold this instance")
        return found[0]

    def find_instance(self, sop_instance_uid: str) -> PacsInstance:
        """The instance with this SOP Instance UID, wherever it lies (one QIDO-RS search)."""
        found = self.search_instances(SOPInstanceUID=check_uid(sop_instance_uid, "sop_instance_uid"))
        if not found:
            raise MissingImageError(sop_instance_uid, "the PACS does not hold this instance")
        return found[0]

    def retrieve(self, reference: InstanceReference, *, max_pixels: int | None = None) -> bytes:
        """The instance as a DICOM file (Part 10 bytes), by WADO-RS.

        ``max_pixels``: first read the instance's size from its metadata (rows × columns × frames,
        no pixel data) and raise :class:`ImageTooLargeError` without fetching an instance over it
        — a retrieve holds the whole answer, its dataset and the file written back in memory."""
        from pydicom.filewriter import dcmwrite

        if max_pixels is not None:
            pixels = instance_pixels(self.metadata(reference))
            if pixels > max_pixels:
                raise ImageTooLargeError(
                    reference.sop_instance_uid,
                    f"the PACS instance has {pixels} pixels (rows x columns x frames), over the limit of "
                    f"{max_pixels}: not fetched",
                )
        dataset = self._call(
            "a WADO-RS retrieve",
            self._client.retrieve_instance,
            reference.study_uid,
            reference.series_uid,
            reference.sop_instance_uid,
            missing=reference.sop_instance_uid,
        )
        buffer = io.BytesIO()
        dcmwrite(buffer, dataset, enforce_file_format=False)
        return buffer.getvalue()

    def metadata(self, reference: InstanceReference):
        """The instance's attributes without pixel data (WADO-RS metadata) as a pydicom Dataset."""
        from pydicom import Dataset

        attributes = self._call(
            "a WADO-RS metadata request",
            self._client.retrieve_instance_metadata,
            reference.study_uid,
            reference.series_uid,
            reference.sop_instance_uid,
            missing=reference.sop_instance_uid,
        )
        return Dataset.from_json(attributes, bulk_data_uri_handler=lambda *args: b"")

    def store(self, datasets: Sequence[Any]) -> list[str]:
        """STOW-RS: store ``datasets`` (pydicom Datasets); the SOP Instance UIDs the PACS took.
        :class:`StorageError` when it refused any."""
        answer = self._call("a STOW-RS store", self._client.store_instances, list(datasets))
        failed = getattr(answer, "FailedSOPSequence", None) or []
        if failed:
            raise StorageError(
                self.root, f"the PACS refused {len(failed)} of {len(datasets)} instance(s)", reason="pacs_refused"
            )
        return [str(item.ReferencedSOPInstanceUID) for item in getattr(answer, "ReferencedSOPSequence", [])]


def instance_pixels(attributes) -> int:
    """Rows × columns × frames of an instance's attributes (a pydicom Dataset of its metadata);
    missing or malformed values count as 1."""

    def number(name: str) -> int:
        try:
            value = int(getattr(attributes, name, 1) or 1)
        except (TypeError, ValueError):
            return 1
        return max(1, value)

    return number("Rows") * number("Columns") * number("NumberOfFrames")


_CLIENTS: dict[tuple, DicomWebClient] = {}
_CLIENTS_LOCK = threading.Lock()


#: A waiting user's calls (the query service): one attempt, and an answer within this many seconds.
INTERACTIVE_READ_TIMEOUT_S = 15.0


def client_for(root: str, *, interactive: bool = False, credentials: bool = True) -> DicomWebClient:
    """A shared :class:`DicomWebClient` for ``root`` (one per root, credentials and kind, per
    process). ``interactive``: for a waiting user — one attempt, :data:`INTERACTIVE_READ_TIMEOUT_S`
    to answer; else a batch job's (:data:`ATTEMPTS` attempts, :data:`READ_TIMEOUT_S`).
    ``credentials=False``: the environment's credentials are not sent (another PACS than theirs)."""
    root = _service_root(root)
    key = (
        root,
        interactive,
        credentials,
        os.environ.get(TOKEN_ENV),
        os.environ.get(USER_ENV),
        os.environ.get(PASSWORD_ENV),
    )
    with _CLIENTS_LOCK:
        if key not in _CLIENTS:
            _CLIENTS[key] = (
                DicomWebClient(
                    root,
                    timeout=(CONNECT_TIMEOUT_S, INTERACTIVE_READ_TIMEOUT_S),
                    attempts=1,
                    credentials=credentials,
                )
                if interactive
                else DicomWebClient(root, credentials=credentials)
            )
        return _CLIENTS[key]


def same_root(a: str | None, b: str | None) -> bool:
    """Whether two DICOMweb service roots are the same PACS (scheme and host compared without case)."""
    if not a or not b:
        return False
    first, second = urlsplit(_service_root(a)), urlsplit(_service_root(b))
    return (first.scheme.lower(), first.netloc.lower(), first.path.rstrip("/")) == (
        second.scheme.lower(),
        second.netloc.lower(),
        second.path.rstrip("/"),
    )


def read_instance(uri: str) -> bytes:
    """The DICOM bytes of a ``dicomweb+`` instance location (what :func:`regionmir.storage.read_bytes`
    calls for one)."""
    try:
        reference = parse_instance_uri(uri)
    except ValueError as exc:
        raise MissingImageError(uri, str(exc)) from None
    return client_for(reference.root).retrieve(reference)
