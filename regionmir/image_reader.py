"""Read any supported radiograph (DICOM, PNG, JPEG) into the library's one intensity convention.

:func:`read_image` takes a local path, an ``s3://`` URI or raw bytes, sniffs the format from the
content (never from the file name, which lies: ``.dcm`` files that are PNGs exist), and hands the
bytes to :func:`regionmir.dicom_reader.read_dicom` or :func:`regionmir.raster_reader.read_raster`.
Both return a :class:`DecodedImage`: ``pixels`` is float32 ``(H, W)`` in ``[0, 1]``, bright =
dense (see :mod:`regionmir.intensity`), ``info`` an :class:`ImageInfo` describing what was read
and how it was mapped to ``[0, 1]``. ``info`` never holds a raw patient identifier, only salted
hashes (:mod:`regionmir.identifiers`).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from .errors import ImageReadError
from .intensity import check_convention
from .storage import S3Options, read_bytes

#: Largest image accepted by default, in pixels (Rows x Columns): 100 million, about 10000 x 10000.
#: Real chest films are 2-9 Mpx (MIMIC-CXR ~2544 x 3056 = 7.8 Mpx), so anything near this limit is
#: either a decompression bomb or not a chest radiograph. Decoding 100 Mpx already takes ~0.4 GB
#: as float32; raise the limit per call (``max_pixels=``) for unusual scanners.
DEFAULT_MAX_PIXELS = 100_000_000

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SIGNATURE = b"\xff\xd8\xff"


@dataclass
class ImageInfo:
    """What was read, and how it became the ``[0, 1]`` image.

    ``width``/``height`` are in pixels of the returned array (``pixels.shape == (height, width)``).
    ``photometric`` is the file's DICOM Photometric Interpretation (rasters: ``MONOCHROME2`` for
    grey, else the colour model they were converted from). ``window`` is the linear
    ``(center, width)`` that was mapped to ``[0, 1]`` (``None`` for a VOI LUT, which is not linear;
    for ``"pixel range"`` and ``"bit depth"`` it is plain ``lo..hi`` with ``lo = center - width/2``);
    ``window_source`` says where it came from: ``"VOI window 1 of 2"``, ``"VOI LUT 1 of 1"``,
    ``"pixel range"`` (DICOM without a window: min..max of the modality-rescaled data) or
    ``"bit depth"`` (rasters: 0..255 or 0..65535). ``patient_hash``/``study_hash`` are salted
    hashes of PatientID / StudyInstanceUID (``""`` when absent). ``notes`` lists conversions that
    a user may want to know about (colour to grey, MONOCHROME1 inversion, sigmoid VOI function).
    """

    source: str
    format: str  # "dicom" | "png" | "jpeg"
    width: int
    height: int
    photometric: str = ""
    bits_stored: int = 0
    bits_allocated: int = 0
    pixel_representation: int = 0  # 0 unsigned, 1 signed (two's complement)
    transfer_syntax: str = ""  # UID; "" for rasters
    transfer_syntax_name: str = ""
    window: tuple[float, float] | None = None  # (center, width)
    window_source: str = ""
    frames: int = 1
    patient_hash: str = ""
    study_hash: str = ""
    view: str = ""  # ViewPosition: AP, PA, LL, ...; "" when unknown
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready dict (the window as a ``[center, width]`` list or ``None``)."""
        out = asdict(self)
        out["window"] = None if self.window is None else [float(v) for v in self.window]
        out["notes"] = list(self.notes)
        return out


@dataclass
class DecodedImage:
    """A decoded radiograph: ``pixels`` float32 ``(H, W)`` in ``[0, 1]``, bright = dense."""

    pixels: np.ndarray
    info: ImageInfo

    def __post_init__(self) -> None:
        check_convention(self.pixels, self.info.source)

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.pixels.shape[0]), int(self.pixels.shape[1]))


