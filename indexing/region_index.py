"""The Milvus client for region collections: :class:`RegionIndex`.

One class speaks to every Milvus this project runs against through the same
``pymilvus.MilvusClient`` calls:

* a milvus-lite file, ``RegionIndex("path/regions.db")`` (tests, demos, one process only: the
  file is locked by the process that opened it);
* a milvus-lite server (``milvus-lite server --data-dir DIR --port P``) or a real Milvus,
  ``RegionIndex("http://host:19530")``; the token comes from ``$MILVUS_TOKEN`` unless given.

What it stores and how is defined beside it: the row schema, keys and collection names in
:mod:`indexing.index_schema`, the rows written and read in :mod:`indexing.index_rows`
(:class:`~indexing.index_rows.RegionRow`, :class:`~indexing.index_rows.RegionHit`), the escaped
filter expressions in :mod:`indexing.index_filters` and the errors in :mod:`regionmir.errors`.

Collections are versioned by name (``regions_v1``, ``regions_v2`` ...) and served through an alias
(:meth:`RegionIndex.point_alias`): build and check a new collection, then switch the alias in one
call; searches through the alias never see a half-built index.

A bulk job::

    index = RegionIndex("http://milvus:19530")
    index.create_collection("regions_v2", dim=128, exist_ok=True)
    index.upsert("regions_v2", rows)          # batched by bytes, any iterable of RegionRow
    index.flush("regions_v2")
    index.verify("regions_v2", expected=n)    # exact row count or CountMismatchError
    index.point_alias("regions", "regions_v2")

and a query: ``index.search("regions", vectors, k=10, anatomy="left lung", view="PA")``.

Every failure is a :class:`~regionmir.errors.RegionIndexError` naming the URI, the
collection and the reason.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self, TypeVar
from urllib.parse import urlsplit, urlunsplit

import grpc
import numpy as np
from pymilvus import MilvusClient
from pymilvus.client.types import LoadState
from pymilvus.exceptions import ConnectionConfigException, MilvusException

from regionmir.anatomy import anatomy_id as resolve_anatomy_id
from regionmir.errors import (
    CountMismatchError,
    DimensionMismatchError,
    IndexLockedError,
    IndexNotFoundError,
    IndexUnavailableError,
    RegionIndexError,
    SchemaMismatchError,
)
from regionmir.identifiers import HASH_HEX_CHARS

from .index_filters import build_filter, checked_keys, keys_filter, quote_filter_value
from .index_rows import RegionHit, RegionRow
from .index_schema import (
    HASH_RE,
    OUTPUT_FIELDS,
    VARCHAR_FIELDS,
    check_name,
    collection_schema,
    missing_fields,
    schema_mismatch,
)
from .resident_collection import ResidentCollection

T = TypeVar("T")

#: Environment variable holding the Milvus token (``user:password`` or an API key).
TOKEN_ENV = "MILVUS_TOKEN"

#: Upper bound of one upsert call. Milvus refuses gRPC messages over 64 MB; half leaves headroom
#: for the protocol overhead our estimate does not see.
DEFAULT_MAX_BATCH_BYTES = 32 * 1024 * 1024

#: Similarity: vectors are L2-normalised, scores are cosine similarities (1.0 = same direction).
METRIC_TYPE = "COSINE"

#: Vector index types offered, with their default build parameters (``AUTO``: by backend and
#: expected size, see :meth:`RegionIndex.default_index_type`).
INDEX_TYPES: dict[str, dict[str, int]] = {
    "HNSW": {"M": 16, "efConstruction": 200},
    "IVF_FLAT": {"nlist": 128},
    "FLAT": {},
}

#: Server collections expected to hold at most this many rows are searched exactly (``FLAT``):
#: 0.5 GB of 128-d vectors (measured: p50 20 ms at 100k rows on our 2-core machine, recall 1.0).
EXACT_SEARCH_MAX_ROWS = 1_000_000

#: Search-time defaults: HNSW candidate list (raised to k when k is larger) and IVF lists probed.
DEFAULT_SEARCH_EF = 64
DEFAULT_NPROBE = 16

#: Largest k Milvus answers in one search.
MAX_TOP_K = 16384

#: Largest vector dimension Milvus accepts.
MAX_DIM = 32768

_ROW_OVERHEAD_BYTES = 128  # per-row protocol overhead in the byte estimate (generous)


@dataclass(frozen=True)
class UpsertResult:
    """What :meth:`RegionIndex.upsert` sent: rows and the number of calls (batches) it took."""

    rows: int
    batches: int


#: Fields a search can keep one hit per (``group_by``): ``study`` → one region per study.
GROUP_FIELDS = {"study": "study_hash", "patient": "patient_hash", "image": "image_id"}


# -------------------------------------------------------------------------------------- helpers


class _UnimplementedTimestampFilter(logging.Filter):
    """Drops the one error milvus-lite's in-process gRPC server logs for every timestamp request
    (``AllocTimestamp``: "Method not implemented!"), whichever thread asks; pymilvus then uses its
    own clock, which is correct. Every other gRPC server error still shows."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], NotImplementedError):
            return "AllocTimestamp" not in "".join(traceback.format_tb(record.exc_info[2]))
        return True


_GRPC_SERVER_LOG = logging.getLogger("grpc._server")
log = logging.getLogger(__name__)

#: pymilvus calls that change what a collection or alias holds: they drop the resident copies.
_WRITING_CALLS = frozenset(
    {
        "upsert",
        "insert",
        "delete",
        "create_collection",
        "drop_collection",
        "rename_collection",
        "create_alias",
        "alter_alias",
        "drop_alias",
    }
)


