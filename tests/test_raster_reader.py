"""regionmir.raster_reader (through regionmir.image_reader): PNG and JPEG files made with Pillow."""

from __future__ import annotations

import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from regionmir.errors import (
    ImageReadError,
    ImageTooLargeError,
    MissingImageError,
    NotAnImageError,
    UnsupportedImageError,
)
from regionmir.image_reader import describe, read_image, sniff_format
from regionmir.raster_reader import read_raster

NIH_PNG = Path(__file__).parent / "data" / "nih_00000001_000.png"


def ramp(rows: int = 60, cols: int = 50, top: int = 255) -> np.ndarray:
    """Every value 0..top at least once (when rows*cols allows), non-square."""
    values = np.linspace(0, top, rows * cols).round().astype(np.int64)
    return values.reshape(rows, cols)


def save(image: Image.Image, path: Path, fmt: str, **kwargs: object) -> Path:
    image.save(path, format=fmt, **kwargs)
    return path


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def forged_png(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width x height`` 8-bit grey pixels, with a tiny IDAT."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + png_chunk(b"IEND", b"")
    )


def test_png_8bit_grey(tmp_path: Path) -> None:
    arr = ramp().astype(np.uint8)
    decoded = read_image(save(Image.fromarray(arr, mode="L"), tmp_path / "g8.png", "PNG"))
    np.testing.assert_allclose(decoded.pixels, arr / 255.0, atol=1e-7)
    assert decoded.pixels.dtype == np.float32 and decoded.pixels.shape == (60, 50)
    info = decoded.info
    assert (info.format, info.width, info.height, info.bits_stored) == ("png", 50, 60, 8)
    assert info.photometric == "MONOCHROME2" and info.window_source == "bit depth"
    assert info.patient_hash == "" and info.transfer_syntax == ""


def test_png_16bit_grey(tmp_path: Path) -> None:
    arr = ramp(top=65535).astype(np.uint16)
    path = save(Image.fromarray(arr), tmp_path / "g16.png", "PNG")
    assert Image.open(path).mode.startswith("I")  # really stored as 16-bit
    decoded = read_image(path)
    np.testing.assert_allclose(decoded.pixels, arr / 65535.0, atol=1e-7)
    assert decoded.info.bits_stored == 16 and decoded.info.window == (65535 / 2, 65535.0)


def test_png_12bit_values_in_16bit_png_keep_their_scale(tmp_path: Path) -> None:
    # Not stretched: a 12-bit film saved as 16-bit PNG reads dark, as the file says.
    arr = ramp(top=4095).astype(np.uint16)
    decoded = read_image(save(Image.fromarray(arr), tmp_path / "g12.png", "PNG"))
    np.testing.assert_allclose(decoded.pixels, arr / 65535.0, atol=1e-7)


def test_jpeg_grey_is_close(tmp_path: Path) -> None:
    y, x = np.mgrid[0:64, 0:48]
    arr = (128 + 100 * np.sin(x / 7.0) * np.cos(y / 9.0)).astype(np.uint8)  # smooth: JPEG-friendly
    path = save(Image.fromarray(arr, mode="L"), tmp_path / "g.jpg", "JPEG", quality=95)
    decoded = read_image(path)
    pil = np.asarray(Image.open(path), dtype=np.float64) / 255.0
    np.testing.assert_allclose(decoded.pixels, pil, atol=1e-7)  # exactly what the JPEG holds
    assert np.abs(decoded.pixels - arr / 255.0).mean() < 0.01  # and close to the original
    assert decoded.info.format == "jpeg" and decoded.info.bits_stored == 8


def test_rgb_and_rgba_converted_to_luminance(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, size=(30, 20, 3), dtype=np.uint8)
    expected = (rgb.astype(np.float64) @ np.array([0.299, 0.587, 0.114])) / 255.0
    decoded = read_image(save(Image.fromarray(rgb, mode="RGB"), tmp_path / "c.png", "PNG"))
    np.testing.assert_allclose(decoded.pixels, expected, atol=1e-6)
    assert decoded.info.photometric == "RGB" and "luminance" in decoded.info.notes[0]

    rgba = np.concatenate([rgb, np.full((30, 20, 1), 77, np.uint8)], axis=-1)
    decoded = read_image(save(Image.fromarray(rgba, mode="RGBA"), tmp_path / "c4.png", "PNG"))
    np.testing.assert_allclose(decoded.pixels, expected, atol=1e-6)  # alpha ignored


def test_grey_saved_as_rgb_reads_like_grey(tmp_path: Path) -> None:
    grey = ramp().astype(np.uint8)
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    a = read_image(save(Image.fromarray(grey, mode="L"), tmp_path / "l.png", "PNG"))
    b = read_image(save(Image.fromarray(rgb, mode="RGB"), tmp_path / "rgb.png", "PNG"))
    np.testing.assert_allclose(b.pixels, a.pixels, atol=1e-6)


