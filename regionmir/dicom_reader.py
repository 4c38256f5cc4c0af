"""DICOM radiographs into the library's intensity convention (float32 ``(H, W)``, ``[0,1]``, bright = dense).

The display pipeline of the DICOM standard (PS3.4 Grayscale Standard Display Function chain), in
this order:

1. **Modality LUT**: Rescale Slope/Intercept or a Modality LUT Sequence (``pydicom``), giving
   modality values (e.g. HU-like units for some DX, plain values for most).
2. **VOI**: the window the modality chose for display. ``window_index`` (default 0: the *first*
   window, which the standard calls the default) picks among Window Center/Width pairs; the
   linear window follows VOI LUT Function (``LINEAR`` as in PS3.3 C.11.2.1.2.1, ``LINEAR_EXACT``,
   ``SIGMOID``), mapped straight to ``[0, 1]``. **When a file has both windows and a VOI LUT
   Sequence, the window wins** (the standard leaves the choice to the application; a linear
   window is predictable to normalise and is what a user can override). A VOI LUT Sequence is used
   when there is no window; its output is normalised against the LUT's own output range. With
   neither, the min..max of the modality-rescaled pixels (ignoring Pixel Padding Value) is used.
3. **Polarity**: MONOCHROME1 (bright = air on the raw scale, common for CR/DX) is inverted against
   the window, i.e. ``1 - y`` after step 2, so the output is always bright = dense.

Supported: 1 frame, 1 sample per pixel (MONOCHROME1/2), 8-16 bits stored in 8/16 allocated,
signed or unsigned, native or compressed with JPEG baseline/extended/lossless (P14, SV1), JPEG-LS
(lossless, near-lossless), JPEG 2000 (lossless, lossy), RLE lossless and deflate, through pydicom
and the pylibjpeg plugins. **Colour** (RGB, YBR_FULL/_422 which pydicom converts to RGB) is
accepted only when it is a grey image stored in colour (all three channels agree within 3 % of
full scale: secondary captures, lossy YBR noise); it is then converted to luminance and
normalised by the bit depth (the standard defines no VOI for colour). Real colour content and
PALETTE COLOR are refused: a chest radiograph is greyscale, and colour usually means burned-in
annotations.

Errors (all from :mod:`regionmir.errors`, each naming ``source`` and the reason): multi-frame,
non-image objects, colour, 1-bit, undecodable or unknown transfer syntaxes →
:class:`UnsupportedImageError`; over the :class:`~regionmir.decoded_image.DecodeLimits` (checked on
Rows x Columns before any pixel data is decoded; a deflated dataset is inflated only up to what
such a film can hold, and a JPEG 2000 code stream's own size is read from its SIZ marker before
the codec runs) → :class:`ImageTooLargeError` / :class:`ImageShapeError`; a rescale that makes
pixel values NaN or infinite → :class:`PixelValueError`; truncated or corrupt files →
:class:`ImageReadError`.

Privacy: only salted hashes of PatientID and StudyInstanceUID leave this module; pydicom's warnings
and log records are silenced while reading because its validation messages quote element values
(names, IDs). (The filter sits on the ``pydicom`` logger for the duration of a read, so a
concurrent read in another thread is silenced too, which is harmless.)
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import struct
import warnings
import zlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.uid import (
    UID,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000TransferSyntaxes,
    JPEGLSTransferSyntaxes,
    JPEGTransferSyntaxes,
)

from .decoded_image import DEFAULT_MAX_PIXELS, DecodedImage, DecodeLimits, ImageInfo
from .errors import ImageReadError, ImageTooLargeError, PixelValueError, UnsupportedImageError
from .identifiers import hash_identifier
from .intensity import rescale_to_unit

#: Photometric interpretations read as greyscale.
GREY_PHOTOMETRICS = ("MONOCHROME1", "MONOCHROME2")
#: Colour interpretations pydicom hands back as RGB (after its YBR -> RGB conversion).
RGB_PHOTOMETRICS = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT")
#: Largest channel disagreement (fraction of full scale) for a colour image to count as grey.
GREY_IN_COLOUR_TOLERANCE = 0.03

# Luma weights (ITU-R BT.601), the same as PIL's convert("L") and pydicom's YBR conversion.
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


class _DropRecords(logging.Filter):
    """A logging filter that drops every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        return False


