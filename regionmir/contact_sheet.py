"""Pictures a person would rather look at than read: film contact sheets and ROI crop sheets.

Pillow only (no matplotlib). Films are drawn in the intensity convention (bright = dense) with
their boxes in a fixed colour per region, so the same region has the same colour everywhere.
"""

from __future__ import annotations

import colorsys
from collections.abc import Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .anatomy import ANATOMY_NAMES, anatomy_id
from .boxes import Box
from .intensity import to_uint8


def region_colour(name_or_id: str | int) -> tuple[int, int, int]:
    """A stable, well-separated colour per region (golden-ratio hue walk)."""
    i = anatomy_id(name_or_id)
    r, g, b = colorsys.hsv_to_rgb((i * 0.618034) % 1.0, 0.85, 1.0)
    return int(r * 255), int(g * 255), int(b * 255)


def font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # very old Pillow
        return ImageFont.load_default()


def film_with_boxes(
    image: np.ndarray,
    boxes: Mapping[str, Box] | None = None,
    width: int | None = None,
    line: int = 2,
    labels: bool = False,
) -> Image.Image:
    """An RGB picture of a film with its boxes drawn; resized to ``width`` if given."""
    picture = Image.fromarray(to_uint8(image), mode="L").convert("RGB")
    scale = 1.0
    if width and width != picture.width:
        scale = width / picture.width
        picture = picture.resize((width, max(1, round(picture.height * scale))), Image.Resampling.LANCZOS)
    if boxes:
        draw = ImageDraw.Draw(picture)
        small = font(max(9, picture.width // 40))
        for name, box in boxes.items():
            colour = region_colour(name)
            b = box.scaled(scale)
            draw.rectangle([b.x1, b.y1, b.x2 - 1, b.y2 - 1], outline=colour, width=line)
            if labels:
                draw.text((b.x1 + 2, b.y1 + 1), name, fill=colour, font=small)
    return picture


def contact_sheet(
    pictures: Sequence[Image.Image],
    captions: Sequence[str],
    columns: int = 4,
    title: str = "",
    background: tuple[int, int, int] = (24, 24, 28),
) -> Image.Image:
    """Tile same-size-ish pictures in a grid with a caption under each."""
    if not pictures:
        raise ValueError("contact sheet needs at least one picture")
    columns = max(1, min(columns, len(pictures)))
    cell_w = max(p.width for p in pictures)
    cell_h = max(p.height for p in pictures)
    caption_h = max(14, cell_w // 18)
    title_h = caption_h * 2 if title else 0
    rows = (len(pictures) + columns - 1) // columns
    pad = 6
    sheet = Image.new(
        "RGB", (columns * (cell_w + pad) + pad, title_h + rows * (cell_h + caption_h + pad) + pad), background
    )
    draw = ImageDraw.Draw(sheet)
    caption_font = font(max(9, int(caption_h * 0.7)))
    if title:
        draw.text((pad, pad), title, fill=(235, 235, 235), font=font(int(caption_h * 1.1)))
    for k, (picture, caption) in enumerate(zip(pictures, captions)):
        r, c = divmod(k, columns)
        x0 = pad + c * (cell_w + pad)
        y0 = title_h + pad + r * (cell_h + caption_h + pad)
        sheet.paste(picture.convert("RGB"), (x0, y0))
        draw.text((x0 + 2, y0 + cell_h + 2), caption, fill=(220, 220, 220), font=caption_font)
    return sheet


def crop_sheet(
    crops: Sequence[Sequence[np.ndarray]], row_labels: Sequence[str], cell: int = 72, title: str = ""
) -> Image.Image:
    """A grid of ROI crops: one row per region (labelled), one column per film."""
    if not crops:
        raise ValueError("crop sheet needs at least one row")
    columns = max(len(r) for r in crops)
    label_w = cell * 3
    title_h = 28 if title else 0
    sheet = Image.new("RGB", (label_w + columns * (cell + 2) + 2, title_h + len(crops) * (cell + 2) + 2), (24, 24, 28))
    draw = ImageDraw.Draw(sheet)
    label_font = font(max(10, cell // 6))
    if title:
        draw.text((4, 4), title, fill=(235, 235, 235), font=font(16))
    for r, (row, label) in enumerate(zip(crops, row_labels)):
        y0 = title_h + 2 + r * (cell + 2)
        name = label if label in ANATOMY_NAMES else None
        draw.text(
            (4, y0 + cell // 2 - 6), label, fill=region_colour(name) if name else (220, 220, 220), font=label_font
        )
        for c, crop in enumerate(row):
            tile = Image.fromarray(to_uint8(crop), mode="L").resize((cell, cell), Image.Resampling.BILINEAR)
            sheet.paste(tile.convert("RGB"), (label_w + 2 + c * (cell + 2), y0))
    return sheet
