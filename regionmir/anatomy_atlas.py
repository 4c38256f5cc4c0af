"""Where each anatomical region usually lies on a chest film: an atlas of boxes, and how to use it
to find a region on a new film when the user names the region but draws no box.

**What is learned.** For every anatomy, from the labelled boxes of training films, the *centre*
``(cx, cy)`` and the *log size* ``(log w, log h)`` of its box in **normalised image coordinates**
(x divided by the film's width, y by its height), summarised robustly: the median and
``1.4826 × MAD`` (the median absolute deviation scaled to a standard deviation for normal data),
floored at :data:`MIN_CENTER_SPREAD` / :data:`MIN_LOG_SIZE_SPREAD` so that a region seen on a
handful of identical phantoms still gets a search window. Medians, not means: Chest ImaGenome
ships clamped, truncated and occasionally swapped boxes, and a few of those must not drag a
prior across the film.

**Why the image frame, not the union of an image's boxes.** Normalising each box by the union of
all the boxes of its film would remove patient position and size, and give a tighter atlas — but
at query time a film arrives without any box, so the union is exactly what is unknown; the only
frame both training and query films share is the image itself. We therefore need each training
film's size: pass ``(record, width, height)`` tuples to :meth:`AnatomyAtlas.fit` (a pipeline that
decodes films knows them), or let :meth:`AnatomyAtlas.fit_records` read them from the file headers
(:func:`image_size`: PNG/JPEG headers, DICOM ``Rows``/``Columns``, without decoding pixels). What
varies between patients (position on the detector, body size) stays in the spreads, and the
classifier refines it (below).

**Using it.** :meth:`AnatomyAtlas.propose` lays candidate boxes around the prior: a grid of
centre shifts of up to ±2 spreads and size changes of up to ±1.5 spreads, nearest to the prior
first. :meth:`AnatomyAtlas.localize` crops every candidate (the model's own
:func:`~regionmir.roi_crop.roi_crop`), asks a classifier callback for the probability that each
crop *is* the requested anatomy, and returns the box maximising

    log p(anatomy | crop) + prior_weight × log prior(box)

(``log prior`` is the Gaussian log density of the box's offsets, in spreads, up to a constant;
``prior_weight`` defaults to 0.1: the classifier decides, the prior only breaks near-ties and keeps
the box from wandering to a look-alike far away), with that probability as its confidence. A second
round (:meth:`refine`) searches a grid of half the step around the first round's winner. Without a
callback it returns the prior box. The query service runs this very loop
(:meth:`AnatomyAtlas.localization`: a :class:`LocalizationSearch` it feeds round by round with its
batched encoder's probabilities), so what ``localization_miou`` measures is what the service does.

Measured on phantom films (``tests/test_anatomy_atlas.py``: 14 training films, every region of 6
held-out films): mean IoU with the true boxes 0.57 for the prior box alone and 0.72 with a
template-matching classifier, 2 rounds of 32 candidates.

**Flips.** Names are the *patient's* sides. A horizontally flipped (mirrored) film still shows the
patient's left lung, but on the image's left, where the right lung used to be: the atlas of such
films is :meth:`AnatomyAtlas.flipped` — every entry keeps its label and its centre moves to
``1 − cx``, so the left and right entries trade places. (Fitting mirrored films whose labels were
*also* swapped to the mirror twin, as the training augmentation does, gives back an atlas close to
the original one: such a film looks like an ordinary frontal film.)

The atlas is JSON (:data:`ATLAS_FILE`, saved beside the model: ``atlas.json``).
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from . import storage
from .anatomy import ANATOMY_NAMES, anatomy_id, anatomy_name
from .boxes import Box
from .errors import RegionMIRError
from .region_record import ImageRecord
from .roi_crop import CropConfig, roi_crops

#: File name of an atlas beside its model.
ATLAS_FILE = "atlas.json"
FORMAT_VERSION = 1

#: Smallest spread of a box centre, as a fraction of the image side (1 %).
MIN_CENTER_SPREAD = 0.01
#: Smallest spread of a log box size (≈ 3 % of the size).
MIN_LOG_SIZE_SPREAD = 0.03
#: 1.4826 × MAD estimates the standard deviation of normally distributed data.
MAD_TO_STD = 1.4826

#: Centre offsets (in spreads) and size offsets (in spreads) of :meth:`AnatomyAtlas.propose`'s grid.
CENTER_STEPS: tuple[float, ...] = (-2.0, -1.0, 0.0, 1.0, 2.0)
SIZE_STEPS: tuple[float, ...] = (-1.5, 0.0, 1.5)

#: The crop settings :meth:`AnatomyAtlas.localize` uses unless given the model's.
DEFAULT_CROP = CropConfig()

#: A classifier callback: crops ``(N, S, S)`` float32 in [0, 1] → ``(N,)`` probability that each
#: crop shows the requested anatomy.
ScoreFn = Callable[[np.ndarray], np.ndarray]


class AtlasError(RegionMIRError):
    """An atlas that cannot be read, or that has no entry for the anatomy asked for."""

    reason = "no_atlas_entry"


# ------------------------------------------------------------------------------------ geometry


def iou(a: Box | Sequence[float], b: Box | Sequence[float]) -> float:
    """Intersection over union of two boxes (``Box`` or ``(x1, y1, x2, y2)``); 0 when disjoint."""
    ax1, ay1, ax2, ay2 = _coords(a)
    bx1, by1, bx2, by2 = _coords(b)
    iw = max(0.0, min(ax2, bx2) - max(ax1, bx1))
    ih = max(0.0, min(ay2, by2) - max(ay1, by1))
    inter = iw * ih
    union = max(0.0, ax2 - ax1) * max(0.0, ay2 - ay1) + max(0.0, bx2 - bx1) * max(0.0, by2 - by1) - inter
    return inter / union if union > 0 else 0.0


def mean_iou(pairs: Iterable[tuple[Box | Sequence[float], Box | Sequence[float]]]) -> float:
    """Mean :func:`iou` over ``(predicted, true)`` pairs (``nan`` for none)."""
    values = [iou(p, t) for p, t in pairs]
    return float(np.mean(values)) if values else float("nan")


def _coords(box: Box | Sequence[float]) -> tuple[float, float, float, float]:
    if isinstance(box, Box):
        return box.x1, box.y1, box.x2, box.y2
    x1, y1, x2, y2 = (float(v) for v in box)
    return x1, y1, x2, y2


def image_size(uri_or_bytes: str | bytes, s3: storage.S3Options | None = None) -> tuple[int, int]:
    """``(width, height)`` of a PNG, JPEG or DICOM from its header, without decoding the pixels."""
    from .image_reader import sniff_format

    data = uri_or_bytes if isinstance(uri_or_bytes, (bytes, bytearray)) else storage.read_bytes(str(uri_or_bytes), s3)
    source = "<bytes>" if isinstance(uri_or_bytes, (bytes, bytearray)) else str(uri_or_bytes)
    kind = sniff_format(bytes(data))
    try:
        if kind in ("png", "jpeg"):
            from PIL import Image

            with Image.open(io.BytesIO(data)) as img:
                return int(img.size[0]), int(img.size[1])
        if kind == "dicom":
            import pydicom

            ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, force=True)
            return int(ds.Columns), int(ds.Rows)
    except Exception as exc:  # a header we cannot read: name the file
        from .errors import ImageReadError

        raise ImageReadError(source, f"cannot read the image size from its header ({exc})") from exc
    from .errors import ImageReadError

    raise ImageReadError(source, "not a DICOM, PNG or JPEG image")


# --------------------------------------------------------------------------------------- atlas


@dataclass(frozen=True)
class AtlasEntry:
    """The prior of one anatomy, in normalised image coordinates (fractions of width / height).

    ``center`` / ``center_spread``: median and robust spread of the box centre ``(cx, cy)``.
    ``log_size`` / ``log_size_spread``: median and robust spread of ``(log(w/W), log(h/H))``.
    """

    anatomy_id: int
    count: int
    center: tuple[float, float]
    center_spread: tuple[float, float]
    log_size: tuple[float, float]
    log_size_spread: tuple[float, float]

    @property
    def anatomy(self) -> str:
        return ANATOMY_NAMES[self.anatomy_id]

    def box_at(self, offsets: Sequence[float], width: float, height: float) -> Box:
        """The box ``offsets`` = (dx, dy, dlog w, dlog h) spreads away from the prior, in pixels."""
        dx, dy, dw, dh = (float(v) for v in offsets)
        cx = (self.center[0] + dx * self.center_spread[0]) * width
        cy = (self.center[1] + dy * self.center_spread[1]) * height
        w = math.exp(self.log_size[0] + dw * self.log_size_spread[0]) * width
        h = math.exp(self.log_size[1] + dh * self.log_size_spread[1]) * height
        return Box(cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)

    def prior_box(self, width: float, height: float) -> Box:
        """The most likely box on a ``width`` × ``height`` film."""
        return self.box_at((0, 0, 0, 0), width, height)

    def offsets(self, box: Box, width: float, height: float) -> np.ndarray:
        """How many spreads ``box`` lies from the prior: ``(dx, dy, dlog w, dlog h)``."""
        cx, cy = box.center
        return np.array(
            [
                (cx / width - self.center[0]) / self.center_spread[0],
                (cy / height - self.center[1]) / self.center_spread[1],
                (math.log(max(box.width, 1e-9) / width) - self.log_size[0]) / self.log_size_spread[0],
                (math.log(max(box.height, 1e-9) / height) - self.log_size[1]) / self.log_size_spread[1],
            ]
        )

    def log_prior(self, box: Box, width: float, height: float) -> float:
        """Gaussian log density of ``box`` under this prior, up to a constant (0 at the prior box)."""
        z = self.offsets(box, width, height)
        return float(-0.5 * np.dot(z, z))

    def flipped(self) -> AtlasEntry:
        """This entry on a horizontally mirrored film: same region, centre at ``1 − cx``."""
        return AtlasEntry(
            self.anatomy_id,
            self.count,
            (1.0 - self.center[0], self.center[1]),
            self.center_spread,
            self.log_size,
            self.log_size_spread,
        )

    def to_dict(self) -> dict:
        return {
            "anatomy": self.anatomy,
            "anatomy_id": self.anatomy_id,
            "count": self.count,
            "center": list(self.center),
            "center_spread": list(self.center_spread),
            "log_size": list(self.log_size),
            "log_size_spread": list(self.log_size_spread),
        }

    @classmethod
    def from_dict(cls, data: dict) -> AtlasEntry:
        def pair(key: str) -> tuple[float, float]:
            a, b = (float(v) for v in data[key])
            if not (math.isfinite(a) and math.isfinite(b)):
                raise ValueError(f"{key} is not finite")
            return a, b

        entry = cls(
            int(data["anatomy_id"]),
            int(data["count"]),
            pair("center"),
            pair("center_spread"),
            pair("log_size"),
            pair("log_size_spread"),
        )
        if not 0 <= entry.anatomy_id < len(ANATOMY_NAMES):
            raise ValueError(f"anatomy_id {entry.anatomy_id} outside the vocabulary")
        if min(entry.center_spread + entry.log_size_spread) <= 0:
            raise ValueError("spreads must be positive")
        return entry


@dataclass(frozen=True)
class Localization:
    """Where :meth:`AnatomyAtlas.localize` (or :meth:`~AnatomyAtlas.choose`) put a region.

    ``box``: the chosen box (pixels, clipped to the film). ``confidence``: the classifier's
    probability of the anatomy at that box (``None`` when no classifier was used). ``prior_box``:
    the atlas prior. ``index``: which candidate of its round won. ``candidates``: how many were
    scored. ``round``: the round (0 = the coarse grid) whose candidates held the winner.
    """

    anatomy_id: int
    box: Box
    confidence: float | None
    prior_box: Box
    index: int = 0
    candidates: int = 1
    score: float = 0.0
    round: int = 0


class LocalizationSearch:
    """The coarse-to-fine search of :meth:`AnatomyAtlas.localize`, one round at a time, for a
    caller that scores the crops itself (the query service asks its batched encoder, between
    awaits; :meth:`AnatomyAtlas.localize` calls a ``score_fn``). Both run this one loop::

        search = atlas.localization(anatomy, width, height, n=32, rounds=2)
        while not search.done:
            search.score(probabilities_of(search.boxes))  # crops of search.boxes → p(anatomy)
        search.result  # a Localization

    Round 0 scores :meth:`AnatomyAtlas.propose`'s grid; each further round the grid of half the
    step around the best box so far (:meth:`AnatomyAtlas.refine`); the best score over all rounds
    wins. Without a classifier (``classify=False``) there is one round of one box, the prior, and
    :meth:`score` takes ``None``: the caller may still crop and embed that box.
    """

    def __init__(
        self,
        atlas: AnatomyAtlas,
        anatomy: str | int,
        width: float,
        height: float,
        *,
        n: int = 32,
        rounds: int = 2,
        prior_weight: float = 0.1,
        classify: bool = True,
    ):
        self.atlas, self.anatomy, self.width, self.height = atlas, anatomy, width, height
        self.n, self.prior_weight, self.classify = n, prior_weight, classify
        self.rounds = max(1, rounds) if classify else 1
        #: The candidates of the current round (to crop and score); empty once :attr:`done`.
        self.boxes: list[Box] = atlas.propose(anatomy, width, height, n=n if classify else 1)
        self.round = 0
        self.step = 1.0
        self.scored = 0
        self.best: Localization | None = None

    @property
    def done(self) -> bool:
        return self.round >= self.rounds

    def score(self, probabilities: Sequence[float] | np.ndarray | None) -> None:
        """The classifier's probabilities of the anatomy for :attr:`boxes` (``None`` without a
        classifier); then :attr:`boxes` are the next round's, or :attr:`done` is true."""
        if self.done:
            raise ValueError("the localisation search is over")
        boxes, atlas = self.boxes, self.atlas
        if not self.classify:
            current = atlas.choose(self.anatomy, boxes, None, self.width, self.height)
        else:
            if probabilities is None:
                raise ValueError("a classifying search needs the probabilities of its boxes")
            p = np.asarray(probabilities, dtype=np.float64).reshape(-1)
            self.scored += len(boxes)
            chosen = atlas.choose(self.anatomy, boxes, p, self.width, self.height, prior_weight=self.prior_weight)
            current = replace(chosen, candidates=self.scored, round=self.round)
        if self.best is None or current.score >= self.best.score:
            self.best = current
        self.round += 1
        if self.done:
            self.boxes = []
            return
        self.step /= 2
        self.boxes = atlas.refine(self.anatomy, self.best.box, self.width, self.height, n=self.n, step=self.step)

    @property
    def result(self) -> Localization:
        """The winning box over every round, with the number of candidates scored in all."""
        if not self.done or self.best is None:
            raise ValueError("the localisation search has rounds left")
        return replace(self.best, candidates=self.scored) if self.classify else self.best


