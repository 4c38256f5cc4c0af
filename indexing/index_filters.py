"""Milvus filter expressions built from user values: every value escaped, never interpolated raw.

:func:`quote_filter_value` makes any string one literal; :func:`build_filter` turns the search
constraints (region, view, split, model version, a patient to leave out) into one boolean
expression; :func:`checked_keys` and :func:`keys_filter` let only :func:`~indexing.index_schema.row_key`
values into a ``key in [...]`` expression.
"""

from __future__ import annotations

from collections.abc import Sequence

from regionmir.anatomy import anatomy_id as resolve_anatomy_id
from regionmir.identifiers import HASH_HEX_CHARS

from .index_schema import CONTROL_RE, HASH_RE, KEY_RE


def quote_filter_value(value: str) -> str:
    """A Milvus filter string literal for ``value``: double-quoted, ``\\`` and ``"`` escaped.

    Whatever a user sends stays one literal (``PA" or 1==1 or "`` matches nothing rather than
    everything). Control characters are refused (``ValueError``): no field holds them.
    """
    if not isinstance(value, str):
        raise TypeError(f"filter values must be str, got {type(value).__name__}")
    if CONTROL_RE.search(value):
        raise ValueError(f"filter value contains control characters: {value!r}")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def build_filter(
    *,
    anatomy: str | int | None = None,
    view: str | None = None,
    split: str | None = None,
    model_version: str | None = None,
    exclude_patient_hash: str | None = None,
) -> str:
    """The Milvus boolean expression for the given constraints (``""`` when there are none).

    ``anatomy`` is a region name, alias or id, resolved by :func:`regionmir.anatomy.anatomy_id`
    (an unknown name raises :class:`regionmir.errors.UnknownAnatomyError` with suggestions);
    the other values are compared for equality through :func:`quote_filter_value`.
    ``exclude_patient_hash`` drops the rows of that patient (a query film's own patient, so
    retrieval does not just find the same person's other films); an empty hash means "patient
    unknown" and excludes nothing, since rows without a patient are not one patient.
    """
    clauses = []
    if anatomy is not None:
        clauses.append(f"anatomy_id == {resolve_anatomy_id(anatomy)}")
    for name, value in (("view", view), ("split", split), ("model_version", model_version)):
        if value is not None:
            clauses.append(f"{name} == {quote_filter_value(value)}")
    if exclude_patient_hash:
        if not HASH_RE.match(exclude_patient_hash):
            raise ValueError(
                f"exclude_patient_hash must be a {HASH_HEX_CHARS}-hex patient hash, got {exclude_patient_hash!r}"
            )
        clauses.append(f"patient_hash != {quote_filter_value(exclude_patient_hash)}")
    return " and ".join(clauses)


def checked_keys(keys: Sequence[str]) -> list[str]:
    """``keys`` without repeats; ``ValueError`` on anything that is not a :func:`~indexing.index_schema.row_key`
    value, so no key reaches a filter expression unchecked."""
    keys = list(dict.fromkeys(keys))
    bad = [k for k in keys if not isinstance(k, str) or not KEY_RE.fullmatch(k)]
    if bad:
        raise ValueError(f"not a region key (32 lowercase hex characters): {bad[0]!r}")
    return keys


def keys_filter(keys: Sequence[str]) -> str:
    """The expression matching the rows of these (already :func:`checked_keys`) primary keys."""
    return "key in [" + ", ".join(quote_filter_value(k) for k in keys) + "]"
