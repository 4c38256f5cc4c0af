"""The backends of :func:`serving.api.create_app`: how the routes reach the encoder and the index.

A :class:`Backend` is one encoder part and one index part; each is either held in this process or
reached through a Ray Serve deployment handle:

* :class:`InProcessEncoder` / :class:`InProcessIndex`: an :class:`~serving.runtime.EncoderRuntime`
  / :class:`~serving.runtime.SearchRuntime` called in a worker thread (tests, a laptop without
  Ray: :func:`local_backend`);
* :class:`BatchedEncoder`: the encoder held by the same Serve replica as the routes, batched across
  its concurrent requests (the ``fused`` topology of :mod:`serving.deployments`);
* :class:`HandleEncoder` / :class:`HandleIndex`: the ``encoder`` and ``search`` deployments.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

import numpy as np

from .runtime import EncoderRuntime, SearchFilters, SearchRuntime


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
        return await asyncio.to_thread(self.runtime.status)


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
        return await self.handle.status.remote()


def local_backend(encoder: EncoderRuntime, search: SearchRuntime) -> Backend:
    """Everything in this process, no Ray (tests; ``create_app`` on a laptop)."""
    return Backend(InProcessEncoder(encoder), InProcessIndex(search))
