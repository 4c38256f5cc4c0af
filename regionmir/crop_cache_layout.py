"""Where a crop cache keeps its files, for the code that writes it (:mod:`training.roi_pipeline`)
and the code that erases from it (:mod:`indexing.erasure`).

A cache root holds one folder per split, ``{split}-{key}/`` (``key`` hashes the split's labels and
the crop settings), with the split's rows as Parquet shards (``part-{writer}-{index}.parquet``: each
cropping actor writes its own, :func:`shard_name`) and, written last, :data:`COMPLETE_MARKER`: JSON
with the split's row count (``rows``) and how it was built. A folder without the marker is an
interrupted build, never read.
"""

from __future__ import annotations

from . import storage

#: The layout and row format version, recorded in the cache key's settings and in every marker.
CACHE_FORMAT = "regionmir-crop-cache-2"  # 2: complete only when every labelled crop is accounted for

#: Written last in a split's folder: the split is complete. Its ``rows`` is the row count of the shards.
COMPLETE_MARKER = "_COMPLETE.json"

#: The shards of a split folder.
SHARD_GLOB = "*.parquet"


def split_folder(cache_root: str, split: str, key: str) -> str:
    """The folder of one split of a cache (a local path or a URI)."""
    return storage.join(cache_root, f"{split}-{key}")


def shard_name(writer: str, index: int) -> str:
    """The file name of the ``index``-th shard that the writer ``writer`` (a cropping actor's own
    random id: a restarted actor gets a new one) writes in a split's folder; it matches :data:`SHARD_GLOB`."""
    return f"part-{writer}-{index:05d}.parquet"