@contextlib.contextmanager
def _quiet_pydicom() -> Iterator[list[warnings.WarningMessage]]:
    """Silence pydicom's warnings and log records (they can quote names and IDs); yield the
    recorded warnings so that the caller can still recognise truncation reports."""
    logger = logging.getLogger("pydicom")
    drop = _DropRecords()
    logger.addFilter(drop)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield caught
    finally:
        logger.removeFilter(drop)


def looks_like_dicom(data: bytes) -> bool:
    """True for Part 10 files (``DICM`` at offset 128) and for bare datasets without preamble.

    A bare dataset must start with a little-endian group 0002 or 0008 tag and parse as DICOM with
    at least an image or SOP attribute: ``force=True`` alone would accept any bytes at all.
    """
    if len(data) >= 132 and data[128:132] == b"DICM":
        return True
    if len(data) < 8 or data[0:2] not in (b"\x02\x00", b"\x08\x00"):
        return False
    try:
        check_inflated_size(data, "<sniffing>")  # never let pydicom inflate a bomb just to sniff it
    except ImageReadError:
        return True  # DICOM-like; read_dicom then reports it against the caller's limits
    try:
        with _quiet_pydicom():
            ds = pydicom.dcmread(io.BytesIO(data), force=True, stop_before_pixels=True)
    except Exception:  # any parse failure means "not DICOM" for sniffing purposes
        return False
    return any(key in ds for key in ("SOPClassUID", "Rows", "Modality", "StudyInstanceUID"))


_LONG_LENGTH_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1.99"
#: What a deflated dataset may inflate to beyond its pixels (all other elements together).
DEFLATE_ALLOWANCE_BYTES = 16 * 1024 * 1024


def _file_meta(data: bytes, offset: int = 132) -> tuple[str, int] | None:
    """(Transfer Syntax UID, offset where the dataset starts) of the file meta group (0002) that
    begins at ``offset`` (132 after a preamble, 0 for a bare dataset), walked by hand.

    The group is explicit VR little endian by the standard, and never compressed, so it can be
    read without pydicom, which would inflate a deflated dataset whole before we could look at
    it. ``None`` when the group is not there or cannot be walked as explicit VR (pydicom accepts
    some such files; the caller must then not trust it).
    """
    syntax, seen = "", False
    while offset + 8 <= len(data):
        group, element = struct.unpack_from("<HH", data, offset)
        if group != 0x0002:
            break
        vr = data[offset + 4 : offset + 6]
        if not (vr.isalpha() and vr.isupper()):
            return None  # implicit VR (or garbage) where explicit VR must be
        if vr in _LONG_LENGTH_VRS:
            if offset + 12 > len(data):
                return None
            (length,) = struct.unpack_from("<I", data, offset + 8)
            start = offset + 12
        else:
            (length,) = struct.unpack_from("<H", data, offset + 6)
            start = offset + 8
        if start + length > len(data):
            return None
        if element == 0x0010:
            syntax = data[start : start + length].rstrip(b"\0 ").decode("ascii", "replace")
        offset, seen = start + length, True
    return (syntax, offset) if seen else None


_DEFLATED_UID_BYTES = DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN.encode("ascii")


