"""The PNGs the query service answers with: a preview of an upload, a result crop, a result film
with its region's box drawn."""

from __future__ import annotations

import io

import numpy as np

from regionmir.intensity import to_uint8

#: Longest side of the preview and result-image PNGs (the page scales them; boxes stay in film pixels).
DISPLAY_MAX_SIDE = 1024


def png_bytes(image: np.ndarray, max_side: int | None = None) -> tuple[bytes, float]:
    """An 8-bit PNG of a [0, 1] grey image (or uint8 RGB), downscaled to ``max_side``; and the scale."""
    from PIL import Image

    pil = Image.fromarray(to_uint8(image) if image.dtype != np.uint8 else image)
    scale = 1.0
    if max_side and max(pil.size) > max_side:
        scale = max_side / max(pil.size)
        pil = pil.resize(
            (max(1, round(pil.size[0] * scale)), max(1, round(pil.size[1] * scale))), Image.Resampling.BILINEAR
        )
    buffer = io.BytesIO()
    pil.save(buffer, format="PNG", compress_level=3)
    return buffer.getvalue(), scale


def film_with_box(pixels: np.ndarray, box: tuple[float, ...], max_side: int) -> bytes:
    """The film as an RGB PNG (≤ ``max_side``) with ``box`` drawn in orange."""
    from PIL import Image, ImageDraw

    grey = Image.fromarray(to_uint8(pixels))
    scale = min(1.0, max_side / max(grey.size))
    if scale < 1.0:
        grey = grey.resize(
            (max(1, round(grey.size[0] * scale)), max(1, round(grey.size[1] * scale))), Image.Resampling.BILINEAR
        )
    rgb = grey.convert("RGB")
    x1, y1, x2, y2 = (v * scale for v in box)
    width = max(2, round(max(rgb.size) / 250))
    ImageDraw.Draw(rgb).rectangle([x1, y1, x2, y2], outline=(255, 140, 0), width=width)
    buffer = io.BytesIO()
    rgb.save(buffer, format="PNG", compress_level=3)
    return buffer.getvalue()
