"""Pseudonymous identifiers: patient and study IDs never leave a reader in clear.

``hash_identifier(value)`` is a keyed SHA-256 (HMAC-SHA256 with the salt as key) of the stripped
value, as lowercase hex, cut to the first :data:`HASH_HEX_CHARS` (16) characters, i.e. 64 bits:
enough to link images of one patient inside a collection of millions without collisions in
practice, too short to be mistaken for the full digest.

The salt comes from the ``REGIONMIR_ID_SALT`` environment variable, read on every call (never at
import time, so tests and services can set it late). Without it the fixed, public
:data:`DEFAULT_SALT` is used: that keeps hashes stable across runs of a demo, but because the
default is published anyone can rebuild the hash of a guessed ID with it. **Production must set
its own secret ``REGIONMIR_ID_SALT``** (and keep it: changing it changes every hash, so images of
one patient indexed before and after no longer link).
"""

from __future__ import annotations

import hashlib
import hmac
import os

#: Environment variable holding the deployment's secret salt.
SALT_ENV = "REGIONMIR_ID_SALT"

#: Public fallback salt for demos and tests. Not a secret: production sets ``REGIONMIR_ID_SALT``.
DEFAULT_SALT = "regionmir-public-default-salt-v1"

#: Hex characters kept from the digest (16 hex = 64 bits).
HASH_HEX_CHARS = 16


def current_salt() -> str:
    """The salt in force now: ``$REGIONMIR_ID_SALT`` if set and non-empty, else :data:`DEFAULT_SALT`."""
    return os.environ.get(SALT_ENV) or DEFAULT_SALT


def uses_default_salt() -> bool:
    """True when no deployment salt is configured (services may warn about it at start-up)."""
    return not os.environ.get(SALT_ENV)


def hash_identifier(value: str | None, salt: str | None = None) -> str:
    """Salted hash of an identifier (PatientID, StudyInstanceUID, ...).

    ``value`` is stripped of surrounding whitespace (DICOM pads strings with spaces); empty or
    ``None`` gives ``""`` so that "no identifier" is never hashed into a fake one. ``salt``
    overrides the environment (for tests); ``None`` means :func:`current_salt`.
    Returns 16 lowercase hex characters.
    """
    if value is None:
        return ""
    text = str(value).strip().strip("\x00").strip()
    if not text:
        return ""
    key = (current_salt() if salt is None else salt).encode("utf-8")
    digest = hmac.new(key, text.encode("utf-8"), hashlib.sha256).hexdigest()
    return digest[:HASH_HEX_CHARS]