def check_inflated_size(data: bytes, source: str, limits: DecodeLimits = DecodeLimits()) -> None:
    """Refuse a deflated dataset that inflates past what a film within ``limits`` can hold.

    A 4 MB upload can inflate to gigabytes, and pydicom inflates a deflated dataset whole and in
    memory as soon as it reads past the file meta — even to sniff it. So before any pydicom read:
    when the deflated transfer syntax appears in the first bytes, the file meta (after a preamble
    or without one) must be walkable, and the rest is inflated here in bounded steps and dropped
    as it goes, stopping at the first byte over the bound.
    """
    head = data[:4096]
    if _DEFLATED_UID_BYTES not in head:
        return
    meta = _file_meta(data, 132) if data[128:132] == b"DICM" else _file_meta(data, 0)
    if meta is None:
        raise UnsupportedImageError(
            source,
            "deflated dataset whose file meta information is not explicit VR "
            "little endian: refused (it cannot be bounded before inflating)",
        )
    syntax, start = meta
    if syntax != DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN:
        return
    bound = limits.max_pixels * 4 + DEFLATE_ALLOWANCE_BYTES  # 32-bit pixels at most, plus the rest
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    body = memoryview(data)[start:]
    produced, position, step = 0, 0, 1 << 16
    try:
        while position < len(body) and produced <= bound and not inflater.eof:
            pending = bytes(body[position : position + step])  # small input slices: no big copies
            position += len(pending)
            while pending and produced <= bound and not inflater.eof:
                produced += len(inflater.decompress(pending, 1 << 20))
                pending = inflater.unconsumed_tail
    except zlib.error as exc:
        raise ImageReadError(source, f"corrupt deflated dataset ({exc})") from exc
    if produced > bound:
        raise ImageTooLargeError(
            source,
            f"the deflated dataset inflates past {bound} bytes, more than a film "
            f"of at most {limits.max_pixels} pixels holds (a decompression bomb)",
        )


#: Image components and tiles a JPEG 2000 code stream may declare (grey or RGB; generous tiling).
_J2K_MAX_COMPONENTS = 3
_J2K_MAX_TILES = 65536


#: Start-of-frame markers of JPEG (baseline, extended, lossless: C0-C3, C5-C7, C9-CB, CD-CF) and
#: JPEG-LS (F7); C4, C8 and CC are other markers.
_SOF_MARKERS = frozenset([*range(0xC0, 0xC4), *range(0xC5, 0xC8), *range(0xC9, 0xCC), *range(0xCD, 0xD0), 0xF7])


def _first_fragment(ds: Dataset, source: str) -> bytes:
    from pydicom.encaps import generate_fragments

    try:
        items = generate_fragments(ds.PixelData)
        next(items, b"")  # the Basic Offset Table (always the first item, maybe empty)
        return next(items, b"")
    except Exception as exc:  # malformed encapsulation
        raise ImageReadError(source, f"malformed encapsulated pixel data ({type(exc).__name__})") from exc


def _check_jpeg_frame_size(ds: Dataset, rows: int, cols: int, source: str, limits: DecodeLimits) -> None:
    """Read a JPEG / JPEG-LS stream's start-of-frame: its size must be the header's, within the
    limits, with 1 or 3 components — the codec allocates what the frame header says."""
    data = _first_fragment(ds, source)
    at = 2 if data.startswith(b"\xff\xd8") else -1
    while at >= 0 and at + 4 <= len(data):
        if data[at] != 0xFF:
            at = -1
            break
        marker = data[at + 1]
        if marker == 0xFF:  # fill byte
            at += 1
            continue
        (length,) = struct.unpack_from(">H", data, at + 2)
        if marker in _SOF_MARKERS:
            if at + 10 > len(data):
                break
            height, width = struct.unpack_from(">HH", data, at + 5)
            components = data[at + 9]
            if width == 0 or height == 0:
                raise ImageReadError(source, f"JPEG frame header declares {width} x {height}")
            limits.check(source, width, height)
            if components not in (1, 3):
                raise ImageReadError(source, f"JPEG frame header declares {components} components (1 or 3 expected)")
            if (width, height) != (cols, rows):
                raise ImageReadError(source, f"JPEG frame is {width} x {height} but Rows x Columns say {cols} x {rows}")
            return
        at += 2 + length
    raise ImageReadError(source, "JPEG pixel data without a start-of-frame header")


