"""Who the phantom patient is: body habitus, pose, breath, heart size, exposure and findings.

One :class:`PhantomParams` fully determines a film; :func:`sample_params` draws one from a NumPy
generator, so a seed gives the same patient on every machine. Lengths are in units of the image
side (0..1), y downwards, x to the image's right. The patient faces the viewer (PA convention):
the patient's **right** is on the image's **left**.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

#: Findings the generator can draw, and the regions whose scene-graph attributes record them.
FINDINGS = ("consolidation", "pleural effusion", "cardiomegaly", "pneumothorax")


@dataclass(frozen=True)
class Finding:
    name: str            # one of FINDINGS
    side: str            # "left", "right" or "midline" (the patient's side)
    zone: str = ""       # "upper", "mid", "lower" for consolidation
    severity: float = 0.5  # 0..1


@dataclass(frozen=True)
class PhantomParams:
    view: str = "PA"                 # PA (standing) or AP (portable, supine-ish)
    sex: str = "M"
    midline_x: float = 0.5           # x of the spine's centre line
    shift_y: float = 0.0             # whole patient moved up/down on the detector
    thorax_scale: float = 1.0        # width of the rib cage relative to the average adult
    height_scale: float = 1.0        # apex-to-diaphragm length relative to the average
    soft_tissue: float = 1.0         # habitus: thin 0.8 .. obese 1.35
    inspiration: float = 0.5         # 0 = poor (high domes) .. 1 = deep (low, flat domes)
    cardiothoracic_ratio: float = 0.46
    rotation_deg: float = 0.0        # in-plane rotation of the patient
    left_dome_drop: float = 0.025    # the left hemidiaphragm usually sits lower than the right
    aortic_knob: float = 1.0         # size of the aortic knob (grows with age)
    exposure: float = 2.6            # attenuation scale: higher = whiter film (under-penetrated)
    gamma: float = 1.0
    noise: float = 0.01              # quantum noise, in display units
    blur_px512: float = 0.7          # detector/motion blur, Gaussian sigma in pixels at 512 px
    rib_prominence: float = 1.0
    vessel_seed: int = 0             # seeds the vascular trees and texture fields
    findings: tuple[Finding, ...] = field(default_factory=tuple)

    def as_dict(self) -> dict:
        d = asdict(self)
        d["findings"] = [asdict(f) for f in self.findings]
        return d


def sample_params(rng: np.random.Generator) -> PhantomParams:
    """Draw one patient. Roughly 45 % of films carry one or two findings."""
    view = "PA" if rng.random() < 0.7 else "AP"
    sex = "F" if rng.random() < 0.5 else "M"
    ctr = float(rng.normal(0.45, 0.03))
    if view == "AP":  # AP films magnify the heart and are taken in worse breath
        ctr += 0.03
    findings: list[Finding] = []
    if rng.random() < 0.45:
        n = 1 if rng.random() < 0.75 else 2
        names = rng.choice(len(FINDINGS), size=n, replace=False)
        for idx in names:
            name = FINDINGS[int(idx)]
            side = "midline" if name == "cardiomegaly" else ("left" if rng.random() < 0.5 else "right")
            zone = str(rng.choice(["upper", "mid", "lower"])) if name == "consolidation" else ""
            findings.append(Finding(name, side, zone, float(rng.uniform(0.35, 1.0))))
            if name == "cardiomegaly":
                ctr = float(rng.uniform(0.56, 0.64))
    ctr = float(np.clip(ctr, 0.38, 0.66))
    return PhantomParams(
        view=view,
        sex=sex,
        midline_x=float(rng.normal(0.5, 0.015)),
        shift_y=float(rng.normal(0.0, 0.015)),
        thorax_scale=float(np.clip(rng.normal(1.0, 0.045), 0.88, 1.1)),
        height_scale=float(np.clip(rng.normal(1.0, 0.04), 0.9, 1.1)),
        soft_tissue=float(rng.uniform(0.8, 1.35)),
        inspiration=float(rng.uniform(0.0, 0.6) if view == "AP" else rng.uniform(0.3, 1.0)),
        cardiothoracic_ratio=ctr,
        rotation_deg=float(rng.normal(0.0, 2.5 if view == "AP" else 1.3)),
        left_dome_drop=float(rng.uniform(0.0, 0.045)),
        aortic_knob=float(rng.uniform(0.7, 1.3)),
        exposure=float(rng.uniform(1.9, 2.8)),
        gamma=float(rng.uniform(0.8, 1.25)),
        noise=float(rng.uniform(0.004, 0.02 if view == "AP" else 0.012)),
        blur_px512=float(rng.uniform(0.4, 1.3)),
        rib_prominence=float(rng.uniform(0.7, 1.2)),
        vessel_seed=int(rng.integers(0, 2**31 - 1)),
        findings=tuple(findings),
    )
