"""regionmir.dicom_reader (through regionmir.image_reader): real DICOM files built with pydicom.

Fixtures are written to ``tmp_path`` and read back through :func:`read_image`, so the whole path
(storage, format sniffing, pydicom parsing, decoder plugins, modality/VOI/polarity) is exercised.
Compressed twins are made with pydicom's own encoders (RLE native, JPEG 2000 via pylibjpeg-openjpeg,
JPEG-LS via pyjpegls); JPEG baseline/extended come from Pillow and JPEG lossless from the small
encoder below, because no installed library encodes lossless JPEG (process 14).
"""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    JPEG2000,
    BasicTextSRStorage,
    DeflatedExplicitVRLittleEndian,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
    generate_uid,
)
from pydicom.uid import (
    JPEGLossless as JPEGLosslessP14,
)

from regionmir.decoded_image import DecodeLimits
from regionmir.dicom_reader import read_dicom
from regionmir.errors import ImageReadError, ImageShapeError, ImageTooLargeError, PixelValueError, UnsupportedImageError
from regionmir.identifiers import hash_identifier
from regionmir.image_reader import describe, read_image
from regionmir.raster_reader import read_raster

DATA = Path(__file__).parent / "data"
NIH_PNG = DATA / "nih_00000001_000.png"

PATIENT_ID = "PAT-0042-SECRET"
STUDY_UID = "1.2.826.0.1.3680043.8.498.4242424242"


# --------------------------------------------------------------------------- fixtures / helpers


def chest_like(rows: int = 96, cols: int = 80, bits: int = 12, seed: int = 0) -> np.ndarray:
    """A deterministic uint16 test pattern using the whole range: gradient, two dark 'lungs',
    a bright 'spine' and noise. Non-square so that a transposed decode would be caught."""
    rng = np.random.default_rng(seed)
    top = 2**bits - 1
    y, x = np.mgrid[0:rows, 0:cols].astype(np.float64)
    img = 0.55 + 0.25 * (y / rows)
    for cx in (0.3, 0.7):
        img -= 0.35 * (((x / cols - cx) / 0.15) ** 2 + ((y / rows - 0.45) / 0.3) ** 2 < 1)
    img += 0.35 * (np.abs(x / cols - 0.5) < 0.06)
    img = np.clip(img + rng.normal(0, 0.03, img.shape), 0, 1)
    img[0, 0], img[-1, -1] = 0.0, 1.0  # make sure the extremes occur
    return np.round(img * top).astype(np.uint16)