def _check_jpeg2000_size(ds: Dataset, rows: int, cols: int, source: str, limits: DecodeLimits) -> None:
    """Read the J2K code stream's SIZ marker: its image size must be the header's, within the limits.

    The codec allocates what the code stream declares, not what Rows and Columns say.
    """
    first = _first_fragment(ds, source)
    # SOC (FF4F) then SIZ (FF51) open the code stream: at the start of the fragment, or right
    # after the 'jp2c' box header of a JP2 file (never anywhere else: a decoy could hide there)
    at = 0
    if first.startswith(b"\x00\x00\x00\x0cjP  "):
        box = first.find(b"jp2c")
        at = box + 4 if box >= 0 else -1
    if at < 0 or first[at : at + 4] != b"\xff\x4f\xff\x51" or len(first) < at + 42:
        raise ImageReadError(source, "JPEG 2000 pixel data without a code stream header (SOC, SIZ) at its start")
    # after SOC, SIZ, Lsiz, Rsiz: image size and offset, tile size and offset, then Csiz
    xsiz, ysiz, x0, y0, xt, yt, xt0, yt0 = struct.unpack_from(">IIIIIIII", first, at + 8)
    (components,) = struct.unpack_from(">H", first, at + 40)
    width, height = xsiz - x0, ysiz - y0
    if width <= 0 or height <= 0:
        raise ImageReadError(source, f"JPEG 2000 code stream declares an empty image ({width} x {height})")
    limits.check(source, width, height)
    if not 1 <= components <= _J2K_MAX_COMPONENTS:
        raise ImageReadError(source, f"JPEG 2000 code stream declares {components} components (1 or 3 expected)")
    if xt <= 0 or yt <= 0 or -(-(xsiz - xt0) // xt) * -(-(ysiz - yt0) // yt) > _J2K_MAX_TILES:
        raise ImageReadError(source, f"JPEG 2000 code stream declares an absurd tiling ({xt} x {yt} tiles)")
    if (width, height) != (cols, rows):
        raise ImageReadError(
            source, f"JPEG 2000 code stream is {width} x {height} but Rows x Columns say {cols} x {rows}"
        )


def _parse(data: bytes, source: str, limits: DecodeLimits = DecodeLimits()) -> Dataset:
    """The dataset. Truncation inside encapsulated pixel data is reported by pydicom only as a
    warning (and an emptied dataset), so it is turned into an :class:`ImageReadError` here."""
    has_preamble = len(data) >= 132 and data[128:132] == b"DICM"
    check_inflated_size(data, source, limits)
    try:
        with _quiet_pydicom() as caught:
            ds = pydicom.dcmread(io.BytesIO(data), force=not has_preamble)
    except Exception as exc:  # pydicom raises many types on corrupt input (EOFError, struct.error, ...)
        raise ImageReadError(source, f"cannot parse DICOM ({type(exc).__name__}: {exc})") from exc
    if any("end of file" in str(w.message).lower() for w in caught):
        raise ImageReadError(source, "truncated DICOM file: end of file reached inside a data element")
    return ds


def _transfer_syntax(ds: Dataset, source: str) -> UID:
    """The Transfer Syntax UID; inferred from the encoding for bare datasets without file meta."""
    meta = getattr(ds, "file_meta", None)
    ts = meta.get("TransferSyntaxUID") if meta is not None else None
    if ts:
        return UID(str(ts).strip().strip("\x00"))
    if ds["PixelData"].is_undefined_length:
        # Encapsulated (compressed) pixel data but nothing says which codec: cannot guess.
        raise UnsupportedImageError(
            source, "compressed pixel data without a Transfer Syntax UID (no file meta information)"
        )
    implicit, little = ds.original_encoding
    if implicit:
        ts = ImplicitVRLittleEndian
    else:
        ts = ExplicitVRLittleEndian if little in (True, None) else ExplicitVRBigEndian
    ds.file_meta = getattr(ds, "file_meta", None) or pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ts
    return ts


def _syntax_name(ts: UID) -> str:
    name = ts.name
    return name if name and name != str(ts) else "unknown or private transfer syntax"


def _check_decodable(ts: UID, source: str) -> None:
    """Refuse transfer syntaxes pydicom has no decoder (or no installed plugin) for."""
    from pydicom.pixels import get_decoder

    label = f"transfer syntax {ts} ({_syntax_name(ts)})"
    try:
        decoder = get_decoder(ts)
    except NotImplementedError as exc:
        raise UnsupportedImageError(source, f"{label} is not supported: no decoder exists for it") from exc
    if not decoder.is_available:
        missing = "; ".join(getattr(decoder, "missing_dependencies", []) or [])
        raise UnsupportedImageError(
            source, f"{label} is not supported here: no decoder plugin installed" + (f" ({missing})" if missing else "")
        )


def _as_floats(value: Any) -> list[float]:
    """Window Center/Width as a list (they are multi-valued DS, or a single value, or absent)."""
    if value is None or value == "":
        return []
    items = list(value) if isinstance(value, (MultiValue, list, tuple)) else [value]
    out: list[float] = []
    for item in items:
        try:
            out.append(float(item))
        except (TypeError, ValueError):
            out.append(float("nan"))
    return out


def _int_attr(ds: Dataset, keyword: str, default: int, source: str) -> int:
    value = ds.get(keyword, None)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except (TypeError, ValueError) as exc:
        raise ImageReadError(source, f"invalid {keyword} {value!r}") from exc


def _rescaled(raw: np.ndarray, ds: Dataset) -> np.ndarray | None:
    """pydicom's ``apply_modality_lut`` for a ≤ 16-bit frame without a Modality LUT Sequence, in ONE
    float32 array (exact for 16-bit integers; a 60 Mpx film costs 240 MB, not float64's 480 MB plus
    temporaries). Same rules: the rescale applies only when both RescaleSlope and RescaleIntercept
    are present. ``None`` where pydicom's float64 path is needed: a Modality LUT Sequence, wider or
    float samples, an empty value (pydicom refuses it), or a rescale float32 cannot hold."""
    if ds.get("ModalityLUTSequence") or raw.dtype.itemsize > 2 or raw.dtype.kind not in "ui":
        return None
    if not ("RescaleSlope" in ds and "RescaleIntercept" in ds):
        return raw.astype(np.float32)
    slope, intercept = ds.RescaleSlope, ds.RescaleIntercept
    if slope is None or intercept is None:
        return None
    slope, intercept = float(slope), float(intercept)
    if all(math.isfinite(v) for v in (slope, intercept)) and abs(slope) * 65536.0 + abs(intercept) > 1e37:
        return None
    values = raw.astype(np.float32)
    values *= slope  # NaN/inf rescales give NaN/inf pixels: the caller reports them
    values += intercept
    return values


def _apply_window(values: np.ndarray, center: float, width: float, function: str) -> np.ndarray:
    """A VOI window mapped to ``[0, 1]``, per PS3.3 C.11.2.1.2 with ymin=0, ymax=1, in the dtype of
    ``values`` (float32 for ≤ 16-bit films) and one working array (in-place steps)."""
    if function == "SIGMOID":
        out = values - center
        out *= -4.0 / width
        with np.errstate(over="ignore"):  # far below the window: exp overflows to inf, the pixel to 0
            np.exp(out, out=out)
        out += 1.0
        np.reciprocal(out, out=out)
        return out
    if function == "LINEAR_EXACT":
        out = values - center
        out /= width
    else:  # LINEAR: pixel value x covers [c - w/2, c + w/2 - 1], hence the 0.5 and w - 1.
        out = values - (center - 0.5)
        out /= width - 1.0
    out += 0.5
    np.clip(out, 0.0, 1.0, out=out)
    return out


def _apply_voi_lut_item(values: np.ndarray, ds: Dataset, index: int) -> np.ndarray:
    """VOI LUT Sequence item ``index`` applied, normalised against the LUT's output range."""
    from pydicom.pixels import apply_voi

    item = ds.VOILUTSequence[index]
    entries, first = int(item.LUTDescriptor[0]) or 65536, int(item.LUTDescriptor[1])
    # The LUT's own output range, obtained through pydicom so that the OW/US/SS LUT Data
    # encodings are handled in one place: push every input the LUT covers through it.
    domain = np.arange(first, first + entries, dtype=np.int64)
    lut_out = np.asarray(apply_voi(domain, ds, index=index), dtype=np.float64)
    # Clip to the LUT's domain first: pydicom offsets the input in the LUT's 8/16-bit dtype, so
    # values past 65535 would wrap around instead of saturating.
    inputs = np.clip(np.rint(values), first, first + entries - 1).astype(np.int64)
    mapped = np.asarray(apply_voi(inputs, ds, index=index), dtype=np.float64)
    return rescale_to_unit(mapped, float(lut_out.min()), float(lut_out.max())).astype(np.float64)


def _decode(ds: Dataset, ts: UID, source: str) -> np.ndarray:
    try:
        with _quiet_pydicom():
            arr = ds.pixel_array
    except Exception as exc:  # decoder plugins raise RuntimeError/ValueError/... on corrupt data
        raise ImageReadError(
            source, f"cannot decode pixel data ({_syntax_name(ts)}): {type(exc).__name__}: {exc}"
        ) from exc
    return np.asarray(arr)


def _grey_from_colour(arr: np.ndarray, bits: int, source: str, photometric: str) -> np.ndarray:
    """Luminance of a colour array whose channels agree (a grey image stored as colour)."""
    if arr.ndim != 3 or arr.shape[-1] != 3:
        raise ImageReadError(source, f"{photometric} pixel data has shape {arr.shape}, expected (rows, columns, 3)")
    rgb = arr.astype(np.float32)  # ≤ 16-bit channels: exact in float32
    full = float(2**bits - 1)
    spread = float(np.max(rgb.max(axis=-1) - rgb.min(axis=-1))) if rgb.size else 0.0
    if spread > GREY_IN_COLOUR_TOLERANCE * full:
        raise UnsupportedImageError(
            source,
            f"colour image ({photometric}, channels differ by up to {spread:g} of {full:g}) "
            "is not supported: chest radiographs are greyscale; export it as MONOCHROME2",
        )
    return rgb @ _LUMA


def read_dicom(
    data: bytes,
    source: str,
    *,
    window_index: int = 0,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    limits: DecodeLimits | None = None,
) -> DecodedImage:
    """Decode one DICOM radiograph (bytes of a Part 10 file or a bare dataset).

    Returns a :class:`DecodedImage` whose ``pixels`` are float32 ``(Rows, Columns)`` in ``[0, 1]``,
    bright = dense, and whose ``info`` says which window was used (see the module docstring for
    the pipeline and what is refused). ``window_index`` selects the VOI window (or VOI LUT when the
    file has no window); out of range is an :class:`UnsupportedImageError`. ``limits`` (default:
    ``DecodeLimits(max_pixels)``) bounds the film's size and shape before anything is decoded.
    """
    limits = limits or DecodeLimits(max_pixels=max_pixels)
    ds = _parse(data, source, limits)

    if "PixelData" not in ds:
        if "FloatPixelData" in ds or "DoubleFloatPixelData" in ds:
            raise UnsupportedImageError(source, "float pixel data (parametric map) is not a radiograph")
        # pydicom stops silently at end of file, so a file cut short looks like a dataset
        # without pixel data: tell "truncated image" from "valid object that is no image".
        sop = ds.get("SOPClassUID", None)
        sop_name = UID(str(sop)).name if sop else ""
        if "Rows" in ds or "Columns" in ds or "Image Storage" in sop_name:
            raise ImageReadError(source, "image attributes but no pixel data: the file is truncated or corrupt")
        if not sop:
            raise ImageReadError(
                source, "no pixel data and no SOP Class UID: the file is truncated or not a DICOM object"
            )
        raise UnsupportedImageError(source, f"not an image: the DICOM object has no pixel data ({sop_name})")

    ts = _transfer_syntax(ds, source)
    ts_name = _syntax_name(ts)

    frames = _int_attr(ds, "NumberOfFrames", 1, source)
    if frames > 1:
        raise UnsupportedImageError(
            source, f"multi-frame image ({frames} frames) is not supported: expected a single radiograph"
        )
    rows = _int_attr(ds, "Rows", 0, source)
    cols = _int_attr(ds, "Columns", 0, source)
    if rows <= 0 or cols <= 0:
        raise ImageReadError(source, f"invalid image size Rows={rows} Columns={cols}")
    # Before any decoding: a forged header must not make us allocate gigabytes.
    limits.check(source, cols, rows)

    photometric = str(ds.get("PhotometricInterpretation", "") or "").strip().upper()
    samples = _int_attr(ds, "SamplesPerPixel", 1, source)
    bits_allocated = _int_attr(ds, "BitsAllocated", 0, source)
    bits_stored = _int_attr(ds, "BitsStored", bits_allocated, source)
    signed = _int_attr(ds, "PixelRepresentation", 0, source)
    if photometric == "PALETTE COLOR":
        raise UnsupportedImageError(source, "PALETTE COLOR image is not supported: chest radiographs are greyscale")
    if photometric in GREY_PHOTOMETRICS:
        if samples != 1:
            raise ImageReadError(source, f"{photometric} with SamplesPerPixel={samples}, expected 1")
    elif photometric in RGB_PHOTOMETRICS:
        if samples != 3:
            raise ImageReadError(source, f"{photometric} with SamplesPerPixel={samples}, expected 3")
    else:
        raise UnsupportedImageError(
            source,
            f"photometric interpretation {photometric or '(missing)'!r} "
            "is not supported (expected MONOCHROME1 or MONOCHROME2)",
        )
    if bits_allocated not in (8, 16, 32):
        raise UnsupportedImageError(source, f"BitsAllocated={bits_allocated} is not supported (8, 16 or 32 expected)")
    if not 1 <= bits_stored <= bits_allocated:
        raise ImageReadError(source, f"BitsStored={bits_stored} with BitsAllocated={bits_allocated}")

    _check_decodable(ts, source)
    if ts in JPEG2000TransferSyntaxes:
        _check_jpeg2000_size(ds, rows, cols, source, limits)
    elif ts in JPEGTransferSyntaxes or ts in JPEGLSTransferSyntaxes:
        _check_jpeg_frame_size(ds, rows, cols, source, limits)
    raw = _decode(ds, ts, source)
    notes: list[str] = []

    if photometric in RGB_PHOTOMETRICS:
        grey = _grey_from_colour(raw, bits_stored, source, photometric)
        full = float(2**bits_stored - 1)
        pixels = rescale_to_unit(grey, 0.0, full)
        window: tuple[float, float] | None = (full / 2.0, full)
        window_source = "bit depth"
        notes.append(f"{photometric} image with grey content converted to luminance")
    else:
        if raw.shape != (rows, cols):
            raise ImageReadError(source, f"decoded pixel data has shape {raw.shape}, expected ({rows}, {cols})")
        pixels, window, window_source = _grey_pipeline(ds, raw, source, window_index, notes)
        if photometric == "MONOCHROME1":
            pixels = (1.0 - pixels).astype(np.float32)
            notes.append("MONOCHROME1 inverted against the window (bright = dense)")

    info = ImageInfo(
        source=source,
        format="dicom",
        width=cols,
        height=rows,
        photometric=photometric,
        bits_stored=bits_stored,
        bits_allocated=bits_allocated,
        pixel_representation=signed,
        transfer_syntax=str(ts),
        transfer_syntax_name=ts_name,
        window=window,
        window_source=window_source,
        frames=frames,
        patient_hash=hash_identifier(ds.get("PatientID", None)),
        study_hash=hash_identifier(ds.get("StudyInstanceUID", None)),
        view=str(ds.get("ViewPosition", "") or "").strip().upper(),
        notes=notes,
    )
    return DecodedImage(pixels=np.ascontiguousarray(pixels, dtype=np.float32), info=info)


def _grey_pipeline(
    ds: Dataset, raw: np.ndarray, source: str, window_index: int, notes: list[str]
) -> tuple[np.ndarray, tuple[float, float] | None, str]:
    """Modality LUT then VOI for a greyscale frame → (``[0,1]`` float32, window, window_source)."""
    from pydicom.pixels import apply_modality_lut

    try:
        with np.errstate(all="ignore"), _quiet_pydicom():  # NaN/inf rescales are reported below
            values = _rescaled(raw, ds)
            if values is None:  # a Modality LUT Sequence (rare): pydicom's, in float64
                values = np.asarray(apply_modality_lut(raw, ds), dtype=np.float64)
    except Exception as exc:  # malformed Modality LUT Sequence / rescale values
        raise ImageReadError(source, f"invalid modality LUT or rescale ({type(exc).__name__}: {exc})") from exc
    if not np.isfinite(values).all():
        slope, intercept = ds.get("RescaleSlope", None), ds.get("RescaleIntercept", None)
        raise PixelValueError(
            source,
            f"the modality rescale (RescaleSlope {slope}, RescaleIntercept {intercept}) "
            "gives NaN or infinite pixel values",
        )

    centers = _as_floats(ds.get("WindowCenter", None))
    widths = _as_floats(ds.get("WindowWidth", None))
    n_windows = min(len(centers), len(widths))
    n_luts = len(ds.get("VOILUTSequence", None) or [])
    if window_index < 0:
        raise UnsupportedImageError(source, f"window_index {window_index} is negative", reason="bad_window_index")

    if n_windows:
        if window_index >= n_windows:
            raise UnsupportedImageError(
                source,
                f"window_index {window_index} is out of range: the file has {n_windows} VOI window(s)",
                reason="bad_window_index",
            )
        center, width = centers[window_index], widths[window_index]
        function = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").strip().upper()
        if function not in ("LINEAR", "LINEAR_EXACT", "SIGMOID"):
            notes.append(f"unknown VOI LUT Function {function!r} treated as LINEAR")
            function = "LINEAR"
        minimum = 0.0 if function != "LINEAR" else 1.0
        if np.isfinite(center) and np.isfinite(width) and width > minimum:
            if function != "LINEAR":
                notes.append(f"VOI LUT Function {function}")
            label = f"VOI window {window_index + 1} of {n_windows}"
            return (_apply_window(values, center, width, function).astype(np.float32), (center, width), label)
        notes.append(
            f"VOI window {window_index + 1} (center {center:g}, width {width:g}) is invalid; used the pixel range"
        )
    elif n_luts:
        if window_index >= n_luts:
            raise UnsupportedImageError(
                source,
                f"window_index {window_index} is out of range: the file has no VOI window and {n_luts} VOI LUT(s)",
                reason="bad_window_index",
            )
        try:
            mapped = _apply_voi_lut_item(values, ds, window_index)
        except Exception as exc:  # malformed LUT Descriptor / LUT Data
            raise ImageReadError(source, f"invalid VOI LUT ({type(exc).__name__}: {exc})") from exc
        return mapped.astype(np.float32), None, f"VOI LUT {window_index + 1} of {n_luts}"
    elif window_index > 0:
        raise UnsupportedImageError(
            source,
            f"window_index {window_index} requested but the file has no VOI window or VOI LUT",
            reason="bad_window_index",
        )

    # No usable VOI: stretch the modality values' own range, leaving out padding pixels (the
    # area outside the collimated field), which would otherwise squash the anatomy's contrast.
    considered = values
    padding = ds.get("PixelPaddingValue", None)
    if padding is not None:
        try:
            keep = raw != int(padding)
            if keep.any():
                considered = values[keep]
        except (TypeError, ValueError):
            pass
    lo, hi = (float(considered.min()), float(considered.max())) if considered.size else (0.0, 0.0)
    if hi <= lo:
        notes.append("constant image")
    return rescale_to_unit(values, lo, hi), ((lo + hi) / 2.0, hi - lo), "pixel range"
