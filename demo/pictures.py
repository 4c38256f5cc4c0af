"""Step 1 of the demo: phantom films, and the pictures a person looks at before anything trains.

Synthesises phantom films, reads them back through the Chest ImaGenome reader (with its scan
report) and draws a contact sheet of films with boxes, an ROI crop sheet (one row per region) and
a two-view augmentation sheet (the last row flipped: its label swaps sides).
"""

from __future__ import annotations

import logging
import os
import time

import numpy as np

from regionmir.anatomy import ANATOMY_NAMES, anatomy_name
from regionmir.augmentation import AugmentationConfig, two_views
from regionmir.contact_sheet import crop_sheet
from regionmir.dataset import open_dataset
from regionmir.image_reader import read_image
from regionmir.region_record import clamp_to_image
from regionmir.roi_crop import CropConfig, roi_crop
from regionmir.synth.dataset_writer import write_phantom_dataset
from regionmir.synth.preview import write_preview

log = logging.getLogger(__name__)


def synthesise_and_draw(out: str, images: int = 24, size: int = 320, seed: int = 0) -> dict:
    """Phantom films under ``OUT/phantoms`` and the three pictures; returns where everything is."""
    started = time.perf_counter()
    data = os.path.join(out, "phantoms")
    synth = write_phantom_dataset(data, images=images, size=size, seed=seed)
    contact = write_preview(data, os.path.join(out, "contact_sheet.png"), count=min(images, 12))
    log.info("pictures: contact sheet, ROI crops, two-view augmentations (laterality-safe flips)")
    reader = open_dataset(data)
    crop = CropConfig(size=96)
    films = []
    for record in reader.iter_images():  # the whole scan, so its report covers every film
        if len(films) < 8:
            decoded = read_image(record.image_uri)
            height, width = decoded.pixels.shape
            films.append((clamp_to_image(record, width, height, reader.report), decoded.pixels))
    rows, labels = [], []
    for anatomy, name in enumerate(ANATOMY_NAMES):
        row = []
        for record, pixels in films:
            region = record.region(anatomy)
            if region is not None:
                row.append(roi_crop(pixels, region.box, crop))
        rows.append(row)
        labels.append(f"{anatomy:2d} {name}")
    crops_path = os.path.join(out, "roi_crops.png")
    crop_sheet(rows, labels, cell=64, title="ROI crops: one row per region, one column per film").save(crops_path)

    rng = np.random.default_rng(seed)
    aug = AugmentationConfig.contrastive()
    aug_rows, aug_labels = [], []
    record, pixels = films[0]
    for name in (
        "left lung",
        "right costophrenic angle",
        "cardiac silhouette",
        "trachea",
        "left clavicle",
        "aortic arch",
    ):
        region = record.region(ANATOMY_NAMES.index(name))
        pairs = []
        for _ in range(4):
            v1, v2, l1, l2 = two_views(pixels, region.box, region.anatomy_id, crop, aug, rng)
            pairs += [v1, v2]
        aug_rows.append(pairs)
        aug_labels.append(name)
    flip = AugmentationConfig(**{**aug.to_dict(), "horizontal_flip_p": 1.0})
    region = record.region(ANATOMY_NAMES.index("left costophrenic angle"))
    v1, v2, l1, l2 = two_views(pixels, region.box, region.anatomy_id, crop, flip, rng)
    aug_rows.append([roi_crop(pixels, region.box, crop), v1, v2])
    aug_labels.append(f"flipped: {anatomy_name(l1)}")
    aug_path = os.path.join(out, "augmentation.png")
    crop_sheet(aug_rows, aug_labels, cell=64, title="Contrastive views: pairs per region; last row flipped").save(
        aug_path
    )

    summary = {
        "data": data,
        "films": synth["images"],
        "splits": synth["splits"],
        "findings_drawn": synth["findings"],
        "scan": reader.report.as_dict(),
        "pictures": {"contact_sheet": contact, "roi_crops": crops_path, "augmentation": aug_path},
        "seconds": round(time.perf_counter() - started, 1),
    }
    return summary
