"""The row schema of a region collection: its fields, its version, its keys and its names.

One row per (image, anatomy region, model version). :data:`FIELDS` lists the fields in schema
order and :data:`VARCHAR_FIELDS` the text fields' limits; :data:`SCHEMA_VERSION` is recorded in
every collection's description (:func:`schema_description`) and checked when a collection is opened
(:func:`schema_mismatch`). The primary key is :func:`row_key` of (image id, anatomy id, model
version); a build collection is named by :func:`model_collection_name`.

The values here are read when the functions run, so a test may patch :data:`SCHEMA_VERSION` or
:data:`FIELDS` on this module to play a newer code version.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

import numpy as np
from pymilvus import CollectionSchema, DataType, MilvusClient

from regionmir.identifiers import HASH_HEX_CHARS

#: VARCHAR fields and their maximum lengths (in bytes, as Milvus counts them).
VARCHAR_FIELDS: dict[str, int] = {
    "key": 64,
    "anatomy": 64,
    "image_id": 256,
    "image_uri": 2048,
    "view": 32,
    "split": 32,
    "patient_hash": 64,
    "study_hash": 64,
    "model_version": 128,
    "box_source": 16,
}

#: Every field of a region collection, in schema order.
FIELDS: tuple[str, ...] = (
    "key",
    "vector",
    "anatomy_id",
    "anatomy",
    "image_id",
    "image_uri",
    "box",
    "view",
    "split",
    "patient_hash",
    "study_hash",
    "model_version",
    "box_source",
)
#: What a search hands back for each hit (everything but the vector).
OUTPUT_FIELDS: tuple[str, ...] = tuple(f for f in FIELDS if f != "vector")

#: The row layout this code writes and reads; bumped whenever a field is added or changed. Every
#: collection records it in its description; one with another version is refused with the command
#: that rebuilds it.
SCHEMA_VERSION = 2

#: Where a row's box came from: the labels (a manifest, scene graphs) or the anatomy localiser
#: (atlas + classifier, for films indexed without boxes, e.g. from a PACS).
BOX_SOURCES: tuple[str, ...] = ("label", "localiser")
_SCHEMA_RE = re.compile(r"schema v(\d+)")

_KEY_HEX_CHARS = 32  # 128 bits of SHA-256
_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,254}$")

#: A patient or study hash field's value: a :func:`regionmir.identifiers.hash_identifier` output or ``""``.
HASH_RE = re.compile(rf"^(|[0-9a-f]{{{HASH_HEX_CHARS}}})$")
#: Characters no text field holds (and no filter value may carry).
CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")

#: A row key: :func:`row_key`'s 32 lowercase hex characters (check with ``fullmatch``: ``match``
#: lets a trailing newline through).
KEY_RE = re.compile(f"[0-9a-f]{{{_KEY_HEX_CHARS}}}")


def row_key(image_id: str, anatomy_id: int, model_version: str) -> str:
    """The primary key of a row: 32 hex characters of SHA-256 over (image id, anatomy id, model).

    Deterministic across runs and machines, so indexing the same image again with the same model
    replaces its rows. The three parts are JSON-encoded before hashing, so no choice of strings
    can make two different triples collide by concatenation.
    """
    if isinstance(anatomy_id, bool) or not isinstance(anatomy_id, (int, np.integer)):
        raise TypeError(f"anatomy_id must be an int, got {type(anatomy_id).__name__}")
    payload = json.dumps(["regionmir-roi-v1", str(image_id), int(anatomy_id), str(model_version)])
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:_KEY_HEX_CHARS]


def model_collection_name(alias: str, model_version: str) -> str:
    """The collection ``regionmir index`` fills for one model behind ``alias``:
    ``<alias>__<model version>`` with letters, digits and underscores only. A service searches the
    collection of its own model, so indexing another model (which moves the alias) never changes
    what a running service answers."""
    return re.sub(r"[^A-Za-z0-9_]", "_", f"{alias}__{model_version}")


def check_name(name: str, what: str = "collection") -> str:
    """``name`` when Milvus takes it as a collection (or alias) name, else ``ValueError``."""
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ValueError(f"invalid {what} name {name!r}: letters, digits and '_', starting with a letter or '_'")
    return name


def schema_description() -> str:
    """The description a new collection records: names the row schema version it was built with."""
    return f"RegionMIR ROI embeddings, schema v{SCHEMA_VERSION}"


def collection_schema(dim: int) -> CollectionSchema:
    """The Milvus schema of a region collection with ``dim``-long vectors."""
    schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False, description=schema_description())
    schema.add_field("key", DataType.VARCHAR, is_primary=True, max_length=VARCHAR_FIELDS["key"])
    schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dim)
    schema.add_field("anatomy_id", DataType.INT32)
    schema.add_field("anatomy", DataType.VARCHAR, max_length=VARCHAR_FIELDS["anatomy"])
    schema.add_field("image_id", DataType.VARCHAR, max_length=VARCHAR_FIELDS["image_id"])
    schema.add_field("image_uri", DataType.VARCHAR, max_length=VARCHAR_FIELDS["image_uri"])
    schema.add_field("box", DataType.ARRAY, element_type=DataType.FLOAT, max_capacity=4)
    for name in ("view", "split", "patient_hash", "study_hash", "model_version", "box_source"):
        schema.add_field(name, DataType.VARCHAR, max_length=VARCHAR_FIELDS[name])
    return schema


def missing_fields(described: dict[str, Any]) -> list[str]:
    """The fields of :data:`FIELDS` that a collection (``describe_collection``'s answer) lacks."""
    present = {field["name"] for field in described.get("fields", [])}
    return [f for f in FIELDS if f not in present]


def schema_mismatch(described: dict[str, Any]) -> str | None:
    """Why a collection (``describe_collection``'s answer) is not of this code's row schema, naming
    the command that rebuilds it; ``None`` when it is.

    The version is read from the collection's description where the server keeps it (a Milvus
    server; milvus-lite drops descriptions) and, everywhere, from its fields: a collection
    without a field this code writes is older.
    """
    found = _SCHEMA_RE.search(str(described.get("description") or ""))
    version = int(found.group(1)) if found else None
    missing = missing_fields(described)
    if not missing and (version is None or version == SCHEMA_VERSION):
        return None
    newer = version is not None and version > SCHEMA_VERSION and not missing
    what = f"v{version}" if version is not None else f"without field(s) {missing}"
    return (
        f"was built with {'a newer' if newer else 'an older'} row schema ({what}; this RegionMIR "
        f"reads v{SCHEMA_VERSION}): rebuild it with `regionmir index --data DATA --model MODEL "
        "--milvus URI` (a new collection; the alias moves when it is complete)"
    )
