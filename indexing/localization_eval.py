"""How well anatomy-only queries find their region: the service's localisation, measured.

A user may name a region without drawing a box; the service then places the box itself with the
anatomy atlas (:mod:`regionmir.anatomy_atlas`: box priors learned from training boxes) refined by
the model's classifier over candidate boxes. Here every region of the query films is localised the
same way, from the film alone, and the found box is compared with the labelled one: the mean IoU
is ``localization_miou`` in ``metrics.json`` (also per anatomy), beside the IoU of the atlas prior
alone, so a reader sees what the classifier adds.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Sequence

import numpy as np

from regionmir import storage
from regionmir.anatomy import ANATOMY_NAMES
from regionmir.anatomy_atlas import AnatomyAtlas, AtlasError, iou
from regionmir.image_reader import read_image
from regionmir.inference import embed_crops
from regionmir.model_contract import load_model
from regionmir.region_record import ImageRecord

log = logging.getLogger(__name__)


def model_atlas(
    model_dir: str, train_records: Sequence[ImageRecord], s3: storage.S3Options | None, source: str
) -> AnatomyAtlas:
    """The atlas the service would use: ``MODEL/atlas.json`` when present, else learned from the
    training films' boxes."""
    try:
        return AnatomyAtlas.load(model_dir, s3)
    except AtlasError:
        return AnatomyAtlas.fit_records(train_records, s3=s3, source=source)


def localization_report(
    atlas: AnatomyAtlas,
    films: Sequence[ImageRecord],
    model_dir: str,
    s3: storage.S3Options | None = None,
    *,
    candidates: int = 32,
    rounds: int = 2,
    progress_every_s: float = 15.0,
) -> dict:
    """Localise every region of ``films`` the model classifies; mean IoU with the labelled boxes."""

    model, contract = load_model(model_dir, s3)
    model.eval()
    column = {a: i for i, a in enumerate(contract.class_anatomy_ids)}
    found: dict[str, list[float]] = defaultdict(list)
    prior: dict[str, list[float]] = defaultdict(list)
    started, last, regions = time.perf_counter(), time.perf_counter(), 0
    for film_number, record in enumerate(films, 1):
        pixels = read_image(record.image_uri, s3=s3).pixels
        for region in record.regions:
            if region.anatomy_id not in column or region.anatomy_id not in atlas:
                continue

            def probability(crops: np.ndarray, c: int = column[region.anatomy_id]) -> np.ndarray:
                return embed_crops(model, crops, embeddings=False).probabilities[:, c]

            result = atlas.localize(
                region.anatomy_id, pixels, probability, n=candidates, rounds=rounds, crop=contract.crop_config
            )
            name = ANATOMY_NAMES[region.anatomy_id]
            found[name].append(iou(result.box, region.box))
            prior[name].append(iou(result.prior_box, region.box))
            regions += 1
        if time.perf_counter() - last > progress_every_s:
            log.info(f"localised {regions} regions of {film_number}/{len(films)} films")
            last = time.perf_counter()
    every = [v for values in found.values() for v in values]
    every_prior = [v for values in prior.values() for v in values]
    if not every:
        return {"localization_miou": None, "localization_regions": 0}
    return {
        "localization_miou": round(float(np.mean(every)), 4),
        "localization_prior_miou": round(float(np.mean(every_prior)), 4),
        "localization_iou_at_0_5": round(float(np.mean(np.asarray(every) >= 0.5)), 4),
        "localization_regions": len(every),
        "localization_films": len(films),
        "localization_per_anatomy": {name: round(float(np.mean(v)), 4) for name, v in sorted(found.items())},
        "localization_seconds": round(time.perf_counter() - started, 1),
    }
