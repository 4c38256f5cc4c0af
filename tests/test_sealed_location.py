"""Sealed film locations: what the index stores instead of a path that names the patient."""

from __future__ import annotations

import pytest

from regionmir.sealed_location import SealedLocationError, is_sealed, open_location, seal_location

PATH = "files/p10/p10000032/s50414267/02aa804e.png"
IMAGE = "02aa804e"


def test_sealing_is_deterministic_authenticated_keyed_by_the_salt_and_bound_to_the_image():
    sealed = seal_location(PATH, IMAGE, salt="site-a")
    assert is_sealed(sealed) and "10000032" not in sealed and "files" not in sealed
    assert seal_location(PATH, IMAGE, salt="site-a") == sealed != seal_location(PATH, IMAGE, salt="site-b")
    assert seal_location(sealed, IMAGE) == sealed  # never sealed twice
    assert open_location(sealed, IMAGE, salt="site-a") == PATH
    with pytest.raises(SealedLocationError, match="REGIONMIR_ID_SALT"):
        open_location(sealed, IMAGE, salt="site-b")  # another deployment's salt
    with pytest.raises(SealedLocationError):
        open_location(sealed, "another-image", salt="site-a")  # moved to another image's row
    tampered = sealed[:-3] + ("A" if sealed[-3] != "A" else "B") + sealed[-2:]
    with pytest.raises(SealedLocationError):
        open_location(tampered, IMAGE, salt="site-a")
    with pytest.raises(SealedLocationError):
        open_location("sealed:v1:not base64 at all!", IMAGE, salt="site-a")
    with pytest.raises(SealedLocationError, match="unsealed") as err:  # a plain path written into the index
        open_location("/etc/passwd", IMAGE, salt="site-a")
    assert "passwd" not in str(err.value)
    with pytest.raises(ValueError):
        seal_location(PATH, "")


def test_the_salt_comes_from_the_environment_at_call_time(monkeypatch):
    monkeypatch.setenv("REGIONMIR_ID_SALT", "deployment-secret")
    sealed = seal_location(PATH, IMAGE)
    assert open_location(sealed, IMAGE, salt="deployment-secret") == PATH
    monkeypatch.delenv("REGIONMIR_ID_SALT")
    with pytest.raises(SealedLocationError) as err:
        open_location(sealed, IMAGE)  # the public default salt does not open it
    assert "10000032" not in str(err.value)
