"""Random views of one anatomical region, for contrastive pretraining and fine-tuning.

The augmentation works on the **full film and the box**, not on a finished crop: the box is
jittered (scaled, shifted) on the film and the square window is cut afresh, so a bigger or shifted
view shows real neighbouring anatomy instead of zooming into, or padding around, a fixed crop. A
small rotation is applied at crop resolution to a slightly larger window, so its corners are real
context too. Intensity changes (gamma, contrast, brightness, blur, noise) then act on the crop.

**Laterality.** A horizontally flipped left lung *is* a right lung to anyone reading the film.
So a flip is only ever applied together with ``anatomy_id → regionmir.anatomy.mirror_id(anatomy_id)``,
inside the same function, and :func:`augment_region` returns the label with the pixels. Midline
regions (spine, trachea, …) keep their label; a sided region with no twin (``right atrium``) is
never flipped (:func:`can_flip`). Flipping is off by default
(``horizontal_flip_p=0.0``): real films are not mirrored, and the heart's side is a cue.

Everything random comes from the ``numpy.random.Generator`` passed in, drawn in a fixed order, so a
seed reproduces the views exactly.

Presets: :meth:`AugmentationConfig.contrastive` (the defaults, strong — two views must be hard to
match), :meth:`AugmentationConfig.fine_tuning` (light — for anatomy-classification fine-tuning,
where strong jitter would blur the boundary between neighbouring zones whose labels differ), and
:meth:`AugmentationConfig.none` (evaluation and indexing: the output equals
:func:`regionmir.roi_crop.roi_crop`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import numpy as np

from .anatomy import mirror_id, side_of
from .boxes import Box
from .roi_crop import CropConfig, box_overlaps_image, roi_crop, square_crop_box

#: Each setting at the value that leaves a crop unchanged (:meth:`AugmentationConfig.none`).
IDENTITY_SETTINGS = {
    "scale_range": (1.0, 1.0),
    "translate_fraction": 0.0,
    "rotation_degrees": 0.0,
    "brightness": 0.0,
    "contrast_range": (1.0, 1.0),
    "gamma_range": (1.0, 1.0),
    "noise_sigma_max": 0.0,
    "blur_p": 0.0,
    "blur_sigma_range": (1.0, 1.0),
    "horizontal_flip_p": 0.0,
}


@dataclass(frozen=True)
class AugmentationConfig:
    """Ranges of the random transform; a range ``(a, a)`` or a zero turns that part off.

    Geometry (on the film, before cropping):
      ``scale_range``: box side multiplier, drawn log-uniformly (so 0.8 and 1.25 are equally likely).
      ``translate_fraction``: shift of the box centre, uniform in ±fraction × box width (x) and
      × box height (y).
      ``rotation_degrees``: rotation about the crop centre, uniform in ±degrees.
      ``horizontal_flip_p``: probability of a mirror, always with the left↔right label swap.

    Intensity (on the crop, in this order; the result is clipped to [0, 1]):
      ``gamma_range``: ``x ** gamma``, gamma log-uniform.
      ``contrast_range``: ``(x - mean) * c + mean``, c uniform.
      ``brightness``: ``x + b``, b uniform in ±brightness.
      ``blur_p``, ``blur_sigma_range``: Gaussian blur with probability ``blur_p``, sigma (in crop
      pixels) uniform in the range.
      ``noise_sigma_max``: additive Gaussian noise, sigma uniform in [0, noise_sigma_max].
    """

    scale_range: tuple[float, float] = (0.8, 1.25)
    translate_fraction: float = 0.1
    rotation_degrees: float = 7.0
    brightness: float = 0.1
    contrast_range: tuple[float, float] = (0.8, 1.2)
    gamma_range: tuple[float, float] = (0.7, 1.4)
    noise_sigma_max: float = 0.03
    blur_p: float = 0.5
    blur_sigma_range: tuple[float, float] = (0.1, 1.0)
    horizontal_flip_p: float = 0.0

    def __post_init__(self) -> None:
        for name in ("scale_range", "contrast_range", "gamma_range", "blur_sigma_range"):
            lo, hi = getattr(self, name)
            if not (0 < lo <= hi) or not math.isfinite(hi):
                raise ValueError(f"AugmentationConfig.{name} must be 0 < low <= high, got {(lo, hi)}")
        for name in ("translate_fraction", "brightness", "noise_sigma_max"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"AugmentationConfig.{name} must be >= 0, got {value!r}")
        if not 0 <= self.rotation_degrees <= 45:
            # The enlarged window in _rotated_crop is sized for at most 45°.
            raise ValueError(f"AugmentationConfig.rotation_degrees must be in [0, 45], got {self.rotation_degrees!r}")
        for name in ("blur_p", "horizontal_flip_p"):
            value = getattr(self, name)
            if not 0 <= value <= 1:
                raise ValueError(f"AugmentationConfig.{name} must be a probability, got {value!r}")

    @classmethod
    def contrastive(cls) -> AugmentationConfig:
        """The strong two-view augmentation for region contrastive pretraining (the defaults)."""
        return cls()

    @classmethod
    def fine_tuning(cls) -> AugmentationConfig:
        """A light preset for anatomy-classification fine-tuning.

        Neighbouring zones (upper/mid/lower lung zone, hilum) differ mostly by where the box sits,
        so box jitter is kept to ±5 % shift and 0.9–1.1 scale; rotation ±5°, milder intensity
        changes, occasional mild blur, no flip.
        """
        return cls(
            scale_range=(0.9, 1.1),
            translate_fraction=0.05,
            rotation_degrees=5.0,
            brightness=0.05,
            contrast_range=(0.9, 1.1),
            gamma_range=(0.85, 1.2),
            noise_sigma_max=0.01,
            blur_p=0.2,
            blur_sigma_range=(0.1, 0.5),
            horizontal_flip_p=0.0,
        )

    @classmethod
    def none(cls) -> AugmentationConfig:
        """The identity: :func:`augment_region` then returns exactly ``roi_crop(image, box, crop)``."""
        return cls(**IDENTITY_SETTINGS)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> AugmentationConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown AugmentationConfig fields: {sorted(unknown)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


def augment_region(
    image: np.ndarray, box: Box, anatomy_id: int, crop: CropConfig, aug: AugmentationConfig, rng: np.random.Generator
) -> tuple[np.ndarray, int]:
    """One random view of the region ``box`` of ``image``.

    Args:
        image: ``(H, W)`` float32 film in the intensity convention.
        box: the region in image pixels.
        anatomy_id: the region's id in :data:`regionmir.anatomy.ANATOMY_NAMES`.
        crop: output size, margin, padding (as for :func:`roi_crop`).
        aug: the random ranges.
        rng: the only source of randomness.

    Returns:
        ``(view, label)``: ``view`` is ``(crop.size, crop.size)`` float32 in [0, 1]; ``label`` is
        ``mirror_id(anatomy_id)`` when the view was flipped, else ``anatomy_id``. The flip is
        drawn with ``aug.horizontal_flip_p`` and skipped for regions :func:`can_flip` refuses.

    Raises:
        BoxError: ``box`` is unusable or does not overlap the image (as :func:`roi_crop`).
    """
    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 2:
        raise ValueError(f"augment_region expects a 2-D (H, W) image, got shape {image.shape}")
    height, width = image.shape
    # All draws happen up front, in a fixed order and number, whatever the config turns off: a
    # seed then consumes the same stream whatever the image or the ranges, so views stay
    # reproducible when one setting changes.
    scale = math.exp(rng.uniform(math.log(aug.scale_range[0]), math.log(aug.scale_range[1])))
    shift_x = rng.uniform(-1.0, 1.0) * aug.translate_fraction * box.width
    shift_y = rng.uniform(-1.0, 1.0) * aug.translate_fraction * box.height
    angle = rng.uniform(-1.0, 1.0) * aug.rotation_degrees
    flip = bool(rng.random() < aug.horizontal_flip_p)
    gamma = math.exp(rng.uniform(math.log(aug.gamma_range[0]), math.log(aug.gamma_range[1])))
    contrast = rng.uniform(aug.contrast_range[0], aug.contrast_range[1])
    brightness = rng.uniform(-1.0, 1.0) * aug.brightness
    blur = bool(rng.random() < aug.blur_p)
    blur_sigma = rng.uniform(aug.blur_sigma_range[0], aug.blur_sigma_range[1])
    noise_sigma = rng.uniform(0.0, aug.noise_sigma_max)
    noise = rng.standard_normal((crop.size, crop.size), dtype=np.float32)

    jittered = _jitter_box(box, scale, shift_x, shift_y)
    if not box_overlaps_image(jittered, width, height):
        jittered = box  # a box on the film edge jittered off it: keep the real region
    if angle == 0.0:
        view = roi_crop(image, jittered, crop)
    else:
        view = _rotated_crop(image, jittered, crop, angle)

    view = _adjust_intensity(view, gamma, contrast, brightness)
    if blur and aug.blur_p > 0:
        view = _gaussian_blur(view, blur_sigma)
    if noise_sigma > 0:
        view = view + np.float32(noise_sigma) * noise
    view = np.clip(view, 0.0, 1.0).astype(np.float32, copy=False)

    label = int(anatomy_id)
    if flip and can_flip(label):
        # The mirror and the label swap happen together, here and nowhere else.
        view = np.ascontiguousarray(view[:, ::-1])
        label = mirror_id(label)
    return view, label


def can_flip(anatomy_id: int) -> bool:
    """Whether a mirrored view of this region has a correct label.

    True for left/right twins (the label swaps) and midline regions (the label stays). False for
    a sided structure without a twin in the vocabulary — ``right atrium``: mirrored, it would sit
    where no right atrium is and no id names what it looks like, so it is never flipped.
    """
    return mirror_id(anatomy_id) != anatomy_id or side_of(anatomy_id) == "midline"


def two_views(
    image: np.ndarray, box: Box, anatomy_id: int, crop: CropConfig, aug: AugmentationConfig, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Two independent views of one region → ``(view1, view2, label1, label2)``.

    Each view is ``(crop.size, crop.size)`` float32 in [0, 1]; each label is the anatomy id after
    that view's own flip (they differ when exactly one view was mirrored).
    """
    view1, label1 = augment_region(image, box, anatomy_id, crop, aug, rng)
    view2, label2 = augment_region(image, box, anatomy_id, crop, aug, rng)
    return view1, view2, label1, label2


