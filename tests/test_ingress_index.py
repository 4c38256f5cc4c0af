"""How a ``fused`` ingress replica searches a Milvus server over its own connection
(:class:`serving.backends.ConnectedIndex`), against a real milvus-lite server and no Ray: the same
hits as the index itself; while the server is down every search fails fast with
``IndexUnavailableError`` (503 ``index_unavailable`` in the service) — concurrent ones do not
queue behind a connection attempt — and searches answer again once the server is back."""

from __future__ import annotations

import asyncio
import os
import time

import numpy as np
import pytest
from local_process import free_port
from test_region_index import DIM, make_rows, unit

from indexing.local_milvus import MilvusLiteServer
from indexing.region_index import RegionIndex, display_uri
from regionmir.errors import IndexUnavailableError
from serving.backends import CONNECT_RETRY_S, ConnectedIndex
from serving.runtime import SearchFilters, SearchRuntime

#: `make test-faults` (and `make test-slow`, CI): a Milvus server killed and started again
pytestmark = pytest.mark.slow

TIMEOUT_S = 2.0


def _searches(index: ConnectedIndex, vector: np.ndarray, n: int) -> tuple[list, float]:
    async def run() -> list:
        return await asyncio.gather(
            *(index.search(vector, 5, SearchFilters()) for _ in range(n)), return_exceptions=True
        )

    started = time.monotonic()
    answers = asyncio.run(run())
    return answers, time.monotonic() - started


def test_searches_over_the_ingress_connection_fail_fast_while_milvus_is_down_then_answer_again(tmp_path, monkeypatch):
    monkeypatch.delenv("RAY_SERVE_THROUGHPUT_OPTIMIZED", raising=False)  # the handle is never called here
    server = MilvusLiteServer(tmp_path / "milvus", tmp_path / "logs")
    server.port = free_port()
    os.makedirs(server.data_dir, exist_ok=True)
    server.start()
    try:
        index = RegionIndex(server.uri)
        index.create_collection("regions", DIM, index_type="FLAT")
        index.upsert("regions", make_rows(300) + make_rows(50, seed=1, model_version="m2", prefix="other"))
        index.flush("regions")
        vector = unit(np.random.default_rng(5).normal(size=(1, DIM)))[0]
        expected = [h.key for h in index.search("regions", vector, k=5, model_version="m1")[0]]
        index.close()

        def connect() -> SearchRuntime:
            return SearchRuntime(server.uri, "regions", "m1", timeout_s=TIMEOUT_S, connect_attempts=1)

        connected = ConnectedIndex(None, connect, display_uri(server.uri))
        answers, _ = _searches(connected, vector, 1)
        assert [h["key"] for h in answers[0]] == expected  # the served model's rows only
        assert connected.runtime is not None

        server.kill()
        answers, took = _searches(connected, vector, 6)
        assert all(isinstance(a, IndexUnavailableError) for a in answers), answers
        assert took < 6 * TIMEOUT_S, f"six concurrent searches of a dead index took {took:.1f} s"

        # a replica that starts while Milvus is down: one attempt, and the searches that meet it
        # (or follow a failed one) are refused at once rather than queued behind it
        fresh = ConnectedIndex(None, connect, display_uri(server.uri))
        answers, took = _searches(fresh, vector, 6)
        assert all(isinstance(a, IndexUnavailableError) for a in answers), answers
        assert took < 4 * TIMEOUT_S + 5, f"a first connection to a dead index held searches {took:.1f} s"
        assert any("retry shortly" in str(a) for a in answers), answers

        server.start()  # same data, same port; returns when it answers
        back_at = time.monotonic()
        for door in (connected, fresh):
            deadline = time.monotonic() + 60
            while True:
                time.sleep(CONNECT_RETRY_S)
                answers, _ = _searches(door, vector, 1)
                if not isinstance(answers[0], Exception) or time.monotonic() > deadline:
                    break
            assert not isinstance(answers[0], Exception), answers[0]
            assert [h["key"] for h in answers[0]] == expected
        print(f"\n[ingress index] both answered again {time.monotonic() - back_at:.1f} s after Milvus did")
    finally:
        if server.process is not None:
            server.stop()
