"""The one intensity convention for every image the library returns.

**Convention** (``INTENSITY_CONVENTION``): a 2-D ``numpy.float32`` array of shape ``(H, W)``, one
channel, values in ``[0.0, 1.0]``, **bright = dense**: 0.0 is the least attenuating (air outside
the body, lungs), 1.0 the most (bone, metal). This is how a radiologist views a film (MONOCHROME2
display after the VOI window). Readers for DICOM, PNG and JPEG all return this, models are trained
on it, and every checkpoint records it so that a model is never fed another convention.
"""

from __future__ import annotations

import numpy as np

INTENSITY_CONVENTION = "float32 HxW, [0,1], bright=dense (MONOCHROME2 display after VOI window)"


def rescale_to_unit(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Map ``[lo, hi]`` linearly to ``[0, 1]`` and clip; returns float32."""
    values = np.asarray(values)
    span = float(hi) - float(lo)
    if not np.isfinite(span) or span <= 0:
        return np.zeros(values.shape, dtype=np.float32)
    # Up to 16-bit integers and float32 are exact enough in float32 (24-bit mantissa); wider
    # inputs (float64 modality values, 32-bit integers) are computed in float64.
    exact_in_float32 = values.dtype in (np.uint8, np.int8, np.uint16, np.int16, np.float32)
    out = values.astype(np.float32 if exact_in_float32 else np.float64)  # the one working copy
    out -= out.dtype.type(lo)
    out /= out.dtype.type(span)
    np.clip(out, 0.0, 1.0, out=out)
    return out.astype(np.float32, copy=False)


def to_uint8(image: np.ndarray) -> np.ndarray:
    """A convention image as 8-bit (0..255), rounding to nearest."""
    return np.round(np.clip(np.asarray(image, dtype=np.float32), 0.0, 1.0) * 255.0).astype(np.uint8)


def to_uint16(image: np.ndarray) -> np.ndarray:
    """A convention image as 16-bit (0..65535)."""
    return np.round(np.clip(np.asarray(image, dtype=np.float64), 0.0, 1.0) * 65535.0).astype(np.uint16)


def check_convention(image: np.ndarray, source: str = "image") -> np.ndarray:
    """Raise ``ValueError`` naming ``source`` unless ``image`` follows the convention."""
    if not isinstance(image, np.ndarray) or image.ndim != 2 or image.dtype != np.float32:
        raise ValueError(
            f"{source}: expected float32 HxW, got {getattr(image, 'dtype', type(image))} {getattr(image, 'shape', '')}"
        )
    if image.size and (float(image.min()) < 0.0 or float(image.max()) > 1.0):
        raise ValueError(f"{source}: values outside [0, 1]")
    return image