@dataclass
class AnatomyAtlas:
    """Per-anatomy box priors (see the module docstring). ``entries``: anatomy id → entry."""

    entries: dict[int, AtlasEntry]
    source: str = ""
    images: int = 0
    notes: list[str] = field(default_factory=list)

    # -- learning

    @classmethod
    def fit(
        cls, samples: Iterable[tuple[ImageRecord, float, float]], *, source: str = "", min_count: int = 1
    ) -> AnatomyAtlas:
        """Learn the atlas from ``(record, width, height)`` tuples (sizes of the stored films).

        Boxes with no area or whose centre lies outside their film are ignored (labels drawn on
        another resolution); anatomies seen fewer than ``min_count`` times get no entry.
        """
        values: dict[int, list[tuple[float, float, float, float]]] = {}
        images = 0
        for record, width, height in samples:
            width, height = float(width), float(height)
            if not (width > 0 and height > 0):
                raise ValueError(f"image {record.image_id}: width and height must be positive")
            images += 1
            for region in record.regions:
                b = region.box
                if not (b.width > 0 and b.height > 0):
                    continue
                cx, cy = b.center
                if not (0 <= cx <= width and 0 <= cy <= height):
                    continue
                values.setdefault(region.anatomy_id, []).append(
                    (cx / width, cy / height, math.log(b.width / width), math.log(b.height / height))
                )
        entries = {}
        for aid, rows in sorted(values.items()):
            if len(rows) < min_count:
                continue
            data = np.asarray(rows, dtype=np.float64)
            median = np.median(data, axis=0)
            spread = MAD_TO_STD * np.median(np.abs(data - median), axis=0)
            floors = np.array([MIN_CENTER_SPREAD, MIN_CENTER_SPREAD, MIN_LOG_SIZE_SPREAD, MIN_LOG_SIZE_SPREAD])
            spread = np.maximum(spread, floors)
            entries[aid] = AtlasEntry(
                aid,
                len(rows),
                (float(median[0]), float(median[1])),
                (float(spread[0]), float(spread[1])),
                (float(median[2]), float(median[3])),
                (float(spread[2]), float(spread[3])),
            )
        if not entries:
            raise AtlasError(source or "atlas", "no usable boxes to learn an atlas from")
        return cls(entries, source=source, images=images)

    @classmethod
    def fit_records(
        cls,
        records: Iterable[ImageRecord],
        *,
        s3: storage.S3Options | None = None,
        source: str = "",
        min_count: int = 1,
    ) -> AnatomyAtlas:
        """:meth:`fit` on records whose film sizes are read from the image headers."""
        return cls.fit(
            ((r, *image_size(r.image_uri, s3)) for r in records if r.regions), source=source, min_count=min_count
        )

    # -- files

    def to_json(self) -> str:
        return json.dumps(
            {
                "format_version": FORMAT_VERSION,
                "kind": "regionmir-anatomy-atlas",
                "coordinates": "fractions of image width/height; log sizes natural log",
                "source": self.source,
                "images": self.images,
                "notes": list(self.notes),
                "entries": [self.entries[k].to_dict() for k in sorted(self.entries)],
            },
            indent=1,
        )

    @classmethod
    def from_json(cls, text: str, source: str = ATLAS_FILE) -> AnatomyAtlas:
        try:
            data = json.loads(text)
            if data.get("kind") != "regionmir-anatomy-atlas":
                raise ValueError("not an anatomy atlas")
            if int(data.get("format_version", 0)) != FORMAT_VERSION:
                raise ValueError(f"format {data.get('format_version')}, this library reads {FORMAT_VERSION}")
            entries = {}
            for item in data["entries"]:
                entry = AtlasEntry.from_dict(item)
                entries[entry.anatomy_id] = entry
        except (ValueError, KeyError, TypeError) as exc:
            raise AtlasError(source, f"not a RegionMIR anatomy atlas ({exc})", reason="bad_atlas") from exc
        if not entries:
            raise AtlasError(source, "the atlas has no entries", reason="bad_atlas")
        return cls(
            entries,
            source=str(data.get("source", "")),
            images=int(data.get("images", 0)),
            notes=list(data.get("notes", [])),
        )

    def save(self, uri: str, s3: storage.S3Options | None = None) -> str:
        """Write the atlas to ``uri`` (a ``.json`` path, or a model directory → ``DIR/atlas.json``)."""
        path = uri if uri.endswith(".json") else storage.join(uri, ATLAS_FILE)
        storage.write_text(path, self.to_json(), s3)
        return path

    @classmethod
    def load(cls, uri: str, s3: storage.S3Options | None = None) -> AnatomyAtlas:
        """Read an atlas from a ``.json`` path or a model directory holding ``atlas.json``."""
        path = uri if uri.endswith(".json") else storage.join(uri, ATLAS_FILE)
        if not storage.exists(path, s3):
            raise AtlasError(path, "no anatomy atlas here", reason="no_atlas")
        return cls.from_json(storage.read_text(path, s3), path)

    # -- queries

    def entry(self, anatomy: str | int) -> AtlasEntry:
        """The entry of a region (name, alias or id); :class:`AtlasError` when the atlas lacks it."""
        aid = anatomy_id(anatomy)
        try:
            return self.entries[aid]
        except KeyError:
            raise AtlasError(
                "anatomy",
                f"the atlas has no prior for {anatomy_name(aid)!r}: it was learned from films without that region",
            ) from None

    def __contains__(self, anatomy: object) -> bool:
        try:
            return anatomy_id(anatomy) in self.entries  # type: ignore[arg-type]
        except RegionMIRError:
            return False

    def flipped(self) -> AnatomyAtlas:
        """The atlas of horizontally mirrored films: every region keeps its (patient-side) name and
        moves to the mirrored position, so left and right entries trade sides of the image."""
        entries = {aid: e.flipped() for aid, e in self.entries.items()}
        return AnatomyAtlas(
            entries, source=f"{self.source} (flipped)".strip(), images=self.images, notes=list(self.notes)
        )

    def propose(
        self,
        anatomy: str | int,
        width: float,
        height: float,
        n: int = 32,
        *,
        around: Sequence[float] | None = None,
        step: float = 1.0,
    ) -> list[Box]:
        """Up to ``n`` candidate boxes around the prior on a ``width`` × ``height`` film.

        The grid: centre offsets of :data:`CENTER_STEPS` spreads each way and joint size offsets
        of :data:`SIZE_STEPS`, times ``step``, around ``around`` (offsets in spreads from the
        prior, see :meth:`AtlasEntry.offsets`; default the prior itself), nearest first, so the
        first box is the grid's centre. Boxes are clipped to the film; boxes left with less than
        two pixels a side and duplicates (to the pixel) are dropped.
        """
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        entry = self.entry(anatomy)
        base = np.zeros(4) if around is None else np.asarray(around, dtype=np.float64).reshape(4)
        grid = [(dx, dy, ds, ds) for ds in SIZE_STEPS for dy in CENTER_STEPS for dx in CENTER_STEPS]
        grid.sort(key=lambda z: (sum(v * v for v in z), z))
        boxes: list[Box] = []
        seen: set[tuple[int, ...]] = set()
        for offsets in grid:
            box = entry.box_at(base + step * np.asarray(offsets), width, height).clamped(width, height)
            if box.width < 2 or box.height < 2:
                continue
            key = tuple(round(v) for v in box.as_list())
            if key in seen:
                continue
            seen.add(key)
            boxes.append(box)
            if len(boxes) == n:
                break
        if not boxes:
            raise AtlasError(
                "anatomy",
                f"the prior of {entry.anatomy!r} falls outside a {width:g}x{height:g} film",
                reason="no_candidate",
            )
        return boxes

    def refine(
        self, anatomy: str | int, best: Box, width: float, height: float, n: int = 32, step: float = 0.5
    ) -> list[Box]:
        """Candidates for a second, finer round around the winner ``best`` of a first round."""
        offsets = self.entry(anatomy).offsets(best, width, height)
        return self.propose(anatomy, width, height, n=n, around=offsets, step=step)

    def choose(
        self,
        anatomy: str | int,
        boxes: Sequence[Box],
        probabilities: Sequence[float] | None,
        width: float,
        height: float,
        prior_weight: float = 0.1,
    ) -> Localization:
        """The best of ``boxes`` given the classifier's ``probabilities`` of the anatomy.

        Maximises ``log p + prior_weight × log prior``; with ``probabilities=None`` the box
        nearest the prior wins.
        """
        entry = self.entry(anatomy)
        if not boxes:
            raise ValueError("no candidate boxes")
        priors = np.array([entry.log_prior(b, width, height) for b in boxes])
        prior_box = entry.prior_box(width, height).clamped(width, height)
        if probabilities is None:
            best = int(np.argmax(priors))
            return Localization(entry.anatomy_id, boxes[best], None, prior_box, best, len(boxes), float(priors[best]))
        p = np.asarray(probabilities, dtype=np.float64).reshape(-1)
        if p.shape[0] != len(boxes):
            raise ValueError(f"{len(boxes)} boxes but {p.shape[0]} probabilities")
        p = np.where(np.isfinite(p), p, 0.0)
        scores = np.log(np.clip(p, 1e-6, 1.0)) + prior_weight * priors
        best = int(np.argmax(scores))
        return Localization(
            entry.anatomy_id, boxes[best], float(p[best]), prior_box, best, len(boxes), float(scores[best])
        )

    def localize(
        self,
        anatomy: str | int,
        pixels: np.ndarray,
        score_fn: ScoreFn | None = None,
        *,
        n: int = 32,
        rounds: int = 2,
        crop: CropConfig = DEFAULT_CROP,
        prior_weight: float = 0.1,
    ) -> Localization:
        """Find ``anatomy`` on a film: :meth:`propose`, crop, score with ``score_fn``, :meth:`choose`,
        then ``rounds - 1`` finer rounds (:meth:`refine`, half the step each time): the loop of
        :class:`LocalizationSearch`, which the query service runs with its batched encoder.

        ``pixels``: the film, float32 ``(H, W)`` in the intensity convention. ``score_fn``: crops
        ``(N, S, S)`` → ``(N,)`` probabilities of the anatomy (``None``: the prior box alone).
        """
        pixels = np.asarray(pixels)
        if pixels.ndim != 2:
            raise ValueError(f"localize expects a 2-D (H, W) film, got shape {pixels.shape}")
        height, width = pixels.shape
        search = self.localization(
            anatomy, width, height, n=n, rounds=rounds, prior_weight=prior_weight, classify=score_fn is not None
        )
        while not search.done:
            search.score(None if score_fn is None else score_fn(roi_crops(pixels, search.boxes, crop)))
        return search.result

    def localization(
        self,
        anatomy: str | int,
        width: float,
        height: float,
        *,
        n: int = 32,
        rounds: int = 2,
        prior_weight: float = 0.1,
        classify: bool = True,
    ) -> LocalizationSearch:
        """The search :meth:`localize` runs, for a caller that scores each round's crops itself
        (:class:`LocalizationSearch`); :class:`AtlasError` when the atlas lacks ``anatomy`` or its
        prior falls outside the film."""
        return LocalizationSearch(
            self, anatomy, width, height, n=n, rounds=rounds, prior_weight=prior_weight, classify=classify
        )

    def describe(self) -> str:
        lines = [
            f"anatomy atlas: {len(self.entries)} regions from {self.images} films ({self.source or 'unknown source'})"
        ]
        for aid in sorted(self.entries):
            e = self.entries[aid]
            lines.append(
                f"{aid:2d} {e.anatomy:28s} centre {e.center[0]:.3f},{e.center[1]:.3f} "
                f"± {e.center_spread[0]:.3f},{e.center_spread[1]:.3f}  "
                f"size {math.exp(e.log_size[0]):.3f}x{math.exp(e.log_size[1]):.3f}  n={e.count}"
            )
        return "\n".join(lines)
