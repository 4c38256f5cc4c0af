"""The Milvus layer: stores and searches ROI embeddings for the query service and the bulk jobs.

``regionmir`` (the pure library) computes embeddings and never imports a database client; this
package is the only place that talks to Milvus (``pymilvus``). The service and the indexing jobs
build on it. See :mod:`indexing.region_index`.
"""

from __future__ import annotations

from .region_index import (
    CountMismatchError,
    DimensionMismatchError,
    IndexLockedError,
    IndexNotFoundError,
    IndexUnavailableError,
    RegionHit,
    RegionIndex,
    RegionIndexError,
    RegionRow,
    SchemaMismatchError,
    UpsertResult,
    build_filter,
    quote_filter_value,
    row_key,
)

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
