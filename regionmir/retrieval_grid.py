"""The retrieval-examples picture: each query crop beside its top-k results, labelled.

One row per query: the query crop (its anatomy under it), then the results best first, each
framed green when it is the query's anatomy and red when not, with rank, score and anatomy
under it. Used by ``regionmir evaluate`` (and anyone who wants to look rather than read).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from .contact_sheet import font
from .intensity import to_uint8

RELEVANT = (60, 200, 90)
NOT_RELEVANT = (225, 60, 60)


@dataclass(frozen=True)
class RetrievedCrop:
    crop: np.ndarray  # float32 HxW in [0, 1]
    anatomy: str
    score: float
    relevant: bool


@dataclass(frozen=True)
class QueryRow:
    crop: np.ndarray
    anatomy: str
    results: Sequence[RetrievedCrop]


def retrieval_grid(rows: Sequence[QueryRow], cell: int = 96, title: str = "") -> Image.Image:
    """Draw ``rows`` (see the module doc); returns an RGB image."""
    if not rows:
        raise ValueError("retrieval grid needs at least one query")
    columns = 1 + max(len(r.results) for r in rows)
    gap, frame, caption_h = 14, 3, 30
    title_h = 30 if title else 0
    width = columns * (cell + gap) + gap
    height = title_h + len(rows) * (cell + caption_h + gap) + gap
    sheet = Image.new("RGB", (width, height), (24, 24, 28))
    draw = ImageDraw.Draw(sheet)
    small, big = font(max(9, cell // 9)), font(16)
    if title:
        draw.text((gap, 6), title, fill=(235, 235, 235), font=big)
    for r, row in enumerate(rows):
        y0 = title_h + gap + r * (cell + caption_h + gap)
        tiles = [(row.crop, None, f"query: {row.anatomy}", "")]
        tiles += [
            (hit.crop, RELEVANT if hit.relevant else NOT_RELEVANT, f"#{k + 1} {hit.score:.3f}", hit.anatomy)
            for k, hit in enumerate(row.results)
        ]
        for c, (crop, colour, line1, line2) in enumerate(tiles):
            x0 = gap + c * (cell + gap)
            if colour is not None:
                draw.rectangle([x0 - frame, y0 - frame, x0 + cell + frame - 1, y0 + cell + frame - 1], fill=colour)
            tile = Image.fromarray(to_uint8(np.asarray(crop, dtype=np.float32)), mode="L")
            sheet.paste(tile.resize((cell, cell), Image.Resampling.BILINEAR).convert("RGB"), (x0, y0))
            draw.text((x0, y0 + cell + 3), line1[:24], fill=(235, 235, 235), font=small)
            draw.text((x0, y0 + cell + 3 + caption_h // 2), line2[:24], fill=(190, 190, 190), font=small)
    return sheet
