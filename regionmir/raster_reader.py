"""PNG and JPEG radiographs into the library's intensity convention (float32 ``(H, W)``, ``[0,1]``, bright = dense).

PNG/JPEG chest films (NIH ChestX-ray14, MIMIC-CXR-JPG, CheXpert, exports from viewers) are already
*displayed* images: windowed, MONOCHROME2, bright = dense. So the only mapping is by bit depth:

============================  ===========================================  ====================
PIL mode                      what it is                                   to ``[0, 1]``
============================  ===========================================  ====================
``L`` (and ``LA``, ``1``)      8-bit grey (alpha dropped; 1-bit as 0/255)   ``/ 255``
``I;16``, ``I;16B``, ``I``     16-bit grey PNG                              ``/ 65535``
``RGB``, ``RGBA``, ``CMYK``,   colour: converted to luminance               ``/ 255``
``YCbCr``, ``P``, ``PA``       (ITU-R BT.601 0.299 R + 0.587 G + 0.114 B,
                               alpha ignored, palette expanded first)
============================  ===========================================  ====================

No inversion is ever applied (a PNG has no photometric tag to say otherwise), EXIF orientation is
not applied (dataset boxes are given on the stored raster), 16-bit colour PNGs arrive as 8-bit
(Pillow's limit) and 12-bit JPEGs are not readable by Pillow. Animated PNGs are refused; of a
multi-picture JPEG only the primary image is read.

Decompression bombs: the size in the header is checked against ``max_pixels`` before any pixel is
decoded (→ :class:`~regionmir.errors.ImageTooLargeError`); Pillow's own hard limit
(``Image.MAX_IMAGE_PIXELS`` x 2, raised at open) is mapped to the same error. Truncated or corrupt
files → :class:`~regionmir.errors.ImageReadError`.
"""

from __future__ import annotations

import io
import warnings
import zlib

import numpy as np
from PIL import Image

from .decoded_image import DEFAULT_MAX_PIXELS, DecodedImage, DecodeLimits, ImageInfo
from .errors import ImageReadError, ImageTooLargeError, UnsupportedImageError
from .intensity import rescale_to_unit

_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float64)
_GREY_8 = ("L", "LA", "La", "1")
_GREY_16 = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_COLOUR = ("RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "P", "PA", "LAB", "HSV")
# Errors Pillow and zlib raise on broken files.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, zlib.error, IndexError)


def _luminance(image: Image.Image, rows_per_block: int = 256) -> np.ndarray:
    """0.299 R + 0.587 G + 0.114 B of a colour image as float32, a band of rows at a time: besides
    Pillow's own decoded copy, only the result and one small band are ever in memory."""
    width, height = image.size
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    out = np.empty((height, width), dtype=np.float32)
    weights = _LUMA.astype(np.float32)
    for top in range(0, height, rows_per_block):
        band = np.asarray(rgb.crop((0, top, width, min(height, top + rows_per_block))), dtype=np.float32)
        out[top : top + rows_per_block] = band @ weights
    return out


def _open(data: bytes, source: str) -> Image.Image:
    try:
        with warnings.catch_warnings():
            # We enforce our own limit below; Pillow's warning band (89-179 Mpx) would only be noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(io.BytesIO(data), formats=["PNG", "JPEG"])
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(source, f"decompression bomb refused by Pillow: {exc}") from exc
    except Image.UnidentifiedImageError as exc:
        raise ImageReadError(source, "not a readable PNG or JPEG image") from exc
    except _DECODE_ERRORS as exc:
        raise ImageReadError(source, f"cannot read PNG/JPEG header ({type(exc).__name__}: {exc})") from exc


def read_raster(
    data: bytes, source: str, *, max_pixels: int = DEFAULT_MAX_PIXELS, limits: DecodeLimits | None = None
) -> DecodedImage:
    """Decode a PNG or JPEG (bytes) into a :class:`DecodedImage` (see the module docstring)."""
    image = _open(data, source)
    fmt = "png" if image.format == "PNG" else "jpeg"
    width, height = image.size
    if width <= 0 or height <= 0:
        raise ImageReadError(source, f"invalid image size {width} x {height}")
    # Header only so far: nothing has been decompressed yet.
    (limits or DecodeLimits(max_pixels=max_pixels)).check(source, width, height)
    frames = int(getattr(image, "n_frames", 1) or 1)
    if fmt == "png" and frames > 1:
        raise UnsupportedImageError(source, f"animated PNG ({frames} frames) is not supported")

    mode = image.mode
    notes: list[str] = []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image.load()
            # Decoded at the file's own depth (uint8 / uint16) and mapped to float32 once: a
            # 60 Mpx film costs its bytes plus one float32 copy, never a float64 one.
            if mode in _GREY_8:
                grey = np.asarray(image.convert("L") if mode != "L" else image)
                bits, photometric, full = 8, "MONOCHROME2", 255.0
                if mode != "L":
                    notes.append(f"PIL mode {mode} read as 8-bit grey")
            elif mode in _GREY_16:
                grey = np.asarray(image)
                bits, photometric, full = 16, "MONOCHROME2", 65535.0
                if mode == "I" and grey.size and (grey.min() < 0 or grey.max() > 65535):
                    raise UnsupportedImageError(source, "32-bit integer PNG values outside 0..65535")
            elif mode in _COLOUR:
                grey = _luminance(image)
                bits, full = 8, 255.0
                photometric = "PALETTE COLOR" if mode in ("P", "PA") else "RGB"
                notes.append(f"PIL mode {mode} converted to grey (luminance 0.299 R + 0.587 G + 0.114 B)")
            else:
                raise UnsupportedImageError(source, f"PIL image mode {mode!r} is not supported")
    except (ImageReadError, UnsupportedImageError):
        raise
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(source, f"decompression bomb refused by Pillow: {exc}") from exc
    except _DECODE_ERRORS as exc:
        raise ImageReadError(source, f"truncated or corrupt {fmt.upper()} ({type(exc).__name__}: {exc})") from exc
    finally:
        image.close()

    if grey.shape != (height, width):
        raise ImageReadError(source, f"decoded shape {grey.shape}, expected ({height}, {width})")
    if grey.dtype == np.float32:  # the luminance array is ours: scale it in place, no second copy
        pixels = np.clip(np.divide(grey, full, out=grey), 0.0, 1.0, out=grey)
    else:
        pixels = rescale_to_unit(grey, 0.0, full)
    del grey
    info = ImageInfo(
        source=source,
        format=fmt,
        width=width,
        height=height,
        photometric=photometric,
        bits_stored=bits,
        bits_allocated=bits,
        pixel_representation=0,
        window=(full / 2.0, full),
        window_source="bit depth",
        frames=1,
        notes=notes,
    )
    return DecodedImage(pixels=pixels, info=info)
