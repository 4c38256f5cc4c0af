"""What a reader returns: a decoded radiograph and the description of how it was read.

Shared by :mod:`regionmir.dicom_reader`, :mod:`regionmir.raster_reader` and the dispatcher
:mod:`regionmir.image_reader` (which re-exports these names), so the readers never import the
dispatcher that imports them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from .errors import ImageShapeError, ImageTooLargeError
from .intensity import check_convention

#: Largest image accepted by default, in pixels (Rows x Columns): 100 million, about 10000 x 10000.
#: Real chest films are 2-9 Mpx (MIMIC-CXR ~2544 x 3056 = 7.8 Mpx), so anything near this limit is
#: either a decompression bomb or not a chest radiograph. Decoding 100 Mpx already takes ~0.4 GB
#: as float32; raise the limit per call (``max_pixels=``) for unusual scanners.
DEFAULT_MAX_PIXELS = 100_000_000


@dataclass(frozen=True)
class DecodeLimits:
    """How big a film a reader decodes; checked on the header, before any pixel is decompressed.

    ``max_pixels``: Rows x Columns. ``max_side``: the longer side in pixels (``None``: no limit
    beyond ``max_pixels``). ``max_aspect``: longer side / shorter side (``None``: any). A service
    sets all three (see ``serving.config.Limits``); batch jobs keep the generous defaults.
    """

    max_pixels: int = DEFAULT_MAX_PIXELS
    max_side: int | None = None
    max_aspect: float | None = None

    def check(self, source: str, width: int, height: int) -> None:
        """Raise :class:`ImageTooLargeError` or :class:`ImageShapeError` for a header over the limits."""
        if width * height > self.max_pixels:
            raise ImageTooLargeError(
                source, f"{width} x {height} = {width * height} pixels exceeds the limit of {self.max_pixels}"
            )
        if self.max_side is not None and max(width, height) > self.max_side:
            raise ImageTooLargeError(
                source, f"{width} x {height}: the longer side exceeds the limit of {self.max_side} pixels"
            )
        if self.max_aspect is not None and max(width, height) > self.max_aspect * min(width, height):
            raise ImageShapeError(
                source,
                f"{width} x {height}: a side ratio of "
                f"{max(width, height) / min(width, height):.1f} is not a radiograph's "
                f"(at most {self.max_aspect:g})",
            )


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