# --- internals -------------------------------------------------------------------------------


def _jitter_box(box: Box, scale: float, shift_x: float, shift_y: float) -> Box:
    cx, cy = box.center
    cx, cy = cx + shift_x, cy + shift_y
    half_w, half_h = box.width * scale / 2.0, box.height * scale / 2.0
    return Box(cx - half_w, cy - half_h, cx + half_w, cy + half_h)


def _rotated_crop(image: np.ndarray, box: Box, crop: CropConfig, angle_degrees: float) -> np.ndarray:
    """The crop of ``box`` rotated by ``angle_degrees`` about its centre → ``(size, size)``.

    A window larger by ``cos + sin`` of the angle bound is cut and antialiased to the crop's pixel
    pitch first, so that the rotated square's corners sample real film (or padding beyond it);
    the rotation then resamples bilinearly at 1:1 scale, where no antialiasing is needed.
    """
    size = crop.size
    bound = math.radians(max(abs(angle_degrees), 1e-6))
    big = math.ceil(size * (math.cos(bound) + math.sin(bound))) + 2
    big += (big - size) % 2  # an even border keeps output pixel centres on patch pixel centres
    window = square_crop_box(box, crop.margin)
    cx, cy = window.center
    half = window.width * big / size / 2.0
    big_window = Box(cx - half, cy - half, cx + half, cy + half)
    patch = roi_crop(image, big_window, CropConfig(size=big, margin=0.0, pad_value=crop.pad_value))
    return _rotate_centre(patch, size, math.radians(angle_degrees))


