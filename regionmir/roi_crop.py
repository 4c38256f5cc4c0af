"""The ROI crop: one anatomical box of a radiograph → a square, fixed-size, single-channel patch.

This module owns the geometry every model input goes through, in training and at query time, so
that a region is seen the same way everywhere:

1. :func:`square_crop_box` grows the box by a margin of context and makes it square around its
   centre (regions are elongated — a hemidiaphragm is wide, the spine tall — and squashing them
   into a square would change their shape between anatomies).
2. :func:`roi_crop` cuts that square out of the film, **padding** with ``pad_value`` where it
   leaves the image rather than shifting it back inside: where a region sits relative to the film
   edge and its neighbours is part of what it looks like (an apical zone touches the top of the
   film), and a shifted crop would put a different region in the centre.
3. The cut-out is resized to ``size × size`` with ``torch.nn.functional.interpolate(mode="bilinear",
   antialias=True, align_corners=False)``: a triangle (tent) filter whose support widens with the
   downscale factor, the same filter as PIL's ``BILINEAR`` resize. A whole-lung box on a 3000 px
   film shrinks ~10× to 96 px, and plain bilinear sampling at that factor aliases rib edges and
   noise into moiré.

Only the crop is resized, never the whole film, so the 36 crops of a 1024² film take about a
tenth of a second on one CPU core.

Images follow :data:`regionmir.intensity.INTENSITY_CONVENTION` (float32 HxW in [0, 1]); boxes
are :class:`regionmir.boxes.Box` in the image's pixel coordinates.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .boxes import INVERTED, OUTSIDE, ZERO_AREA, Box
from .errors import BoxError


@dataclass(frozen=True)
class CropConfig:
    """How a region becomes a model input.

    ``size``: side of the output patch in pixels. ``margin``: context added on each side, as a
    fraction of the box's longer side (see :func:`square_crop_box`). ``pad_value``: intensity of
    pixels that fall outside the film (0.0 = air/black in the intensity convention).
    """

    size: int = 96
    margin: float = 0.15
    pad_value: float = 0.0

    def __post_init__(self) -> None:
        if not isinstance(self.size, int) or isinstance(self.size, bool) or self.size < 1:
            raise ValueError(f"CropConfig.size must be a positive int, got {self.size!r}")
        if not math.isfinite(self.margin) or self.margin < 0:
            raise ValueError(f"CropConfig.margin must be >= 0, got {self.margin!r}")
        if not math.isfinite(self.pad_value):
            raise ValueError(f"CropConfig.pad_value must be finite, got {self.pad_value!r}")


def square_crop_box(box: Box, margin: float) -> Box:
    """The square crop window for ``box``.

    With ``w = box.width``, ``h = box.height``, ``(cx, cy) = box.center``::

        side = max(w, h) * (1 + 2 * margin)
        window = (cx - side/2, cy - side/2, cx + side/2, cy + side/2)

    i.e. ``margin * max(w, h)`` of context on each side of the longer axis, and the shorter axis
    widened to the same side, both centred on the box. ``margin=0`` on a square box returns it
    unchanged. The window may extend past the image; :func:`roi_crop` pads there.
    """
    if not math.isfinite(margin) or margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin!r}")
    _require_positive_area(box)
    side = max(box.width, box.height) * (1.0 + 2.0 * margin)
    cx, cy = box.center
    half = side / 2.0
    return Box(cx - half, cy - half, cx + half, cy + half)


def roi_crop(image: np.ndarray, box: Box, config: CropConfig = CropConfig()) -> np.ndarray:
    """Crop ``box`` (with ``config.margin`` of context, squared) out of ``image``.

    Args:
        image: ``(H, W)`` float array in the intensity convention.
        box: the region in ``image`` pixel coordinates; it must overlap the image.
        config: output size, margin and padding value.

    Returns:
        ``(config.size, config.size)`` float32. The square window is snapped to whole pixels
        (corner and side rounded to the nearest pixel, half up — at most half a source pixel of
        shift, far below one output pixel when downscaling); where it leaves the image the patch
        holds ``config.pad_value``. When the snapped window is already ``config.size`` pixels wide
        the pixels are copied exactly, with no resampling.

    Raises:
        BoxError: the box is not finite, inverted, has no area, or does not overlap the image.
    """
    image = _as_image(image)
    window = square_crop_box(box, config.margin)
    return _crop_window(image, box, window, config.pad_value, config.size)


def roi_crops(image: np.ndarray, boxes: Sequence[Box], config: CropConfig = CropConfig()) -> np.ndarray:
    """:func:`roi_crop` for every box of one image → ``(N, size, size)`` float32.

    ``N = len(boxes)``; zero boxes give an empty ``(0, size, size)`` array. The first bad box
    raises :class:`BoxError`.
    """
    image = _as_image(image)
    out = np.empty((len(boxes), config.size, config.size), dtype=np.float32)
    for i, box in enumerate(boxes):
        window = square_crop_box(box, config.margin)
        out[i] = _crop_window(image, box, window, config.pad_value, config.size)
    return out


def box_overlaps_image(box: Box, width: float, height: float) -> bool:
    """True when ``box`` shares a positive area with a ``width`` × ``height`` image."""
    return (min(box.x2, width) - max(box.x1, 0.0)) > 0 and (min(box.y2, height) - max(box.y1, 0.0)) > 0


# --- internals -------------------------------------------------------------------------------


def _as_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 2:
        raise ValueError(f"roi_crop expects a 2-D (H, W) image, got shape {image.shape}")
    # No copy when the caller already follows the convention (the common case).
    return image if image.dtype == np.float32 else image.astype(np.float32)


def _require_positive_area(box: Box) -> None:
    values = box.as_list()
    if not all(math.isfinite(v) for v in values):
        raise BoxError("box", f"coordinates must be finite, got {values}", reason="box_not_finite")
    if box.x2 < box.x1 or box.y2 < box.y1:
        raise BoxError("box", f"inverted box {values}: need x1 < x2 and y1 < y2", reason=INVERTED)
    if box.width <= 0 or box.height <= 0:
        raise BoxError("box", f"zero-area box {values}", reason=ZERO_AREA)


def _round_half_up(value: float) -> int:
    # Python's round() rounds half to even, which would make the snap depend on parity.
    return int(math.floor(value + 0.5))


def _crop_window(image: np.ndarray, box: Box, window: Box, pad_value: float, size: int) -> np.ndarray:
    """The pixels of ``window`` snapped to the pixel grid, padded outside the image, resized → (size, size).

    A window inside the film is a view, resized in one antialiased pass. A window that leaves the
    film is never materialised whole (a whole-film box on a long film makes a window far larger than
    the film): the resize is separable, so the overlapping rows are padded sideways and resized
    across, then stacked with the resized pad line and resized down — what one pass over the padded
    window gives, bit for bit when the overlap is no taller than wide (the pass order torch uses),
    to float rounding otherwise, where the overlapping columns go first instead.
    """
    height, width = image.shape
    if not box_overlaps_image(box, width, height):
        raise BoxError("box", f"box {box.as_list()} does not overlap the {width}x{height} image", reason=OUTSIDE)
    side = max(1, _round_half_up(window.width))
    x0 = _round_half_up(window.x1)
    y0 = _round_half_up(window.y1)
    x1, y1 = x0 + side, y0 + side
    if x0 >= 0 and y0 >= 0 and x1 <= width and y1 <= height:
        return _resize(image[y0:y1, x0:x1], size, size)  # a view: no copy when the window is inside the film
    ix0, iy0 = max(x0, 0), max(y0, 0)
    ix1, iy1 = min(x1, width), min(y1, height)
    if ix1 <= ix0 or iy1 <= iy0:  # only a sliver of the box overlaps and rounding lost it
        raise BoxError("box", f"box {box.as_list()} does not overlap the {width}x{height} image", reason=OUTSIDE)
    overlap = image[iy0:iy1, ix0:ix1]
    if iy1 - iy0 <= ix1 - ix0:
        return _pad_and_resize(overlap, (iy0 - y0, ix0 - x0), side, pad_value, size)
    return _pad_and_resize(overlap.T, (ix0 - x0, iy0 - y0), side, pad_value, size).T.copy()


def _pad_and_resize(overlap: np.ndarray, offset: tuple[int, int], side: int, pad_value: float, size: int) -> np.ndarray:
    """Resize a ``side``² window holding ``overlap`` at ``offset`` (row, col), pad elsewhere: rows first."""
    rows, cols = overlap.shape
    row_at, col_at = offset
    strip = np.full((rows, side), pad_value, dtype=np.float32)
    strip[:, col_at : col_at + cols] = overlap
    pad_line = _resize(np.full((1, side), pad_value, dtype=np.float32), 1, size)
    across = np.empty((side, size), dtype=np.float32)
    across[:] = pad_line
    across[row_at : row_at + rows] = _resize(strip, rows, size)
    return _resize(across, size, size)


def _resize(array: np.ndarray, height: int, width: int) -> np.ndarray:
    """Antialiased bilinear resize of a 2-D float32 array → ``(height, width)`` float32 (a copy)."""
    if array.shape == (height, width):
        return np.array(array, dtype=np.float32, copy=True)
    tensor = torch.from_numpy(np.ascontiguousarray(array))[None, None]
    with torch.no_grad():
        resized = F.interpolate(tensor, size=(height, width), mode="bilinear", align_corners=False, antialias=True)
    return resized[0, 0].numpy().astype(np.float32, copy=False)
