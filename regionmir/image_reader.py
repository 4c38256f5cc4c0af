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

from .decoded_image import DEFAULT_MAX_PIXELS, DecodedImage, DecodeLimits, ImageInfo
from .errors import NotAnImageError
from .storage import S3Options, read_bytes

__all__ = ["DEFAULT_MAX_PIXELS", "DecodedImage", "DecodeLimits", "ImageInfo", "describe", "read_image", "sniff_format"]

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SIGNATURE = b"\xff\xd8\xff"


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


def read_image(
    uri_or_bytes: str | os.PathLike[str] | bytes | bytearray | memoryview,
    *,
    source: str | None = None,
    s3: S3Options | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    window_index: int = 0,
    limits: DecodeLimits | None = None,
) -> DecodedImage:
    """Read a DICOM, PNG or JPEG from a path, URI or bytes into a :class:`DecodedImage`.

    ``source`` names the image in errors and in ``info.source`` (default: the path/URI, or
    ``"<bytes>"``). ``window_index`` picks the DICOM VOI window (0 = the first, the modality's
    default); it is ignored for PNG/JPEG. ``limits`` (default: ``DecodeLimits(max_pixels)``) bounds
    the film's size and shape, checked on the header before anything is decompressed. Raises :class:`~regionmir.errors.ImageReadError` and its
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
        raise NotAnImageError(name, "empty file")
    limits = limits or DecodeLimits(max_pixels=max_pixels)
    kind = sniff_format(data)
    if kind == "dicom":
        from .dicom_reader import read_dicom

        return read_dicom(data, name, window_index=window_index, limits=limits)
    if kind in ("png", "jpeg"):
        from .raster_reader import read_raster

        return read_raster(data, name, limits=limits)
    raise NotAnImageError(name, "not a DICOM, PNG or JPEG image")


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
        lines.append(
            f"output:           float32 [0,1] bright=dense; min {float(px.min()):.3f}, "
            f"mean {float(px.mean()):.3f}, max {float(px.max()):.3f}"
        )
    return "\n".join(lines)
