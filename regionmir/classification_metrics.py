"""Anatomy-classification metrics and a confusion-matrix picture drawn with PIL alone.

Fine-tuning is judged the way the paper reports it — overall anatomy accuracy (94.12 % on Chest
ImaGenome) — plus what a reader needs to trust it: per-class accuracy, precision and F1, and the
most frequent confusions (a left/right swap shows up there first). Labels are integer anatomy ids
in ``[0, num_classes)`` held in NumPy arrays (or anything ``np.asarray`` takes).

Classes absent from the targets: :func:`per_class_accuracy` reports NaN for them (their accuracy
is undefined, not 0) and :func:`classification_report` omits them from ``per_class`` and from the
macro averages. Predictions *into* an absent class are still errors in the true class's row.

:func:`plot_confusion_matrix` writes a row-normalised heat map as PNG using Pillow only, because
matplotlib is not a dependency of the library.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = [
    "accuracy",
    "confusion_matrix",
    "per_class_accuracy",
    "classification_report",
    "plot_confusion_matrix",
]


def _check_labels(y_true, y_pred, num_classes: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    y_true = np.asarray(y_true)
    y_pred = np.asarray(y_pred)
    if y_true.ndim != 1 or y_true.shape != y_pred.shape:
        raise ValueError(f"y_true and y_pred must be (N,) of equal length; got {y_true.shape} and {y_pred.shape}")
    if y_true.size == 0:
        raise ValueError("no samples: y_true is empty")
    if not (np.issubdtype(y_true.dtype, np.integer) and np.issubdtype(y_pred.dtype, np.integer)):
        raise ValueError(f"labels must be integer class ids; got dtypes {y_true.dtype} and {y_pred.dtype}")
    if num_classes is not None:
        for name, labels in (("y_true", y_true), ("y_pred", y_pred)):
            if labels.min() < 0 or labels.max() >= num_classes:
                raise ValueError(f"{name} holds ids outside [0, {num_classes}): min {labels.min()}, max {labels.max()}")
    return y_true, y_pred


def accuracy(y_true, y_pred) -> float:
    """Fraction of samples whose predicted id equals the true id. y_true, y_pred: (N,)."""
    y_true, y_pred = _check_labels(y_true, y_pred)
    return float(np.mean(y_true == y_pred))


def confusion_matrix(y_true, y_pred, num_classes: int) -> np.ndarray:
    """(C, C) int64 counts; row = true class, column = predicted class."""
    y_true, y_pred = _check_labels(y_true, y_pred, num_classes)
    flat = np.bincount(y_true.astype(np.int64) * num_classes + y_pred, minlength=num_classes * num_classes)
    return flat.reshape(num_classes, num_classes)


def per_class_accuracy(y_true, y_pred, num_classes: int) -> np.ndarray:
    """(C,) per-class accuracy (= recall): correct / support; NaN for classes with no targets."""
    cm = confusion_matrix(y_true, y_pred, num_classes)
    support = cm.sum(axis=1)
    return np.divide(np.diag(cm), support, out=np.full(num_classes, np.nan), where=support > 0)


def classification_report(y_true, y_pred, label_names: Sequence[str], top_confusions: int = 10) -> dict:
    """Accuracy, balanced accuracy, macro F1, per-class scores and the largest confusions.

    Args:
        y_true, y_pred: (N,) integer ids in ``[0, len(label_names))``.
        label_names: one name per class id (e.g. :data:`regionmir.anatomy.ANATOMY_NAMES`).
        top_confusions: how many off-diagonal (true, predicted) pairs to list, largest first.

    Returns:
        JSON-ready dict::

            {"num_samples": N, "accuracy": .., "balanced_accuracy": .., "macro_f1": ..,
             "per_class": {name: {"support": n, "accuracy": .., "precision": .., "f1": ..}},
             "top_confusions": [{"true": name, "predicted": name, "count": n}, ...]}

        ``per_class`` holds only classes present in ``y_true``; ``balanced_accuracy`` and
        ``macro_f1`` average over those. ``precision`` is None for a class never predicted.
    """
    num_classes = len(label_names)
    cm = confusion_matrix(y_true, y_pred, num_classes)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    correct = np.diag(cm)

    per_class: dict[str, dict] = {}
    f1_scores = []
    for c in np.flatnonzero(support):
        recall = correct[c] / support[c]
        precision = correct[c] / predicted[c] if predicted[c] else None
        f1 = 2 * precision * recall / (precision + recall) if precision and recall else 0.0
        f1_scores.append(f1)
        per_class[label_names[c]] = {
            "support": int(support[c]),
            "accuracy": float(recall),
            "precision": None if precision is None else float(precision),
            "f1": float(f1),
        }

    off_diagonal = cm.copy()
    np.fill_diagonal(off_diagonal, 0)
    flat_order = np.argsort(-off_diagonal, axis=None, kind="stable")[:top_confusions]
    confusions = [
        {"true": label_names[t], "predicted": label_names[p], "count": int(off_diagonal[t, p])}
        for t, p in zip(*np.unravel_index(flat_order, cm.shape))
        if off_diagonal[t, p] > 0
    ]
    return {
        "num_samples": int(support.sum()),
        "accuracy": float(correct.sum() / support.sum()),
        "balanced_accuracy": float(np.mean([entry["accuracy"] for entry in per_class.values()])),
        "macro_f1": float(np.mean(f1_scores)),
        "per_class": per_class,
        "top_confusions": confusions,
    }


# --- the picture ---------------------------------------------------------------------------------

# ColorBrewer "Blues" anchors: white for 0 so an empty off-diagonal recedes, dark blue for 1.
_BLUES = np.array([(247, 251, 255), (198, 219, 239), (107, 174, 214), (33, 113, 181), (8, 48, 107)], dtype=np.float64)
_EMPTY_ROW = (232, 232, 232)
_GRID_LINE = (220, 220, 220)
_TEXT = (30, 30, 30)


# 256-step lookup table, linear between the anchors; a cell needs only an index.
_BLUES_TABLE = [
    tuple(
        int(round(np.interp(step / 255 * (len(_BLUES) - 1), np.arange(len(_BLUES)), _BLUES[:, channel])))
        for channel in range(3)
    )
    for step in range(256)
]


def _colour(value: float) -> tuple[int, int, int]:
    """Blues colour of a value in [0, 1]."""
    return _BLUES_TABLE[int(round(float(np.clip(value, 0.0, 1.0)) * 255))]


def _font(size: int) -> ImageFont.ImageFont:
    """Pillow's bundled scalable font at ``size`` px (Pillow >= 10.1), else its bitmap font."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):  # old Pillow, or built without FreeType
        return ImageFont.load_default()