def make_ds(
    pixels: np.ndarray,
    *,
    photometric: str = "MONOCHROME2",
    bits_stored: int | None = None,
    windows: list[tuple[float, float]] | None = None,
    rescale: tuple[float, float] | None = None,
    view: str = "PA",
) -> Dataset:
    """A DX 'for presentation' dataset with identifiers, pixel data and optional window/rescale."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = DigitalXRayImageStorageForPresentation
    ds.PatientID = PATIENT_ID
    ds.PatientName = "Doe^Jane"
    ds.StudyInstanceUID = STUDY_UID
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "DX"
    ds.ViewPosition = view
    if bits_stored is None:
        bits_stored = pixels.dtype.itemsize * 8
    ds.set_pixel_data(pixels, photometric, bits_stored)
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    if windows:
        ds.WindowCenter = [c for c, _ in windows] if len(windows) > 1 else windows[0][0]
        ds.WindowWidth = [w for _, w in windows] if len(windows) > 1 else windows[0][1]
    if rescale:
        ds.RescaleSlope, ds.RescaleIntercept = rescale
    return ds


def to_bytes(ds: Dataset, *, part10: bool = True) -> bytes:
    buf = io.BytesIO()
    if part10:
        ds.save_as(buf, enforce_file_format=True)
    else:
        pydicom.dcmwrite(buf, ds, implicit_vr=True, little_endian=True)
    return buf.getvalue()


def write(tmp_path: Path, name: str, ds_or_bytes: Dataset | bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(ds_or_bytes if isinstance(ds_or_bytes, bytes) else to_bytes(ds_or_bytes))
    return path


def compressed(ds: Dataset, syntax: str, **kwargs: object) -> Dataset:
    twin = pydicom.dcmread(io.BytesIO(to_bytes(ds)))
    twin.compress(syntax, generate_instance_uid=False, **kwargs)
    return twin


def encapsulated(ds: Dataset, syntax: str, frame: bytes) -> Dataset:
    """``ds`` with its pixel data replaced by one encapsulated ``frame`` of ``syntax``."""
    twin = pydicom.dcmread(io.BytesIO(to_bytes(ds)))
    twin.file_meta.TransferSyntaxUID = syntax
    twin.PixelData = encapsulate([frame])
    twin["PixelData"].VR = "OB"
    return twin


def dicom_linear(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """PS3.3 C.11.2.1.2.1 LINEAR window onto [0, 1] — the reference the reader must match."""
    return np.clip((values.astype(np.float64) - (center - 0.5)) / (width - 1.0) + 0.5, 0.0, 1.0)


def encode_jpeg_lossless(pixels: np.ndarray, precision: int, predictor: int = 1) -> bytes:
    """Minimal lossless JPEG (ITU T.81 process 14, SOF3) encoder for one grey component.

    One Huffman table where the 17 difference categories (SSSS 0..16) all get 5-bit codes:
    inefficient but valid, and simple enough to check by reading. Predictors 1 (left) and
    7 ((left + above) / 2) are implemented; the first row uses the left neighbour, the first
    column the one above, the first sample 2**(P-1) (T.81 H.1.1.2).
    """
    rows, cols = pixels.shape
    px = pixels.astype(np.int64)
    out = bytearray(b"\xff\xd8")
    out += (
        b"\xff\xc3"
        + (11).to_bytes(2, "big")
        + bytes([precision])
        + rows.to_bytes(2, "big")
        + cols.to_bytes(2, "big")
        + bytes([1, 1, 0x11, 0])
    )
    bits_per_length = [0] * 16
    bits_per_length[4] = 17  # 17 codes of length 5: 00000 .. 10000
    out += (
        b"\xff\xc4" + (2 + 1 + 16 + 17).to_bytes(2, "big") + bytes([0x00]) + bytes(bits_per_length) + bytes(range(17))
    )
    out += b"\xff\xda" + (8).to_bytes(2, "big") + bytes([1, 1, 0x00, predictor, 0, 0])

    acc, nacc = 0, 0
    data = bytearray()

    def put(value: int, nbits: int) -> None:
        nonlocal acc, nacc
        for i in range(nbits - 1, -1, -1):
            acc = (acc << 1) | ((value >> i) & 1)
            nacc += 1
            if nacc == 8:
                data.append(acc)
                if acc == 0xFF:
                    data.append(0x00)  # byte stuffing
                acc, nacc = 0, 0

    for r in range(rows):
        for c in range(cols):
            if r == 0 and c == 0:
                pred = 1 << (precision - 1)
            elif r == 0:
                pred = px[r, c - 1]
            elif c == 0:
                pred = px[r - 1, c]
            elif predictor == 1:
                pred = px[r, c - 1]
            elif predictor == 7:
                pred = (px[r, c - 1] + px[r - 1, c]) >> 1
            else:
                raise ValueError(predictor)
            diff = int(px[r, c] - pred)
            diff = ((diff + 32768) % 65536) - 32768  # differences are modulo 2**16
            ssss = 16 if diff == -32768 else abs(diff).bit_length()
            put(ssss, 5)
            if 0 < ssss < 16:
                put(diff if diff > 0 else diff + (1 << ssss) - 1, ssss)
    if nacc:
        put((1 << (8 - nacc)) - 1, 8 - nacc)  # pad the last byte with 1-bits
    out += data + b"\xff\xd9"
    return bytes(out)


# --------------------------------------------------------------------------- bit depths, windows


def test_8bit_window_maps_to_unit_range(tmp_path: Path) -> None:
    arr = (chest_like(bits=8)).astype(np.uint8)
    # Window 128/256 covers 0..255 exactly, so the output is v / 255.
    decoded = read_image(write(tmp_path, "8bit.dcm", make_ds(arr, windows=[(128, 256)])))
    np.testing.assert_allclose(decoded.pixels, arr / 255.0, atol=1e-6)
    assert decoded.pixels.dtype == np.float32 and decoded.pixels.shape == (96, 80)
    info = decoded.info
    assert (info.format, info.width, info.height) == ("dicom", 80, 96)
    assert (info.bits_stored, info.bits_allocated, info.pixel_representation) == (8, 8, 0)
    assert info.window == (128.0, 256.0) and info.window_source == "VOI window 1 of 1"
    assert info.transfer_syntax == ExplicitVRLittleEndian and info.view == "PA"


def test_12bit_in_16_window(tmp_path: Path) -> None:
    arr = chest_like(bits=12)
    decoded = read_image(write(tmp_path, "12bit.dcm", make_ds(arr, bits_stored=12, windows=[(2048, 4096)])))
    np.testing.assert_allclose(decoded.pixels, arr / 4095.0, atol=1e-6)
    assert (decoded.info.bits_stored, decoded.info.bits_allocated) == (12, 16)


def test_16bit_full_range(tmp_path: Path) -> None:
    arr = chest_like(bits=16)
    decoded = read_image(write(tmp_path, "16bit.dcm", make_ds(arr, windows=[(32768, 65536)])))
    np.testing.assert_allclose(decoded.pixels, arr / 65535.0, atol=1e-6)
    assert decoded.info.bits_stored == 16


def test_no_window_uses_pixel_range(tmp_path: Path) -> None:
    arr = (chest_like(bits=12) // 2 + 1000).astype(np.uint16)  # 1000 .. 3047
    decoded = read_image(write(tmp_path, "range.dcm", make_ds(arr, bits_stored=12)))
    lo, hi = float(arr.min()), float(arr.max())
    np.testing.assert_allclose(decoded.pixels, (arr - lo) / (hi - lo), atol=1e-6)
    assert decoded.info.window_source == "pixel range"
    assert decoded.info.window == ((lo + hi) / 2, hi - lo)


@pytest.mark.parametrize("bits_stored", [12, 16])
def test_signed_pixels_with_rescale_intercept(tmp_path: Path, bits_stored: int) -> None:
    top = 2 ** (bits_stored - 1)
    arr = (chest_like(bits=bits_stored).astype(np.int64) - top).astype(np.int16)  # -top .. top-1
    slope, intercept = 2.0, -1024.0
    center, width = -1024.0, 3.0 * top
    ds = make_ds(arr, bits_stored=bits_stored, windows=[(center, width)], rescale=(slope, intercept))
    decoded = read_image(write(tmp_path, f"signed{bits_stored}.dcm", ds))
    expected = dicom_linear(arr * slope + intercept, center, width)
    np.testing.assert_allclose(decoded.pixels, expected, atol=1e-6)
    assert decoded.info.pixel_representation == 1
    assert arr.min() < 0 and 0.0 < decoded.pixels.mean() < 1.0


def test_window_selection_first_by_default_second_on_request(tmp_path: Path) -> None:
    arr = chest_like(bits=12)
    windows = [(1500.0, 1000.0), (2048.0, 4096.0)]
    path = write(tmp_path, "two_windows.dcm", make_ds(arr, bits_stored=12, windows=windows))

    first = read_image(path)
    np.testing.assert_allclose(first.pixels, dicom_linear(arr, *windows[0]), atol=1e-6)
    assert first.info.window == windows[0] and first.info.window_source == "VOI window 1 of 2"

    second = read_image(path, window_index=1)
    np.testing.assert_allclose(second.pixels, dicom_linear(arr, *windows[1]), atol=1e-6)
    assert second.info.window == windows[1] and second.info.window_source == "VOI window 2 of 2"
    assert not np.allclose(first.pixels, second.pixels)

    with pytest.raises(UnsupportedImageError, match="out of range") as err:
        read_image(path, window_index=2)
    assert err.value.reason == "bad_window_index"


def test_voi_lut_sequence_used_when_no_window(tmp_path: Path) -> None:
    arr = chest_like(bits=12)
    lut = np.round(4095 * (np.arange(4096) / 4095.0) ** 0.5).astype(np.uint16)  # a gamma curve
    ds = make_ds(arr, bits_stored=12)
    item = Dataset()
    item.add_new(0x00283002, "US", [4096, 0, 12])  # LUT Descriptor: entries, first value, bits
    item.add_new(0x00283006, "US", lut.tolist())  # LUT Data
    ds.VOILUTSequence = [item]
    decoded = read_image(write(tmp_path, "voilut.dcm", ds))
    np.testing.assert_allclose(decoded.pixels, lut[arr] / 4095.0, atol=1e-6)
    assert decoded.info.window is None and decoded.info.window_source == "VOI LUT 1 of 1"


# --------------------------------------------------------------------------- polarity


def test_monochrome1_and_monochrome2_twins_read_identically(tmp_path: Path) -> None:
    top = 4095
    mono2 = chest_like(bits=12)
    mono1 = (top - mono2).astype(np.uint16)
    # A LINEAR window (c, w) covers raw values c - w/2 .. c + w/2 - 1; the inverted image's
    # window must cover the mirrored interval, so c' = top + 1 - c.
    c, w = 1800.0, 2400.0
    a = read_image(write(tmp_path, "m2.dcm", make_ds(mono2, bits_stored=12, windows=[(c, w)])))
    b = read_image(
        write(tmp_path, "m1.dcm", make_ds(mono1, photometric="MONOCHROME1", bits_stored=12, windows=[(top + 1 - c, w)]))
    )
    np.testing.assert_allclose(b.pixels, a.pixels, atol=1e-6)
    assert b.info.photometric == "MONOCHROME1" and a.info.photometric == "MONOCHROME2"
    # Without any window (pixel-range normalisation) the twins agree as well.
    a2 = read_image(write(tmp_path, "m2n.dcm", make_ds(mono2, bits_stored=12)))
    b2 = read_image(write(tmp_path, "m1n.dcm", make_ds(mono1, photometric="MONOCHROME1", bits_stored=12)))
    np.testing.assert_allclose(b2.pixels, a2.pixels, atol=1e-6)


def test_real_nih_film_as_monochrome1_gives_bright_bone_dark_lung(tmp_path: Path) -> None:
    png_bytes = NIH_PNG.read_bytes()
    film = np.asarray(Image.open(io.BytesIO(png_bytes)).convert("L"))
    v12 = np.round(film.astype(np.float64) * 4095.0 / 255.0).astype(np.uint16)
    stored = (4095 - v12).astype(np.uint16)  # as a CR/DX MONOCHROME1 file stores it: air bright
    ds = make_ds(stored, photometric="MONOCHROME1", bits_stored=12, windows=[(2048.0, 4096.0)])
    ds = compressed(ds, RLELossless)  # compressed, as archives store them (RLE: the fastest encoder)
    decoded = read_image(write(tmp_path, "nih_mono1.dcm", ds))
    reference = read_raster(png_bytes, str(NIH_PNG))

    # Equal to the PNG within the 8 -> 12 bit quantisation (half a 12-bit step).
    assert np.abs(decoded.pixels - reference.pixels).max() <= 0.5 / 4095 + 1e-6

    h, w = decoded.pixels.shape
    half = int(0.04 * w)

    def patch(fx: float, fy: float) -> float:
        cx, cy = int(fx * w), int(fy * h)
        return float(decoded.pixels[cy - half : cy + half, cx - half : cx + half].mean())

    right_lung, left_lung, mediastinum = patch(0.3, 0.45), patch(0.7, 0.45), patch(0.5, 0.45)
    assert right_lung < 0.5 * mediastinum and left_lung < 0.5 * mediastinum
    assert mediastinum > 0.6 and max(right_lung, left_lung) < 0.3


# --------------------------------------------------------------------------- compressed syntaxes


@pytest.mark.parametrize(
    "syntax, kwargs",
    [
        (RLELossless, {}),
        (JPEG2000Lossless, {"encoding_plugin": "pylibjpeg"}),
        (JPEGLSLossless, {}),
    ],
    ids=["rle", "jpeg2000-lossless", "jpegls-lossless"],
)
@pytest.mark.parametrize("photometric", ["MONOCHROME2", "MONOCHROME1"])
def test_lossless_twins_read_exactly_like_uncompressed(
    tmp_path: Path, syntax: str, kwargs: dict, photometric: str
) -> None:
    ds = make_ds(chest_like(bits=12), photometric=photometric, bits_stored=12, windows=[(2000, 3000)])
    plain = read_image(write(tmp_path, "plain.dcm", ds))
    twin = read_image(write(tmp_path, "twin.dcm", compressed(ds, syntax, **kwargs)))
    np.testing.assert_array_equal(twin.pixels, plain.pixels)
    assert twin.info.transfer_syntax == syntax
    assert twin.info.transfer_syntax_name == pydicom.uid.UID(syntax).name


def test_signed_16bit_rle_and_jpeg2000_lossless_twins(tmp_path: Path) -> None:
    arr = (chest_like(bits=16).astype(np.int64) - 32768).astype(np.int16)
    ds = make_ds(arr, bits_stored=16, rescale=(1.0, -1024.0))
    plain = read_image(write(tmp_path, "plain.dcm", ds))
    for syntax, kwargs in ((RLELossless, {}), (JPEG2000Lossless, {"encoding_plugin": "pylibjpeg"})):
        twin = read_image(write(tmp_path, "twin.dcm", compressed(ds, syntax, **kwargs)))
        np.testing.assert_array_equal(twin.pixels, plain.pixels)


@pytest.mark.parametrize(
    "syntax, predictor", [(JPEGLosslessSV1, 1), (JPEGLosslessP14, 7)], ids=["sv1", "process14-predictor7"]
)
def test_jpeg_lossless_twin_reads_exactly(tmp_path: Path, syntax: str, predictor: int) -> None:
    arr = chest_like(rows=48, cols=40, bits=12)
    ds = make_ds(arr, bits_stored=12, windows=[(2048, 4096)])
    plain = read_image(write(tmp_path, "plain.dcm", ds))
    frame = encode_jpeg_lossless(arr, precision=12, predictor=predictor)
    twin = read_image(write(tmp_path, "jll.dcm", encapsulated(ds, syntax, frame)))
    np.testing.assert_array_equal(twin.pixels, plain.pixels)
    assert twin.info.transfer_syntax == syntax


@pytest.mark.parametrize("syntax", [JPEGBaseline8Bit, JPEGExtended12Bit], ids=["baseline", "extended"])
def test_jpeg_lossy_8bit_is_close(tmp_path: Path, syntax: str) -> None:
    arr = chest_like(bits=8).astype(np.uint8)
    ds = make_ds(arr, windows=[(128, 256)])
    buf = io.BytesIO()
    Image.fromarray(arr, mode="L").save(buf, format="JPEG", quality=95)
    decoded = read_image(write(tmp_path, "jpeg.dcm", encapsulated(ds, syntax, buf.getvalue())))
    pil = np.asarray(Image.open(io.BytesIO(buf.getvalue())), dtype=np.float64) / 255.0
    # Same JPEG stream decoded by libjpeg (pylibjpeg) and by Pillow: IDCT rounding at most.
    assert np.abs(decoded.pixels - pil).max() <= 2.5 / 255
    # Against the original: lossy, but close.
    assert np.abs(decoded.pixels - arr / 255.0).mean() < 0.02
    assert decoded.info.transfer_syntax == syntax


@pytest.mark.parametrize(
    "syntax, kwargs",
    [
        (JPEGLSNearLossless, {"jls_error": 3}),
        (JPEG2000, {"encoding_plugin": "pylibjpeg", "j2k_psnr": [50]}),
    ],
    ids=["jpegls-near-lossless", "jpeg2000-lossy"],
)
def test_lossy_twins_are_close(tmp_path: Path, syntax: str, kwargs: dict) -> None:
    arr = chest_like(bits=12)
    ds = make_ds(arr, bits_stored=12, windows=[(2048, 4096)])
    plain = read_image(write(tmp_path, "plain.dcm", ds))
    twin = read_image(write(tmp_path, "lossy.dcm", compressed(ds, syntax, **kwargs)))
    diff = np.abs(twin.pixels - plain.pixels)
    if syntax == JPEGLSNearLossless:
        assert diff.max() <= 3 / 4095 + 1e-6  # near-lossless bounds every pixel's error
    assert diff.mean() < 0.01


# --------------------------------------------------------------------------- containers, colour


def test_dataset_without_preamble_or_file_meta(tmp_path: Path) -> None:
    arr = chest_like(bits=12)
    ds = make_ds(arr, bits_stored=12, windows=[(2048, 4096)])
    del ds.file_meta
    data = to_bytes(ds, part10=False)  # bare implicit-VR dataset, no "DICM"
    assert data[128:132] != b"DICM"
    decoded = read_image(data, source="bare.dcm")
    np.testing.assert_allclose(decoded.pixels, arr / 4095.0, atol=1e-6)
    assert decoded.info.transfer_syntax == pydicom.uid.ImplicitVRLittleEndian


def test_deflated_dataset_and_preamble_holding_another_signature(tmp_path: Path) -> None:
    arr = chest_like(bits=12)
    ds = make_ds(arr, bits_stored=12, windows=[(2048, 4096)])
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds.preamble = b"\x89PNG\r\n\x1a\n" + b"\x00" * 120  # free-form preamble: must not fool sniffing
    decoded = read_image(write(tmp_path, "deflated.dcm", ds))
    np.testing.assert_allclose(decoded.pixels, arr / 4095.0, atol=1e-6)
    assert decoded.info.transfer_syntax == DeflatedExplicitVRLittleEndian


def test_grey_stored_as_rgb_is_accepted_real_colour_refused(tmp_path: Path) -> None:
    grey = chest_like(bits=8).astype(np.uint8)
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    decoded = read_image(write(tmp_path, "rgb_grey.dcm", make_ds(rgb, photometric="RGB")))
    np.testing.assert_allclose(decoded.pixels, grey / 255.0, atol=1e-5)
    assert decoded.info.window_source == "bit depth" and decoded.info.notes

    rgb[10:20, 10:20] = (255, 0, 0)  # a red annotation burned in
    with pytest.raises(UnsupportedImageError, match="colour"):
        read_image(write(tmp_path, "rgb_colour.dcm", make_ds(rgb, photometric="RGB")))


# --------------------------------------------------------------------------- refusals


def test_multiframe_refused(tmp_path: Path) -> None:
    frames = np.stack([chest_like(bits=12)] * 3)
    path = write(tmp_path, "cine.dcm", make_ds(frames, bits_stored=12))
    with pytest.raises(UnsupportedImageError, match="multi-frame") as err:
        read_image(path)
    assert str(path) in str(err.value) and "3 frames" in str(err.value)


def test_non_image_dicom_refused(tmp_path: Path) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = BasicTextSRStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    sr = Dataset()
    sr.file_meta = meta
    sr.SOPClassUID = BasicTextSRStorage
    sr.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    sr.Modality = "SR"
    sr.PatientID = PATIENT_ID
    sr.StudyInstanceUID = STUDY_UID
    path = write(tmp_path, "report.dcm", sr)
    with pytest.raises(UnsupportedImageError, match="no pixel data") as err:
        read_image(path)
    assert str(path) in str(err.value) and "Basic Text SR" in str(err.value)
    assert PATIENT_ID not in str(err.value)


@pytest.mark.parametrize("keep", [0.5, 0.95, 0.1, 0.03, 0.015], ids=["half", "most", "tenth", "in-dataset", "in-meta"])
def test_truncated_file_raises_read_error_naming_the_file(tmp_path: Path, keep: float) -> None:
    data = to_bytes(make_ds(chest_like(bits=12), bits_stored=12, windows=[(2048, 4096)]))
    path = write(tmp_path, "truncated.dcm", data[: int(len(data) * keep)])
    with pytest.raises(ImageReadError) as err:
        read_image(path)
    assert type(err.value) is ImageReadError  # not "unsupported": the file is broken
    assert str(path) in str(err.value)


def test_truncated_compressed_file_raises_read_error(tmp_path: Path) -> None:
    ds = compressed(make_ds(chest_like(bits=12), bits_stored=12), JPEG2000Lossless, encoding_plugin="pylibjpeg")
    data = to_bytes(ds)
    path = write(tmp_path, "truncated_j2k.dcm", data[: len(data) - 600])
    with pytest.raises(ImageReadError) as err:
        read_image(path)
    assert type(err.value) is ImageReadError and str(path) in str(err.value)


@pytest.mark.parametrize(
    "uid, name",
    [
        ("1.2.826.0.1.3680043.9.9999.42", "unknown or private transfer syntax"),
        ("1.2.840.10008.1.2.4.100", "MPEG2 Main Profile / Main Level"),
    ],
)
def test_unknown_transfer_syntax_refused_with_its_uid_and_name(tmp_path: Path, uid: str, name: str) -> None:
    ds = make_ds(chest_like(bits=12), bits_stored=12)
    path = write(tmp_path, "private.dcm", encapsulated(ds, uid, b"\x00" * 64))
    with pytest.raises(UnsupportedImageError) as err:
        read_image(path)
    message = str(err.value)
    assert uid in message and name in message and str(path) in message


def test_missing_decoder_plugin_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    class NoPlugin:
        is_available = False
        missing_dependencies = ["plugin 'pylibjpeg' requires pylibjpeg-openjpeg"]

    path = write(
        tmp_path,
        "j2k.dcm",
        compressed(make_ds(chest_like(bits=12), bits_stored=12), JPEG2000Lossless, encoding_plugin="pylibjpeg"),
    )
    monkeypatch.setattr(pydicom.pixels, "get_decoder", lambda uid: NoPlugin())
    with pytest.raises(UnsupportedImageError, match="no decoder plugin installed") as err:
        read_image(path)
    assert JPEG2000Lossless in str(err.value) and "pylibjpeg-openjpeg" in str(err.value)


def test_too_many_pixels_refused_before_decoding(tmp_path: Path) -> None:
    ds = make_ds(chest_like(bits=12), bits_stored=12)
    ds.Rows = ds.Columns = 60000  # a forged header; the pixel data stays 15 kB
    path = write(tmp_path, "bomb.dcm", ds)
    with pytest.raises(ImageTooLargeError, match="exceeds the limit") as err:
        read_image(path)
    assert str(path) in str(err.value)
    # And a genuine image above a caller-chosen limit.
    with pytest.raises(ImageTooLargeError):
        read_image(write(tmp_path, "small.dcm", make_ds(chest_like(bits=12), bits_stored=12)), max_pixels=1000)


# --------------------------------------------------------------------------- privacy, describe


def test_no_raw_patient_identifiers_in_info(tmp_path: Path) -> None:
    decoded = read_image(write(tmp_path, "id.dcm", make_ds(chest_like(bits=12), bits_stored=12)))
    info = decoded.info
    texts = [repr(info), json.dumps(info.as_dict()), describe(decoded)]
    for text in texts:
        assert PATIENT_ID not in text and STUDY_UID not in text and "Doe" not in text
    assert info.patient_hash == hash_identifier(PATIENT_ID) and len(info.patient_hash) == 16
    assert info.study_hash == hash_identifier(STUDY_UID) and info.study_hash != info.patient_hash


def test_describe_summarises_the_image(tmp_path: Path) -> None:
    ds = compressed(
        make_ds(chest_like(bits=12), photometric="MONOCHROME1", bits_stored=12, windows=[(2048, 4096), (1500, 1000)]),
        RLELossless,
    )
    text = describe(read_image(write(tmp_path, "d.dcm", ds)))
    for expected in (
        "80 x 96",
        "MONOCHROME1",
        "12 stored / 16 allocated",
        "RLE Lossless",
        RLELossless,
        "VOI window 1 of 2",
        "center 2048",
        "width 4096",
        "PA",
    ):
        assert expected in text, expected


def test_read_dicom_directly_from_bytes() -> None:
    arr = chest_like(bits=12)
    decoded = read_dicom(to_bytes(make_ds(arr, bits_stored=12, windows=[(2048, 4096)])), "mem://x")
    assert decoded.info.source == "mem://x"
    np.testing.assert_allclose(decoded.pixels, arr / 4095.0, atol=1e-6)


# --------------------------------------------------------------- hostile files: bounded before decoding


def test_a_deflate_bomb_is_refused_before_it_inflates(tmp_path: Path) -> None:
    """A small deflated dataset whose private element inflates to 64 MB: refused from the bounded
    inflate (the film itself would be within the limits), without pydicom inflating it whole."""
    import time

    ds = make_ds(chest_like(bits=12), bits_stored=12, windows=[(2048, 4096)])
    ds.add_new(0x00091010, "OB", b"\0" * (64 * 1024 * 1024))  # the payload a bomb hides
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    data = to_bytes(ds)
    assert len(data) < 200_000  # ~1000:1 on the wire
    started = time.perf_counter()
    with pytest.raises(ImageTooLargeError, match="decompression bomb") as err:
        read_image(data, source="bomb.dcm", limits=DecodeLimits(max_pixels=1_000_000))
    assert time.perf_counter() - started < 5 and err.value.reason == "image_too_large"
    # the same file is read when the limits allow what it holds (the bound is what a film can hold)
    assert read_image(data, limits=DecodeLimits(max_pixels=20_000_000)).pixels.shape == (96, 80)
    # a damaged deflate stream is a read error, not a crash
    from regionmir.dicom_reader import _file_meta

    syntax, meta_end = _file_meta(data)
    assert syntax == DeflatedExplicitVRLittleEndian
    with pytest.raises(ImageReadError):
        read_image(data[:meta_end] + b"\xff" * 64, source="broken.dcm")


def test_a_jpeg2000_code_stream_bigger_than_its_header_is_refused(tmp_path: Path) -> None:
    ds = make_ds(chest_like(bits=12), bits_stored=12, windows=[(2000, 3000)])
    twin = compressed(ds, JPEG2000Lossless, encoding_plugin="pylibjpeg")
    frame = bytearray(next(f for f in pydicom.encaps.generate_fragments(twin.PixelData) if f.startswith(b"\xff\x4f")))
    at = frame.find(b"\xff\x4f\xff\x51")
    frame[at + 8 : at + 16] = (200_000).to_bytes(4, "big") + (200_000).to_bytes(4, "big")  # Xsiz, Ysiz
    forged = encapsulated(ds, JPEG2000Lossless, bytes(frame))
    with pytest.raises(ImageTooLargeError, match="200000 x 200000"):
        read_image(to_bytes(forged), source="forged.dcm")
    frame[at + 8 : at + 16] = (80).to_bytes(4, "big") + (97).to_bytes(4, "big")  # one row more
    with pytest.raises(ImageReadError, match="80 x 97 but Rows x Columns say 80 x 96"):
        read_image(to_bytes(encapsulated(ds, JPEG2000Lossless, bytes(frame))), source="forged.dcm")
    frame[at + 12 : at + 16] = (96).to_bytes(4, "big")
    frame[at + 40 : at + 42] = (16384).to_bytes(2, "big")  # Csiz
    with pytest.raises(ImageReadError, match="16384 components"):
        read_image(to_bytes(encapsulated(ds, JPEG2000Lossless, bytes(frame))), source="forged.dcm")
    decoy = b"\x00" * 8 + bytes(frame)  # a code stream not at the fragment's start
    with pytest.raises(ImageReadError, match="at its start"):
        read_image(to_bytes(encapsulated(ds, JPEG2000Lossless, decoy)), source="forged.dcm")


def test_a_deflate_bomb_without_preamble_is_bounded_even_while_sniffing() -> None:
    """pydicom reads the file meta of a bare dataset too, and inflates it whole even to sniff it."""
    from regionmir.dicom_reader import looks_like_dicom

    ds = make_ds(chest_like(bits=12), bits_stored=12, windows=[(2048, 4096)])
    ds.add_new(0x00091010, "OB", b"\0" * (64 * 1024 * 1024))
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    bare = to_bytes(ds)[128 + 4 :]  # no preamble, no DICM
    assert looks_like_dicom(bare)  # sniffed without inflating it all
    with pytest.raises(ImageTooLargeError, match="decompression bomb"):
        read_image(bare, source="bare-bomb.dcm", limits=DecodeLimits(max_pixels=1_000_000))
    # a file meta that is not explicit VR cannot be bounded: refused rather than inflated
    implicit_meta = (
        b"\x02\x00\x10\x00"
        + len(DeflatedExplicitVRLittleEndian).to_bytes(4, "little")
        + DeflatedExplicitVRLittleEndian.encode()
        + b"\x00" * 64
    )
    with pytest.raises(UnsupportedImageError, match="not explicit VR"):
        read_image(implicit_meta, source="implicit.dcm")


@pytest.mark.parametrize("slope", ["NaN", "inf", "-inf"])
def test_a_rescale_that_makes_pixels_nan_is_a_clear_error(tmp_path: Path, slope: str) -> None:
    ds = make_ds(chest_like(bits=12), bits_stored=12, windows=[(2000, 3000)])
    ds.RescaleSlope, ds.RescaleIntercept = slope, "0"
    with pytest.raises(PixelValueError, match="RescaleSlope") as err:
        read_image(to_bytes(ds), source="nan.dcm")
    assert err.value.reason == "bad_pixel_values" and "nan.dcm" in str(err.value)


def test_decode_limits_check_the_header_side_and_shape(tmp_path: Path) -> None:
    limits = DecodeLimits(max_pixels=60_000_000, max_side=8192, max_aspect=4.0)
    limits.check("ok", 7740, 7740)
    limits.check("ok", 1500, 4096)
    with pytest.raises(ImageTooLargeError, match="longer side"):
        limits.check("strip", 39000, 1500)
    with pytest.raises(ImageShapeError, match="side ratio of 5.0") as err:
        limits.check("strip", 5000, 1000)
    assert err.value.reason == "bad_image_shape"
    with pytest.raises(ImageTooLargeError, match="pixels exceeds"):
        limits.check("big", 8000, 8000)
    ds = make_ds(np.zeros((40, 400), np.uint16), bits_stored=12)  # a 10:1 DICOM strip
    with pytest.raises(ImageShapeError):
        read_image(to_bytes(ds), limits=DecodeLimits(max_aspect=4.0))
    assert read_image(to_bytes(ds)).pixels.shape == (40, 400)  # the library's defaults accept it


def test_a_jpeg_ls_frame_header_bigger_than_the_dicom_header_is_refused(tmp_path: Path) -> None:
    ds = make_ds(chest_like(bits=12), bits_stored=12, windows=[(2000, 3000)])
    twin = compressed(ds, JPEGLSLossless)
    frame = bytearray(next(f for f in pydicom.encaps.generate_fragments(twin.PixelData) if f.startswith(b"\xff\xd8")))
    sof = frame.find(b"\xff\xf7")  # JPEG-LS start of frame
    frame[sof + 5 : sof + 9] = (60000).to_bytes(2, "big") * 2  # Y, X
    with pytest.raises(ImageTooLargeError, match="60000 x 60000"):
        read_image(to_bytes(encapsulated(ds, JPEGLSLossless, bytes(frame))), source="forged.dcm")
    frame[sof + 5 : sof + 9] = (97).to_bytes(2, "big") + (80).to_bytes(2, "big")  # one row more than the header
    with pytest.raises(ImageReadError, match="80 x 97 but Rows x Columns say 80 x 96"):
        read_image(to_bytes(encapsulated(ds, JPEGLSLossless, bytes(frame))), source="forged.dcm")


def test_the_float32_rescale_and_windows_match_pydicoms_float64_reference():
    """One float32 working array (half of float64's memory) with pydicom's rules and values."""
    from pydicom.dataset import Dataset
    from pydicom.pixels import apply_modality_lut

    from regionmir.dicom_reader import _apply_window, _rescaled

    raw = np.random.default_rng(0).integers(0, 4096, size=(64, 64)).astype(np.uint16)
    for slope, intercept in ((1, 0), (0.5, -1024), (2, 100), (0, 5)):
        ds = Dataset()
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
        ours = _rescaled(raw, ds)
        assert ours.dtype == np.float32
        np.testing.assert_allclose(ours, np.asarray(apply_modality_lut(raw, ds), dtype=np.float64), rtol=1e-6)
    alone = Dataset()
    alone.RescaleIntercept = -1024  # pydicom rescales only when slope and intercept are both present
    np.testing.assert_array_equal(_rescaled(raw, alone), raw.astype(np.float32))

    values = raw.astype(np.float64)
    reference = {
        "LINEAR": lambda c, w: np.clip((values - (c - 0.5)) / (w - 1.0) + 0.5, 0.0, 1.0),
        "LINEAR_EXACT": lambda c, w: np.clip((values - c) / w + 0.5, 0.0, 1.0),
        "SIGMOID": lambda c, w: 1.0 / (1.0 + np.exp(-4.0 * (values - c) / w)),
    }
    for function, expected in reference.items():
        for center, width in ((2000, 400), (100, 4000), (4000, 40)):
            with np.errstate(over="ignore"):
                want = expected(center, width)
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # no overflow warning from a far-off sigmoid window
                got = _apply_window(raw.astype(np.float32), center, width, function)
            assert got.dtype == np.float32 and np.abs(got - want).max() < 1e-5, (function, center, width)
