"""Storage that goes away: reads through a TCP relay in front of the real S3 test server, which the
test takes down (every connection reset) and brings back, as a network partition or an object
store restart would.

A read retried through a short outage returns the bytes; a long outage is a ``StorageError``
(never a missing or bad film); the index job's film counter stops the job on storage errors
instead of counting them as bad films.
"""

from __future__ import annotations

import threading
import time
from dataclasses import replace

import numpy as np
import pytest
from tcp_relay import TcpRelay

from regionmir import storage
from regionmir.errors import DatasetError, MissingImageError, StorageError

integration = pytest.mark.integration


@pytest.fixture
def relayed(s3_server):
    """(an object's URI, S3 options that reach it through the relay, the relay)."""
    bucket = s3_server.make_bucket("faults")
    s3_server.filesystem().pipe(f"{bucket[5:]}/film.bin", b"film bytes")
    relay = TcpRelay(int(s3_server.endpoint_url.rsplit(":", 1)[1]))
    options = replace(s3_server.options, endpoint_url=f"http://127.0.0.1:{relay.port}")
    yield f"{bucket}/film.bin", options, relay
    relay.close()


@integration
def test_a_read_through_a_short_outage_is_retried_and_returns_the_bytes(relayed):
    uri, options, relay = relayed
    assert storage.read_bytes(uri, options) == b"film bytes"
    relay.down = True
    threading.Timer(0.4, lambda: setattr(relay, "down", False)).start()  # back within the retries
    assert storage.read_bytes(uri, options) == b"film bytes"


@integration
def test_a_long_outage_is_a_storage_error_not_a_missing_or_bad_film(relayed):
    uri, options, relay = relayed
    relay.down = True
    started = time.perf_counter()
    with pytest.raises(StorageError) as err:
        storage.read_bytes(uri, options)
    assert not isinstance(err.value, MissingImageError) and err.value.reason == "storage"
    assert f"after {storage.READ_ATTEMPTS} attempt(s)" in err.value.message
    print(f"\n[storage faults] gave up after {time.perf_counter() - started:.1f} s")


def test_the_index_jobs_counter_stops_on_storage_errors_instead_of_counting_bad_films():
    from regionmir.bad_films import BadFilms

    def batch(reasons: list[str]) -> dict[str, np.ndarray]:
        n = len(reasons)
        return {
            "anatomy_id": np.full(n, -1),
            "skip_reason": np.asarray(reasons, dtype=object),
            "image_id": np.asarray([f"film-{i}" for i in range(n)], dtype=object),
        }

    counter = BadFilms("data", total=100, max_bad_fraction=0.05)
    counter.filter(batch(["unreadable_image", "missing_image"]))  # bad films: counted, the job goes on
    assert counter.count == 2
    with pytest.raises(StorageError, match="re-run the job once storage answers"):
        counter.filter(batch(["storage"]))  # storage down: the job stops at once
    with pytest.raises(DatasetError):  # and too many bad films still stop it
        BadFilms("data", total=10, max_bad_fraction=0.05).filter(batch(["unreadable_image"]))
