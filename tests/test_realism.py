"""The realism measure: AUC, histogram and spectrum distances, and a domain classifier that finds a
real difference and does not invent one."""

from __future__ import annotations

import itertools
from dataclasses import replace

import numpy as np
import pytest

from regionmir.realism import (
    Film,
    RealismProtocol,
    domain_classifier_auc,
    histogram_distance,
    intensity_histogram,
    radial_power_spectrum,
    realism_report,
    resample,
    roc_auc,
)


def test_roc_auc_matches_pairwise_counting_with_ties():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 6, size=40).astype(float)
    labels = rng.random(40) < 0.4
    pairs = [(p, n) for p, n in itertools.product(scores[labels], scores[~labels])]
    expected = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in pairs) / len(pairs)
    assert roc_auc(scores, labels) == pytest.approx(expected)
    assert roc_auc([3, 2, 1, 0], [1, 1, 0, 0]) == 1.0 and roc_auc([0, 1, 2, 3], [1, 1, 0, 0]) == 0.0
    with pytest.raises(ValueError):
        roc_auc([1, 2], [1, 1])


def test_histogram_distance_is_the_shift_between_point_masses():
    a = intensity_histogram(np.full((8, 8), 0.2), 100)
    b = intensity_histogram(np.full((8, 8), 0.7), 100)
    assert histogram_distance(a, a) == 0.0
    assert histogram_distance(a, b) == pytest.approx(0.5, abs=0.011)


def test_radial_spectrum_is_flat_for_white_noise_and_falls_for_smooth_images():
    rng = np.random.default_rng(1)
    white = radial_power_spectrum(rng.standard_normal((128, 128)))
    assert np.ptp(white[2:]) < 0.3
    smooth = np.cumsum(np.cumsum(rng.standard_normal((128, 128)), axis=0), axis=1)
    assert radial_power_spectrum(smooth)[-1] < radial_power_spectrum(smooth)[1] - 2


def test_resample_keeps_the_physical_size():
    film = Film("a", np.zeros((100, 200), np.float32), spacing_mm=0.5)
    assert resample(film, 1.0).shape == (50, 100)


def _films(rng: np.random.Generator, count: int, noise: float) -> list[np.ndarray]:
    """Crop stacks of smooth ramps with added pixel noise of ``noise`` sd."""
    out = []
    for _ in range(count):
        ramp = np.linspace(0.2, 0.8, 24, dtype=np.float32)[None, None, :] * np.ones((16, 24, 1), np.float32)
        out.append(np.clip(ramp + noise * rng.standard_normal((16, 24, 24)).astype(np.float32), 0, 1))
    return out


def test_domain_classifier_tells_noisy_from_clean_but_not_same_from_same():
    protocol = RealismProtocol(crop_px=24, steps=60, batch=32, folds=3, seed=0, repeats=1)
    rng = np.random.default_rng(2)
    different = domain_classifier_auc(_films(rng, 6, 0.08), _films(rng, 3, 0.0), protocol)
    assert different["auc"] > 0.9
    same = domain_classifier_auc(_films(rng, 6, 0.04), _films(rng, 3, 0.04), protocol)
    assert 0.3 < same["auc"] < 0.7
    assert len(same["fold_auc"]) == 3


def test_domain_auc_is_the_mean_over_classifier_seeds_each_as_a_one_seed_protocol_gives_it():
    """Repeats are independent classifiers: seed s of a repeated protocol is the one-seed protocol
    with seed s, and the AUC reported is their mean with their sd."""
    rng = np.random.default_rng(4)
    phantom, real = _films(rng, 4, 0.05), _films(rng, 2, 0.03)
    base = RealismProtocol(crop_px=24, steps=15, batch=16, folds=2, seed=3)
    repeated = domain_classifier_auc(phantom, real, replace(base, repeats=3))
    singles = [domain_classifier_auc(phantom, real, replace(base, seed=s, repeats=1))["auc"] for s in (3, 4, 5)]
    assert repeated["auc_by_seed"] == singles
    assert repeated["auc"] == pytest.approx(np.mean(singles), abs=1e-4)
    assert repeated["auc_sd"] == pytest.approx(np.std(singles, ddof=1), abs=1e-4)
    with pytest.raises(ValueError, match="repeats"):
        domain_classifier_auc(phantom, real, replace(base, repeats=0))


def test_report_has_every_figure():
    rng = np.random.default_rng(3)
    phantom = [Film(f"p{i}", rng.random((80, 80)).astype(np.float32), 1.0) for i in range(4)]
    real = [Film(f"r{i}", np.clip(rng.normal(0.5, 0.1, (80, 80)), 0, 1).astype(np.float32), 0.5) for i in range(2)]
    report = realism_report(phantom, real, RealismProtocol(crop_px=24, crops_per_film=8, steps=20, batch=16, repeats=2))
    assert set(report) >= {
        "histogram_emd",
        "spectrum_rms_decades",
        "domain_auc",
        "domain_auc_sd",
        "domain_auc_by_seed",
        "domain_fold_auc",
        "spectrum",
    }
    assert len(report["domain_auc_by_seed"]) == 2
    assert 0.0 <= report["domain_auc"] <= 1.0
