"""Local paths and ``s3://`` URIs behind one small API (fsspec/s3fs underneath).

S3-compatible stores (MinIO, Ceph, moto) are configured by options or by the environment, read
when a filesystem is made, never at import time:

=============================  ===============================================================
``REGIONMIR_S3_ENDPOINT``      endpoint URL, e.g. ``http://127.0.0.1:9000`` (falls back to
                               ``AWS_ENDPOINT_URL_S3`` then ``AWS_ENDPOINT_URL``)
``AWS_ACCESS_KEY_ID`` /        credentials (else the usual AWS chain: profile, instance role)
``AWS_SECRET_ACCESS_KEY``
``AWS_SESSION_TOKEN``          optional
``AWS_REGION``                 region (default ``us-east-1``)
``REGIONMIR_S3_PATH_STYLE``    ``1`` for path-style addressing (default on when an endpoint is
                               set, which is what MinIO wants), ``0`` for virtual-host style
``REGIONMIR_S3_ANON``          ``1`` for anonymous (public buckets)
=============================  ===============================================================
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

import fsspec

from .errors import MissingImageError, StorageError


@dataclass(frozen=True)
class S3Options:
    """How to reach an S3-compatible store. ``from_env()`` fills it from the environment."""

    endpoint_url: str | None = None
    key: str | None = None
    secret: str | None = None
    token: str | None = None
    region: str = "us-east-1"
    path_style: bool | None = None
    anon: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> S3Options:
        env = dict(os.environ if env is None else env)
        endpoint = (
            env.get("REGIONMIR_S3_ENDPOINT") or env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or None
        )
        path_style = env.get("REGIONMIR_S3_PATH_STYLE")
        return cls(
            endpoint_url=endpoint,
            key=env.get("AWS_ACCESS_KEY_ID") or None,
            secret=env.get("AWS_SECRET_ACCESS_KEY") or None,
            token=env.get("AWS_SESSION_TOKEN") or None,
            region=env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1",
            path_style=None if path_style is None else path_style.strip().lower() in ("1", "true", "yes"),
            anon=(env.get("REGIONMIR_S3_ANON", "").strip().lower() in ("1", "true", "yes")),
        )

    def s3fs_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``s3fs.S3FileSystem``."""
        kwargs: dict[str, Any] = {"anon": self.anon}
        if self.key:
            kwargs["key"] = self.key
        if self.secret:
            kwargs["secret"] = self.secret
        if self.token:
            kwargs["token"] = self.token
        client_kwargs: dict[str, Any] = {}
        if self.endpoint_url:
            client_kwargs["endpoint_url"] = self.endpoint_url
        kwargs["client_kwargs"] = client_kwargs
        path_style = self.path_style if self.path_style is not None else bool(self.endpoint_url)
        # Deadlines on every call: a hung endpoint costs at most these, times botocore's and then
        # read_bytes' own (bounded) retries, never a job or a replica thread.
        config: dict[str, Any] = {
            "region_name": self.region,
            "connect_timeout": CONNECT_TIMEOUT_S,
            "read_timeout": READ_TIMEOUT_S,
            "retries": {"max_attempts": 2, "mode": "standard"},
        }
        if path_style:
            config["s3"] = {"addressing_style": "path"}
        kwargs["config_kwargs"] = config
        kwargs.update(self.extra)
        return kwargs


def is_remote(uri: str) -> bool:
    """True for ``scheme://`` URIs other than ``file://``."""
    return "://" in str(uri) and not str(uri).startswith("file://")


