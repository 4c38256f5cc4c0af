"""Sealed film locations: what the index stores instead of a path that names the patient."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from regionmir.errors import MissingImageError
from regionmir.image_reader import read_image
from regionmir.sealed_location import SealedLocationError, is_sealed, open_location, seal_location

PATH = "files/p10/p10000032/s50414267/02aa804e.png"


def test_sealing_is_deterministic_authenticated_and_keyed_by_the_salt():
    sealed = seal_location(PATH, salt="site-a")
    assert is_sealed(sealed) and "10000032" not in sealed and "files" not in sealed
    assert seal_location(PATH, salt="site-a") == sealed != seal_location(PATH, salt="site-b")
    assert seal_location(sealed) == sealed                       # never sealed twice
    assert open_location(sealed, salt="site-a") == PATH
    assert open_location(PATH) == PATH                           # a location stored before sealing
    with pytest.raises(SealedLocationError, match="another REGIONMIR_ID_SALT"):
        open_location(sealed, salt="site-b")
    tampered = sealed[:-3] + ("A" if sealed[-3] != "A" else "B") + sealed[-2:]
    with pytest.raises(SealedLocationError):
        open_location(tampered, salt="site-a")
    with pytest.raises(SealedLocationError):
        open_location("sealed:v1:not base64 at all!", salt="site-a")


def test_the_salt_comes_from_the_environment_at_call_time(monkeypatch):
    monkeypatch.setenv("REGIONMIR_ID_SALT", "deployment-secret")
    sealed = seal_location(PATH)
    assert open_location(sealed, salt="deployment-secret") == PATH
    monkeypatch.delenv("REGIONMIR_ID_SALT")
    with pytest.raises(SealedLocationError):
        open_location(sealed)                                    # the public default salt does not open it


def test_read_image_reads_a_sealed_location_and_names_it_sealed_in_errors(tmp_path):
    folder = tmp_path / "files" / "p10" / "p10000032"
    folder.mkdir(parents=True)
    film = folder / "film.png"
    buffer = io.BytesIO()
    Image.fromarray(np.arange(64 * 64, dtype=np.uint16).reshape(64, 64).astype(np.uint8)).save(buffer, "PNG")
    film.write_bytes(buffer.getvalue())

    decoded = read_image(seal_location(str(film)))
    assert decoded.pixels.shape == (64, 64) and "10000032" not in decoded.info.source
    film.unlink()
    with pytest.raises(MissingImageError) as err:
        read_image(seal_location(str(film)))
    assert "10000032" not in str(err.value) and "sealed film" in str(err.value)
