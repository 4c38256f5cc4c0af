"""Render one phantom chest film and the exact boxes of its 36 regions.

Every output pixel is mapped back into the patient frame (undoing the patient's rotation), the
closed-form anatomy of ``phantom_anatomy`` is evaluated there, and a density map (how much tissue
the beam crosses: soft tissue by body thickness, water-dense mediastinum, heart and abdomen, air in
the lungs and airway, bone in ribs, clavicles, spine, scapulae) is turned into display intensity
through Beer-Lambert attenuation, an exposure/gamma curve, detector blur and quantum noise.
Region masks are evaluated on the same mapped grid, so a box is the exact pixel extent of its
region on the film that was written.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..anatomy import ANATOMY_NAMES
from ..boxes import Box
from .phantom_acquisition import annotate, collimate, detect_and_process, laterality_marker
from .phantom_anatomy import ThoraxGeometry
from .phantom_canvas import Canvas, gaussian_blur, smooth_noise
from .phantom_devices import draw_devices
from .phantom_params import PhantomParams


@dataclass
class PhantomFilm:
    image: np.ndarray  # float32 HxW in [0, 1], bright = dense
    boxes: dict[str, Box]  # bbox_name → box in pixels of ``image``
    params: PhantomParams
    device_boxes: dict[str, Box] = field(default_factory=dict)  # device name → box on ``image``


def _bounding_box(mask: np.ndarray) -> Box | None:
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    return Box(float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1))


def render_film(params: PhantomParams, size: int) -> PhantomFilm:
    """Render a ``size`` × ``size`` film of the patient ``params`` describes."""
    g = ThoraxGeometry(params)
    lm = g.lm
    s_ = size / 512.0  # pixel lengths below are tuned at 512 px
    theta = math.radians(params.rotation_deg)
    cos_t, sin_t = math.cos(theta), math.sin(theta)
    # projection: cranio-caudal tilt (foreshortening), in-plane rotation, then the detector's
    # field of view (zoom and offset); the defaults are the identity of generator 1
    zoom, tilt = params.field_scale, params.tilt
    off_u, off_v = params.field_shift_x, params.field_shift_y

    framed = zoom != 1.0 or off_u != 0.0 or off_v != 0.0

    def to_image(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        dx, dy = x - 0.5, (y - 0.5) * tilt
        u_, v_ = 0.5 + cos_t * dx - sin_t * dy, 0.5 + sin_t * dx + cos_t * dy
        if framed:
            u_, v_ = 0.5 + zoom * (u_ - 0.5) + off_u, 0.5 + zoom * (v_ - 0.5) + off_v
        return u_, v_

    centres = (np.arange(size, dtype=np.float32) + 0.5) / size
    u, v = np.meshgrid(centres, centres)
    du, dv = u - 0.5, v - 0.5
    if framed:
        du, dv = (du - off_u) / zoom, (dv - off_v) / zoom
    x = 0.5 + cos_t * du + sin_t * dv  # inverse projection: image pixel → patient frame
    y = 0.5 - sin_t * du + cos_t * dv
    if tilt != 1.0:
        y = 0.5 + (y - 0.5) / tilt
    rng = np.random.default_rng(params.vessel_seed)
    # generator 2's extra randomness comes from its own stream, so generator 1 films are unchanged
    rng2 = np.random.default_rng([params.vessel_seed, 2])
    natural = params.texture == "natural"

    def canvas() -> Canvas:
        return Canvas(size, to_image, zoom)

    lung_r, lung_l = g.lung(x, y, "right"), g.lung(x, y, "left")
    lung = lung_r | lung_l
    heart = g.heart(x, y)
    mediastinum = g.mediastinum(x, y)
    cage = g.thoracic_cage(x, y)
    trachea = g.trachea(x, y)
    dx_mid = x - lm.cx
    dome_here = np.where(dx_mid < 0, g.diaphragm(np.abs(dx_mid), "right"), g.diaphragm(np.abs(dx_mid), "left"))
    below_diaphragm = y > dome_here

    # --- body outline and soft tissue thickness ---
    w = lm.half_width
    wall = 0.045 + 0.045 * params.soft_tissue
    shoulder = np.clip((y - (lm.apex - 0.085)) / 0.13, 0.0, 1.0)
    body_half = 0.10 + (w + wall - 0.10) * np.sin(shoulder * np.pi / 2) + 0.03 * np.clip(y - 0.6, 0, None)
    body_half = np.maximum(body_half, 1e-3)
    body_profile = np.sqrt(np.clip(1.0 - (dx_mid / body_half) ** 2, 0.0, None))
    arm_d = np.abs(dx_mid) - body_half - 0.012
    arm = np.sqrt(np.clip(1.0 - ((arm_d - 0.07) / 0.06) ** 2, 0.0, None)) * (y > lm.apex - 0.02)
    soft = 0.27 * params.soft_tissue * body_profile**0.7 + 0.22 * arm
    body = (body_profile > 0) | (arm > 0)
    if natural:  # soft tissue is never uniform: muscle, fat planes, skin folds
        soft = (
            soft * (1.0 + 0.12 * smooth_noise(rng2, size, 45 * s_)) + 0.015 * smooth_noise(rng2, size, 12 * s_) * body
        )

    # organ margins: a lung's or the heart's thickness grows over a few millimetres from its edge,
    # so generator 2's borders ramp (wider blur) where generator 1's are near steps
    blur_anat = (4.5 if natural else 2.6) * s_
    lung_s = gaussian_blur(lung.astype(np.float32), (2.5 if natural else 1.2) * s_)
    interior = body & (body_profile > 0) & ~lung & (cage | below_diaphragm) & (np.abs(dx_mid) <= w + 0.01)
    interior_s = gaussian_blur(interior.astype(np.float32), blur_anat)
    heart_s = gaussian_blur(heart.astype(np.float32), blur_anat)

    # The heart is a thick, rounded organ: it attenuates most at its centre and fades to its
    # borders, which is what keeps a real cardiac silhouette from looking like a cut-out.
    heart_half = np.maximum(g.heart_border(y, "left") + g.heart_border(y, "right"), 1e-3) / 2
    heart_centre = lm.cx + (g.heart_border(y, "left") - g.heart_border(y, "right")) / 2
    heart_thickness = np.sqrt(np.clip(1 - ((x - heart_centre) / heart_half) ** 2, 0, None))
    # Lungs are most lucent in the mid zones; apices sit under shoulder muscle, bases over the domes.
    lung_top = g.apical_top(np.abs(dx_mid))
    apex_overlap = np.clip(1 - (y - lung_top) / 0.12, 0, 1) ** 2
    base_overlap = np.clip(1 - (dome_here - y) / 0.10, 0, 1) ** 2
    density = soft * (1.0 - 0.62 * lung_s) + 0.19 * interior_s + 0.06 * heart_s * heart_thickness
    density += (0.05 * apex_overlap + 0.035 * base_overlap) * lung_s
    density += 0.012 * smooth_noise(rng, size, 5 * s_) * lung_s  # parenchymal texture
    density += 0.02 * smooth_noise(rng, size, 20 * s_) * interior_s  # bowel / soft tissue mottle

    # --- airway and gastric bubble (air inside water) ---
    airway = canvas()
    ys_tr = np.linspace(lm.apex - 0.09, lm.carina, 24)
    airway.line(g.trachea_centre(ys_tr), ys_tr, 0.032 * params.thorax_scale)
    airway.line(
        np.array([lm.cx - 0.004, lm.cx - 0.045, lm.cx - 0.075]),
        np.array([lm.carina, lm.carina + 0.035, lm.carina + 0.075]),
        0.018,
    )
    airway.line(
        np.array([lm.cx + 0.004, lm.cx + 0.05, lm.cx + 0.09]),
        np.array([lm.carina, lm.carina + 0.03, lm.carina + 0.055]),
        0.016,
    )
    density -= 0.16 * gaussian_blur(airway.array(), 1.5 * s_) * (1 - lung_s)
    if params.gastric_bubble is None:  # generator 1's
        bubble = (((x - (lm.cx + 0.16)) / 0.055) ** 2 + ((y - (lm.dome_l + 0.055)) / 0.04) ** 2 <= 1) & (
            y > lm.dome_l + 0.045
        )
        density -= 0.15 * gaussian_blur(bubble.astype(np.float32), 1.5 * s_)
    elif params.gastric_bubble[0] > 0:
        density -= 0.15 * gaussian_blur(_gastric_bubble(g, x, y, v, to_image).astype(np.float32), 1.5 * s_)

    # --- bones ---
    bones_post, bones_ant, bones_other = canvas(), canvas(), canvas()
    clavicle_layers: dict[str, np.ndarray] = {}
    for side, sign in (("right", -1.0), ("left", 1.0)):
        cp = lm.cp_r if side == "right" else lm.cp_l
        for k in range(11):
            # real rib cages are not a ladder: spacing, width and curvature vary rib to rib
            y0 = lm.apex - 0.045 + k * 0.052 * params.height_scale * params.rib_spacing + float(rng.normal(0, 0.004))
            if y0 > cp + 0.02:
                break
            t = np.linspace(0.0, 1.0, 28)
            d_end = float(g.lateral_border(np.array([y0 + 0.06]), side)[0]) + 0.012
            d = 0.03 + (d_end - 0.03) * np.sin(t * np.pi / 2) ** 0.9
            arc = 0.03 * float(rng.uniform(0.8, 1.2))
            yy = y0 - arc * np.sin(np.pi * np.clip(t * 1.1, 0, 1)) + 0.09 * t**3
            if params.rib_slope:
                yy = yy + params.rib_slope * t
            width = (0.021 if k > 0 else 0.016) * float(rng.uniform(0.85, 1.15))
            bones_post.line(lm.cx + sign * d, yy, width, 1.0)
            bones_post.line(lm.cx + sign * d, yy, width * 0.45, 0.7)  # marrow: cortex a little brighter
            # lateral turn and anterior rib, descending medially towards the sternum
            ta = np.linspace(0.0, 1.0, 20)
            ya0 = yy[-1]
            da = d_end - (d_end - 0.11) * ta
            ya = ya0 + 0.035 * np.sin(ta * np.pi / 2) + 0.12 * ta
            bones_ant.line(lm.cx + sign * da, ya, 0.016, 1.0)
        # clavicle: S-shaped, sternal end low and medial, acromial end high and lateral
        t = np.linspace(0.0, 1.0, 30)
        d = 0.024 + (w * 0.98 + 0.035 - 0.024) * t
        yy = lm.clavicle_medial_y + (lm.clavicle_lateral_y - lm.clavicle_medial_y) * t + 0.012 * np.sin(2 * np.pi * t)
        clavicle = canvas()
        clavicle.line(lm.cx + sign * d, yy, 0.024, 1.0)
        clavicle.line(lm.cx + sign * d, yy, 0.010, 0.75)
        clavicle_layers[side] = clavicle.array()
        # humeral head and scapula (more over the lungs on AP films)
        bones_other.ellipse(lm.cx + sign * (w + wall + 0.05), lm.clavicle_lateral_y + 0.06, 0.05, 0.055, 0.55)
        scap_in = w * (0.78 if params.view == "AP" else 0.98)
        ys_sc = np.linspace(lm.clavicle_lateral_y + 0.02, lm.hilum + 0.06, 16)
        bones_other.line(lm.cx + sign * (scap_in + 0.05 * (ys_sc - ys_sc[0])), ys_sc, 0.012, 0.35)
    spine = np.abs(dx_mid) <= 0.031 * params.thorax_scale
    vert_phase = ((y - lm.apex) / (0.042 * params.height_scale)) % 1.0
    disc = (vert_phase > 0.86).astype(np.float32)
    pedicle = ((np.abs(np.abs(dx_mid) - 0.021) < 0.006) & (np.abs(vert_phase - 0.35) < 0.12)).astype(np.float32)
    spine_density = spine * (0.05 - 0.03 * disc + 0.03 * pedicle)
    bones = (
        0.065 * params.rib_prominence * gaussian_blur(bones_post.array(), 1.4 * s_)
        + 0.03 * params.rib_prominence * gaussian_blur(bones_ant.array(), 1.6 * s_)
        + 0.12 * gaussian_blur(bones_other.array() + clavicle_layers["right"] + clavicle_layers["left"], 1.2 * s_)
        + gaussian_blur(spine_density.astype(np.float32), 1.2 * s_)
    )
    if natural:  # trabecular bone: a fine, irregular texture inside every bone
        bones = bones * params.bone_density * (1.0 + 0.3 * smooth_noise(rng2, size, 1.3 * s_))
    density += bones * body

    # --- pulmonary vessels: branching trees from each hilum, only seen inside aerated lung ---
    vessels = canvas()
    for side, sign in (("right", -1.0), ("left", 1.0)):
        hx = lm.cx + sign * ((lm.mediastinum_r if side == "right" else lm.mediastinum_l + 0.015) + 0.04)
        hy = lm.hilum + (0.0 if side == "right" else -0.018)
        if natural:
            trunks = int(rng2.integers(5, 9))
            for base_angle in np.sort(rng2.uniform(-95, 95, size=trunks)):
                _natural_vessel(
                    vessels,
                    rng2,
                    hx + sign * rng2.normal(0, 0.008),
                    hy + rng2.normal(0, 0.012),
                    sign,
                    math.radians(base_angle),
                    length=float(rng2.uniform(0.05, 0.09)),
                    width=float(rng2.uniform(0.006, 0.011)),
                )
            continue
        for base_angle in (-75, -45, -15, 15, 40, 65, 85):
            _vessel_tree(
                vessels,
                rng,
                hx,
                hy,
                sign,
                math.radians(base_angle + rng.normal(0, 6)),
                length=0.08 + 0.02 * (base_angle > 0),
                width=0.008,
                depth=5,
            )
    hila = (g.hilum(x, y, "right") | g.hilum(x, y, "left")).astype(np.float32)
    vessel_map = vessels.array()

    # --- findings ---
    visible_lung = lung_s.copy()
    extra = np.zeros((size, size), np.float32)
    for finding in params.findings:
        side_mask = lung_r if finding.side == "right" else lung_l
        if finding.name == "consolidation":
            zone = _zone_mask(side_mask, finding.zone)
            patch = np.clip(smooth_noise(rng, size, 9 * s_) + 0.6 * finding.severity, 0, None)
            extra += 0.10 * finding.severity * gaussian_blur((zone * patch).astype(np.float32), 2 * s_)
        elif finding.name == "pleural effusion":
            d = g.side_distance(x, finding.side)
            meniscus = effusion_top(g, finding.side, finding.severity, d, g.lateral_border(y, finding.side))
            fluid = gaussian_blur((side_mask & (y > meniscus)).astype(np.float32), 2.5 * s_)
            extra += 0.2 * fluid
            visible_lung *= 1 - fluid
        elif finding.name == "pneumothorax":
            d = g.side_distance(x, finding.side)
            gap = 0.025 + 0.05 * finding.severity
            lat = g.lateral_border(y, finding.side)
            top = g.apical_top(d)
            collapsed = side_mask & ((d > lat - gap * np.clip((lm.hilum + 0.12 - y) / 0.12, 0, 1)) | (y < top + gap))
            free_air = gaussian_blur(collapsed.astype(np.float32), 0.8 * s_)
            visible_lung *= 1 - free_air
            extra -= 0.05 * free_air
            edge = gaussian_blur(collapsed.astype(np.float32), 1.0 * s_)
            extra += 0.05 * np.clip(1 - np.abs(edge - 0.5) * 4, 0, None) * side_mask
        elif finding.name == "atelectasis":
            # plate-like bands across the zone, and (lower zone) a raised hemidiaphragm (landmarks)
            band_layer = canvas()
            zone = _zone_mask(side_mask, finding.zone)
            if zone.any():
                sign = -1.0 if finding.side == "right" else 1.0
                for _ in range(int(rng2.integers(1, 4))):
                    yb = (
                        lm.apex
                        + (lm.dome_r - lm.apex) * (0.55 if finding.zone == "mid" else 0.82)
                        + rng2.normal(0, 0.025)
                    )
                    d0, d1 = 0.1 + rng2.uniform(0, 0.06), 0.1 + rng2.uniform(0.12, 0.22)
                    band_layer.line(
                        np.array([lm.cx + sign * d0, lm.cx + sign * d1]),
                        np.array([yb, yb + rng2.normal(0.01, 0.02)]),
                        0.008 + 0.01 * finding.severity,
                    )
                extra += 0.09 * finding.severity * gaussian_blur(band_layer.array(), 1.5 * s_) * side_mask
                extra += 0.04 * finding.severity * gaussian_blur(zone.astype(np.float32), 4 * s_)
        elif finding.name == "nodule":
            zone = _zone_mask(side_mask, finding.zone)
            ys_n, xs_n = np.nonzero(zone)
            if ys_n.size:
                pick = int(rng2.integers(0, ys_n.size))
                r_px = (0.008 + 0.014 * finding.severity) * zoom * size
                yy_n, xx_n = np.ogrid[:size, :size]
                ball = np.sqrt(np.clip(1 - ((yy_n - ys_n[pick]) ** 2 + (xx_n - xs_n[pick]) ** 2) / r_px**2, 0, None))
                extra += 0.1 * gaussian_blur(ball.astype(np.float32), 0.8 * s_)
    if params.sex == "F":
        for sign in (-1.0, 1.0):
            cx_b, cy_b = lm.cx + sign * 0.6 * w, min(lm.dome_r, lm.dome_l) - 0.02
            breast = np.clip(1 - ((x - cx_b) / 0.2) ** 2 - ((y - cy_b) / 0.12) ** 2, 0, None) ** 0.5
            density += 0.04 * params.soft_tissue * gaussian_blur(breast.astype(np.float32), 3 * s_)
    density += 0.045 * gaussian_blur(vessel_map, 1.3 * s_) * visible_lung
    density += 0.05 * gaussian_blur(hila, 6 * s_) * (0.4 + 0.6 * lung_s)
    density += extra * body
    device_layers = draw_devices(g, params.devices, size, to_image, zoom, rng2) if params.devices else {}
    for layer in device_layers.values():
        density += 0.22 * gaussian_blur(layer, 0.7 * s_)

    # --- exposure, detector and noise ---
    k = params.exposure
    image = (1.0 - np.exp(-k * np.clip(density, 0, None))) / (1.0 - math.exp(-k * 1.0))
    image = np.clip(image, 0.0, 1.0) ** params.gamma
    image = gaussian_blur(image.astype(np.float32), params.blur_px512 * s_)
    image = image * (1.0 + 0.04 * (v - 0.5))  # heel effect
    noise = rng.standard_normal((size, size)).astype(np.float32)
    image = image + params.noise * noise * (0.4 + 0.6 * np.sqrt(np.clip(image, 0, 1)))
    image = np.clip(image, 0.0, 1.0).astype(np.float32)
    if params.processing:
        image = detect_and_process(image, params, rng2)
        image = collimate(image, params)
        if params.marker:
            image = laterality_marker(image, params)

    masks = _region_masks(g, x, y, lung_r, lung_l, heart, mediastinum, trachea, clavicle_layers, canvas)
    if params.flipped:  # stored mirrored: the marker mirrors with it, the names stay the patient's
        image = image[:, ::-1]
        masks = {name: mask[:, ::-1] for name, mask in masks.items()}
        device_layers = {name: layer[:, ::-1] for name, layer in device_layers.items()}
    if params.processing:
        image = annotate(np.ascontiguousarray(image), params)
    boxes = {}
    for name in ANATOMY_NAMES:
        box = _bounding_box(masks[name])
        if box is not None:
            boxes[name] = box
    device_boxes = {}
    for name, layer in device_layers.items():
        box = _bounding_box(layer > 0.05)
        if box is not None:
            device_boxes[name] = box
    return PhantomFilm(
        image=np.ascontiguousarray(image, dtype=np.float32), boxes=boxes, params=params, device_boxes=device_boxes
    )


def _gastric_bubble(g: ThoraxGeometry, x: np.ndarray, y: np.ndarray, v: np.ndarray, to_image) -> np.ndarray:
    """Gas in the stomach under the left dome: on an erect (PA) film it rises into the fundus, a
    dome of air whose flat floor is the air-fluid level — level on the film (``v``, the image's
    vertical coordinate), however the patient is rotated; on a supine (AP) film it collects in
    the body of the stomach, a rounded lucency in two lobes with no level. Never above the dome."""
    p, lm = g.params, g.lm
    size, off_x, off_y = p.gastric_bubble  # type: ignore[misc]
    rx, ry = 0.05 * size * p.thorax_scale, 0.036 * size * p.height_scale
    cx = lm.cx + 0.16 * p.thorax_scale + off_x
    top = float(g.diaphragm(np.array([abs(cx - lm.cx)]), "left")[0]) + 0.014 + max(off_y, -0.008)
    if p.view == "PA":
        cy = top + ry
        _, level = to_image(np.array([cx]), np.array([cy + 0.15 * ry]))
        return (((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 <= 1) & (v <= float(level[0]))
    cx, cy = cx - 0.25 * rx, top + 1.6 * ry
    lobe = ((x - cx) / rx) ** 2 + ((y - cy) / (0.8 * ry)) ** 2 <= 1
    return lobe | (((x - cx + 0.7 * rx) / (0.6 * rx)) ** 2 + ((y - cy - 0.5 * ry) / (0.6 * ry)) ** 2 <= 1)


def _vessel_tree(
    canvas: Canvas,
    rng: np.random.Generator,
    x0: float,
    y0: float,
    sign: float,
    angle: float,
    length: float,
    width: float,
    depth: int,
) -> None:
    """Recursive branching; ``angle`` 0 points laterally, positive downwards."""
    x1 = x0 + sign * length * math.cos(angle)
    y1 = y0 + length * math.sin(angle)
    bend = rng.normal(0, 0.08) * length
    xm, ym = (x0 + x1) / 2 - bend * math.sin(angle) * sign, (y0 + y1) / 2 + bend * math.cos(angle)
    canvas.line(np.array([x0, xm, x1]), np.array([y0, ym, y1]), width, min(1.0, width / 0.006))
    if depth <= 0:
        return
    for turn in (-1, 1):
        new_angle = angle + turn * math.radians(rng.uniform(16, 34))
        _vessel_tree(canvas, rng, x1, y1, sign, new_angle, length * rng.uniform(0.66, 0.8), width * 0.7, depth - 1)


def _natural_vessel(
    canvas: Canvas,
    rng: np.random.Generator,
    x0: float,
    y0: float,
    sign: float,
    angle: float,
    length: float,
    width: float,
) -> None:
    """A vessel that wanders, tapers and branches unevenly: at each node a main branch continues
    (small turn, most of the calibre) and a side branch leaves at a wider angle; both stop when
    they have tapered below about a pixel's width."""
    stack = [(x0, y0, angle, length, width)]
    while stack:
        x0, y0, angle, length, width = stack.pop()
        steps = 4
        xs, ys = [x0], [y0]
        a = angle
        for _ in range(steps):
            a += rng.normal(0, 0.12)
            xs.append(xs[-1] + sign * length / steps * math.cos(a))
            ys.append(ys[-1] + length / steps * math.sin(a))
        canvas.line(np.array(xs), np.array(ys), width, min(1.0, width / 0.006))
        if width < 0.0014 or len(stack) > 400:
            continue
        turn = 1 if rng.random() < 0.5 else -1
        stack.append(
            (
                xs[-1],
                ys[-1],
                a + turn * rng.uniform(0.05, 0.3),
                length * rng.uniform(0.72, 0.92),
                width * rng.uniform(0.72, 0.86),
            )
        )
        if rng.random() < 0.85:
            stack.append(
                (
                    xs[-1],
                    ys[-1],
                    a - turn * rng.uniform(0.45, 1.0),
                    length * rng.uniform(0.45, 0.7),
                    width * rng.uniform(0.5, 0.68),
                )
            )


