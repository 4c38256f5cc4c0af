"""How far phantom films are from real ones: intensity histograms, radial power spectra and a
domain classifier on crops, under one fixed protocol.

The protocol (:class:`RealismProtocol`) is the same for every generator measured: each film is
resampled to a common pixel spacing (``spacing_mm``), crops of ``crop_px`` pixels are drawn at
seeded random positions inside the film, and a small CNN (four batch-normalised conv blocks) is trained
to tell phantom crops from real ones with folds **split by film** (no film has crops on both sides
of a fold). The pooled out-of-fold scores give the area under the ROC curve: 0.5 means the
classifier cannot tell the two apart, 1.0 means every crop gives itself away. One small CNN's AUC
moves by up to a tenth with its seed (and from one machine to another), so the classifier is
trained ``repeats`` times with seeds ``seed … seed+repeats−1`` and the AUC reported is their mean,
with their standard deviation beside it.

Films are ``float32`` arrays in ``[0, 1]`` with bright = dense (the project's intensity
convention), each with its pixel spacing in millimetres.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class Film:
    """One film for the realism measure: its name, pixels (``[0, 1]``, bright = dense) and spacing."""

    name: str
    pixels: np.ndarray
    spacing_mm: float


@dataclass(frozen=True)
class RealismProtocol:
    spacing_mm: float = 1.0  # every film is resampled to this pixel spacing
    crop_px: int = 48  # crop side at that spacing (48 mm)
    crops_per_film: int = 48
    folds: int = 4
    steps: int = 400  # classifier training steps per fold
    batch: int = 64
    histogram_bins: int = 64
    seed: int = 0
    repeats: int = 5  # domain classifiers per fold, one per seed; their AUCs are averaged

    def as_dict(self) -> dict:
        return asdict(self)


def resample(film: Film, spacing_mm: float) -> np.ndarray:
    """The film at ``spacing_mm`` per pixel (area-averaging when shrinking, bicubic when growing)."""
    scale = film.spacing_mm / spacing_mm
    h, w = film.pixels.shape
    size = (max(8, int(round(w * scale))), max(8, int(round(h * scale))))
    method = Image.BOX if scale < 1 else Image.BICUBIC
    out = Image.fromarray(np.asarray(film.pixels, dtype=np.float32), mode="F").resize(size, method)
    return np.clip(np.asarray(out, dtype=np.float32), 0.0, 1.0)


def intensity_histogram(pixels: np.ndarray, bins: int) -> np.ndarray:
    """Normalised histogram of ``[0, 1]`` intensities."""
    counts, _ = np.histogram(np.clip(pixels, 0, 1), bins=bins, range=(0.0, 1.0))
    return counts / max(1, counts.sum())


def histogram_distance(p: np.ndarray, q: np.ndarray) -> float:
    """Earth mover's (Wasserstein-1) distance between two histograms on ``[0, 1]``."""
    bins = len(p)
    return float(np.abs(np.cumsum(p) - np.cumsum(q)).sum() / bins)


def radial_power_spectrum(pixels: np.ndarray, bands: int = 16) -> np.ndarray:
    """Mean log10 power in ``bands`` rings of spatial frequency (0 .. Nyquist) of the centre square
    of a film, after removing its mean and applying a Hann window."""
    h, w = pixels.shape
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    square = pixels[top : top + side, left : left + side].astype(np.float64)
    square = square - square.mean()
    window = np.hanning(side)
    power = np.abs(np.fft.fftshift(np.fft.fft2(square * np.outer(window, window)))) ** 2 / side**2
    fy, fx = np.meshgrid(np.fft.fftshift(np.fft.fftfreq(side)), np.fft.fftshift(np.fft.fftfreq(side)), indexing="ij")
    radius = np.hypot(fx, fy) / 0.5
    edges = np.linspace(0.0, 1.0, bands + 1)
    out = np.empty(bands)
    for i in range(bands):
        ring = (radius > edges[i]) & (radius <= edges[i + 1])
        out[i] = math.log10(float(power[ring].mean()) + 1e-12)
    return out


