"""Uploads a hostile caller sends to the query service: each is small on the wire and costly (or
malformed) once opened. Shared by ``tests/test_serving_hostile.py`` (statuses, memory) and
``benchmarks/hostile_requests.py`` (how long each answer takes)."""

from __future__ import annotations

import io
import zlib

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, generate_fragments
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    generate_uid,
)

from regionmir.dicom_reader import _file_meta


def png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", compress_level=9)
    return buffer.getvalue()


def strip_png(width: int = 39000, height: int = 1500) -> bytes:
    """A grey film far longer than wide (57 KB for 39000 x 1500)."""
    return png(np.zeros((height, width), np.uint8))


def rgb_png(side: int = 7740) -> bytes:
    """A big RGB film (about 60 Mpx, a few hundred KB on the wire)."""
    return png(np.zeros((side, side, 3), np.uint8))


def grey16_png(side: int = 4096) -> bytes:
    """The largest real film the service must still accept: 16-bit, 4096 x 4096."""
    y, x = np.mgrid[0:side, 0:side]
    return png(((x + y) * (65535 // (2 * side))).astype(np.uint16))


def dicom_dataset(rows: int = 256, cols: int = 256, **attributes) -> Dataset:
    """A small 12-bit DX film (explicit VR little endian) with the given extra attributes."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = DigitalXRayImageStorageForPresentation
    ds.Modality = "DX"
    y, x = np.mgrid[0:rows, 0:cols]
    ds.set_pixel_data(((x * 7 + y * 3) % 4096).astype(np.uint16), "MONOCHROME2", 12)
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.WindowCenter, ds.WindowWidth = 2048, 4096
    for name, value in attributes.items():
        setattr(ds, name, value)
    return ds


def dicom_bytes(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def nan_rescale_dicom() -> bytes:
    return dicom_bytes(dicom_dataset(RescaleSlope="NaN", RescaleIntercept="0"))


def deflate_bomb_dicom(inflated_bytes: int = 4 * 1024**3) -> bytes:
    """A deflated DICOM (a valid small film) followed by a private element of ``inflated_bytes``
    zeros: about 4 MB on the wire for 4 GiB inflated."""
    ds = dicom_dataset()
    plain = dicom_bytes(ds)
    _, body_start = _file_meta(plain)
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    deflated = dicom_bytes(ds)
    _, meta_end = _file_meta(deflated)
    packer = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    parts = [deflated[:meta_end], packer.compress(plain[body_start:])]
    block = b"\0" * (64 * 1024 * 1024)
    left, element = int(inflated_bytes), 0x1010
    while left > 0:  # private OB elements (7FE1,10xx) after the pixel data, at most 2 GiB each
        size = min(left, 2 * 1024**3)
        parts.append(
            packer.compress(b"\xe1\x7f" + element.to_bytes(2, "little") + b"OB\x00\x00" + size.to_bytes(4, "little"))
        )
        for start in range(0, size, len(block)):
            parts.append(packer.compress(block[: min(len(block), size - start)]))
        left, element = left - size, element + 1
    parts.append(packer.flush())
    return b"".join(parts)


def forged_jpeg2000_dicom(declared: int = 200_000) -> bytes:
    """A JPEG 2000 film whose code stream declares ``declared`` x ``declared`` pixels while its
    header says 256 x 256: the codec would allocate what the code stream says."""
    ds = dicom_dataset()
    twin = pydicom.dcmread(io.BytesIO(dicom_bytes(ds)))
    twin.compress(JPEG2000Lossless, encoding_plugin="pylibjpeg", generate_instance_uid=False)
    frame = bytearray(next(f for f in generate_fragments(twin.PixelData) if f.startswith(b"\xff\x4f")))
    at = frame.find(b"\xff\x4f\xff\x51")
    frame[at + 8 : at + 16] = int(declared).to_bytes(4, "big") * 2
    twin.PixelData = encapsulate([bytes(frame)])
    twin.SOPInstanceUID = generate_uid()
    return dicom_bytes(twin)