def _rotate_centre(patch: np.ndarray, size: int, theta: float) -> np.ndarray:
    """Bilinear sample of the central ``size × size`` of ``patch`` rotated by ``theta`` radians.

    Output pixel offsets ``(dx, dy)`` from the centre read the patch at
    ``(cos θ·dx − sin θ·dy, sin θ·dx + cos θ·dy)`` from its centre. Done in NumPy rather than
    torch's ``grid_sample``: these are a few thousand pixels, and torch's thread pool costs more
    than the work inside a data-loading process.
    """
    big = patch.shape[0]
    offsets = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    dx, dy = np.meshgrid(offsets, offsets)  # dx varies along columns, dy along rows
    cos, sin = math.cos(theta), math.sin(theta)
    centre = (big - 1) / 2.0
    src_x = centre + cos * dx - sin * dy
    src_y = centre + sin * dx + cos * dy
    x0, y0 = np.floor(src_x), np.floor(src_y)
    fx, fy = (src_x - x0).astype(np.float32), (src_y - y0).astype(np.float32)
    # Clamp to the border (the enlarged window makes this a no-op except for rounding).
    x0i = np.clip(x0.astype(np.intp), 0, big - 1)
    y0i = np.clip(y0.astype(np.intp), 0, big - 1)
    x1i = np.clip(x0i + 1, 0, big - 1)
    y1i = np.clip(y0i + 1, 0, big - 1)
    top = patch[y0i, x0i] * (1 - fx) + patch[y0i, x1i] * fx
    bottom = patch[y1i, x0i] * (1 - fx) + patch[y1i, x1i] * fx
    return (top * (1 - fy) + bottom * fy).astype(np.float32, copy=False)


def _adjust_intensity(view: np.ndarray, gamma: float, contrast: float, brightness: float) -> np.ndarray:
    # Identity steps are skipped, not computed: (x - m) * 1 + m is not exactly x in float32, and
    # AugmentationConfig.none() promises the plain crop.
    view = np.clip(view, 0.0, 1.0)
    if gamma != 1.0:
        view = np.power(view, gamma, dtype=np.float32)
    if contrast != 1.0:
        mean = float(view.mean())
        view = (view - mean) * contrast + mean
    if brightness != 0.0:
        view = view + brightness
    return np.clip(view, 0.0, 1.0).astype(np.float32, copy=False)


def _gaussian_blur(view: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of a ``(H, W)`` crop (radius 3σ), reflecting at the edges."""
    radius = max(1, math.ceil(3.0 * sigma))
    offsets = np.arange(-radius, radius + 1, dtype=np.float32)
    kernel = np.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = (kernel / kernel.sum()).astype(np.float32)
    height, width = view.shape
    padded = np.pad(view, radius, mode="reflect")
    rows = sum(w * padded[:, k : k + width] for k, w in enumerate(kernel))
    return sum(w * rows[k : k + height, :] for k, w in enumerate(kernel)).astype(np.float32, copy=False)
