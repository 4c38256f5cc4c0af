"""The Milvus layer: stores and searches ROI embeddings for the query service and the bulk jobs.

``regionmir`` (the pure library) computes embeddings and never imports a database client; this
package is the only place that talks to Milvus (``pymilvus``). The service and the indexing jobs
build on it. See :mod:`indexing.region_index` (the client) and the
:mod:`indexing.index_schema`, :mod:`~indexing.index_rows` and :mod:`~indexing.index_filters` it
uses; its errors (:class:`~regionmir.errors.RegionIndexError` and kinds) are the library's family.
"""

from __future__ import annotations

from regionmir.errors import (
    CountMismatchError,
    DimensionMismatchError,
    IndexLockedError,
    IndexNotFoundError,
    IndexUnavailableError,
    RegionIndexError,
    SchemaMismatchError,
)

from .index_filters import build_filter, quote_filter_value
from .index_rows import RegionHit, RegionRow
from .index_schema import row_key
from .region_index import RegionIndex, UpsertResult

__all__ = [
    "CountMismatchError",
    "DimensionMismatchError",
    "IndexLockedError",
    "IndexNotFoundError",
    "IndexUnavailableError",
    "RegionHit",
    "RegionIndex",
    "RegionIndexError",
    "RegionRow",
    "SchemaMismatchError",
    "UpsertResult",
    "build_filter",
    "quote_filter_value",
    "row_key",
]