def _text_size(draw: ImageDraw.ImageDraw, text: str, font) -> tuple[int, int]:
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    return right - left, bottom - top


def _draw_text(draw: ImageDraw.ImageDraw, xy: tuple[float, float], text: str, font, fill, anchor: str) -> None:
    """Draw with an anchor when the font supports it (scalable fonts), else top-left aligned."""
    try:
        draw.text(xy, text, font=font, fill=fill, anchor=anchor)
    except ValueError:  # bitmap fonts have no anchors: place the box by hand
        width, height = _text_size(draw, text, font)
        x, y = xy
        x -= {"l": 0, "m": width / 2, "r": width}[anchor[0]]
        y -= {"a": 0, "t": 0, "m": height / 2, "b": height, "s": height, "d": height}[anchor[1]]
        draw.text((x, y), text, font=font, fill=fill)


def _vertical_text(text: str, font, fill=_TEXT) -> Image.Image:
    """``text`` on a transparent strip rotated to read bottom-to-top."""
    probe = ImageDraw.Draw(Image.new("RGBA", (1, 1)))
    left, top, right, bottom = probe.textbbox((0, 0), text, font=font)
    strip = Image.new("RGBA", (right - left + 2, bottom - top + 2), (255, 255, 255, 0))
    ImageDraw.Draw(strip).text((1 - left, 1 - top), text, font=font, fill=fill)
    return strip.rotate(90, expand=True)


