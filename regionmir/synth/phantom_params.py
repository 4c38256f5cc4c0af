"""Who the phantom patient is, how the film was taken and processed, and what it shows.

One :class:`PhantomParams` fully determines a film; :func:`sample_params` draws one from a NumPy
generator for a **preset**, so a seed gives the same film on every machine:

- ``realistic`` (the default): films that vary the way an archive does — habitus, age, breath,
  heart and mediastinum, rib and clavicle geometry per patient; rotation up to ±10°, tilt,
  lordotic projections, a field of view that may cut an apex or a costophrenic angle; CR/DR
  processing (LUT, multi-frequency enhancement), exposure, detector noise, grid lines, collimation,
  burnt-in text and a laterality marker, now and then a horizontally flipped film; branching
  vessels, trabecular bone; findings (effusion, cardiomegaly, consolidation, atelectasis,
  pneumothorax, nodules) and devices (tubes, lines, ECG leads, pacemakers).
- ``classic``: generator 1, the narrow distribution earlier releases drew (small rotations, one
  field of view, no devices or text). Fast to learn, and saturates: tests that need clean,
  separable films use it.

 Lengths are in units of the image
side (0..1), y downwards, x to the image's right. The patient faces the viewer (PA convention):
the patient's **right** is on the image's **left**.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

import numpy as np

#: Findings the generator can draw, and the regions whose scene-graph attributes record them.
FINDINGS = ("consolidation", "pleural effusion", "cardiomegaly", "pneumothorax")
#: Findings only the realistic preset draws.
EXTRA_FINDINGS = ("atelectasis", "nodule")
#: Devices the realistic preset draws (see ``phantom_devices``).
DEVICES = ("endotracheal tube", "enteric tube", "central venous catheter", "pacemaker", "ecg leads")
PRESETS = ("realistic", "classic")


@dataclass(frozen=True)
class Finding:
    name: str  # one of FINDINGS
    side: str  # "left", "right" or "midline" (the patient's side)
    zone: str = ""  # "upper", "mid", "lower" for consolidation
    severity: float = 0.5  # 0..1


@dataclass(frozen=True)
class PhantomParams:
    view: str = "PA"  # PA (standing) or AP (portable, supine-ish)
    sex: str = "M"
    midline_x: float = 0.5  # x of the spine's centre line
    shift_y: float = 0.0  # whole patient moved up/down on the detector
    thorax_scale: float = 1.0  # width of the rib cage relative to the average adult
    height_scale: float = 1.0  # apex-to-diaphragm length relative to the average
    soft_tissue: float = 1.0  # habitus: thin 0.8 .. obese 1.35
    inspiration: float = 0.5  # 0 = poor (high domes) .. 1 = deep (low, flat domes)
    cardiothoracic_ratio: float = 0.46
    rotation_deg: float = 0.0  # in-plane rotation of the patient
    left_dome_drop: float = 0.025  # the left hemidiaphragm usually sits lower than the right
    aortic_knob: float = 1.0  # size of the aortic knob (grows with age)
    exposure: float = 2.6  # attenuation scale: higher = whiter film (under-penetrated)
    gamma: float = 1.0
    noise: float = 0.01  # quantum noise, in display units
    blur_px512: float = 0.7  # detector/motion blur, Gaussian sigma in pixels at 512 px
    rib_prominence: float = 1.0
    vessel_seed: int = 0  # seeds the vascular trees and texture fields
    findings: tuple[Finding, ...] = field(default_factory=tuple)
    # --- generator 2 (realistic preset); the defaults reproduce generator 1 exactly ---
    age: float = 50.0  # years: bone density, aortic unfolding
    bone_density: float = 1.0  # scales every bone's attenuation (children, osteopenia)
    rib_spacing: float = 1.0  # rib-to-rib pitch relative to the average
    rib_slope: float = 0.0  # extra downward slope of the posterior ribs (kyphosis, habitus)
    clavicle_lift: float = 0.0  # clavicles projected higher (lordotic, AP): normalised units
    mediastinal_width: float = 1.0
    right_heart_share: float = 0.36  # share of the heart's width right of the midline
    tilt: float = 1.0  # cranio-caudal projection: < 1 foreshortens the thorax
    field_scale: float = 1.0  # patient size on the detector (> 1: zoomed in, edges cut)
    field_shift_x: float = 0.0  # detector offset (normalised units)
    field_shift_y: float = 0.0
    flipped: bool = False  # film stored mirrored; boxes keep the patient's anatomy names
    processing: str = ""  # "" (generator 1), "CR" or "DR"
    lut_centre: float = 0.5  # sigmoid display LUT applied after log processing
    lut_width: float = 1.0
    enhance_fine: float = 0.0  # unsharp-mask amount, small kernel (edges)
    enhance_coarse: float = 0.0  # large-scale range compression (equalisation)
    detector_noise: float = 0.0  # additive electronic noise with row correlation
    grid_lines: float = 0.0  # amplitude of anti-scatter grid lines (0: no grid)
    grid_period_px512: float = 3.0
    collimation: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)  # left, top, right, bottom margins
    marker: bool = False  # a lead laterality marker on the film
    marker_side: str = "left"  # "left" or "right": the patient's side it marks ("L" or "R"), placed there
    marker_top: float = 0.04  # its distance below the field's top edge (normalised units)
    marker_inset: float = 0.1  # its inner edge's distance from the field's side edge (normalised units)
    text: tuple[str, ...] = ()  # burnt-in annotations (no patient data)
    texture: str = "regular"  # "regular" (generator 1) or "natural": branching, tapering vessels, trabecular bone, soft-tissue gradients
    devices: tuple[str, ...] = ()  # names from DEVICES
    # auto-ranging (generator 2): the processing station maps the film's own 1st and 99.5th
    # percentiles to these display values, as CR exposure recognition and DR auto-windowing do;
    # None: no auto-ranging (generator 1)
    display_range: tuple[float, float] | None = None
    # gastric air under the left dome (generator 2): (size, dx, dy) — size 0: none; 1: an average
    # adult's; dx, dy: offset from its usual place. Erect (PA) films show a dome of air over a flat
    # air-fluid level, supine (AP) films a rounded lucency without one. None: generator 1's bubble
    gastric_bubble: tuple[float, float, float] | None = None

    def as_dict(self) -> dict:
        d = asdict(self)
        d["findings"] = [asdict(f) for f in self.findings]
        return d


def sample_params(rng: np.random.Generator, preset: str = "realistic") -> PhantomParams:
    """Draw one film of ``preset`` (see the module docstring)."""
    if preset == "classic":
        return sample_classic(rng)
    if preset == "realistic":
        return sample_realistic(rng)
    raise ValueError(f"unknown phantom preset {preset!r}; choose one of {', '.join(PRESETS)}")


def sample_classic(rng: np.random.Generator) -> PhantomParams:
    """Generator 1: draw one patient. Roughly 45 % of films carry one or two findings."""
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


#: Burnt-in annotations a film may carry (station and technique text; never patient data).
_ANNOTATIONS = (
    "PORTABLE",
    "ERECT",
    "SUPINE",
    "SEMI-ERECT",
    "CHEST",
    "INSP",
    "kVp 110",
    "kVp 90",
    "mAs 2.5",
    "STAT",
    "DR",
    "CR",
    "ICU",
    "AM",
    "PM",
    "W1",
    "GRID",
)


def _findings_realistic(rng: np.random.Generator, view: str) -> list[Finding]:
    """About half the films carry findings; portable (AP) films more often, and more devices."""
    names = list(FINDINGS + EXTRA_FINDINGS)
    weights = np.array([0.22, 0.22, 0.14, 0.07, 0.2, 0.15])
    findings: list[Finding] = []
    if rng.random() < (0.75 if view == "AP" else 0.5):
        n = 1 if rng.random() < 0.6 else (2 if rng.random() < 0.8 else 3)
        picks = rng.choice(len(names), size=n, replace=False, p=weights / weights.sum())
        for idx in picks:
            name = names[int(idx)]
            side = "midline" if name == "cardiomegaly" else ("left" if rng.random() < 0.5 else "right")
            zone = ""
            if name in ("consolidation", "nodule"):
                zone = str(rng.choice(["upper", "mid", "lower"]))
            elif name == "atelectasis":
                zone = str(rng.choice(["mid", "lower"], p=[0.3, 0.7]))
            findings.append(Finding(name, side, zone, float(rng.uniform(0.3, 1.0))))
    return findings


def sample_realistic(rng: np.random.Generator) -> PhantomParams:
    """Generator 2: patient, positioning, acquisition, findings and devices as an archive has them."""
    params = _sample_realistic_body(rng)
    # drawn after the rest, so the draws above are the same as before these fields existed
    bubble = 0.0 if rng.random() < 0.12 else float(np.clip(rng.lognormal(0.0, 0.3), 0.5, 1.8))
    return replace(
        params,
        gastric_bubble=(bubble, float(rng.normal(0.0, 0.015)), float(np.clip(rng.normal(0.0, 0.01), -0.008, 0.03))),
        marker_side="left" if rng.random() < 0.5 else "right",
        marker_top=float(rng.uniform(0.07, 0.13)),  # the upper outer corner, below the top line of text
    )


def _sample_realistic_body(rng: np.random.Generator) -> PhantomParams:
    view = "PA" if rng.random() < 0.55 else "AP"  # hospital archives: about half are portable films
    ap = view == "AP"
    sex = "F" if rng.random() < 0.5 else "M"
    age = float(np.clip(rng.gamma(6.0, 10.0), 4.0, 95.0))
    child = age < 16
    findings = _findings_realistic(rng, view)
    ctr = float(rng.normal(0.46 if not child else 0.5, 0.035)) + (0.035 if ap else 0.0)
    if any(f.name == "cardiomegaly" for f in findings):
        ctr = float(rng.uniform(0.55, 0.66))
    ctr = float(np.clip(ctr, 0.36, 0.68))
    habitus = float(np.clip(rng.lognormal(0.0, 0.18), 0.7, 1.6))
    elderly = float(np.clip((age - 55) / 30, 0, 1))
    lordotic = float(rng.uniform(0.02, 0.07)) if rng.random() < (0.12 if ap else 0.05) else 0.0
    processing = "DR" if rng.random() < 0.55 else "CR"
    devices: list[str] = []
    if ap:
        for name, p in (
            ("ecg leads", 0.45),
            ("endotracheal tube", 0.25),
            ("enteric tube", 0.25),
            ("central venous catheter", 0.35),
            ("pacemaker", 0.06),
        ):
            if rng.random() < p:
                devices.append(name)
    else:
        for name, p in (("pacemaker", 0.05), ("ecg leads", 0.05), ("central venous catheter", 0.04)):
            if rng.random() < p:
                devices.append(name)
    text = tuple(str(t) for t in rng.choice(_ANNOTATIONS, size=int(rng.integers(0, 4)), replace=False))
    collimated = rng.random() < 0.35
    collimation = tuple(float(rng.uniform(0.0, 0.04)) if collimated else 0.0 for _ in range(4))
    return PhantomParams(
        view=view,
        sex=sex,
        midline_x=float(rng.normal(0.5, 0.02)),
        shift_y=float(rng.normal(0.0, 0.02)),
        thorax_scale=float(np.clip(rng.normal(1.0 if not child else 0.92, 0.06), 0.82, 1.14)),
        height_scale=float(np.clip(rng.normal(1.0, 0.06), 0.86, 1.14)),
        soft_tissue=float(np.clip(0.75 + 0.45 * (habitus - 0.7), 0.7, 1.4)),
        inspiration=float(rng.uniform(0.0, 0.65) if ap else rng.uniform(0.2, 1.0)),
        cardiothoracic_ratio=ctr,
        rotation_deg=float(np.clip(rng.normal(0.0, 5.0 if ap else 3.0), -10.0, 10.0)),
        left_dome_drop=float(rng.normal(0.02, 0.025)),
        aortic_knob=float(np.clip(0.7 + 0.8 * elderly + rng.normal(0, 0.15), 0.5, 1.7)),
        exposure=float(rng.uniform(1.2, 3.6)),  # from over- to under-penetrated
        gamma=float(rng.uniform(0.75, 1.3)),
        # noise per 0.8 mm pixel: a real film's, averaged over that area (realism report: more
        # made the phantoms' fine scales too strong against real films)
        noise=float(rng.uniform(0.0016, 0.012 if ap else 0.006)),
        blur_px512=float(rng.uniform(0.5, 1.4)),
        rib_prominence=float(rng.uniform(0.36, 0.75)),  # processed films show ribs faintly
        vessel_seed=int(rng.integers(0, 2**31 - 1)),
        findings=tuple(findings),
        age=age,
        bone_density=float(np.clip((0.75 if child else 1.0) - 0.3 * elderly + rng.normal(0, 0.08), 0.45, 1.25)),
        rib_spacing=float(np.clip(rng.normal(1.0, 0.05), 0.88, 1.12)),
        rib_slope=float(np.clip(rng.normal(0.0, 0.02) + 0.03 * elderly, -0.03, 0.07)),
        clavicle_lift=float(lordotic * 1.0 + (0.015 if ap else 0.0) + rng.normal(0, 0.01)),
        mediastinal_width=float(np.clip(rng.normal(1.0 + (0.15 if ap else 0.0) + 0.1 * elderly, 0.1), 0.8, 1.5)),
        right_heart_share=float(np.clip(rng.normal(0.36, 0.035), 0.26, 0.46)),
        tilt=float(np.clip(rng.normal(1.0 - lordotic, 0.025), 0.88, 1.05)),
        field_scale=float(np.clip(rng.normal(1.0, 0.08), 0.85, 1.16)),
        field_shift_x=float(rng.normal(0.0, 0.015)),
        field_shift_y=float(rng.normal(0.0, 0.025)),
        flipped=bool(rng.random() < 0.06),
        processing=processing,
        lut_centre=float(rng.normal(0.55, 0.04)),
        lut_width=float(rng.uniform(1.0, 1.8)),
        enhance_fine=float(rng.uniform(0.1, 0.6) if processing == "DR" else rng.uniform(0.05, 0.35)),
        enhance_coarse=float(rng.uniform(0.1, 0.275)),
        detector_noise=float(rng.uniform(0.0008, 0.004)),
        grid_lines=float(rng.uniform(0.004, 0.015)) if rng.random() < (0.3 if processing == "CR" else 0.1) else 0.0,
        grid_period_px512=float(rng.uniform(2.2, 4.5)),
        collimation=collimation,  # type: ignore[arg-type]
        marker=bool(rng.random() < 0.85),
        text=text,
        texture="natural",
        devices=tuple(devices),
        display_range=(float(rng.uniform(0.0, 0.06)), float(rng.uniform(0.9, 0.98))),
    )
