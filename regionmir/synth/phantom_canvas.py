"""Drawing tools of the phantom renderer: FFT Gaussian blur, smooth noise fields and a canvas
that draws patient-frame lines and ellipses onto a float layer in image pixels.

Shared by the film renderer (:mod:`.phantom_film`) and the device drawer (:mod:`.phantom_devices`).
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw


def _fast_length(n: int) -> int:
    """The smallest 5-smooth number ≥ n (FFT sizes that pocketfft handles fastest)."""
    while True:
        m = n
        for p in (2, 3, 5):
            while m % p == 0:
                m //= p
        if m == 1:
            return n
        n += 1


def gaussian_blur(image: np.ndarray, sigma_px: float) -> np.ndarray:
    """Gaussian blur (reflect padding), sigma in pixels, float32 out. FFT-based: the cost does not
    grow with sigma, which matters for the wide blurs of texture fields."""
    image = np.asarray(image, dtype=np.float32)
    if sigma_px <= 0.05:
        return image
    radius = int(math.ceil(3.0 * sigma_px))
    mode = "reflect" if radius < min(image.shape) else "edge"
    padded = np.pad(image, radius, mode=mode)
    extra_h = _fast_length(padded.shape[0]) - padded.shape[0]
    extra_w = _fast_length(padded.shape[1]) - padded.shape[1]
    padded = np.pad(padded, ((0, extra_h), (0, extra_w)), mode="edge")
    fy = np.fft.fftfreq(padded.shape[0])[:, None]
    fx = np.fft.rfftfreq(padded.shape[1])[None, :]
    transfer = np.exp(-2.0 * (math.pi * sigma_px) ** 2 * (fx * fx + fy * fy))
    blurred = np.fft.irfft2(np.fft.rfft2(padded) * transfer, s=padded.shape)
    return blurred[radius : radius + image.shape[0], radius : radius + image.shape[1]].astype(np.float32)


def smooth_noise(rng: np.random.Generator, size: int, scale_px: float) -> np.ndarray:
    """Zero-mean, unit-std low-frequency noise with features of about ``scale_px`` pixels."""
    white = rng.standard_normal((size, size))
    fy = np.fft.fftfreq(size)[:, None]
    fx = np.fft.rfftfreq(size)[None, :]
    field = np.fft.irfft2(
        np.fft.rfft2(white) * np.exp(-2.0 * (math.pi * scale_px) ** 2 * (fx * fx + fy * fy)), s=(size, size)
    )
    std = float(field.std()) or 1.0
    return ((field - float(field.mean())) / std).astype(np.float32)


class Canvas:
    """Draws patient-frame polylines onto a float layer in image pixels (rotation applied).

    ``scale`` is how many image units one patient unit spans (the field of view's zoom), so widths
    and radii given in patient units keep their size on a zoomed film."""

    def __init__(self, size: int, to_image, scale: float = 1.0):
        self.size = size
        self.to_image = to_image
        self.scale = scale
        self.layer = Image.new("F", (size, size), 0.0)
        self.draw = ImageDraw.Draw(self.layer)

    def line(self, xs: np.ndarray, ys: np.ndarray, width: float, value: float = 1.0) -> None:
        u, v = self.to_image(np.asarray(xs), np.asarray(ys))
        px = list(zip((u * self.size).tolist(), (v * self.size).tolist()))
        w_px = width * self.scale * self.size
        # sub-pixel lines keep their optical weight by getting fainter instead of thicker
        self.draw.line(px, fill=float(value * min(1.0, w_px)), width=max(1, int(round(w_px))), joint="curve")

    def ellipse(self, x: float, y: float, rx: float, ry: float, value: float = 1.0) -> None:
        u, v = self.to_image(np.array([x]), np.array([y]))
        cu, cv = float(u[0]) * self.size, float(v[0]) * self.size
        rx, ry = rx * self.scale * self.size, ry * self.scale * self.size
        self.draw.ellipse([cu - rx, cv - ry, cu + rx, cv + ry], fill=float(value))

    def polygon(self, xs: np.ndarray, ys: np.ndarray, value: float = 1.0) -> None:
        u, v = self.to_image(np.asarray(xs), np.asarray(ys))
        self.draw.polygon(list(zip((u * self.size).tolist(), (v * self.size).tolist())), fill=float(value))

    def array(self) -> np.ndarray:
        return np.asarray(self.layer, dtype=np.float32)
