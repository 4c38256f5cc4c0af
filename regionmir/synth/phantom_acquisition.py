"""What the detector and the processing station do to a film (generator 2).

After the beam has crossed the patient (``phantom_film``), a real CR or DR system adds detector
noise, sometimes the shadow of an anti-scatter grid, then processes the image: a display LUT
(sigmoid contrast about a centre) and multi-frequency enhancement (unsharp masking with a small
kernel for edges and a large one that equalises the lungs against the mediastinum). The film then
gets its collimation edges (unexposed, so white), a lead laterality marker and burnt-in
annotations. CR plates are softer and noisier than DR panels; both are drawn here.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from ..contact_sheet import font as _font
from .phantom_canvas import gaussian_blur
from .phantom_params import PhantomParams


def detect_and_process(image: np.ndarray, params: PhantomParams, rng: np.random.Generator) -> np.ndarray:
    """Detector noise, grid lines, display LUT and multi-frequency enhancement of a ``[0, 1]`` film."""
    size = image.shape[0]
    s_ = size / 512.0
    if params.detector_noise > 0:
        rows = rng.standard_normal((size, 1)).astype(np.float32)  # row-correlated readout
        pixel = rng.standard_normal((size, size)).astype(np.float32)
        image = image + params.detector_noise * (0.6 * pixel + 0.4 * rows)
    if params.grid_lines > 0:
        u = np.arange(size, dtype=np.float32)[None, :]
        image = image + params.grid_lines * np.sin(2 * np.pi * u / (params.grid_period_px512 * s_))
    # display LUT: a sigmoid about lut_centre, rescaled so 0 and 1 stay the ends of the range
    slope = 3.0 / max(0.2, params.lut_width)

    def lut(v):
        return 1.0 / (1.0 + np.exp(-slope * (v - params.lut_centre)))

    low, high = lut(0.0), lut(1.0)
    image = (lut(image) - low) / (high - low)
    # multi-frequency processing: compress the large-scale range (lungs vs mediastinum vs
    # abdomen) and lift the fine detail (vessel and rib edges)
    sharp = 0.8 if params.processing == "DR" else 1.6
    large = gaussian_blur(image, 28 * s_)
    image = (
        image
        - params.enhance_coarse * (large - float(large.mean()))
        + params.enhance_fine * (image - gaussian_blur(image, sharp * s_))
    )
    if params.processing == "CR":
        image = gaussian_blur(image, 0.6 * s_)
    if params.display_range is not None:  # auto-ranging: the film's own range onto the display's
        low, high = np.percentile(image, [1.0, 99.5])
        out_low, out_high = params.display_range
        image = out_low + (image - low) * (out_high - out_low) / max(float(high - low), 1e-3)
    return np.clip(image, 0.0, 1.0).astype(np.float32)


def collimate(image: np.ndarray, params: PhantomParams) -> np.ndarray:
    """Unexposed (white) bands outside the collimated field, with a soft penumbra."""
    left, top, right, bottom = params.collimation
    if not any(params.collimation):
        return image
    size = image.shape[0]
    centres = (np.arange(size, dtype=np.float32) + 0.5) / size
    pen = 1.5 / size
    inside_x = np.clip((centres - left) / pen, 0, 1) * np.clip((1 - right - centres) / pen, 0, 1)
    inside_y = np.clip((centres - top) / pen, 0, 1) * np.clip((1 - bottom - centres) / pen, 0, 1)
    inside = inside_y[:, None] * inside_x[None, :]
    return (image * inside + 0.96 * (1 - inside)).astype(np.float32)


def laterality_marker(image: np.ndarray, params: PhantomParams) -> np.ndarray:
    """A lead "L" or "R" (``params.marker_side``) in the upper outer corner of that side of the
    patient (the image's right for the patient's left on a PA/AP film, before any flip):
    ``params.marker_top`` below the field's top edge and ``params.marker_inset`` in from its side."""
    if params.marker_side not in ("left", "right"):
        raise ValueError(f'PhantomParams.marker_side must be "left" or "right", got {params.marker_side!r}')
    size = image.shape[0]
    layer = Image.new("F", (size, size), 0.0)
    draw = ImageDraw.Draw(layer)
    side = max(8, int(0.045 * size))
    if params.marker_side == "right":
        x0 = int((params.collimation[0] + params.marker_inset) * size) - side
    else:
        x0 = int((1.0 - params.collimation[2] - params.marker_inset) * size)
    y0 = int((params.collimation[1] + params.marker_top) * size)
    letter = "R" if params.marker_side == "right" else "L"
    draw.rectangle([x0, y0, x0 + side, y0 + side], outline=0.8, width=max(1, side // 10))
    draw.text((x0 + side * 0.25, y0 + side * 0.08), letter, fill=1.0, font=_font(max(6, int(side * 0.8))))
    mark = np.asarray(layer, dtype=np.float32)
    return np.maximum(image, mark)


def annotate(image: np.ndarray, params: PhantomParams) -> np.ndarray:
    """Burnt-in annotations in the film's corners (after any flip, so they read left to right)."""
    if not params.text:
        return image
    size = image.shape[0]
    picture = Image.fromarray(np.asarray(image, dtype=np.float32), mode="F")
    draw = ImageDraw.Draw(picture)
    font = _font(max(6, int(0.03 * size)))
    corners = [(0.03, 0.03), (0.03, 0.92), (0.68, 0.92)]
    for text, (cx, cy) in zip(params.text, corners):
        x = (params.collimation[0] + cx) * size
        y = (cy + (params.collimation[1] if cy < 0.5 else -params.collimation[3])) * size
        draw.text((x, y), text, fill=0.95, font=font)
    return np.asarray(picture, dtype=np.float32)
