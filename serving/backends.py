"""The backends of :func:`serving.api.create_app`: how the routes reach the encoder and the index.

A :class:`Backend` is one encoder part and one index part; each is either held in this process or
reached through a Ray Serve deployment handle:

* :class:`InProcessEncoder` / :class:`InProcessIndex`: an :class:`~serving.runtime.EncoderRuntime`
  / :class:`~serving.runtime.SearchRuntime` called in a worker thread (tests, a laptop without
  Ray: :func:`local_backend`);
* :class:`BatchedEncoder`: the encoder held by the same Serve replica as the routes, batched across
  its concurrent requests (the ``fused`` topology of :mod:`serving.deployments`);
* :class:`HandleEncoder` / :class:`HandleIndex`: the ``encoder`` and ``search`` deployments;
* :class:`CopiedIndex`: the ``search`` deployment's in-memory rows of a milvus-lite file, copied
  into this replica and searched here (a ``fused`` ingress: one process hop fewer per query);
* :class:`ConnectedIndex`: a Milvus server searched over this replica's own connection (the same,
  for a server).
"""

from __future__ import annotations

import asyncio
import logging
import os
import pickle
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any, Protocol

import numpy as np

from regionmir.errors import IndexUnavailableError

from .encoder_batcher import Arrival
from .runtime import EncoderRuntime, IndexCopy, SearchFilters, SearchRuntime

log = logging.getLogger("ray.serve")

#: Rows held in memory, up to this many, are searched on the replica's event loop (well under a
#: millisecond); more in a worker thread, so Serve's own work on that loop (gRPC, health checks,
#: metrics — user code shares it when Serve runs throughput-optimised) never waits for a big product.
INLINE_SEARCH_MAX_ROWS = 20_000
#: How often a :class:`CopiedIndex` asks the search replica whether its copy is still the current one
#: (and a :class:`ConnectedIndex` whether the served model's collection is searched).
COPY_CHECK_S = 5.0
#: After a failed copy check, how long before a :class:`CopiedIndex` asks again.
COPY_RETRY_S = 30.0
#: After a failed connection attempt, how long a :class:`ConnectedIndex` answers 503 before trying again.
CONNECT_RETRY_S = 2.0


class EncoderPart(Protocol):
    def arriving(self) -> AbstractContextManager[Arrival | None]: ...

    async def embed(self, crops: np.ndarray, arrival: Arrival | None = None) -> dict[str, np.ndarray]: ...

    async def status(self) -> dict[str, Any]: ...


class IndexPart(Protocol):
    async def search(self, vector: np.ndarray, k: int, filters: SearchFilters) -> list[dict]: ...

    async def get_rows(self, keys: list[str]) -> dict[str, dict]: ...

    async def status(self) -> dict[str, Any]: ...


class Backend:
    """What the routes call: ``embed``, ``search``, ``get_rows``, ``index_status``, ``encoder_status``."""

    def __init__(self, encoder: EncoderPart, index: IndexPart):
        self.encoder = encoder
        self.index = index

    def arriving(self) -> AbstractContextManager[Arrival | None]:
        """Announce a query whose crops :meth:`embed` will get soon (its film is being decoded): a
        batcher in this process may wait for them (:mod:`serving.encoder_batcher`); a remote
        encoder ignores it."""
        return self.encoder.arriving()

    async def embed(self, crops: np.ndarray, arrival: Arrival | None = None) -> dict[str, np.ndarray]:
        return await self.encoder.embed(crops, arrival)

    async def search(self, vector: np.ndarray, k: int, filters: SearchFilters) -> list[dict]:
        return await self.index.search(np.asarray(vector, dtype=np.float32), k, filters)

    async def get_rows(self, keys: Sequence[str]) -> dict[str, dict]:
        return await self.index.get_rows(list(keys))

    async def index_status(self) -> dict[str, Any]:
        return await self.index.status()

    async def encoder_status(self) -> dict[str, Any]:
        return await self.encoder.status()


class InProcessEncoder:
    """An :class:`EncoderRuntime` of this process, one request per forward pass, in a worker thread."""

    def __init__(self, runtime: EncoderRuntime):
        self.runtime = runtime

    def arriving(self) -> AbstractContextManager[Arrival | None]:
        return nullcontext(None)  # no batches to wait for

    async def embed(self, crops: np.ndarray, arrival: Arrival | None = None) -> dict[str, np.ndarray]:
        return await asyncio.to_thread(self.runtime.forward, crops)

    async def status(self) -> dict[str, Any]:
        return self.runtime.info()


