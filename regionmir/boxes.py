"""Axis-aligned boxes in image pixels, and the rules for dirty boxes.

Coordinates are continuous pixel positions on the stored image: ``x1 <= x < x2``,
``y1 <= y < y2``, origin at the top-left corner of the top-left pixel, x to the image's right.
Chest ImaGenome ships negative coordinates, boxes past the edge and zero-area boxes;
:func:`sanitize_box` clamps what can be clamped and names why it refuses the rest, so a scan can
count every case instead of dropping rows silently.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from .errors import BoxError

#: Reasons :func:`sanitize_box` reports (also the keys of scan reports).
CLAMPED = "box_clamped"
ZERO_AREA = "box_zero_area"
OUTSIDE = "box_outside_image"
INVERTED = "box_inverted"
NOT_FINITE = "box_not_finite"


@dataclass(frozen=True)
class Box:
    x1: float
    y1: float
    x2: float
    y2: float

    @property
    def width(self) -> float:
        return self.x2 - self.x1

    @property
    def height(self) -> float:
        return self.y2 - self.y1

    @property
    def area(self) -> float:
        return max(0.0, self.width) * max(0.0, self.height)

    @property
    def center(self) -> tuple[float, float]:
        return (self.x1 + self.x2) / 2.0, (self.y1 + self.y2) / 2.0

    def as_list(self) -> list[float]:
        return [self.x1, self.y1, self.x2, self.y2]

    def scaled(self, sx: float, sy: float | None = None) -> Box:
        sy = sx if sy is None else sy
        return Box(self.x1 * sx, self.y1 * sy, self.x2 * sx, self.y2 * sy)

    def flipped_horizontally(self, image_width: float) -> Box:
        """The same box after mirroring an image of ``image_width`` left-right."""
        return Box(image_width - self.x2, self.y1, image_width - self.x1, self.y2)

    def clamped(self, width: float, height: float) -> Box:
        return Box(
            min(max(self.x1, 0.0), width),
            min(max(self.y1, 0.0), height),
            min(max(self.x2, 0.0), width),
            min(max(self.y2, 0.0), height),
        )

    def iou(self, other: Box) -> float:
        ix = max(0.0, min(self.x2, other.x2) - max(self.x1, other.x1))
        iy = max(0.0, min(self.y2, other.y2) - max(self.y1, other.y1))
        inter = ix * iy
        union = self.area + other.area - inter
        return inter / union if union > 0 else 0.0

    @classmethod
    def parse(cls, text: str, source: str = "box") -> Box:
        """``"x1,y1,x2,y2"`` → Box; anything else raises :class:`BoxError`."""
        parts = [p.strip() for p in str(text).replace(";", ",").split(",")]
        if len(parts) != 4:
            raise BoxError(source, f"expected 'x1,y1,x2,y2', got {text!r}")
        try:
            values = [float(p) for p in parts]
        except ValueError as exc:
            raise BoxError(source, f"coordinates must be numbers, got {text!r}") from exc
        return cls(*values)


def sanitize_box(box: Box, width: float, height: float, min_size: float = 1.0) -> tuple[Box | None, str | None]:
    """Clamp ``box`` to a ``width`` × ``height`` image.

    Returns ``(box, None)`` when it was inside, ``(clamped, CLAMPED)`` when it stuck out but keeps at
    least ``min_size`` pixels each way, and ``(None, reason)`` when it is unusable (not finite,
    inverted, zero area, or entirely outside).
    """
    values = box.as_list()
    if any(v != v or v in (float("inf"), float("-inf")) for v in values):
        return None, NOT_FINITE
    if box.x2 < box.x1 or box.y2 < box.y1:
        return None, INVERTED
    if box.width < min_size or box.height < min_size:
        return None, ZERO_AREA
    clamped = box.clamped(width, height)
    if clamped.width < min_size or clamped.height < min_size:
        return None, OUTSIDE
    if clamped != box:
        return clamped, CLAMPED
    return box, None


def require_valid_box(box: Box, width: float, height: float, source: str = "box") -> Box:
    """Strict check for user queries: inside the image, positive area, not inverted."""
    values = box.as_list()
    if any(v != v or v in (float("inf"), float("-inf")) for v in values):
        raise BoxError(source, f"coordinates must be finite, got {values}", reason=NOT_FINITE)
    if box.x2 <= box.x1 or box.y2 <= box.y1:
        if box.x2 < box.x1 or box.y2 < box.y1:
            raise BoxError(source, f"inverted box {values}: need x1 < x2 and y1 < y2", reason=INVERTED)
        raise BoxError(source, f"zero-area box {values}", reason=ZERO_AREA)
    if box.x1 < 0 or box.y1 < 0 or box.x2 > width or box.y2 > height:
        raise BoxError(source, f"box {values} lies outside the {int(width)}x{int(height)} image", reason=OUTSIDE)
    return box


def union_box(boxes: Iterable[Box]) -> Box:
    boxes = list(boxes)
    return Box(min(b.x1 for b in boxes), min(b.y1 for b in boxes), max(b.x2 for b in boxes), max(b.y2 for b in boxes))
