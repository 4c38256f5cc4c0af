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
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

import numpy as np

from regionmir.errors import IndexUnavailableError

from .runtime import EncoderRuntime, IndexCopy, SearchFilters, SearchRuntime

log = logging.getLogger("ray.serve")

#: Rows held in memory, up to this many, are searched on the replica's event loop (well under a
#: millisecond); more in a worker thread, so Serve's own work on that loop (gRPC, health checks,
#: metrics — user code shares it when Serve runs throughput-optimised) never waits for a big product.
INLINE_SEARCH_MAX_ROWS = 20_000
#: How often a :class:`CopiedIndex` asks the search replica whether its copy is still the current one.
COPY_CHECK_S = 5.0


class EncoderPart(Protocol):
    async def embed(self, crops: np.ndarray) -> dict[str, np.ndarray]: ...

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

    async def embed(self, crops: np.ndarray) -> dict[str, np.ndarray]:
        return await self.encoder.embed(crops)

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

    async def embed(self, crops: np.ndarray) -> dict[str, np.ndarray]:
        return await asyncio.to_thread(self.runtime.forward, crops)

    async def status(self) -> dict[str, Any]:
        return self.runtime.info()


class BatchedEncoder:
    """The encoder of this replica behind its ``@serve.batch`` method: ``embed`` waits for the
    batch its crops joined (see :class:`serving.deployments.BatchedEncoderReplica`)."""

    def __init__(self, embed: Callable[[np.ndarray], Awaitable[dict[str, np.ndarray]]], runtime: EncoderRuntime):
        self._embed = embed
        self.runtime = runtime

    async def embed(self, crops: np.ndarray) -> dict[str, np.ndarray]:
        return await self._embed(crops)

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

    async def embed(self, crops: np.ndarray) -> dict[str, np.ndarray]:
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

    The copy arrives in the background: the first searches (and any while the search replica
    says no copy is to be had — a Milvus server, no collection yet, more than ``max_rows`` rows)
    go to the search replica. Every :data:`COPY_CHECK_S` seconds of use this replica asks whether
    its copy is still current (a short answer when it is) and takes the new one when not — the
    collection a service searches changes only when ``regionmir index`` built one for its model.
    When the search replica cannot be reached the copy keeps answering; readiness still reports
    the index as unreachable."""

    def __init__(self, handle: Any, max_rows: int, check_s: float = COPY_CHECK_S):
        self.remote = HandleIndex(handle)
        self.max_rows = int(max_rows)
        self.check_s = float(check_s)
        self.copy: IndexCopy | None = None
        self._checked = float("-inf")
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
        if self._checking is None and time.monotonic() - self._checked >= self.check_s:
            self._checking = asyncio.get_running_loop().create_task(self._check())

    async def _check(self) -> None:
        try:
            have = self.copy.token if self.copy is not None else None
            answer = await self.remote.handle.resident_copy.remote(have, self.max_rows)
            if answer is None:
                self.copy = None
            elif answer[1] is not None:
                self.copy = answer[1]
                log.info("search: %d rows of %s copied into this replica", self.copy.rows.rows, self.copy.collection)
        except Exception as exc:  # the search replica is away: keep what answers now
            log.warning("search: could not check the index copy (%s); keeping the one held", type(exc).__name__)
        finally:
            self._checked = time.monotonic()
            self._checking = None


class ConnectedIndex:
    """The ``search`` deployment, with its searches made by this process over its own connection
    to the Milvus server (a ``fused`` ingress replica): one process hop fewer per query. Look-ups
    by key and status still go to the search replica.

    The connection is made on the first search (a Milvus that is down when the replica starts
    does not stop it; the search answers 503 ``index_unavailable`` as the search replica's
    would, and the next one connects again). Like the search replica, it searches the collection
    ``regionmir index`` built for the served model once the alias points at it, checked every
    :data:`COPY_CHECK_S` seconds of use."""

    def __init__(self, handle: Any, connect: Callable[[], SearchRuntime], check_s: float = COPY_CHECK_S):
        self.remote = HandleIndex(handle)
        self._connect = connect
        self.check_s = float(check_s)
        self.runtime: SearchRuntime | None = None
        self._checked = float("-inf")
        self._lock = threading.Lock()  # searches run in worker threads: one connects, one checks

    def _current(self) -> SearchRuntime:
        with self._lock:
            if self.runtime is None:
                self.runtime = self._connect()
                self._checked = float("-inf")
            if time.monotonic() - self._checked >= self.check_s:
                self.runtime.follow_own_collection()
                self._checked = time.monotonic()
            return self.runtime

    def _search(self, vector: np.ndarray, k: int, filters: SearchFilters) -> list[dict]:
        runtime = self._current()
        try:
            return runtime.search(vector, k, filters)
        except IndexUnavailableError:  # connect afresh on the next search
            with self._lock:
                if self.runtime is runtime:
                    self.runtime = None
            runtime.close()
            raise

    async def search(self, vector: np.ndarray, k: int, filters: SearchFilters) -> list[dict]:
        return await asyncio.to_thread(self._search, vector, k, filters)

    async def get_rows(self, keys: list[str]) -> dict[str, dict]:
        return await self.remote.get_rows(keys)

    async def status(self) -> dict[str, Any]:
        return {**await self.remote.status(), "searched_in": "ingress"}


def local_backend(encoder: EncoderRuntime, search: SearchRuntime) -> Backend:
    """Everything in this process, no Ray (tests; ``create_app`` on a laptop)."""
    return Backend(InProcessEncoder(encoder), InProcessIndex(search))