class BatchedEncoder:
    """The encoder of this replica behind its batcher: ``embed`` waits for the forward pass
    its crops joined (see :class:`serving.deployments.BatchedEncoderReplica`)."""

    def __init__(
        self,
        embed: Callable[[np.ndarray, Arrival | None], Awaitable[dict[str, np.ndarray]]],
        runtime: EncoderRuntime,
        arriving: Callable[[], AbstractContextManager[Arrival]],
    ):
        self._embed = embed
        self.runtime = runtime
        self._arriving = arriving

    def arriving(self) -> AbstractContextManager[Arrival | None]:
        return self._arriving()

    async def embed(self, crops: np.ndarray, arrival: Arrival | None = None) -> dict[str, np.ndarray]:
        return await self._embed(crops, arrival)

    async def status(self) -> dict[str, Any]:
        return self.runtime.info()


class InProcessIndex:
    """A :class:`SearchRuntime` of this process, each call in a worker thread."""

    def __init__(self, runtime: SearchRuntime):
        self.runtime = runtime

    async def search(self, vector: np.ndarray, k: int, filters: SearchFilters) -> list[dict]:
        return await asyncio.to_thread(self.runtime.search, vector, k, filters)

    async def get_rows(self, keys: list[str]) -> dict[str, dict]:
        return await asyncio.to_thread(self.runtime.get, keys)

    async def status(self) -> dict[str, Any]:
        return {**await asyncio.to_thread(self.runtime.status), "searched_in": "this process"}


def over_grpc_when_optimised(handle: Any) -> Any:
    """``handle``, set to call over gRPC when this Ray runs Serve throughput-optimised (what
    ``http.proxy: haproxy`` switches on). A handle given to a deployment is made in the process that
    built the application, with the default of *its* environment — which, for a service that started
    its Ray itself, had not been set yet when it imported Ray Serve."""
    if os.environ.get("RAY_SERVE_THROUGHPUT_OPTIMIZED") == "1":
        return handle.options(_by_reference=False)
    return handle


class HandleEncoder:
    """The ``encoder`` deployment, through its handle."""

    def __init__(self, handle: Any):
        self.handle = over_grpc_when_optimised(handle)

    def arriving(self) -> AbstractContextManager[Arrival | None]:
        return nullcontext(None)  # the encoder deployment's batcher does not see this replica's decodes

    async def embed(self, crops: np.ndarray, arrival: Arrival | None = None) -> dict[str, np.ndarray]:
        return await self.handle.embed.remote(crops)

    async def status(self) -> dict[str, Any]:
        return await self.handle.info.remote()


class HandleIndex:
    """The ``search`` deployment, through its handle."""

    def __init__(self, handle: Any):
        self.handle = over_grpc_when_optimised(handle)

    async def search(self, vector: np.ndarray, k: int, filters: SearchFilters) -> list[dict]:
        return await self.handle.search.remote(vector, k, filters)

    async def get_rows(self, keys: list[str]) -> dict[str, dict]:
        return await self.handle.get.remote(keys)

    async def status(self) -> dict[str, Any]:
        return {**await self.handle.status.remote(), "searched_in": "search replica"}