def filesystem(uri: str, s3: S3Options | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem for ``uri`` and the path inside it."""
    uri = str(uri)
    if uri.startswith("s3://") or uri.startswith("s3a://"):
        import s3fs  # imported lazily: local users never pay for botocore

        options = s3 or S3Options.from_env()
        fs = s3fs.S3FileSystem(**options.s3fs_kwargs())
        return fs, uri.split("://", 1)[1]
    if uri.startswith("file://"):
        uri = uri[len("file://") :]
    if "://" in uri:
        fs, path = fsspec.core.url_to_fs(uri)
        return fs, path
    return fsspec.filesystem("file"), os.path.abspath(uri)


def join(base: str, *parts: str) -> str:
    """Join path parts onto a local path or URI (``/`` for URIs)."""
    base = str(base)
    if is_remote(base):
        return posixpath.join(base, *[p.strip("/") for p in parts])
    return os.path.join(base, *parts)


def parent(uri: str) -> str:
    """The folder holding ``uri``."""
    uri = str(uri)
    if is_remote(uri):
        scheme, path = uri.split("://", 1)
        return f"{scheme}://{posixpath.dirname(path.rstrip('/'))}"
    return os.path.dirname(os.path.abspath(uri))


def resolve(base_dir: str, path: str) -> str:
    """``path`` as given when absolute or a URI, else relative to ``base_dir``."""
    path = str(path).strip()
    if is_remote(path) or os.path.isabs(path):
        return path
    return join(base_dir, path)


#: Seconds to open a connection to / wait for bytes from an object store, per attempt.
CONNECT_TIMEOUT_S = 5.0
READ_TIMEOUT_S = 60.0

#: Attempts of a remote read before a transient failure (a dropped connection, a 503 from the
#: object store) becomes a :class:`StorageError`, and the pause before each retry.
READ_ATTEMPTS = 3
RETRY_PAUSES_S = (0.5, 2.0)


def read_bytes(uri: str, s3: S3Options | None = None) -> bytes:
    """The whole object/file. Missing → :class:`MissingImageError`; other failures → StorageError.

    A remote read that fails for another reason than absence or permission is retried
    (:data:`READ_ATTEMPTS`, pauses :data:`RETRY_PAUSES_S`): a storage hiccup is not a bad film.
    """
    from .dicomweb import is_dicomweb, read_instance

    if is_dicomweb(uri):  # a PACS instance: WADO-RS
        return read_instance(str(uri))
    fs, path = filesystem(uri, s3)
    attempts = READ_ATTEMPTS if is_remote(uri) else 1
    for attempt in range(attempts):
        try:
            with fs.open(path, "rb") as handle:
                return handle.read()
        except FileNotFoundError as exc:
            raise MissingImageError(uri, "no such file or object") from exc
        except IsADirectoryError as exc:
            raise MissingImageError(uri, "is a folder, not a file") from exc
        except PermissionError as exc:
            raise StorageError(uri, f"permission denied ({exc})", reason="storage_denied") from exc
        except _transient_errors() as exc:
            if attempt + 1 >= attempts:
                raise StorageError(
                    uri, f"cannot read after {attempts} attempt(s): {type(exc).__name__}: {exc}"
                ) from exc
            time.sleep(RETRY_PAUSES_S[min(attempt, len(RETRY_PAUSES_S) - 1)])
    raise AssertionError("unreachable")


def _transient_errors() -> tuple[type[BaseException], ...]:
    """What a read raises when storage (not the file) failed: OS errors, and botocore's own
    connection errors, which s3fs lets through (an unreachable endpoint is not an OSError there)."""
    try:
        from botocore.exceptions import BotoCoreError
    except ImportError:  # no S3 support installed: only local paths reach here
        return (OSError,)
    return (OSError, BotoCoreError)


def write_bytes(uri: str, data: bytes, s3: S3Options | None = None) -> None:
    """Write all of ``data`` or nothing: a reader never sees a half-written file.

    Local paths (parents created) are written to a temporary file beside the target and renamed
    over it; an object store's PUT is atomic already.
    """
    fs, path = filesystem(uri, s3)
    try:
        if is_remote(uri):
            with fs.open(path, "wb") as handle:
                handle.write(data)
            return
        directory = os.path.dirname(path) or "."
        os.makedirs(directory, exist_ok=True)
        handle, temporary = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".partial", dir=directory)
        try:
            # mkstemp makes the file owner-only; a written file gets the usual mode (umask), as
            # open() would give it, so other users (the serving pods, a shared volume) can read it
            umask = os.umask(0)
            os.umask(umask)
            os.fchmod(handle, 0o666 & ~umask)
            with os.fdopen(handle, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            os.replace(temporary, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise
    except OSError as exc:
        raise StorageError(uri, f"cannot write: {exc}") from exc


def remove(uri: str, s3: S3Options | None = None) -> bool:
    """Delete a file or object; ``False`` when it was not there."""
    fs, path = filesystem(uri, s3)
    try:
        if not fs.exists(path):
            return False
        fs.rm(path)
        return True
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise StorageError(uri, f"cannot delete: {exc}") from exc


def read_text(uri: str, s3: S3Options | None = None) -> str:
    return read_bytes(uri, s3).decode("utf-8-sig")


def write_text(uri: str, text: str, s3: S3Options | None = None) -> None:
    write_bytes(uri, text.encode("utf-8"), s3)


def exists(uri: str, s3: S3Options | None = None) -> bool:
    fs, path = filesystem(uri, s3)
    try:
        return bool(fs.exists(path))
    except OSError as exc:
        raise StorageError(uri, f"cannot reach storage: {exc}") from exc


def is_dir(uri: str, s3: S3Options | None = None) -> bool:
    fs, path = filesystem(uri, s3)
    try:
        return bool(fs.isdir(path))
    except OSError as exc:
        raise StorageError(uri, f"cannot reach storage: {exc}") from exc


def glob(uri_pattern: str, s3: S3Options | None = None) -> list[str]:
    """Sorted matches of a glob, returned in the same form (URI or local path) as the pattern."""
    fs, path = filesystem(uri_pattern, s3)
    try:
        matches = sorted(fs.glob(path))
    except OSError as exc:
        raise StorageError(uri_pattern, f"cannot list: {exc}") from exc
    if is_remote(uri_pattern):
        scheme = uri_pattern.split("://", 1)[0]
        return [f"{scheme}://{m}" for m in matches]
    return matches
