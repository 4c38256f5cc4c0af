"""``make demo``: the pipeline on the embedded default, as far as the project goes today.

Today: synthesise phantom films → read them back through the Chest ImaGenome reader (with its scan
report) → contact sheet of films with boxes → ROI crop sheet → two-view augmentation sheet.
Prints where every picture is. Training, indexing and serving join as later stages land.
"""

from __future__ import annotations

import json
import os
import sys
import time

import numpy as np

from .anatomy import ANATOMY_NAMES, anatomy_name
from .augmentation import AugmentationConfig, two_views
from .command_help import command_parser
from .contact_sheet import crop_sheet
from .dataset import open_dataset
from .image_reader import read_image
from .region_record import clamp_to_image
from .roi_crop import CropConfig, roi_crop
from .synth.dataset_writer import write_phantom_dataset
from .synth.preview import write_preview


def _step(message: str) -> None:
    print(f"[demo] {message}", file=sys.stderr, flush=True)


def run_demo(out: str, images: int = 24, size: int = 320, seed: int = 0) -> dict:
    started = time.perf_counter()
    data = os.path.join(out, "phantoms")
    _step(f"synthesising {images} phantom films of {size}px into {data}")
    synth = write_phantom_dataset(data, images=images, size=size, seed=seed)

    _step("contact sheet")
    contact = write_preview(data, os.path.join(out, "contact_sheet.png"), count=min(images, 12))

    _step("reading the data set back and cutting ROI crops")
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

    _step("two-view augmentation sheet (with laterality-safe flips)")
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


def main(argv: list[str] | None = None) -> int:
    parser = command_parser(prog="python -m regionmir.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="demo-output")
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--size", type=int, default=320)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    summary = run_demo(args.out, args.images, args.size, args.seed)
    print(json.dumps(summary, indent=1))
    print("\nPictures:")
    for name, path in summary["pictures"].items():
        print(f"  {name:14s} {os.path.abspath(path)}")
    print(f"Demo finished in {summary['seconds']} s.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