class CopiedIndex:
    """The ``search`` deployment, with its searches answered in this process from a copy of the rows
    it holds in memory for a milvus-lite file (:class:`~serving.runtime.IndexCopy`): exact, the
    same answers and errors, without the hop to the search replica. Look-ups by key and status
    still go to the search replica.

    The copy arrives in the background, pickled (plain bytes: unpickled here into this process's
    own memory, nothing left pinned in Ray's object store): the first searches (and any while the
    search replica says no copy is to be had — a Milvus server, no collection yet, more than
    ``max_rows`` rows, a copy larger than a message between replicas may be) go to the search
    replica. Every :data:`COPY_CHECK_S` seconds of use this replica asks whether its copy is still
    current (a short answer when it is) and takes the new one when not — the collection a service
    searches changes only when ``regionmir index`` built one for its model. When the search
    replica cannot be reached the copy keeps answering (readiness still reports the index as
    unreachable) and the next check waits :data:`COPY_RETRY_S`."""

    def __init__(self, handle: Any, max_rows: int, check_s: float = COPY_CHECK_S, timeout_s: float = 60.0):
        self.remote = HandleIndex(handle)
        self.max_rows = int(max_rows)
        self.check_s = float(check_s)
        self.timeout_s = float(timeout_s)
        self.copy: IndexCopy | None = None
        self._next_check = float("-inf")
        self._checking: asyncio.Task | None = None

    async def search(self, vector: np.ndarray, k: int, filters: SearchFilters) -> list[dict]:
        self._check_now_and_then()
        copy = self.copy
        if copy is None:
            return await self.remote.search(vector, k, filters)
        if copy.rows.rows <= INLINE_SEARCH_MAX_ROWS:
            return copy.search(vector, k, filters)
        return await asyncio.to_thread(copy.search, vector, k, filters)

    async def get_rows(self, keys: list[str]) -> dict[str, dict]:
        return await self.remote.get_rows(keys)

    async def status(self) -> dict[str, Any]:
        self._check_now_and_then()
        status = await self.remote.status()
        copy = self.copy
        if copy is not None:
            status["searched_in"] = "ingress"
        status["ingress_copy_rows"] = copy.rows.rows if copy is not None else 0
        return status

    def _check_now_and_then(self) -> None:
        if self._checking is None and time.monotonic() >= self._next_check:
            self._checking = asyncio.get_running_loop().create_task(self._check())

    async def _check(self) -> None:
        wait = self.check_s
        try:
            have = self.copy.token if self.copy is not None else None
            answer = await asyncio.wait_for(
                self.remote.handle.resident_copy.remote(have, self.max_rows), timeout=self.timeout_s
            )
            if answer is None:
                self.copy = None
            elif answer[1] is not None:
                self.copy = await asyncio.to_thread(pickle.loads, answer[1])
                log.info("search: %d rows of %s copied into this replica", self.copy.rows.rows, self.copy.collection)
        except Exception as exc:  # the search replica is away: keep what answers now, ask again later
            wait = COPY_RETRY_S
            log.warning("search: could not check the index copy (%s); keeping the one held", type(exc).__name__)
        finally:
            self._next_check = time.monotonic() + wait
            self._checking = None


class ConnectedIndex:
    """The ``search`` deployment, with its searches made by this process over its own connection
    to the Milvus server (a ``fused`` ingress replica): one process hop fewer per query. Look-ups
    by key and status still go to the search replica.

    The connection is made on the first search — one attempt, within the index timeout — so a
    Milvus that is down when the replica starts does not stop it. While one search connects, and
    for :data:`CONNECT_RETRY_S` after a failed attempt, searches answer 503 ``index_unavailable``
    at once rather than queueing behind it. Once connected, pymilvus's channel reconnects by
    itself after an outage. Like the search replica, it searches the collection ``regionmir
    index`` built for the served model once the alias points at it, checked every
    :data:`COPY_CHECK_S` seconds of use."""

    def __init__(self, handle: Any, connect: Callable[[], SearchRuntime], where: str, check_s: float = COPY_CHECK_S):
        self.remote = HandleIndex(handle)
        self._connect = connect
        self.where = where  # the index's URI as it may be shown (no credentials)
        self.check_s = float(check_s)
        self.runtime: SearchRuntime | None = None
        self._failed_at = float("-inf")
        self._checked = float("-inf")
        self._connecting = threading.Lock()
        self._following = threading.Lock()

    def _unavailable(self, why: str) -> IndexUnavailableError:
        return IndexUnavailableError(self.where, None, why)

    def _current(self) -> SearchRuntime:
        runtime = self.runtime
        if runtime is None:
            if not self._connecting.acquire(blocking=False):
                raise self._unavailable("this replica is connecting to the index; retry shortly")
            try:
                if self.runtime is None:
                    if time.monotonic() - self._failed_at < CONNECT_RETRY_S:
                        raise self._unavailable("this replica could not connect moments ago; retry shortly")
                    try:
                        self.runtime = self._connect()
                    except Exception:
                        self._failed_at = time.monotonic()
                        raise
                    self._checked = float("-inf")
                runtime = self.runtime
            finally:
                self._connecting.release()
        if time.monotonic() - self._checked >= self.check_s and self._following.acquire(blocking=False):
            try:
                runtime.follow_own_collection()
                self._checked = time.monotonic()
            finally:
                self._following.release()
        return runtime

    def _search(self, vector: np.ndarray, k: int, filters: SearchFilters) -> list[dict]:
        return self._current().search(vector, k, filters)

    async def search(self, vector: np.ndarray, k: int, filters: SearchFilters) -> list[dict]:
        return await asyncio.to_thread(self._search, vector, k, filters)

    async def get_rows(self, keys: list[str]) -> dict[str, dict]:
        return await self.remote.get_rows(keys)

    async def status(self) -> dict[str, Any]:
        return {**await self.remote.status(), "searched_in": "ingress", "ingress_connected": self.runtime is not None}


def local_backend(encoder: EncoderRuntime, search: SearchRuntime) -> Backend:
    """Everything in this process, no Ray (tests; ``create_app`` on a laptop)."""
    return Backend(InProcessEncoder(encoder), InProcessIndex(search))