class _ResidentCollections:
    """The milvus-lite collections this process holds in memory (:class:`ResidentCollection`), by
    file and by the name searched (collection or alias). A write through any :class:`RegionIndex`
    of this process to a file drops every copy of that file; no other process can write it (the
    file is locked)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.copies: dict[str, dict[str, ResidentCollection]] = {}
        self.generation: dict[str, int] = {}

    def get(self, path: str, name: str) -> tuple[ResidentCollection | None, int]:
        with self.lock:
            return self.copies.get(path, {}).get(name), self.generation.get(path, 0)

    def put(self, path: str, name: str, copy: ResidentCollection, generation: int) -> None:
        with self.lock:
            if self.generation.get(path, 0) == generation:  # no write while it was read
                self.copies.setdefault(path, {})[name] = copy

    def drop(self, path: str) -> None:
        with self.lock:
            self.copies.pop(path, None)
            self.generation[path] = self.generation.get(path, 0) + 1


_RESIDENT = _ResidentCollections()
if not any(isinstance(f, _UnimplementedTimestampFilter) for f in _GRPC_SERVER_LOG.filters):
    _GRPC_SERVER_LOG.addFilter(_UnimplementedTimestampFilter())


@contextlib.contextmanager
def _quiet_iterator_setup():
    """pymilvus asks the server for a timestamp when an iterator starts; milvus-lite does not
    implement that RPC, logs the refusal as an error (in this process) and pymilvus warns that it
    falls back to its own clock, which is correct. Neither line means anything to a user."""
    with _quiet_loggers("grpc._server", "pymilvus.client.iterator.query_iterator"):
        yield


class _Silenced(logging.Filter):
    """Drops a logger's records below CRITICAL while at least one :func:`_quiet_loggers` block
    (in any thread) holds it; counted under a lock, so overlapping blocks never leave it silenced."""

    lock = threading.Lock()

    def __init__(self) -> None:
        super().__init__()
        self.holders = 0

    def filter(self, record: logging.LogRecord) -> bool:
        return self.holders == 0 or record.levelno >= logging.CRITICAL


def _silencer(name: str) -> _Silenced:
    logger = logging.getLogger(name)
    with _Silenced.lock:
        for existing in logger.filters:
            if isinstance(existing, _Silenced):
                return existing
        silencer = _Silenced()
        logger.addFilter(silencer)
        return silencer


@contextlib.contextmanager
def _quiet_loggers(*names: str):
    """These loggers say nothing below CRITICAL while the block runs."""
    silencers = [_silencer(n) for n in names]
    with _Silenced.lock:
        for silencer in silencers:
            silencer.holders += 1
    try:
        yield
    finally:
        with _Silenced.lock:
            for silencer in silencers:
                silencer.holders -= 1


def display_uri(uri: str) -> str:
    """``uri`` without any user:password part, for messages."""
    if uri.endswith(".db"):
        return uri
    parts = urlsplit(uri)
    if parts.username or parts.password:
        host = parts.hostname or ""
        netloc = f"{host}:{parts.port}" if parts.port else host
        return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    return uri


def copy_lite_index(source: str, target: str) -> str:
    """Copy a flushed milvus-lite index (a ``.db`` folder, or a single file) to ``target`` for
    another process to open — milvus-lite lets one process own a file for that process's life.
    The owner's lock is left behind; an existing ``target`` is replaced."""
    import shutil

    if os.path.isdir(target):
        shutil.rmtree(target)
    elif os.path.exists(target):
        os.remove(target)
    os.makedirs(os.path.dirname(os.path.abspath(target)), exist_ok=True)
    if os.path.isdir(source):
        shutil.copytree(source, target, ignore=shutil.ignore_patterns("LOCK"))
    else:
        shutil.copyfile(source, target)
    return target