def sniff_format(data: bytes) -> str | None:
    """``"dicom"``, ``"png"``, ``"jpeg"`` from the leading bytes, or ``None``."""
    # "DICM" at 128 first: the 128-byte preamble is free-form and may itself hold another
    # format's signature (dual TIFF/DICOM files exist).
    if len(data) >= 132 and data[128:132] == b"DICM":
        return "dicom"
    if data.startswith(PNG_SIGNATURE):
        return "png"
    if data.startswith(JPEG_SIGNATURE):
        return "jpeg"
    from .dicom_reader import looks_like_dicom  # late import: dicom_reader imports this module

    if looks_like_dicom(data):  # a bare dataset without preamble
        return "dicom"
    return None


def read_image(uri_or_bytes: str | os.PathLike[str] | bytes | bytearray | memoryview, *,
               source: str | None = None, s3: S3Options | None = None,
               max_pixels: int = DEFAULT_MAX_PIXELS, window_index: int = 0) -> DecodedImage:
    """Read a DICOM, PNG or JPEG from a path, URI or bytes into a :class:`DecodedImage`.

    ``source`` names the image in errors and in ``info.source`` (default: the path/URI, or
    ``"<bytes>"``). ``window_index`` picks the DICOM VOI window (0 = the first, the modality's
    default); it is ignored for PNG/JPEG. Raises :class:`~regionmir.errors.ImageReadError` and its
    subclasses (missing, unsupported, too large) and :class:`~regionmir.errors.StorageError`.
    """
    if isinstance(uri_or_bytes, (bytes, bytearray, memoryview)):
        data = bytes(uri_or_bytes)
        name = source or "<bytes>"
    else:
        uri = os.fspath(uri_or_bytes)
        data = read_bytes(uri, s3)
        name = source or uri
    if not data:
        raise ImageReadError(name, "empty file")
    kind = sniff_format(data)
    if kind == "dicom":
        from .dicom_reader import read_dicom

        return read_dicom(data, name, window_index=window_index, max_pixels=max_pixels)
    if kind in ("png", "jpeg"):
        from .raster_reader import read_raster

        return read_raster(data, name, max_pixels=max_pixels)
    raise ImageReadError(name, "not a DICOM, PNG or JPEG image")


def describe(decoded: DecodedImage) -> str:
    """A human-readable multi-line summary of a decoded image (for ``regionmir inspect``)."""
    info = decoded.info
    px = decoded.pixels
    lines = [
        f"source:           {info.source}",
        f"format:           {info.format.upper()}",
        f"size:             {info.width} x {info.height} px (W x H)",
    ]
    photometric = info.photometric or "?"
    if info.photometric == "MONOCHROME1":
        photometric += " (inverted on reading, so bright = dense)"
    lines.append(f"photometric:      {photometric}")
    signed = "signed" if info.pixel_representation else "unsigned"
    lines.append(f"bits:             {info.bits_stored} stored / {info.bits_allocated} allocated, {signed}")
    if info.format == "dicom":
        ts = info.transfer_syntax_name or "?"
        if info.transfer_syntax and info.transfer_syntax != info.transfer_syntax_name:
            ts += f" ({info.transfer_syntax})"
        lines.append(f"transfer syntax:  {ts}")
        lines.append(f"frames:           {info.frames}")
    if info.window is not None:
        center, width = info.window
        lines.append(f"window:           {info.window_source}: center {center:g}, width {width:g}")
    else:
        lines.append(f"window:           {info.window_source or 'none'}")
    if info.view:
        lines.append(f"view:             {info.view}")
    if info.patient_hash or info.study_hash:
        lines.append(f"patient / study:  {info.patient_hash or '-'} / {info.study_hash or '-'} (salted hashes)")
    for note in info.notes:
        lines.append(f"note:             {note}")
    if px.size:
        lines.append(f"output:           float32 [0,1] bright=dense; min {float(px.min()):.3f}, "
                     f"mean {float(px.mean()):.3f}, max {float(px.max()):.3f}")
    return "\n".join(lines)
