"""Shared fixtures. ``s3_server``: a real S3 HTTP endpoint (moto_server) for the whole session;
``orthanc``: a real Orthanc PACS (``tests/orthanc_server.py``) for one test."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from local_process import free_port
from orthanc_server import OrthancServer

from indexing.local_milvus import (
    LocalMilvusServer,
    MilvusLiteServer,
    MilvusStandaloneServer,
)
from regionmir.storage import S3Options


@dataclass
class S3TestServer:
    """A running ``moto_server``: where it listens, how to reach it, and a bucket maker."""

    endpoint_url: str
    options: S3Options
    process: subprocess.Popen

    def filesystem(self):
        """An ``s3fs.S3FileSystem`` talking to this server."""
        import s3fs

        return s3fs.S3FileSystem(**self.options.s3fs_kwargs())

    def make_bucket(self, prefix: str = "test") -> str:
        """Create a fresh, uniquely named bucket; returns ``s3://name``."""
        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        self.filesystem().mkdir(name)
        return f"s3://{name}"

    def upload(self, local_dir: str | Path, uri: str) -> None:
        """Copy a local folder tree to ``uri`` (``s3://bucket/prefix``)."""
        fs = self.filesystem()
        target = uri.split("://", 1)[1].rstrip("/")
        for path in sorted(Path(local_dir).rglob("*")):
            if path.is_file():
                fs.put_file(str(path), f"{target}/{path.relative_to(local_dir).as_posix()}")
        fs.invalidate_cache()


@pytest.fixture(scope="module")
def ray_local():
    """A local Ray (``cluster.ray_runtime.start_ray``) for one module, shut down after it."""
    import ray

    from cluster.ray_runtime import start_ray

    start_ray()
    yield
    ray.shutdown()


def _moto_server_command() -> str | None:
    beside_python = Path(sys.executable).parent / "moto_server"
    return str(beside_python) if beside_python.exists() else shutil.which("moto_server")


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3TestServer]:
    """Start ``moto_server -H 127.0.0.1 -p <free port>``, wait until it answers, stop it at the end."""
    command = _moto_server_command()
    if command is None:
        pytest.fail("moto_server not installed: it comes with the dev extra (pip install -e .[dev])")
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    env = dict(os.environ, AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing")
    process = subprocess.Popen(
        [command, "-H", "127.0.0.1", "-p", str(port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(endpoint, timeout=1).close()
            break
        except urllib.error.HTTPError:
            break  # any HTTP answer means it is up
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                pytest.fail(f"moto_server did not start on {endpoint} (exit code {process.poll()})")
            time.sleep(0.1)
    options = S3Options(endpoint_url=endpoint, key="testing", secret="testing")
    try:
        yield S3TestServer(endpoint_url=endpoint, options=options, process=process)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# --------------------------------------------------------------------------------- Milvus servers
#
# Two server kinds for the contract tests of indexing.region_index (the third backend, a
# milvus-lite file, needs no server): ``milvus_lite_server`` runs ``milvus-lite server`` and
# ``milvus_standalone`` runs the C++ Milvus standalone of the PyPI package ``milvus``
# (``milvus-server``). Both are session-scoped, listen on free 127.0.0.1 ports, keep their data in
# a temporary folder, and can be restarted on the same data (``restart()``; the URI may change).
# A missing package fails the tests: both come with the dev extra.


def _check_milvus_package(name: str) -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        pytest.fail(f"the PyPI package {name!r} is not installed: it comes with the dev extra (pip install -e .[dev])")


@pytest.fixture(scope="session")
def milvus_lite_server(tmp_path_factory) -> Iterator[LocalMilvusServer]:
    """A ``milvus-lite server`` on a free 127.0.0.1 port for the whole session."""
    _check_milvus_package("milvus-lite")
    root = tmp_path_factory.mktemp("milvus-lite-server")
    server = MilvusLiteServer(root / "data", root)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def milvus_standalone(request, tmp_path_factory) -> Iterator[LocalMilvusServer]:
    """A real Milvus standalone (PyPI package ``milvus``) on free 127.0.0.1 ports for the session."""
    version = _check_milvus_package("milvus")
    cache = getattr(request.config, "cache", None)
    bin_cache = cache.mkdir(f"milvus-server-{version}-bin") if cache is not None else None
    root = tmp_path_factory.mktemp("milvus-standalone")
    server = MilvusStandaloneServer(root / "data", root, bin_cache)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def orthanc(tmp_path) -> Iterator[OrthancServer]:
    """A started Orthanc (DICOMweb at ``.dicomweb_url``) on a free 127.0.0.1 port, its files in
    ``tmp_path/orthanc``; stopped after the test. A missing Orthanc fails the test (``make system-deps``)."""
    with OrthancServer(tmp_path / "orthanc") as server:
        yield server