def _lite_file_locked(path: str) -> bool:
    """True when another process holds the lock of the milvus-lite data directory ``path``."""
    lock = Path(path) / "LOCK"
    if sys.platform == "win32" or not lock.is_file():
        return False
    import fcntl

    fd = os.open(lock, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def _entity_bytes(entity: dict[str, Any]) -> int:
    """A generous estimate of an entity's size on the wire."""
    size = _ROW_OVERHEAD_BYTES + 4 * len(entity["vector"]) + 4 * 4 + 8
    for name in VARCHAR_FIELDS:
        size += len(entity[name].encode("utf-8")) + 8
    return size


def _is_not_loaded(exc: MilvusException) -> bool:
    return exc.code == 101 or "not loaded" in str(exc.message).lower() or "call load()" in str(exc.message)


def _is_not_found(exc: MilvusException) -> bool:
    # 100: collection not found (both backends); 1600: alias not found (Milvus 2.3).
    return exc.code in (100, 1600)


def _is_unavailable(exc: MilvusException) -> bool:
    message = str(exc.message).lower()
    return exc.code == 2 or "fail connecting" in message or "unavailable" in message


# ---------------------------------------------------------------------------------------- index


def query_matrix(vectors: Any) -> np.ndarray:
    """One vector or a 2-D array of them as a checked ``(queries, dim)`` float32 matrix."""
    queries = np.asarray(vectors, dtype=np.float32)
    if queries.ndim == 1:
        queries = queries[None, :]
    if queries.ndim != 2 or queries.shape[0] == 0:
        raise ValueError(f"vectors must be one vector or a 2-D array, got shape {queries.shape}")
    if not np.all(np.isfinite(queries)):
        raise ValueError("query vectors have NaN or infinite values")
    return queries


def prepare_search(
    display_uri: str, name: str, vectors: Any, k: int, dimension: Callable[[], int], **filters: Any
) -> tuple[np.ndarray, str]:
    """The checked query matrix and filter expression of a search of ``name`` (whose vector
    dimension ``dimension()`` reads); ``ValueError``, :class:`UnknownAnatomyError` or
    :class:`DimensionMismatchError` before anything is searched."""
    check_name(name)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_TOP_K:
        raise ValueError(f"k must be an int in 1..{MAX_TOP_K}, got {k!r}")
    queries = query_matrix(vectors)
    expression = build_filter(**filters)
    dim = dimension()
    if queries.shape[1] != dim:
        raise DimensionMismatchError(
            display_uri, name, f"query vectors are {queries.shape[1]}-d, the collection holds {dim}-d"
        )
    return queries, expression


def search_resident(
    resident: Callable[[], ResidentCollection],
    display_uri: str,
    name: str,
    vectors: Any,
    k: int,
    group_by: str | None = None,
    *,
    anatomy: str | int | None = None,
    view: str | None = None,
    split: str | None = None,
    model_version: str | None = None,
    exclude_patient_hash: str | None = None,
) -> list[list[RegionHit]]:
    """:meth:`RegionIndex.search` over ``resident()``, an in-memory copy of collection ``name`` of
    the milvus-lite file ``display_uri`` — held by the process that opened the file, or copied
    from it (a service's ingress replicas): the same checks, filters, answers and errors. The
    arguments are checked before ``resident()`` is asked for the rows (which may read them all)."""
    group_field = None
    if group_by is not None:
        group_field = GROUP_FIELDS.get(group_by)
        if not group_field:
            raise ValueError(f"group_by must be one of {sorted(GROUP_FIELDS)}, got {group_by!r}")
    queries, _ = prepare_search(  # the same checks and errors as a server's search
        display_uri,
        name,
        vectors,
        k,
        lambda: resident().dim,
        anatomy=anatomy,
        view=view,
        split=split,
        model_version=model_version,
        exclude_patient_hash=exclude_patient_hash,
    )
    rows = resident()
    keep = rows.mask(
        anatomy_id=None if anatomy is None else resolve_anatomy_id(anatomy),
        equal={"view": view, "split": split, "model_version": model_version},
        exclude_patient_hash=exclude_patient_hash,
    )
    return rows.search(queries, k, keep, group_field)


class RegionIndex:
    """A connection to one Milvus (file or server) holding region collections.

    ``uri``: a milvus-lite file path ending in ``.db`` or ``http(s)://host:port``. ``token``:
    defaults to ``$MILVUS_TOKEN`` (ignored for files). ``consistency_level``: used for collection
    creation and every query/search; ``"Strong"`` (default) sees every acknowledged write, which
    bulk jobs and tests need; a read-only service may pass ``"Bounded"`` for lower latency.
    ``search_ef``/``nprobe``: default HNSW and IVF search parameters. ``timeout``: seconds per
    call (``None``: pymilvus's default); ``connect_timeout``: seconds to reach the server.

    Raises :class:`IndexUnavailableError` when the server cannot be reached and
    :class:`IndexLockedError` when a milvus-lite file is held by another process.
    """

    @staticmethod
    def is_lite_file(uri: str | os.PathLike) -> bool:
        """Whether ``uri`` names a milvus-lite file (``….db``), which one process owns, rather than a server."""
        return os.fspath(uri).endswith(".db")

    def __init__(
        self,
        uri: str | os.PathLike,
        token: str | None = None,
        *,
        consistency_level: str = "Strong",
        search_ef: int = DEFAULT_SEARCH_EF,
        nprobe: int = DEFAULT_NPROBE,
        timeout: float | None = None,
        connect_timeout: float = 10.0,
        resident_search: bool | None = None,
        connect_attempts: int = 4,
    ):
        self.uri = os.fspath(uri)
        self.display_uri = display_uri(self.uri)
        self.is_local_file = self.is_lite_file(self.uri)
        self.resident_search = self.is_local_file if resident_search is None else bool(resident_search)
        if self.resident_search and not self.is_local_file:
            raise ValueError("resident_search holds a milvus-lite file's rows in memory; a server searches itself")
        self._resident_key = os.path.abspath(self.uri) if self.is_local_file else ""
        if not self.is_local_file and not self.uri.startswith(("http://", "https://")):
            raise ValueError(f"Milvus URI must be a .db file or http(s)://host:port, got {self.display_uri!r}")
        self.consistency_level = consistency_level
        self.search_ef = int(search_ef)
        self.nprobe = int(nprobe)
        self.timeout = timeout
        if token is None:
            token = os.environ.get(TOKEN_ENV, "")
        self._loaded: set[str] = set()  # names this client has seen loaded
        self._schema_checked: set[str] = set()  # names whose schema version this client has checked
        if self.is_local_file and os.path.dirname(self.uri):
            os.makedirs(os.path.dirname(self.uri), exist_ok=True)  # milvus-lite wants the folder to exist
        try:
            # milvus-lite logs a failed start with its traceback; the error raised below says it all
            with _quiet_loggers("milvus_lite.server_manager"):
                self._client: MilvusClient | None = self._connect(token, connect_timeout, connect_attempts)
        except ConnectionConfigException as exc:
            if self.is_local_file and _lite_file_locked(self.uri):
                raise self._locked_error() from exc
            raise IndexUnavailableError(self.display_uri, None, f"cannot open: {exc.message}") from exc
        except MilvusException as exc:
            raise IndexUnavailableError(self.display_uri, None, f"cannot connect: {exc.message}") from exc

    def default_index_type(self, expected_rows: int | None = None) -> str:
        """The index type a new collection gets when none is asked for.

        ``FLAT`` (exact) for a milvus-lite file — searched exactly from memory anyway, an ANN index
        would only slow its inserts — and for a server collection expected to hold at most
        :data:`EXACT_SEARCH_MAX_ROWS` rows (or of unknown size): exact search over ~10⁶ × 128
        floats costs a server a few milliseconds, and region embeddings form tight, well-separated
        anatomy clusters on which HNSW's graph loses whole clusters (measured on such vectors:
        plain recall@10 0.47 at 100k rows, ef 64; 0.82 at ef 512). ``HNSW`` beyond that size.
        """
        if self.is_local_file or expected_rows is None or expected_rows <= EXACT_SEARCH_MAX_ROWS:
            return "FLAT"
        return "HNSW"

    def _locked_error(self) -> IndexLockedError:
        return IndexLockedError(
            self.display_uri,
            None,
            "the milvus-lite file is locked: another process owns it (milvus-lite allows "
            "one process per file). Let that process do the work, or run "
            "`milvus-lite server --data-dir <dir> --port <port>` and connect every "
            "process to http://127.0.0.1:<port>",
        )

    def _connect(self, token: str, connect_timeout: float, attempts: int = 4) -> MilvusClient:
        """A client; a server that refuses a fresh connection for a moment (gRPC ``UNAVAILABLE``,
        e.g. milvus-lite answering "Too many pings" while an earlier client's channel on the same
        file winds down, slower on a busy machine) is retried, 1, 2 and 3 s apart. A bad URI or
        token fails at once."""
        for attempt in range(attempts):
            try:
                return MilvusClient(uri=self.uri, token="" if self.is_local_file else token, timeout=connect_timeout)
            except MilvusException as exc:
                if attempt == attempts - 1 or isinstance(exc, ConnectionConfigException):
                    raise
                time.sleep(1.0 + attempt)
        raise AssertionError("unreachable")

    # -- plumbing

    @property
    def client(self) -> MilvusClient:
        if self._client is None:
            raise RegionIndexError(self.display_uri, None, "this RegionIndex is closed", reason="closed")
        return self._client

    def _call(self, collection: str | None, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run one pymilvus call, turning its errors into :class:`RegionIndexError` subclasses."""
        if self.timeout is not None:
            kwargs.setdefault("timeout", self.timeout)
        writes = self.is_local_file and getattr(fn, "__name__", "") in _WRITING_CALLS
        try:
            return fn(*args, **kwargs)
        except MilvusException as exc:
            if _is_unavailable(exc):
                raise IndexUnavailableError(self.display_uri, collection, f"unreachable: {exc.message}") from exc
            if _is_not_found(exc):
                raise IndexNotFoundError(self.display_uri, collection, f"does not exist ({exc.message})") from exc
            raise RegionIndexError(self.display_uri, collection, str(exc.message), reason="milvus_error") from exc
        except grpc.RpcError as exc:
            code = exc.code() if hasattr(exc, "code") else None
            if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise IndexUnavailableError(self.display_uri, collection, f"unreachable: {code}") from exc
            raise RegionIndexError(self.display_uri, collection, f"gRPC error {exc}", reason="milvus_error") from exc
        finally:
            if writes:  # succeeded or not, what the file holds may have changed
                _RESIDENT.drop(self._resident_key)

    def _loaded_call(self, collection: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """A query/search on a loaded collection: load it first if this client has not seen it
        loaded, and if the server still answers "not loaded" (it restarted), load and retry once."""
        if collection not in self._loaded:
            state = self._call(collection, self.client.get_load_state, collection).get("state")
            if state != LoadState.Loaded:
                self._call(collection, self.client.load_collection, collection)
            self._loaded.add(collection)
        try:
            return self._call(collection, fn, *args, **kwargs)
        except RegionIndexError as exc:
            cause = exc.__cause__
            if not (isinstance(cause, MilvusException) and _is_not_loaded(cause)):
                raise
        self._call(collection, self.client.load_collection, collection)
        return self._call(collection, fn, *args, **kwargs)

    def _require(self, name: str) -> None:
        if not self._call(name, self.client.has_collection, name):
            raise IndexNotFoundError(self.display_uri, name, "no such collection or alias")
        if name not in self._schema_checked:
            self._check_schema(name)
            self._schema_checked.add(name)

    def _check_schema(self, name: str) -> None:
        """Refuse a collection of another row schema, naming the command that rebuilds it.

        The version is read from the collection's description where the server keeps it (a Milvus
        server; milvus-lite drops descriptions) and, everywhere, from its fields: a collection
        without a field this code writes is older.
        """
        described = self._call(name, self.client.describe_collection, name)
        problem = schema_mismatch(described)
        if problem:
            raise SchemaMismatchError(self.display_uri, name, problem)

    def _dimension(self, name: str) -> int:
        """The vector dimension of collection (or alias) ``name``; checks it has the region schema."""
        description = self._call(name, self.client.describe_collection, name)
        fields = {f["name"]: f for f in description.get("fields", [])}
        missing = missing_fields(description)
        if missing:
            raise SchemaMismatchError(self.display_uri, name, f"not a region collection: no field(s) {missing}")
        return int(fields["vector"]["params"]["dim"])

    def _is_alias(self, name: str) -> bool:
        aliases = self._call(name, self.client.list_aliases)
        return name in (aliases.get("aliases") or [])

    # -- collections

    def create_collection(
        self,
        name: str,
        dim: int,
        *,
        index_type: str | None = None,
        index_params: dict[str, int] | None = None,
        exist_ok: bool = False,
        expected_rows: int | None = None,
    ) -> None:
        """Create (and load) region collection ``name`` with ``dim``-long vectors.

        ``index_type``: ``HNSW`` (M=16, efConstruction=200), ``IVF_FLAT`` (nlist=128), ``FLAT``, or
        ``None``/``"AUTO"`` for :meth:`default_index_type` of ``expected_rows``; ``index_params``
        override those defaults. ``exist_ok``: when the collection
        exists, check its schema and dimension and keep it (re-runs of a bulk job) instead of
        failing.
        """
        check_name(name)
        if isinstance(dim, bool) or not isinstance(dim, int) or not 1 <= dim <= MAX_DIM:
            raise ValueError(f"dim must be an int in 1..{MAX_DIM}, got {dim!r}")
        index_type = (index_type or "AUTO").upper()
        if index_type == "AUTO":
            index_type = self.default_index_type(expected_rows)
        if index_type not in INDEX_TYPES:
            raise ValueError(f"index_type must be one of {sorted(INDEX_TYPES)}, got {index_type!r}")
        if self._call(name, self.client.has_collection, name):
            if not exist_ok:
                raise RegionIndexError(self.display_uri, name, "already exists", reason="exists")
            existing = self._dimension(name)
            if existing != dim:
                raise SchemaMismatchError(self.display_uri, name, f"exists with dim {existing}, not {dim}")
            self._call(name, self.client.load_collection, name)
            self._loaded.add(name)
            return

        schema = collection_schema(dim)

        params = {**INDEX_TYPES[index_type], **(index_params or {})}
        index = MilvusClient.prepare_index_params()
        index.add_index(field_name="vector", index_type=index_type, metric_type=METRIC_TYPE, params=params)
        self._call(
            name,
            self.client.create_collection,
            name,
            schema=schema,
            index_params=index,
            consistency_level=self.consistency_level,
        )
        self._call(name, self.client.load_collection, name)
        self._loaded.add(name)

    def drop(self, name: str, *, missing_ok: bool = False) -> None:
        """Drop collection ``name``. Refuses while an alias points at it or when ``name`` is an alias."""
        check_name(name)
        if not self._call(name, self.client.has_collection, name):
            if missing_ok:
                return
            raise IndexNotFoundError(self.display_uri, name, "no such collection")
        if self._is_alias(name):
            raise RegionIndexError(self.display_uri, name, "is an alias, not a collection", reason="is_alias")
        aliases = self._call(name, self.client.list_aliases, name).get("aliases") or []
        if aliases:
            raise RegionIndexError(
                self.display_uri,
                name,
                f"still served by alias(es) {sorted(aliases)}: point them elsewhere first",
                reason="in_use",
            )
        self._call(name, self.client.drop_collection, name)
        self._loaded.discard(name)

    # -- aliases

    def point_alias(self, alias: str, collection: str) -> str | None:
        """Make ``alias`` name ``collection`` (create it or switch it); returns the previous target.

        The collection is loaded first, so searches through the alias never hit an unloaded
        collection: the switch itself is one metadata change on the server.
        """
        check_name(alias, "alias")
        check_name(collection)
        self._require(collection)
        if self._is_alias(collection):
            raise RegionIndexError(
                self.display_uri, collection, "is an alias; point at a collection", reason="is_alias"
            )
        self._call(collection, self.client.load_collection, collection)
        self._loaded.add(collection)
        previous = None
        if self._call(alias, self.client.has_collection, alias):
            if not self._is_alias(alias):
                raise RegionIndexError(
                    self.display_uri, alias, "is a collection, cannot be an alias", reason="not_alias"
                )
            previous = str(self._call(alias, self.client.describe_alias, alias)["collection_name"])
            self._call(alias, self.client.alter_alias, collection, alias)
        else:
            self._call(alias, self.client.create_alias, collection, alias)
        return previous

    def alias_target(self, alias: str) -> str | None:
        """The collection ``alias`` points at, or ``None`` when there is no such alias yet.

        Raises :class:`RegionIndexError` (reason ``not_alias``) when ``alias`` names a collection.
        """
        check_name(alias, "alias")
        if not self._call(alias, self.client.has_collection, alias):
            return None
        if not self._is_alias(alias):
            raise RegionIndexError(self.display_uri, alias, "is a collection, not an alias", reason="not_alias")
        return str(self._call(alias, self.client.describe_alias, alias)["collection_name"])

    # -- writing

    def upsert(
        self,
        name: str,
        rows: Iterable[RegionRow],
        *,
        max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES,
    ) -> UpsertResult:
        """Insert or replace ``rows`` (any iterable, consumed once) in collection ``name``.

        Rows are sent in batches whose estimated size stays under ``max_batch_bytes`` (Milvus
        refuses calls over 64 MB). A row whose key appears twice in one batch is sent once (the
        last one wins). Raises :class:`DimensionMismatchError` before sending anything of a row
        whose vector does not have the collection's dimension. Call :meth:`flush` at the end.
        """
        check_name(name)
        if max_batch_bytes <= 0:
            raise ValueError("max_batch_bytes must be positive")
        dim = self._dimension(name)
        batch: dict[str, dict[str, Any]] = {}
        batch_bytes = 0
        sent_rows = batches = 0

        def send() -> None:
            nonlocal batch, batch_bytes, sent_rows, batches
            if batch:
                self._call(name, self.client.upsert, name, list(batch.values()))
                sent_rows += len(batch)
                batches += 1
            batch, batch_bytes = {}, 0

        for row in rows:
            if not isinstance(row, RegionRow):
                raise TypeError(f"upsert takes RegionRow objects, got {type(row).__name__}")
            if row.vector.shape[0] != dim:
                raise DimensionMismatchError(
                    self.display_uri,
                    name,
                    f"row {row.image_id!r}/{row.anatomy!r} has a {row.vector.shape[0]}-d vector, "
                    f"the collection holds {dim}-d vectors",
                )
            entity = row.to_entity()
            size = _entity_bytes(entity)
            if size > max_batch_bytes:
                raise ValueError(f"one row ({size} bytes) is larger than max_batch_bytes={max_batch_bytes}")
            previous = batch.pop(entity["key"], None)
            if previous is not None:
                batch_bytes -= _entity_bytes(previous)
            if batch_bytes + size > max_batch_bytes:
                send()
            batch[entity["key"]] = entity
            batch_bytes += size
        send()
        return UpsertResult(rows=sent_rows, batches=batches)

    def flush(self, name: str) -> None:
        """Seal and persist what was inserted into ``name`` (once, at the end of a bulk job)."""
        check_name(name)
        self._require(name)
        self._call(name, self.client.flush, name)

    def wait_until_indexed(self, name: str, *, timeout_s: float = 1800.0, poll_s: float = 1.0) -> int:
        """Wait until a Milvus server has built the vector index over every row of collection
        ``name``, then reload it so its searches use that index; returns the rows indexed.

        Call it after :meth:`flush` and before an alias points at the collection. Until the build
        ends a server answers from unindexed segments through a temporary IVF index, and searches
        filtered by anatomy then miss most neighbours (measured: recall@10 0.16 at 100k rows, 1.0
        once built; ``benchmarks/index_search.py``). A milvus-lite file returns at once: it
        indexes on flush (and is searched from memory, :mod:`indexing.resident_collection`).
        Raises :class:`IndexUnavailableError` when the build has not finished after ``timeout_s``.
        """
        check_name(name)
        self._require(name)
        if self.is_local_file:
            return self.count_all(name)
        deadline = time.monotonic() + timeout_s
        said = time.monotonic()
        while True:
            described = self._call(name, self.client.describe_index, name, "vector") or {}
            total, indexed = described.get("total_rows"), described.get("indexed_rows")
            pending = described.get("pending_index_rows", 0)
            if str(described.get("state", "")).lower() == "failed":
                raise RegionIndexError(
                    self.display_uri, name, f"the index build failed: {described.get('index_state_fail_reason', '')}"
                )
            if total is None or indexed is None:  # a server that does not report progress
                break
            if not pending and indexed >= total:
                break
            if time.monotonic() > deadline:
                raise IndexUnavailableError(
                    self.display_uri, name, f"index build not finished after {timeout_s:.0f} s: {indexed}/{total} rows"
                )
            if time.monotonic() - said > 10:
                log.info("%s: index build of %s: %d of %d rows indexed", self.display_uri, name, indexed, total)
                said = time.monotonic()
            time.sleep(poll_s)
        # The query nodes keep serving the temporary index until the collection is loaded again; a
        # collection an alias serves (a re-run into the live build) is not released under its readers.
        serving = self._call(name, self.client.list_aliases, name).get("aliases") or []
        if not serving:
            self._call(name, self.client.release_collection, name)
            self._call(name, self.client.load_collection, name)
            self._loaded.add(name)
        return int(indexed or 0)

    # -- erasure

    def collections(self) -> list[str]:
        """Every collection on this server or file (aliases are not collections)."""
        return sorted(str(n) for n in self._call("", self.client.list_collections))

    def images_of(
        self, name: str, *, patient_hash: str | None = None, study_hash: str | None = None, image_id: str | None = None
    ) -> list[str]:
        """The image ids of ``name``'s rows of one patient, study or image (exactly one selector;
        hashes as in :mod:`regionmir.identifiers`). Works on collections of any row schema that
        has the selector's field, so an erasure reaches old collections too."""
        expression = self._erasure_filter(name, patient_hash, study_hash, image_id)
        if expression is None:
            return []
        rows = self._loaded_call(
            name, self.client.query, name, filter=expression, output_fields=["image_id"], consistency_level="Strong"
        )
        return sorted({str(r["image_id"]) for r in rows})

    def count_all(self, name: str) -> int:
        """Every row of ``name``, whatever its row schema (erasure reports with it)."""
        check_name(name)
        if not self._call(name, self.client.has_collection, name):
            raise IndexNotFoundError(self.display_uri, name, "no such collection or alias")
        result = self._loaded_call(
            name, self.client.query, name, filter="", output_fields=["count(*)"], consistency_level="Strong"
        )
        return int(result[0]["count(*)"])

    def delete_rows(
        self, name: str, *, patient_hash: str | None = None, study_hash: str | None = None, image_id: str | None = None
    ) -> list[str]:
        """Delete the rows of one patient, study or image from collection ``name``; returns the image
        ids whose rows were deleted (empty when none matched: deleting again is a no-op).

        The deletion is flushed before returning, so a search right after no longer finds them.
        """
        images = self.images_of(name, patient_hash=patient_hash, study_hash=study_hash, image_id=image_id)
        if not images:
            return []
        expression = self._erasure_filter(name, patient_hash, study_hash, image_id)
        self._call(name, self.client.delete, name, filter=expression)
        self._call(name, self.client.flush, name)
        return images

    def delete_keys(self, name: str, keys: Sequence[str], *, batch_size: int = 1000) -> int:
        """Delete the rows with these primary keys from collection ``name`` (a re-index removing the
        rows of films that left the data); returns how many keys were asked for. Flushed at the end."""
        check_name(name)
        keys = checked_keys(keys)
        if not keys:
            return 0
        self._require(name)
        for start in range(0, len(keys), batch_size):
            chunk = keys[start : start + batch_size]
            self._call(
                name,
                self.client.delete,
                name,
                filter=keys_filter(chunk),
            )
        self._call(name, self.client.flush, name)
        return len(keys)

    def _erasure_filter(
        self, name: str, patient_hash: str | None, study_hash: str | None, image_id: str | None
    ) -> str | None:
        """The filter of one selector, or ``None`` when ``name`` has no such field (nothing to erase)."""
        check_name(name)
        chosen = {
            k: v for k, v in (("patient_hash", patient_hash), ("study_hash", study_hash), ("image_id", image_id)) if v
        }
        if len(chosen) != 1:
            raise ValueError("give exactly one of patient_hash, study_hash, image_id (non-empty)")
        ((field_name, value),) = chosen.items()
        if field_name != "image_id" and not HASH_RE.match(value):
            raise ValueError(f"{field_name} must be a {HASH_HEX_CHARS}-hex hash, got {value!r}")
        if not self._call(name, self.client.has_collection, name):
            raise IndexNotFoundError(self.display_uri, name, "no such collection or alias")
        fields = {f["name"] for f in self._call(name, self.client.describe_collection, name).get("fields", [])}
        if field_name not in fields:
            return None
        return f"{field_name} == {quote_filter_value(value)}"

    # -- reading

    def count(
        self,
        name: str,
        *,
        anatomy: str | int | None = None,
        view: str | None = None,
        split: str | None = None,
        model_version: str | None = None,
        exclude_patient_hash: str | None = None,
    ) -> int:
        """The exact number of rows in ``name`` (collection or alias); replaced rows count once.

        The optional constraints are those of :meth:`search` (e.g. the rows of one model version).
        """
        check_name(name)
        self._require(name)
        expression = build_filter(
            anatomy=anatomy,
            view=view,
            split=split,
            model_version=model_version,
            exclude_patient_hash=exclude_patient_hash,
        )
        result = self._loaded_call(
            name,
            self.client.query,
            name,
            filter=expression,
            output_fields=["count(*)"],
            consistency_level=self.consistency_level,
        )
        return int(result[0]["count(*)"])

    def tally(self, name: str, fields: Sequence[str], **constraints: Any) -> Counter:
        """How many rows hold each combination of ``fields`` values, e.g. ``("anatomy_id",
        "patient_hash")`` → ``Counter({(12, "3f…"): 1, …})``, under the constraints of :meth:`scan`
        (those of :meth:`search`, and ``batch_size``).

        One pass over the matching rows instead of one count per combination: how ``regionmir
        evaluate`` counts the relevant rows R of every query at once.
        """
        return Counter(self.scan(name, fields, **constraints))

    def scan(
        self,
        name: str,
        fields: Sequence[str],
        *,
        view: str | None = None,
        split: str | None = None,
        model_version: str | None = None,
        batch_size: int = 4096,
    ) -> Iterator[tuple]:
        """The ``fields`` values of every row matching the constraints of :meth:`search`, as tuples,
        streamed (a query iterator, ``batch_size`` rows a call): memory stays flat at any size."""
        check_name(name)
        fields = list(fields)
        unknown = [f for f in fields if f not in OUTPUT_FIELDS or f in ("box",)]
        if not fields or unknown:
            raise ValueError(f"scan needs scalar fields of {OUTPUT_FIELDS}; got {fields}")
        self._require(name)
        expression = build_filter(view=view, split=split, model_version=model_version) or "anatomy_id >= 0"
        with _quiet_iterator_setup():
            iterator = self._loaded_call(
                name,
                self.client.query_iterator,
                name,
                batch_size=batch_size,
                filter=expression,
                output_fields=fields,
                consistency_level=self.consistency_level,
            )
        try:
            while True:
                rows = self._call(name, lambda **_: iterator.next())  # next() takes no timeout
                if not rows:
                    break
                for row in rows:
                    yield tuple(row[f] for f in fields)
        finally:
            iterator.close()

    def get(self, name: str, keys: Sequence[str]) -> dict[str, RegionHit]:
        """The rows with these primary keys, by key (missing keys are absent; ``score`` is NaN).

        Keys are :func:`row_key` values (32 lowercase hex characters); anything else raises
        ``ValueError`` before a query is built, so no key reaches an expression unchecked.
        """
        check_name(name)
        keys = checked_keys(keys)
        if not keys:
            return {}
        self._require(name)
        rows = self._loaded_call(
            name,
            self.client.query,
            name,
            filter=keys_filter(keys),
            output_fields=list(OUTPUT_FIELDS),
            consistency_level=self.consistency_level,
        )
        hits = (self._hit({"entity": row, "distance": float("nan")}) for row in rows)
        return {hit.key: hit for hit in hits}

    def stored_locations(self, name: str, *, model_version: str | None = None, limit: int = 1) -> list[tuple[str, str]]:
        """Up to ``limit`` ``(sealed location, image id)`` pairs of ``name``, e.g. to check
        at start-up that this process's salt opens them."""
        check_name(name)
        self._require(name)
        rows = self._loaded_call(
            name,
            self.client.query,
            name,
            filter=build_filter(model_version=model_version) or "anatomy_id >= 0",
            output_fields=["image_uri", "image_id"],
            limit=limit,
            consistency_level=self.consistency_level,
        )
        return [(str(r["image_uri"]), str(r["image_id"])) for r in rows]

    def verify(self, name: str, expected: int, *, splits: Sequence[str] | None = None) -> int:
        """Check that ``name`` holds exactly ``expected`` rows (of ``splits``, when given: a job that
        indexed some splits does not answer for the others'); raises :class:`CountMismatchError`."""
        actual = self.count(name) if splits is None else sum(self.count(name, split=s) for s in splits)
        if actual != expected:
            raise CountMismatchError(self.display_uri, name, expected, actual)
        return actual

    def search(
        self,
        name: str,
        vectors: Sequence[float] | Sequence[Sequence[float]] | np.ndarray,
        k: int = 10,
        *,
        anatomy: str | int | None = None,
        view: str | None = None,
        split: str | None = None,
        model_version: str | None = None,
        exclude_patient_hash: str | None = None,
        group_by: str | None = None,
        ef: int | None = None,
    ) -> list[list[RegionHit]]:
        """The ``k`` nearest rows of each query vector in ``name`` (a collection or an alias).

        ``vectors``: one vector or a 2-D array of them (normalised or not: cosine similarity).
        Filters keep rows of that region (name, alias or id), view, split and model version, and
        drop the rows of ``exclude_patient_hash``'s patient; values are escaped, never
        interpolated raw. ``group_by`` (a key of :data:`GROUP_FIELDS`, e.g. ``"study"``) keeps
        only the best hit of each study (patient, image), so one study cannot fill the top k;
        rows with an empty study hash each count as their own group. ``ef``: HNSW candidate list
        size (default :attr:`search_ef`, raised to the number of candidates asked for). Returns
        one list of :class:`RegionHit` per query, best first.
        """
        filters: dict[str, Any] = dict(
            anatomy=anatomy,
            view=view,
            split=split,
            model_version=model_version,
            exclude_patient_hash=exclude_patient_hash,
        )
        if self.resident_search:
            return self._resident_search(name, vectors, k, group_by, **filters)
        if group_by is not None:
            return self._grouped_search(name, vectors, k, GROUP_FIELDS.get(group_by, ""), group_by, ef=ef, **filters)
        queries, expression = prepare_search(
            self.display_uri, name, vectors, k, lambda: self._dimension(name), **filters
        )
        params = {"ef": max(int(ef or self.search_ef), k), "nprobe": self.nprobe}
        results = self._loaded_call(
            name,
            self.client.search,
            name,
            data=list(queries),
            filter=expression,
            limit=k,
            output_fields=list(OUTPUT_FIELDS),
            search_params={"metric_type": METRIC_TYPE, "params": params},
            consistency_level=self.consistency_level,
        )
        return [[self._hit(h) for h in hits] for hits in results]

    def _resident_search(
        self,
        name: str,
        vectors: Any,
        k: int,
        group_by: str | None,
        **filters: Any,
    ) -> list[list[RegionHit]]:
        """:meth:`search` over this process's exact in-memory copy of the collection (a milvus-lite
        file; see :mod:`indexing.resident_collection`): the same filters, answers, errors."""
        return search_resident(lambda: self.resident(name), self.display_uri, name, vectors, k, group_by, **filters)

    def resident(self, name: str) -> ResidentCollection:
        """This process's in-memory copy of collection (or alias) ``name`` of this milvus-lite file,
        read from the file on first use and again after any write to it from this process."""
        if not self.resident_search:
            raise RegionIndexError(
                self.display_uri, name, "resident search is for milvus-lite files", reason="not_file"
            )
        copy, generation = _RESIDENT.get(self._resident_key, name)
        if copy is not None:
            return copy
        started = time.perf_counter()
        self._require(name)
        dim = self._dimension(name)
        with _quiet_iterator_setup():
            iterator = self._loaded_call(
                name,
                self.client.query_iterator,
                name,
                batch_size=4096,
                filter="anatomy_id >= 0",
                output_fields=[*OUTPUT_FIELDS, "vector"],
                consistency_level="Strong",
            )

        def rows() -> Iterator[dict[str, Any]]:
            try:
                while True:
                    page = self._call(name, lambda **_: iterator.next())
                    if not page:
                        return
                    yield from page
            finally:
                iterator.close()

        copy = ResidentCollection(rows(), dim)
        _RESIDENT.put(self._resident_key, name, copy, generation)
        log.debug(
            "%s: %d rows of %s held in memory for exact search (%.0f MB, read in %.1f s)",
            self.display_uri,
            copy.rows,
            name,
            copy.nbytes / 2**20,
            time.perf_counter() - started,
        )
        return copy

    def _grouped_search(
        self, name: str, vectors: Any, k: int, field_name: str, group_by: str, *, ef: int | None, **filters: Any
    ) -> list[list[RegionHit]]:
        """Best hit per group, found client-side so every Milvus (Lite, 2.3 servers) gives the same
        answer: fetch 4k candidates, keep the first of each group, and fetch more (doubling, up to
        :data:`MAX_TOP_K`) for the queries that found fewer than k groups in a full page."""
        if not field_name:
            raise ValueError(f"group_by must be one of {sorted(GROUP_FIELDS)}, got {group_by!r}")
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_TOP_K:
            raise ValueError(f"k must be an int in 1..{MAX_TOP_K}, got {k!r}")
        queries = np.asarray(vectors, dtype=np.float32)
        if queries.ndim == 1:
            queries = queries[None, :]
        grouped: list[list[RegionHit] | None] = [None] * len(queries)
        pending = list(range(len(queries)))
        fetch = min(MAX_TOP_K, 4 * k)
        while pending:
            pages = self.search(name, queries[pending], fetch, ef=max(int(ef or self.search_ef), fetch), **filters)
            still = []
            for q, page in zip(pending, pages):
                best: dict[str, RegionHit] = {}
                for hit in page:
                    group = getattr(hit, field_name) or f"row:{hit.key}"
                    if group not in best:
                        best[group] = hit
                grouped[q] = list(best.values())[:k]
                if len(best) < k and len(page) == fetch and fetch < MAX_TOP_K:
                    still.append(q)
            pending, fetch = still, min(MAX_TOP_K, fetch * 2)
        return [hits or [] for hits in grouped]

    @staticmethod
    def _hit(hit: dict[str, Any]) -> RegionHit:
        entity = hit["entity"]
        return RegionHit(
            key=str(entity["key"]),
            score=float(hit["distance"]),
            anatomy=str(entity["anatomy"]),
            anatomy_id=int(entity["anatomy_id"]),
            image_id=str(entity["image_id"]),
            image_uri=str(entity["image_uri"]),
            box=tuple(float(v) for v in entity["box"]),  # type: ignore[arg-type]
            view=str(entity["view"]),
            split=str(entity["split"]),
            patient_hash=str(entity["patient_hash"]),
            study_hash=str(entity["study_hash"]),
            model_version=str(entity["model_version"]),
            box_source=str(entity.get("box_source") or "label"),
        )

    # -- lifetime

    def close(self) -> None:
        """Close the connection (idempotent). A milvus-lite file stays locked by this process."""
        if self._client is not None:
            try:
                self._client.close()
            finally:
                self._client = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"RegionIndex({self.display_uri!r})"
