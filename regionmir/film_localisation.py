"""Every region of a film found from the film alone: boxes for films that come without labels.

A film from a PACS has no boxes. :func:`localise_film` places one box per region of the model's
vocabulary the atlas knows, the way an anatomy-only query is answered
(:class:`regionmir.anatomy_atlas.LocalizationSearch`: atlas priors, candidate boxes scored by the
model's classifier, a finer second round), all regions' candidates of a round in one forward pass.
The index marks such rows ``box_source: localiser``.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from .anatomy_atlas import AnatomyAtlas, AtlasError, Localization
from .encoder import RegionEncoder
from .inference import embed_crops
from .roi_crop import CropConfig, roi_crops

#: Candidate boxes per region and round, and rounds: fewer than an interactive query (32) — a
#: film's 29 regions cost two forward passes of ~460 crops each.
FILM_CANDIDATES = 16
FILM_ROUNDS = 2


def localise_film(
    pixels: np.ndarray,
    atlas: AnatomyAtlas,
    model: RegionEncoder,
    class_anatomy_ids: Iterable[int],
    crop: CropConfig,
    *,
    candidates: int = FILM_CANDIDATES,
    rounds: int = FILM_ROUNDS,
    device: str | None = None,
) -> list[Localization]:
    """One :class:`Localization` per anatomy of ``class_anatomy_ids`` (the model's classes, in
    that order) that the atlas holds and whose prior falls on the film. ``pixels``: the film,
    float32 ``(H, W)`` in the intensity convention; ``model`` in eval mode."""
    pixels = np.asarray(pixels)
    if pixels.ndim != 2:
        raise ValueError(f"localise_film expects a 2-D (H, W) film, got shape {pixels.shape}")
    height, width = pixels.shape
    class_ids = list(class_anatomy_ids)
    column = {anatomy: i for i, anatomy in enumerate(class_ids)}
    searches = {}
    for anatomy in class_ids:
        if anatomy not in atlas:
            continue
        try:
            searches[anatomy] = atlas.localization(anatomy, width, height, n=candidates, rounds=rounds)
        except AtlasError:  # its prior falls outside this film
            continue
    while True:
        live = [(anatomy, search) for anatomy, search in searches.items() if not search.done]
        if not live:
            break
        crops = np.concatenate([roi_crops(pixels, search.boxes, crop) for _, search in live])
        probabilities = embed_crops(model, crops, device=device, embeddings=False).probabilities
        start = 0
        for anatomy, search in live:
            count = len(search.boxes)
            search.score(probabilities[start : start + count, column[anatomy]])
            start += count
    return [search.result for search in searches.values()]