def test_palette_png(tmp_path: Path) -> None:
    grey = ramp(20, 30).astype(np.uint8)
    palette_image = Image.fromarray(grey, mode="L").convert("P")
    assert palette_image.mode == "P"
    decoded = read_image(save(palette_image, tmp_path / "p.png", "PNG"))
    expected = np.asarray(palette_image.convert("L"), dtype=np.float64) / 255.0
    np.testing.assert_allclose(decoded.pixels, expected, atol=1.0 / 255)
    assert decoded.info.photometric == "PALETTE COLOR"


def test_real_nih_png() -> None:
    decoded = read_image(NIH_PNG)
    h, w = decoded.pixels.shape
    assert (decoded.info.width, decoded.info.height) == (w, h) == (512, 512)
    lung = decoded.pixels[int(0.41 * h) : int(0.49 * h), int(0.26 * w) : int(0.34 * w)].mean()
    spine = decoded.pixels[int(0.41 * h) : int(0.49 * h), int(0.46 * w) : int(0.54 * w)].mean()
    assert lung < 0.5 * spine  # bright = dense as stored, no inversion
    text = describe(decoded)
    assert "512 x 512" in text and "PNG" in text and "bit depth" in text


# --------------------------------------------------------------------------- refusals


def test_decompression_bomb_refused_by_pillow_limit(tmp_path: Path) -> None:
    path = tmp_path / "bomb.png"
    path.write_bytes(forged_png(100_000, 100_000))  # 10 Gpx claimed, 200 bytes on disk
    with pytest.raises(ImageTooLargeError) as err:
        read_image(path)
    assert str(path) in str(err.value)


def test_image_over_our_limit_refused_from_header(tmp_path: Path) -> None:
    path = tmp_path / "big.png"
    path.write_bytes(forged_png(12_000, 9_000))  # 108 Mpx: under Pillow's hard limit, over ours
    with pytest.raises(ImageTooLargeError, match="exceeds the limit"):
        read_image(path)
    small = save(Image.fromarray(ramp().astype(np.uint8), mode="L"), tmp_path / "s.png", "PNG")
    with pytest.raises(ImageTooLargeError):
        read_image(small, max_pixels=1000)
    assert read_image(small, max_pixels=3000).pixels.shape == (60, 50)


@pytest.mark.parametrize("fmt, suffix", [("PNG", "png"), ("JPEG", "jpg")])
def test_truncated_raster_raises_read_error_naming_the_file(tmp_path: Path, fmt: str, suffix: str) -> None:
    rng = np.random.default_rng(2)
    arr = rng.integers(0, 256, size=(80, 80), dtype=np.uint8)  # noise: many data bytes to cut
    buf = io.BytesIO()
    Image.fromarray(arr, mode="L").save(buf, format=fmt)
    path = tmp_path / f"cut.{suffix}"
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(ImageReadError) as err:
        read_image(path)
    assert type(err.value) is ImageReadError and str(path) in str(err.value)


def test_animated_png_refused(tmp_path: Path) -> None:
    frames = [Image.fromarray(np.full((8, 8), v, np.uint8), mode="L") for v in (0, 128, 255)]
    path = tmp_path / "anim.png"
    frames[0].save(path, format="PNG", save_all=True, append_images=frames[1:])
    with pytest.raises(UnsupportedImageError, match="animated"):
        read_image(path)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"hello world, definitely not an image" * 10,
        bytes(range(256)) * 4,
        b"\x89PNG\r\n\x1a\n" + b"\x00" * 40,
        b"\xff\xd8\xff\xe0" + b"\x17" * 40,
    ],
    ids=["empty", "text", "binary", "png-signature-then-junk", "jpeg-signature-then-junk"],
)
def test_garbage_bytes_raise_read_error(data: bytes) -> None:
    with pytest.raises(ImageReadError) as err:
        read_image(data, source="upload.bin")
    assert "upload.bin" in str(err.value)
    # no image at all is the caller's wrong media type; an image's signature with junk is a damaged image
    no_image = not data.startswith((b"\x89PNG", b"\xff\xd8"))
    assert type(err.value) is (NotAnImageError if no_image else ImageReadError)
    assert err.value.reason == ("unsupported_media_type" if no_image else "unreadable_image")


def test_garbage_message_and_sniffing(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("just text")
    with pytest.raises(ImageReadError, match="not a DICOM, PNG or JPEG image"):
        read_image(path)
    assert sniff_format(b"\x89PNG\r\n\x1a\n....") == "png"
    assert sniff_format(b"\xff\xd8\xff\xdb") == "jpeg"
    assert sniff_format(b"\x00" * 128 + b"DICM") == "dicom"
    assert sniff_format(b"GIF89a") is None


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(MissingImageError):
        read_image(tmp_path / "nope.png")


def test_read_raster_from_bytes_and_as_dict() -> None:
    buf = io.BytesIO()
    Image.fromarray(ramp().astype(np.uint8), mode="L").save(buf, format="PNG")
    decoded = read_raster(buf.getvalue(), "mem://x.png")
    as_dict = decoded.info.as_dict()
    json.dumps(as_dict)  # JSON-ready
    assert as_dict["source"] == "mem://x.png" and as_dict["window"] == [127.5, 255.0]