def plot_confusion_matrix(
    cm: np.ndarray,
    label_names: Sequence[str],
    path: str | Path,
    *,
    title: str = "Anatomy confusion matrix (row-normalised)",
    cell_size: int | None = None,
) -> Path:
    """Write a row-normalised confusion matrix heat map to ``path`` as PNG.

    Each row is divided by its support, so a cell reads "of the true class, the share predicted
    as this class"; rows are labelled with their support ``(n=…)``, and a row with no samples is
    grey. Cells show the percentage when they are large enough to hold it; a colour bar maps
    0–100 %.

    Args:
        cm: (C, C) counts, row = true, column = predicted (from :func:`confusion_matrix`).
        label_names: C names, in class-id order.
        path: output file; parent folders are created.
        title: drawn centred above the grid.
        cell_size: pixels per cell; default scales from 56 (few classes) down to 24 (36 classes).

    Returns:
        The path written.
    """
    cm = np.asarray(cm)
    num_classes = len(label_names)
    if cm.shape != (num_classes, num_classes):
        raise ValueError(f"cm must be ({num_classes}, {num_classes}) for {num_classes} names; got {cm.shape}")
    if cell_size is None:
        cell_size = int(np.clip(864 // max(num_classes, 1), 24, 56))

    support = cm.sum(axis=1)
    shares = np.divide(cm, support[:, None], out=np.zeros(cm.shape, dtype=np.float64), where=support[:, None] > 0)

    label_font = _font(13)
    value_font = _font(max(9, min(14, cell_size // 3)))
    title_font = _font(18)
    axis_font = _font(14)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))

    row_labels = [f"{name} (n={int(n)})" for name, n in zip(label_names, support)]
    row_label_width = max(_text_size(probe, text, label_font)[0] for text in row_labels)
    column_strips = [_vertical_text(name, label_font) for name in label_names]
    column_label_height = max(strip.height for strip in column_strips)
    title_width, title_height = _text_size(probe, title, title_font)
    axis_height = _text_size(probe, "Predicted", axis_font)[1]

    pad = 12
    grid = num_classes * cell_size
    grid_left = pad + axis_height + pad + row_label_width + 8
    grid_top = pad + title_height + 2 * pad
    colour_bar_left = grid_left + grid + 3 * pad
    colour_bar_width = 16
    tick_width = _text_size(probe, "100%", label_font)[0]
    width = max(colour_bar_left + colour_bar_width + 6 + tick_width + pad, title_width + 2 * pad)
    height = grid_top + grid + 6 + column_label_height + pad + axis_height + pad

    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    # Centred over the grid, but never pushed off a canvas narrower than the title (few classes).
    title_centre = min(max(grid_left + grid / 2, pad + title_width / 2), width - pad - title_width / 2)
    _draw_text(draw, (title_centre, pad), title, title_font, _TEXT, "ma")

    show_values = cell_size >= 22
    for row in range(num_classes):
        for column in range(num_classes):
            x0, y0 = grid_left + column * cell_size, grid_top + row * cell_size
            share = shares[row, column]
            fill = _EMPTY_ROW if support[row] == 0 else _colour(share)
            draw.rectangle([x0, y0, x0 + cell_size, y0 + cell_size], fill=fill, outline=_GRID_LINE)
            if show_values and support[row] > 0 and cm[row, column] > 0:
                text = f"{100 * share:.0f}"
                ink = "white" if share > 0.55 else _TEXT  # dark cells need light text
                _draw_text(draw, (x0 + cell_size / 2, y0 + cell_size / 2), text, value_font, ink, "mm")
    draw.rectangle([grid_left, grid_top, grid_left + grid, grid_top + grid], outline=(120, 120, 120))

    for row, text in enumerate(row_labels):
        _draw_text(draw, (grid_left - 8, grid_top + (row + 0.5) * cell_size), text, label_font, _TEXT, "rm")
    for column, strip in enumerate(column_strips):
        x = grid_left + int((column + 0.5) * cell_size - strip.width / 2)
        image.paste(strip, (x, grid_top + grid + 6), strip)

    _draw_text(draw, (grid_left + grid / 2, height - pad), "Predicted anatomy", axis_font, _TEXT, "md")
    true_axis = _vertical_text("True anatomy", axis_font)
    image.paste(true_axis, (pad, grid_top + grid // 2 - true_axis.height // 2), true_axis)

    # Colour bar: 0 % at the bottom, 100 % at the top, the same height as the grid.
    for offset in range(grid):
        draw.line(
            [(colour_bar_left, grid_top + offset), (colour_bar_left + colour_bar_width, grid_top + offset)],
            fill=_colour(1 - offset / max(grid - 1, 1)),
        )
    colour_bar_right = colour_bar_left + colour_bar_width
    draw.rectangle([colour_bar_left, grid_top, colour_bar_right, grid_top + grid], outline=(120, 120, 120))
    for fraction in (0.0, 0.25, 0.5, 0.75, 1.0):
        y = grid_top + (1 - fraction) * grid
        draw.line([(colour_bar_right, y), (colour_bar_right + 3, y)], fill=_TEXT)
        _draw_text(draw, (colour_bar_right + 6, y), f"{100 * fraction:.0f}%", label_font, _TEXT, "lm")

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG")
    return path