def _zone_mask(lung: np.ndarray, zone: str) -> np.ndarray:
    """Upper, mid or lower third of a lung mask by height."""
    rows = np.flatnonzero(lung.any(axis=1))
    if rows.size == 0:
        return lung
    top, bottom = rows[0], rows[-1] + 1
    edges = {"upper": (0.0, 1 / 3), "mid": (1 / 3, 2 / 3), "lower": (2 / 3, 1.0), "apical": (0.0, 0.2)}[zone]
    lo, hi = top + edges[0] * (bottom - top), top + edges[1] * (bottom - top)
    band = np.zeros_like(lung)
    band[int(round(lo)) : int(round(hi)), :] = True
    return lung & band


def effusion_top(g: ThoraxGeometry, side: str, severity: float, d: np.ndarray, lateral: np.ndarray) -> np.ndarray:
    """Height of a pleural effusion's meniscus at distance ``d`` from the midline: highest laterally."""
    cp = g.lm.cp_r if side == "right" else g.lm.cp_l
    height = 0.05 + 0.13 * severity
    return cp - height * (0.45 + 0.55 * np.clip(d / lateral, 0, 1) ** 3)


def _region_masks(
    g: ThoraxGeometry, x, y, lung_r, lung_l, heart, mediastinum, trachea, clavicles, canvas
) -> dict[str, np.ndarray]:
    """Masks (on the film's pixel grid) of all 36 regions, from the closed-form anatomy."""
    lm = g.lm
    m: dict[str, np.ndarray] = {}
    dx = x - lm.cx

    def square(cx: float, cy: float, half: float) -> np.ndarray:
        return (np.abs(x - cx) <= half) & (np.abs(y - cy) <= half)

    for side, lung in (("right", lung_r), ("left", lung_l)):
        sign = -1.0 if side == "right" else 1.0
        m[f"{side} lung"] = lung
        for zone in ("upper", "mid", "lower"):
            m[f"{side} {zone} lung zone"] = _zone_mask(lung, zone)
        m[f"{side} apical zone"] = _zone_mask(lung, "apical")
        m[f"{side} hilar structures"] = g.hilum(x, y, side)
        cp = lm.cp_r if side == "right" else lm.cp_l
        d_cp = float(g.lateral_border(np.array([cp]), side)[0])
        corner_d = g.side_distance(x, side)
        m[f"{side} costophrenic angle"] = lung & (corner_d >= d_cp - 0.085) & (y >= cp - 0.085)
        dome = lm.dome_r if side == "right" else lm.dome_l
        heart_d = float(g.heart_border(np.array([dome - 0.005]), side)[0])
        m[f"{side} cardiophrenic angle"] = square(lm.cx + sign * heart_d, dome, 0.035)
        d_line = np.linspace(float(g.heart_border(np.array([dome]), side)[0]) * 0.8, d_cp, 48)
        band = canvas()
        line_y = g.diaphragm(d_line, side) + 0.003
        for finding in g.params.findings:  # an effusion's meniscus becomes the visible diaphragm line
            if finding.name == "pleural effusion" and finding.side == side:
                cp_y = np.full_like(d_line, lm.cp_r if side == "right" else lm.cp_l)
                line_y = np.minimum(
                    line_y, effusion_top(g, side, finding.severity, d_line, g.lateral_border(cp_y, side)) + 0.003
                )
        band.line(lm.cx + sign * d_line, line_y, 0.022)
        m[f"{side} hemidiaphragm"] = band.array() > 0
        m[f"{side} upper abdomen"] = (
            (g.side_distance(x, side) >= 0)
            & (g.side_distance(x, side) <= lm.half_width)
            & (y >= dome)
            & (y <= dome + 0.17)
        )
        m[f"{side} clavicle"] = clavicles[side] > 0
    m["right cardiac silhouette"] = heart & (dx < 0)
    m["left cardiac silhouette"] = heart & (dx >= 0)
    m["cardiac silhouette"] = heart
    m["right atrium"] = heart & (dx < -0.012) & (y >= lm.ra_top)
    m["trachea"] = trachea
    m["carina"] = square(lm.cx, lm.carina, 0.025)
    m["spine"] = (
        (np.abs(dx) <= 0.031 * g.params.thorax_scale) & (y >= lm.inlet - 0.03) & (y <= max(lm.dome_r, lm.dome_l) + 0.08)
    )
    m["mediastinum"] = mediastinum
    m["upper mediastinum"] = mediastinum & (y <= lm.heart_top - 0.01)
    m["svc"] = (
        (dx <= -lm.mediastinum_r + 0.028) & (dx >= -lm.mediastinum_r) & (y >= lm.clavicle_medial_y) & (y <= lm.ra_top)
    )
    m["cavoatrial junction"] = square(lm.cx - lm.mediastinum_r + 0.008, lm.ra_top, 0.025)
    m["aortic arch"] = (((dx - 0.035) / (0.035 + lm.knob)) ** 2 + ((y - lm.arch) / 0.032) ** 2) <= 1
    m["descending aorta"] = (dx >= 0.012) & (dx <= 0.045) & (y >= lm.arch) & (y <= lm.dome_l)
    m["abdomen"] = (
        (np.abs(dx) <= lm.half_width) & (y >= min(lm.dome_r, lm.dome_l)) & (y <= max(lm.dome_r, lm.dome_l) + 0.22)
    )
    return m