def spectrum_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Root-mean-square difference of two log10 radial power spectra (decades)."""
    return float(np.sqrt(np.mean((np.asarray(a) - np.asarray(b)) ** 2)))


def sample_crops(pixels: np.ndarray, crop_px: int, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` crops of ``crop_px`` pixels at uniform random positions inside the film."""
    h, w = pixels.shape
    if h < crop_px or w < crop_px:
        raise ValueError(f"film of {w}x{h} px is smaller than the {crop_px} px crop at this spacing")
    ys = rng.integers(0, h - crop_px + 1, size=count)
    xs = rng.integers(0, w - crop_px + 1, size=count)
    return np.stack([pixels[y : y + crop_px, x : x + crop_px] for y, x in zip(ys, xs)]).astype(np.float32)


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (ties count half): P(score of a positive > score of a negative)."""
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels).astype(bool)
    pos, neg = scores[labels], scores[~labels]
    if pos.size == 0 or neg.size == 0:
        raise ValueError("AUC needs both classes")
    order = np.argsort(np.concatenate([pos, neg]), kind="mergesort")
    ranks = np.empty(order.size)
    values = np.concatenate([pos, neg])[order]
    # average ranks over ties
    i = 0
    while i < values.size:
        j = i
        while j + 1 < values.size and values[j + 1] == values[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return float((ranks[: pos.size].sum() - pos.size * (pos.size + 1) / 2) / (pos.size * neg.size))


def _classifier():
    """Four conv blocks (batch-normalised) and a linear read-out: small enough to train on a CPU
    in seconds, strong enough to pick up noise texture, sharpness, edges and contrast."""
    import torch.nn as nn

    def block(cin: int, cout: int) -> list:
        return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(), nn.MaxPool2d(2)]

    return nn.Sequential(
        *block(1, 16),
        *block(16, 32),
        *block(32, 64),
        *block(64, 64),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(64, 1),
    )


def domain_classifier_auc(phantom: Sequence[np.ndarray], real: Sequence[np.ndarray], protocol: RealismProtocol) -> dict:
    """Out-of-fold AUC of a small CNN telling phantom crops (label 1) from real crops (label 0).

    ``phantom``/``real`` hold one crop stack per film. Film ``i`` of each side goes to fold
    ``i % folds``; each fold's classifier is trained on the other folds' crops, classes weighted
    to balance, and scores its own fold's crops. This is done once per seed (``protocol.repeats``
    seeds from ``protocol.seed``). Returns ``auc`` (the mean over seeds of each seed's pooled
    out-of-fold AUC), ``auc_sd``, ``auc_by_seed`` and ``fold_auc`` (each fold's AUC, mean over seeds).
    """
    folds = min(protocol.folds, len(real), len(phantom))
    if folds < 2:
        raise ValueError("the domain classifier needs at least 2 real and 2 phantom films")
    if protocol.repeats < 1:
        raise ValueError(f"RealismProtocol.repeats must be >= 1, got {protocol.repeats!r}")
    by_seed, fold_rows = [], []
    for seed in range(protocol.seed, protocol.seed + protocol.repeats):
        pooled, per_fold = _out_of_fold_auc(phantom, real, protocol, folds, seed)
        by_seed.append(pooled)
        fold_rows.append(per_fold)
    return {
        "auc": round(float(np.mean(by_seed)), 4),
        "auc_sd": round(float(np.std(by_seed, ddof=1)) if len(by_seed) > 1 else 0.0, 4),
        "auc_by_seed": [round(v, 4) for v in by_seed],
        "fold_auc": [round(float(v), 4) for v in np.mean(fold_rows, axis=0)],
    }


def _out_of_fold_auc(
    phantom: Sequence[np.ndarray], real: Sequence[np.ndarray], protocol: RealismProtocol, folds: int, seed: int
) -> tuple[float, list[float]]:
    """One seed's pooled out-of-fold AUC and its per-fold AUCs."""
    import torch

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    scores: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    per_fold = []
    for fold in range(folds):

        def stack(films, keep, fold=fold):
            chosen = [c for i, c in enumerate(films) if (i % folds == fold) == keep]
            return np.concatenate(chosen) if chosen else np.zeros((0, protocol.crop_px, protocol.crop_px), np.float32)

        train_p, train_r = stack(phantom, False), stack(real, False)
        train_x = np.concatenate([train_p, train_r])
        train_y = np.concatenate([np.ones(len(train_p)), np.zeros(len(train_r))])
        test_p, test_r = stack(phantom, True), stack(real, True)
        test_x = np.concatenate([test_p, test_r])
        test_y = np.concatenate([np.ones(len(test_p)), np.zeros(len(test_r))])
        model = _classifier()
        optimiser = torch.optim.Adam(model.parameters(), lr=2e-3)
        n_pos, n_neg = float(train_y.sum()), float(len(train_y) - train_y.sum())
        weights = np.where(train_y == 1, 0.5 / n_pos, 0.5 / n_neg)
        weights = weights / weights.sum()
        x_all = torch.from_numpy(train_x[:, None])
        y_all = torch.from_numpy(train_y.astype(np.float32))
        loss_fn = torch.nn.BCEWithLogitsLoss()
        model.train()
        for _ in range(protocol.steps):
            idx = torch.from_numpy(rng.choice(len(train_y), size=protocol.batch, p=weights))
            optimiser.zero_grad()
            loss = loss_fn(model(x_all[idx]).squeeze(1), y_all[idx])
            loss.backward()
            optimiser.step()
        model.eval()
        with torch.no_grad():
            fold_scores = model(torch.from_numpy(test_x[:, None])).squeeze(1).numpy()
        scores.append(fold_scores)
        labels.append(test_y)
        per_fold.append(roc_auc(fold_scores, test_y))
    return roc_auc(np.concatenate(scores), np.concatenate(labels)), per_fold


def realism_report(phantom_films: Sequence[Film], real_films: Sequence[Film], protocol: RealismProtocol) -> dict:
    """Histogram distance, spectrum distance and domain-classifier AUC of ``phantom_films`` against
    ``real_films`` (all resampled to ``protocol.spacing_mm``)."""
    rng = np.random.default_rng(protocol.seed)
    phantom = [resample(f, protocol.spacing_mm) for f in phantom_films]
    real = [resample(f, protocol.spacing_mm) for f in real_films]
    hist_p = np.mean([intensity_histogram(p, protocol.histogram_bins) for p in phantom], axis=0)
    hist_r = np.mean([intensity_histogram(p, protocol.histogram_bins) for p in real], axis=0)
    spec_p = np.mean([radial_power_spectrum(p) for p in phantom], axis=0)
    spec_r = np.mean([radial_power_spectrum(p) for p in real], axis=0)
    crops_p = [sample_crops(p, protocol.crop_px, protocol.crops_per_film, rng) for p in phantom]
    crops_r = [sample_crops(p, protocol.crop_px, protocol.crops_per_film, rng) for p in real]
    classifier = domain_classifier_auc(crops_p, crops_r, protocol)
    return {
        "films": len(phantom_films),
        "histogram_emd": round(histogram_distance(hist_p, hist_r), 4),
        "spectrum_rms_decades": round(spectrum_distance(spec_p, spec_r), 4),
        "spectrum": [round(float(v), 3) for v in spec_p],
        "domain_auc": classifier["auc"],
        "domain_auc_sd": classifier["auc_sd"],
        "domain_auc_by_seed": classifier["auc_by_seed"],
        "domain_fold_auc": classifier["fold_auc"],
    }


def real_spectrum(real_films: Sequence[Film], protocol: RealismProtocol) -> list[float]:
    """The mean radial power spectrum of the real films (for the report's side-by-side)."""
    return [
        round(float(v), 3)
        for v in np.mean([radial_power_spectrum(resample(f, protocol.spacing_mm)) for f in real_films], axis=0)
    ]
