"""Typed errors. Each names the thing that failed (file, URI, field) and why, so a user can act.

Every error the library raises on bad input is a :class:`RegionMIRError`; services map them to
4xx answers and batch jobs count them by :attr:`RegionMIRError.reason`. The region index's
failures (:class:`RegionIndexError` and its kinds, raised by :mod:`indexing.region_index`) are of
the same family: one hierarchy, picklable across Ray as itself, one reason → HTTP status table in
:mod:`serving.errors`.
"""

from __future__ import annotations


class RegionMIRError(Exception):
    """Base class. ``source`` is the file/URI/field at fault, ``reason`` a short machine key."""

    reason = "error"

    def __init__(self, source: str, message: str, *, reason: str | None = None):
        self.source = str(source)
        self.message = message
        if reason is not None:
            self.reason = reason
        super().__init__(f"{self.source}: {message}" if self.source else message)

    def __reduce__(self):
        # Pickle by fields, not by the formatted message, so the error survives a trip through
        # another process (a Ray task, a multiprocessing worker) as itself.
        return (_rebuild, (type(self), dict(self.__dict__)))


def _rebuild(cls: type, state: dict) -> RegionMIRError:
    error = cls.__new__(cls)
    error.__dict__.update(state)
    Exception.__init__(error, f"{error.source}: {error.message}" if error.source else error.message)
    return error


class ImageReadError(RegionMIRError):
    """A file could not be decoded: truncated, corrupt, not an image."""

    reason = "unreadable_image"


class UnsupportedImageError(ImageReadError):
    """A readable file we refuse on purpose: multi-frame, non-image DICOM, unknown transfer syntax."""

    reason = "unsupported_image"


class MissingImageError(ImageReadError):
    """The file or object does not exist."""

    reason = "missing_image"


class ImageTooLargeError(ImageReadError):
    """The image has more pixels than the configured limit (decompression bombs)."""

    reason = "image_too_large"


class NotAnImageError(ImageReadError):
    """Bytes that are no image at all (empty, text, another file type): the wrong thing was sent."""

    reason = "unsupported_media_type"


class ImageShapeError(ImageReadError):
    """A film whose proportions no radiograph has (a 39000 x 1500 strip)."""

    reason = "bad_image_shape"


class PixelValueError(ImageReadError):
    """Pixel values that cannot be a film: NaN or infinite after the modality rescale."""

    reason = "bad_pixel_values"


class BoxError(RegionMIRError):
    """A box is outside the image, inverted, or has no area."""

    reason = "bad_box"


class UnknownAnatomyError(RegionMIRError):
    """A region name that is not in the vocabulary. ``matches`` holds close names."""

    reason = "unknown_anatomy"

    def __init__(self, name: str, matches: list[str], message: str | None = None):
        self.name = name
        self.matches = list(matches)
        if message is None:
            message = f"unknown anatomy {name!r}"
            message += (
                f"; did you mean: {', '.join(self.matches)}?"
                if self.matches
                else "; see `regionmir anatomies` for the 36 names"
            )
        super().__init__("anatomy", message)


class DatasetError(RegionMIRError):
    """A data set root or manifest that cannot be read as a whole (missing files, bad columns)."""

    reason = "bad_dataset"


class StorageError(RegionMIRError):
    """Object storage unreachable, bad credentials, or a path that cannot be written."""

    reason = "storage"


# -- the region index (Milvus): raised by :mod:`indexing.region_index`, answered 503 by the service


class RegionIndexError(RegionMIRError):
    """Base class: the Milvus store failed. Names the URI, the collection (or alias) and why.

    One family with the library's errors (:class:`regionmir.errors.RegionMIRError`): picklable
    across Ray as itself, caught by every command's clear one-line error. ``reason`` is a short
    machine key (``unavailable``, ``locked``, ``not_found``, ...).
    """

    reason = "index_error"

    def __init__(self, uri: str, collection: str | None, message: str, *, reason: str | None = None):
        self.uri = uri
        self.collection = collection
        where = f"Milvus at {uri}" + (f", collection {collection!r}" if collection else "")
        super().__init__(where, message, reason=reason)


class IndexUnavailableError(RegionIndexError):
    """The server cannot be reached (down, wrong address, refused) or the local file not opened.

    Transient: the service answers 503 ``index_unavailable`` with ``Retry-After`` and recovers by
    itself when Milvus is back; a job stops without moving any alias and says to re-run it.
    """

    reason = "unavailable"


class IndexLockedError(IndexUnavailableError):
    """A milvus-lite file is held by another process (milvus-lite allows one process per file):
    stop that process (a running service, another job), or give this one a Milvus server."""

    reason = "locked"


class IndexNotFoundError(RegionIndexError):
    """The collection or alias does not exist: ``regionmir index`` builds it."""

    reason = "not_found"


class DimensionMismatchError(RegionIndexError):
    """Vectors whose length differs from the collection's dimension: the model that embeds them
    is not the one the collection was built with; index with this model (a new collection)."""

    reason = "dimension_mismatch"


class SchemaMismatchError(RegionIndexError):
    """An existing collection does not have the region schema (or the dimension asked for)."""

    reason = "schema_mismatch"


class CountMismatchError(RegionIndexError):
    """The collection does not hold the number of rows expected. ``expected`` and ``actual``."""

    reason = "count_mismatch"

    def __init__(self, uri: str, collection: str, expected: int, actual: int):
        self.expected = expected
        self.actual = actual
        super().__init__(uri, collection, f"expected {expected} rows, found {actual}")
