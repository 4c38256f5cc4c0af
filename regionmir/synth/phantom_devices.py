"""Tubes, lines, leads and pacemakers, placed where they sit in a real patient.

Each device is drawn in the patient frame on its own layer (radio-opaque: it adds density), so the
film gets it through the same projection as the anatomy and its box is the exact extent of its
layer. Placement follows the anatomy of :class:`~.phantom_anatomy.ThoraxGeometry`:

- endotracheal tube: down the trachea, tip 3–6 cm above the carina;
- enteric (nasogastric) tube: down the oesophagus just left of the midline, through the left
  hemidiaphragm into the gastric fundus;
- central venous catheter: from the right (or left) subclavian vein under the clavicle to the SVC,
  tip at the cavoatrial junction;
- pacemaker: a generator can in the left (sometimes right) infraclavicular fossa, leads through the
  SVC to the right atrium and the right ventricular apex;
- ECG leads: button electrodes on the chest wall with their wires running off the film.
"""

from __future__ import annotations

import math

import numpy as np

from .phantom_anatomy import ThoraxGeometry
from .phantom_canvas import Canvas

#: Regions whose scene-graph attributes record a device (Chest ImaGenome "tubesandlines" / "devices").
DEVICE_REGIONS = {
    "endotracheal tube": ["trachea", "carina"],
    "enteric tube": ["mediastinum", "abdomen"],
    "central venous catheter": ["svc", "cavoatrial junction"],
    "pacemaker": ["cardiac silhouette"],
    "ecg leads": [],
}
DEVICE_ATTRIBUTE = {
    "endotracheal tube": "tubesandlines|yes|endotracheal tube",
    "enteric tube": "tubesandlines|yes|enteric tube",
    "central venous catheter": "tubesandlines|yes|central venous catheter",
    "pacemaker": "devices|yes|cardiac pacer and wires",
    "ecg leads": "devices|yes|ecg leads",
}


def _tube(canvas: Canvas, xs: np.ndarray, ys: np.ndarray, width: float, stripe: float) -> None:
    """A tube: a faint wall with a dense radio-opaque stripe along it."""
    canvas.line(xs, ys, width, 0.35)
    canvas.line(xs, ys, stripe, 1.0)


def _smooth_path(points: list[tuple[float, float]], n: int = 40) -> tuple[np.ndarray, np.ndarray]:
    """A smooth curve through ``points`` (Catmull-Rom, ``n`` samples per segment)."""
    pts = np.array([points[0]] + points + [points[-1]], dtype=np.float64)
    xs, ys = [], []
    for i in range(1, len(pts) - 2):
        p0, p1, p2, p3 = pts[i - 1], pts[i], pts[i + 1], pts[i + 2]
        t = np.linspace(0.0, 1.0, n, endpoint=False)[:, None]
        seg = 0.5 * (
            (2 * p1) + (-p0 + p2) * t + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t**2 + (-p0 + 3 * p1 - 3 * p2 + p3) * t**3
        )
        xs.append(seg[:, 0])
        ys.append(seg[:, 1])
    xs.append(pts[-2:-1, 0])
    ys.append(pts[-2:-1, 1])
    return np.concatenate(xs), np.concatenate(ys)


def draw_devices(
    g: ThoraxGeometry, names: tuple[str, ...], size: int, to_image, scale: float, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """One density layer per device in ``names`` (values 0..1 on the film's pixel grid)."""
    lm = g.lm
    w = lm.half_width
    layers: dict[str, np.ndarray] = {}
    for name in names:
        canvas = Canvas(size, to_image, scale)
        if name == "endotracheal tube":
            tip = lm.carina - float(rng.uniform(0.03, 0.07))
            ys = np.linspace(-0.1, tip, 30)
            _tube(canvas, g.trachea_centre(ys) + float(rng.normal(0, 0.002)), ys, 0.02, 0.004)
        elif name == "enteric tube":
            x_oes = lm.cx + 0.012
            fundus = (lm.cx + 0.15 + float(rng.normal(0, 0.015)), lm.dome_l + float(rng.uniform(0.05, 0.09)))
            xs, ys = _smooth_path(
                [
                    (x_oes - 0.004, -0.1),
                    (x_oes, lm.carina),
                    (x_oes + 0.01, lm.dome_l - 0.03),
                    (x_oes + 0.05, lm.dome_l + 0.03),
                    fundus,
                    (fundus[0] - 0.03, fundus[1] + 0.03),
                ]
            )
            _tube(canvas, xs, ys, 0.012, 0.003)
        elif name == "central venous catheter":
            sign = -1.0 if rng.random() < 0.7 else 1.0  # usually right-sided
            entry = (lm.cx + sign * 0.62 * w, lm.clavicle_lateral_y + 0.045)
            mid = (lm.cx + sign * 0.25 * w, lm.clavicle_medial_y + 0.025)
            svc = (lm.cx - lm.mediastinum_r + 0.012, lm.clavicle_medial_y + 0.06)
            tip = (lm.cx - lm.mediastinum_r + 0.012, lm.ra_top + float(rng.normal(0, 0.015)))
            xs, ys = _smooth_path([(entry[0] + sign * 0.08, entry[1] - 0.05), entry, mid, svc, tip])
            _tube(canvas, xs, ys, 0.008, 0.003)
        elif name == "pacemaker":
            sign = 1.0 if rng.random() < 0.85 else -1.0  # usually in the left infraclavicular fossa
            cx_can, cy_can = lm.cx + sign * 0.62 * w, lm.clavicle_lateral_y + 0.085
            angle = float(rng.uniform(-0.4, 0.4))
            rx, ry = 0.032, 0.024
            corners = [(-rx, -ry), (rx, -ry), (rx, ry), (-rx, ry)]
            ca, sa = math.cos(angle), math.sin(angle)
            canvas.polygon(
                np.array([cx_can + ca * a - sa * b for a, b in corners]),
                np.array([cy_can + sa * a + ca * b for a, b in corners]),
                1.0,
            )
            ra = (lm.cx - lm.heart_r * 0.6, lm.ra_top + 0.05)
            rv_apex = (lm.cx + 0.55 * lm.heart_l, lm.dome_l - 0.02)
            svc = (lm.cx - lm.mediastinum_r + 0.01, lm.clavicle_medial_y + 0.05)
            for target in (ra, rv_apex):
                xs, ys = _smooth_path(
                    [
                        (cx_can, cy_can),
                        (lm.cx + sign * 0.3 * w, lm.clavicle_medial_y + 0.03),
                        svc,
                        (svc[0], lm.ra_top),
                        target,
                    ]
                )
                canvas.line(xs, ys, 0.004, 1.0)
        elif name == "ecg leads":
            for _ in range(int(rng.integers(2, 5))):
                side = 1.0 if rng.random() < 0.5 else -1.0
                ex = lm.cx + side * float(rng.uniform(0.3, 1.05)) * w
                ey = float(rng.uniform(lm.apex, lm.dome_r + 0.05))
                canvas.ellipse(ex, ey, 0.014, 0.014, 0.45)
                canvas.ellipse(ex, ey, 0.005, 0.005, 1.0)
                exit_x = ex + side * float(rng.uniform(0.2, 0.5))
                xs, ys = _smooth_path(
                    [
                        (ex, ey),
                        (ex + side * 0.05, ey + float(rng.normal(0, 0.05))),
                        (exit_x, ey + float(rng.normal(0, 0.15))),
                    ]
                )
                canvas.line(xs, ys, 0.0025, 0.8)
        else:
            raise ValueError(f"unknown device {name!r}")
        layers[name] = canvas.array()
    return layers
