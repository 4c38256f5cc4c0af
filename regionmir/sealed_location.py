"""Film locations sealed for the index: a stored ``image_uri`` never shows patient ids in clear.

A MIMIC-layout path names the subject and the study (``files/p10/p10000032/s50414267/….dcm``), and a
PACS export is often laid out by patient name or accession number. The index stores a film's
location **sealed**: ``sealed:v1:`` + base64url of AES-SIV (RFC 5297) under a key derived from the
deployment's secret ``REGIONMIR_ID_SALT`` (:mod:`regionmir.identifiers`), bound to the row's image
id (associated data). So

* whoever reads Milvus alone sees no path, and cannot test a guessed one without the salt;
* the index job and the service, which hold the salt, open it to read the film;
* it is deterministic — the same path seals to the same value, so a re-index upserts identical
  rows — and authenticated: a changed value, a value moved to another image's row, a plain path
  written into the index by anything but ``regionmir index``, or a service with another salt
  than the index job's is refused (:class:`SealedLocationError`), never read as some other path.

Keep the salt as you keep the patient hashes: a new salt means a re-index.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from functools import lru_cache

from .errors import RegionMIRError
from .identifiers import current_salt

PREFIX = "sealed:v1:"
_CONTEXT = b"regionmir film location v1"


class SealedLocationError(RegionMIRError):
    """A stored location that does not open with this deployment's salt for this image."""

    reason = "sealed_location"


@lru_cache(maxsize=8)
def _cipher(salt: str):
    from cryptography.hazmat.primitives.ciphers.aead import AESSIV

    # 64 bytes: AES-256-SIV (one half authenticates, one encrypts); derived, never the salt itself
    return AESSIV(hmac.new(salt.encode("utf-8"), _CONTEXT, hashlib.sha512).digest())


def is_sealed(location: str) -> bool:
    return location.startswith(PREFIX)


def seal_location(location: str, image_id: str, salt: str | None = None) -> str:
    """The sealed form of the path or URI of the film ``image_id`` (a sealed one is returned as is)."""
    if is_sealed(location):
        return location
    if not location or not image_id:
        raise ValueError("a film location and its image id are needed to seal it")
    sealed = _cipher(current_salt() if salt is None else salt).encrypt(
        location.encode("utf-8"), [image_id.encode("utf-8")]
    )
    return PREFIX + base64.urlsafe_b64encode(sealed).decode("ascii").rstrip("=")


def open_location(location: str, image_id: str, salt: str | None = None) -> str:
    """The path or URI inside the sealed location of the film ``image_id``.

    Raises :class:`SealedLocationError` (naming no path) when it is not sealed, does not open with
    the salt (the reader's ``REGIONMIR_ID_SALT`` is not the index job's), belongs to another image,
    or was altered."""
    if not is_sealed(location):
        raise SealedLocationError(
            f"film {image_id}",
            "the index holds an unsealed film location (written by "
            "something else than `regionmir index`, or before locations were sealed): "
            "re-index",
        )
    from cryptography.exceptions import InvalidTag

    body = location[len(PREFIX) :]
    try:
        sealed = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
        return (
            _cipher(current_salt() if salt is None else salt)
            .decrypt(sealed, [image_id.encode("utf-8")])
            .decode("utf-8")
        )
    except (InvalidTag, binascii.Error, ValueError, UnicodeDecodeError):
        raise SealedLocationError(
            f"film {image_id}",
            "its location does not open with this process's "
            "REGIONMIR_ID_SALT (sealed with another salt, for another image, or altered): "
            "give the service and the index job the same salt, or re-index",
        ) from None
