"""regionmir.identifiers: salted hashes of patient/study identifiers."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from regionmir.identifiers import DEFAULT_SALT, SALT_ENV, hash_identifier, uses_default_salt


@pytest.fixture(autouse=True)
def no_salt_in_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(SALT_ENV, raising=False)


def test_known_value_with_default_salt() -> None:
    # Pinned: changing the construction would silently unlink every index built before.
    assert hash_identifier("PAT-0042") == "5521bcf4e5d06eae"
    expected = hmac.new(DEFAULT_SALT.encode(), b"PAT-0042", hashlib.sha256).hexdigest()[:16]
    assert hash_identifier("PAT-0042") == expected


def test_shape_and_determinism() -> None:
    h = hash_identifier("12345678")
    assert len(h) == 16 and all(c in "0123456789abcdef" for c in h)
    assert hash_identifier("12345678") == h
    assert hash_identifier("12345679") != h
    assert "12345678" not in h


def test_empty_and_none_give_empty_string() -> None:
    assert hash_identifier(None) == ""
    assert hash_identifier("") == ""
    assert hash_identifier("   ") == ""


def test_dicom_padding_is_ignored() -> None:
    assert hash_identifier("PAT-7 ") == hash_identifier("PAT-7") == hash_identifier(" PAT-7\x00")


def test_salt_from_environment_read_at_call_time(monkeypatch: pytest.MonkeyPatch) -> None:
    default = hash_identifier("PAT-0042")
    assert uses_default_salt()
    monkeypatch.setenv(SALT_ENV, "hospital-secret-1")
    salted = hash_identifier("PAT-0042")
    assert salted != default and not uses_default_salt()
    assert salted == hash_identifier("PAT-0042", salt="hospital-secret-1")
    monkeypatch.setenv(SALT_ENV, "hospital-secret-2")
    assert hash_identifier("PAT-0042") != salted


def test_explicit_salt_overrides_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SALT_ENV, "from-env")
    assert hash_identifier("X", salt="explicit") == hash_identifier("X", salt="explicit")
    assert hash_identifier("X", salt="explicit") != hash_identifier("X")
    assert hash_identifier("X", salt=DEFAULT_SALT) != hash_identifier("X")


def test_empty_env_salt_falls_back_to_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SALT_ENV, "")
    assert hash_identifier("PAT-0042") == hash_identifier("PAT-0042", salt=DEFAULT_SALT)
