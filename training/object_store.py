"""Object storage for the Ray layer: pyarrow filesystems with explicit endpoints, and a fail-fast
reachability check run on the driver before any worker starts.

pyarrow ignores ``AWS_ENDPOINT_URL_S3``, so every Ray Data read/write and Ray Train ``RunConfig``
gets an explicit ``pyarrow.fs.S3FileSystem`` built from the same :class:`S3Options` the library
uses.
"""

from __future__ import annotations

from urllib.parse import urlparse

import pyarrow.fs as pafs

from regionmir import storage
from regionmir.errors import StorageError
from regionmir.storage import S3Options


def pyarrow_filesystem(uri: str, s3: S3Options | None = None) -> tuple[pafs.FileSystem, str]:
    """``(filesystem, path)`` for ``uri``: S3 with the configured endpoint, else local."""
    if uri.startswith(("s3://", "s3a://")):
        options = s3 or S3Options.from_env()
        kwargs: dict = {"region": options.region}
        if options.anon:
            kwargs["anonymous"] = True
        else:
            if options.key:
                kwargs["access_key"] = options.key
                kwargs["secret_key"] = options.secret
            if options.token:
                kwargs["session_token"] = options.token
        if options.endpoint_url:
            parsed = urlparse(options.endpoint_url)
            kwargs["endpoint_override"] = parsed.netloc or parsed.path
            kwargs["scheme"] = parsed.scheme or "https"
        path_style = options.path_style if options.path_style is not None else bool(options.endpoint_url)
        kwargs["force_virtual_addressing"] = not path_style
        return pafs.S3FileSystem(**kwargs), uri.split("://", 1)[1].rstrip("/")
    local = storage.filesystem(uri)[1]
    return pafs.LocalFileSystem(), local


def check_reachable(uri: str, s3: S3Options | None = None, *, write: bool = False) -> None:
    """Fail fast, naming ``uri``, when its storage cannot be reached, the credentials are refused
    or (``write=True``) nothing can be written there. Local paths: the folder must be creatable."""
    if not storage.is_remote(uri):
        if write:
            import os

            try:
                os.makedirs(storage.filesystem(uri)[1], exist_ok=True)
            except OSError as exc:
                raise StorageError(uri, f"cannot create the output folder: {exc}") from exc
        return
    fs, path = storage.filesystem(uri, s3)
    bucket = path.split("/", 1)[0]
    try:
        fs.ls(bucket, refresh=True)
        if write:
            probe = f"{path.rstrip('/')}/.regionmir-write-probe"
            fs.pipe_file(probe, b"ok")
            fs.rm_file(probe)
    except FileNotFoundError as exc:
        raise StorageError(uri, f"bucket {bucket!r} does not exist") from exc
    except PermissionError as exc:
        raise StorageError(
            uri, f"access denied — check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY ({exc})", reason="storage_denied"
        ) from exc
    except Exception as exc:  # botocore/aiohttp errors: endpoint down, DNS, TLS, bad signature
        endpoint = (s3 or S3Options.from_env()).endpoint_url or "AWS"
        raise StorageError(uri, f"cannot reach object storage at {endpoint}: {type(exc).__name__}: {exc}") from exc
