"""The phantom's anatomy as geometry: outlines of lungs, heart, mediastinum, airway and bones.

Everything is built in the *patient frame* on a normalised grid (0..1 on both axes, y down,
x to the image's right; the patient's right lung lies on the image's left). Each structure is a
closed-form boundary — a lung is the set of points between its medial border (mediastinum and
heart) and its lateral border (inner rib margin), below its apical dome and above its
hemidiaphragm — so the 36 Chest ImaGenome regions come out as exact masks, and their boxes are
the extents of those masks after the same rotation the film gets (see ``phantom_film.py``).

Border shapes follow the frontal chest film: the right heart border is the right atrium (an
ellipse arc from the SVC to the right cardiophrenic angle); the left border is aortic knob →
pulmonary trunk → left ventricle, whose bulge meets the left hemidiaphragm at the cardiac apex;
the cardiothoracic ratio sets the heart's width against the widest inner rib margins; each
hemidiaphragm is a dome whose lateral limb falls steeply into a sharp costophrenic recess.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .phantom_params import PhantomParams


@dataclass(frozen=True)
class Landmarks:
    """Key heights and widths of one patient (normalised units, patient frame)."""

    cx: float  # midline x
    half_width: float  # W: widest inner rib margin from the midline
    apex: float  # top of the lung apices
    inlet: float  # thoracic inlet: top of the mediastinum
    arch: float  # aortic knob centre
    carina: float
    hilum: float
    heart_top: float  # top of the left heart border (pulmonary trunk)
    ra_top: float  # top of the right atrial border (cavoatrial junction)
    dome_r: float  # right hemidiaphragm dome
    dome_l: float
    cp_r: float  # right costophrenic recess (lowest lung point)
    cp_l: float
    mediastinum_r: float  # half-width of the upper mediastinum, right
    mediastinum_l: float
    heart_r: float  # right heart border extent from the midline (right atrium)
    heart_l: float  # left heart border extent (left ventricle)
    knob: float  # aortic knob bulge beyond the mediastinum
    clavicle_medial_y: float
    clavicle_lateral_y: float


def landmarks(p: PhantomParams) -> Landmarks:
    def y(v: float) -> float:  # heights scale about the apex with the patient's length
        return 0.115 + (v - 0.115) * p.height_scale + p.shift_y

    w = 0.355 * p.thorax_scale
    dome_r = y(0.595 + 0.085 * p.inspiration)
    dome_l = dome_r + p.left_dome_drop * p.height_scale
    for finding in p.findings:  # lower-lobe volume loss pulls its hemidiaphragm up
        if finding.name == "atelectasis" and finding.zone == "lower":
            if finding.side == "right":
                dome_r -= 0.035 * finding.severity * p.height_scale
            else:
                dome_l -= 0.035 * finding.severity * p.height_scale
    recess = (0.07 + 0.02 * p.inspiration) * p.height_scale
    ctr_width = p.cardiothoracic_ratio * 2.0 * w
    ap = p.view == "AP"
    return Landmarks(
        cx=p.midline_x,
        half_width=w,
        apex=y(0.115),
        inlet=y(0.10),
        arch=y(0.265),
        carina=y(0.335),
        hilum=y(0.405),
        heart_top=y(0.395),
        ra_top=y(0.455),
        dome_r=dome_r,
        dome_l=dome_l,
        cp_r=dome_r + recess,
        cp_l=dome_l + recess,
        mediastinum_r=0.046 * p.thorax_scale * p.mediastinal_width,
        mediastinum_l=0.040 * p.thorax_scale * p.mediastinal_width,
        heart_r=p.right_heart_share * ctr_width,
        heart_l=(1.0 - p.right_heart_share) * ctr_width,
        knob=0.034 * p.aortic_knob * p.thorax_scale,
        clavicle_medial_y=y(0.175 if ap else 0.19) - p.clavicle_lift,
        clavicle_lateral_y=y(0.13 if ap else 0.115) - 1.3 * p.clavicle_lift,
    )


def _cap(v: np.ndarray) -> np.ndarray:
    """sqrt(1 - v²) on [-1, 1], 0 outside: the half-ellipse profile."""
    return np.sqrt(np.clip(1.0 - v * v, 0.0, None))


class ThoraxGeometry:
    """Closed-form borders of one patient's thorax, evaluated on any grid of (x, y)."""

    def __init__(self, params: PhantomParams):
        self.params = params
        self.lm = landmarks(params)

    # --- lateral and apical borders (shared by both sides; d = distance from the midline) ---
    def lateral_border(self, y: np.ndarray, side: str) -> np.ndarray:
        lm = self.lm
        cp = lm.cp_r if side == "right" else lm.cp_l
        t = np.clip((y - lm.apex) / (cp - lm.apex), 0.0, 1.0)
        widening = np.sin(np.clip(t / 0.62, 0.0, 1.0) * np.pi / 2)
        narrowing = 0.035 * np.clip((t - 0.78) / 0.22, 0.0, 1.0)
        return lm.half_width * (0.46 + 0.54 * widening - narrowing)

    def apical_top(self, d: np.ndarray) -> np.ndarray:
        lm = self.lm
        return lm.apex + 1.1 * ((d - 0.36 * lm.half_width) / 1.0) ** 2

    def diaphragm(self, d: np.ndarray, side: str) -> np.ndarray:
        """Height of the hemidiaphragm's upper surface at distance ``d`` from the midline."""
        lm = self.lm
        dome, recess = (lm.dome_r, lm.cp_r) if side == "right" else (lm.dome_l, lm.cp_l)
        peak = 0.48 * lm.half_width
        lateral = dome + (recess - dome) * np.clip((d - peak) / (1.0 * lm.half_width - peak), 0, None) ** 2
        medial = dome + 0.035 * np.clip((peak - d) / peak, 0, None) ** 2
        return np.where(d >= peak, lateral, medial)

    # --- medial borders: mediastinum and heart ---
    def right_atrium(self, y: np.ndarray) -> np.ndarray:
        lm = self.lm
        half_h = (lm.dome_r - lm.ra_top) / 2 + 0.045
        centre = lm.ra_top + half_h - 0.005
        return lm.heart_r * _cap((y - centre) / half_h)

    def left_ventricle(self, y: np.ndarray) -> np.ndarray:
        """The left heart border: a long sloping upper arc from the pulmonary trunk down to the
        widest point just above the dome, then a short rounded apex onto the diaphragm."""
        lm = self.lm
        centre = lm.dome_l - 0.055
        half_up = centre - lm.heart_top + 0.02
        half_down = 0.085
        v = np.where(y < centre, (y - centre) / half_up, (y - centre) / half_down)
        return lm.heart_l * _cap(v)

    def pulmonary_trunk(self, y: np.ndarray) -> np.ndarray:
        lm = self.lm
        centre, half_h = lm.heart_top + 0.03, 0.045
        return (lm.mediastinum_l + 0.022) * _cap((y - centre) / half_h)

    def aortic_knob(self, y: np.ndarray) -> np.ndarray:
        lm = self.lm
        return (lm.mediastinum_l + lm.knob) * _cap((y - lm.arch) / 0.034)

    def medial_border(self, y: np.ndarray, side: str) -> np.ndarray:
        lm = self.lm
        below_inlet = (y >= lm.inlet).astype(np.float32)
        if side == "right":
            base = lm.mediastinum_r * below_inlet
            return np.maximum(base, self.right_atrium(y))
        base = lm.mediastinum_l * below_inlet
        return np.maximum.reduce([base, self.aortic_knob(y), self.pulmonary_trunk(y), self.left_ventricle(y)])

    def heart_border(self, y: np.ndarray, side: str) -> np.ndarray:
        """Extent of the cardiac silhouette from the midline (0 where there is no heart)."""
        lm = self.lm
        if side == "right":
            extent = self.right_atrium(y)
            return np.where(y >= lm.ra_top - 0.02, np.maximum(extent, 0.02), 0.0) * (extent > 0)
        below_top = y >= lm.heart_top
        return np.where(below_top, np.maximum(self.left_ventricle(y), self.pulmonary_trunk(y)), 0.0)

    # --- masks on a grid ---
    def side_distance(self, x: np.ndarray, side: str) -> np.ndarray:
        """Distance from the midline towards the patient's ``side`` (negative on the other side)."""
        return (self.lm.cx - x) if side == "right" else (x - self.lm.cx)

    def lung(self, x: np.ndarray, y: np.ndarray, side: str) -> np.ndarray:
        d = self.side_distance(x, side)
        return (
            (d >= self.medial_border(y, side))
            & (d <= self.lateral_border(y, side))
            & (y >= self.apical_top(d))
            & (y <= self.diaphragm(d, side))
        )

    def heart(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        masks = []
        for side in ("right", "left"):
            d = self.side_distance(x, side)
            masks.append((d >= 0) & (d <= self.heart_border(y, side)) & (y <= self.diaphragm(np.abs(d), side)))
        return masks[0] | masks[1]

    def mediastinum(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        lm = self.lm
        dr, dl = self.side_distance(x, "right"), self.side_distance(x, "left")
        top = y >= lm.inlet
        right = (dr >= 0) & (dr <= self.medial_border(y, "right")) & (y <= self.diaphragm(np.abs(dr), "right"))
        left = (dl >= 0) & (dl <= self.medial_border(y, "left")) & (y <= self.diaphragm(np.abs(dl), "left"))
        return top & (right | left)

    def thoracic_cage(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Inside the inner rib margins, from the apices down (includes what lies below the domes)."""
        d = np.abs(x - self.lm.cx)
        side = np.where(x < self.lm.cx, 0, 1)
        lat = np.where(side == 0, self.lateral_border(y, "right"), self.lateral_border(y, "left"))
        return (d <= lat) & (y >= self.apical_top(d))

    def trachea_centre(self, y: np.ndarray) -> np.ndarray:
        lm = self.lm
        # the aortic knob nudges the trachea slightly to the patient's right
        return lm.cx - 0.006 * _cap((y - lm.arch) / 0.06)

    def trachea(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        lm = self.lm
        half = 0.017 * self.params.thorax_scale
        narrowing = 1.0 - 0.25 * np.clip((y - lm.carina + 0.03) / 0.03, 0, 1)
        return (np.abs(x - self.trachea_centre(y)) <= half * narrowing) & (y >= lm.apex - 0.09) & (y <= lm.carina)

    def hilum(self, x: np.ndarray, y: np.ndarray, side: str) -> np.ndarray:
        lm = self.lm
        d = self.side_distance(x, side)
        med = lm.mediastinum_r if side == "right" else lm.mediastinum_l + 0.015
        centre_d = med + 0.045
        centre_y = lm.hilum + (0.0 if side == "right" else -0.018)
        return ((d - centre_d) / 0.045) ** 2 + ((y - centre_y) / 0.058) ** 2 <= 1.0
