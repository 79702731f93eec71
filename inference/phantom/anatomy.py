"""The digital mouse: body, skeleton, organs, tumors and metastases painted into a canvas.

All positions are given along the body axis by ``t`` (0 = nose tip, 1 = base of the tail) and
across it by fractions of the local half width (``fx``, negative = the mouse's left, i.e. low x)
and half height (``fy``, positive = ventral). Sizes are in millimetres and scale with the animal.
Organ semi-axes are calibrated so that mean volumes match published adult-mouse figures (see the
model card): brain ~450 mm^3, heart ~160 mm^3, lungs ~400 mm^3 together, liver ~1.3 cm^3,
kidneys ~160 mm^3 each, spleen ~95 mm^3, stomach ~170 mm^3, bladder 40-160 mm^3.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from inference.phantom.canvas import Blob, Canvas, random_blob, smooth_path, tube_masks
from inference.structures import BY_NAME

#: Temporary label values used while building: body interior and the skin/fat layer. They are
#: reset to background before the label map leaves the generator.
BODY = 250
SKIN = 251

ID = {name: s.id for name, s in BY_NAME.items()}

_T = np.array([0.0, 0.04, 0.10, 0.17, 0.22, 0.27, 0.33, 0.45, 0.60, 0.75, 0.86, 0.94, 1.0])
_W = np.array([0.6, 2.6, 5.2, 7.4, 7.0, 7.3, 10.0, 12.0, 12.6, 12.8, 11.6, 8.2, 3.5])
_H = np.array([0.6, 2.1, 4.2, 6.2, 6.2, 6.8, 8.6, 9.8, 10.2, 10.2, 9.3, 7.0, 3.0])


@dataclass(frozen=True)
class Tissues:
    """Mean Hounsfield units of each tissue for one phantom (jittered per animal)."""

    air: float
    fat: float
    skin: float
    muscle: float
    visceral: float
    brain: float
    cord: float
    blood: float
    lung: float
    airway: float
    liver: float
    spleen: float
    kidney: float
    kidney_medulla: float
    gut_wall: float
    gut_content: float
    urine: float
    bone: float
    vertebra: float
    tooth: float
    tumor: float
    necrosis: float

    @classmethod
    def sample(cls, rng: np.random.Generator, modality: str) -> Tissues:
        def j(mean: float, sd: float = 6.0) -> float:
            return float(mean + rng.normal(0.0, sd))

        # Native micro-CT: spleen and liver overlap (both ~55-65 HU); contrast agents (blood pool /
        # hepatosplenic, e.g. ExiTron nano) lift blood, liver and spleen by 100-250 HU.
        liver, spleen, blood, kidney = j(62), j(58), j(45), j(36)
        if modality == "contrast":
            liver += rng.uniform(90, 160)
            spleen += rng.uniform(130, 220)
            blood += rng.uniform(150, 260)
            kidney += rng.uniform(40, 100)
        return cls(
            air=-1000.0,
            fat=j(-100, 10),
            skin=j(65),
            muscle=j(48),
            visceral=j(-45, 15),
            brain=j(38),
            cord=j(34),
            blood=blood,
            lung=j(-430, 40),
            airway=j(-900, 20),
            liver=liver,
            spleen=spleen,
            kidney=kidney,
            kidney_medulla=kidney - 12.0,
            gut_wall=j(48),
            gut_content=j(25, 10),
            urine=j(12),
            bone=j(1150, 120),
            vertebra=j(800, 100),
            tooth=j(1800, 100),
            tumor=j(50),
            necrosis=j(18),
        )


@dataclass
class Body:
    """The body axis and envelope of one mouse, in canvas millimetres."""

    length_mm: float
    z_nose_mm: float
    centre_x_mm: float
    centre_y_mm: float
    scale: float
    girth: float
    bend: tuple[float, float, float, float]

    def half_width(self, t: np.ndarray | float) -> np.ndarray:
        return np.interp(t, _T, _W) * self.scale * self.girth

    def half_height(self, t: np.ndarray | float) -> np.ndarray:
        return np.interp(t, _T, _H) * self.scale * self.girth

    def axis(self, t: np.ndarray | float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        t = np.asarray(t, dtype=np.float64)
        bx, by, phx, phy = self.bend
        x = self.centre_x_mm + bx * np.sin(np.pi * t + phx)
        y = self.centre_y_mm + by * np.sin(np.pi * t + phy)
        return x, y, self.z_nose_mm - t * self.length_mm

    def at(self, t: float, fx: float, fy: float) -> tuple[float, float, float]:
        x, y, z = self.axis(t)
        return (
            float(x + fx * self.half_width(t)),
            float(y + fy * self.half_height(t)),
            float(z),
        )

    def t_of_z(self, z_mm: np.ndarray) -> np.ndarray:
        return (self.z_nose_mm - z_mm) / self.length_mm


@dataclass
class MouseRecord:
    """What was placed: tumors and metastases with their organ, for meta.json."""

    tumors: list[dict[str, object]] = field(default_factory=list)
    metastases: list[dict[str, object]] = field(default_factory=list)


def paint_envelope(canvas: Canvas, body: Body, tissues: Tissues, *, skin_mm: float, fat_mm: float) -> None:
    """Skin, subcutaneous fat and muscle: nested elliptic cross-sections along z."""
    nx, ny, nz = canvas.shape
    s = canvas.spacing_mm
    z = np.arange(nz) * s
    t = body.t_of_z(z)
    inside_t = (t >= 0.0) & (t <= 1.0)
    if not inside_t.any():
        return
    zi = np.flatnonzero(inside_t)
    zs = slice(int(zi[0]), int(zi[-1]) + 1)
    tt = t[zs]
    cx, cy, _ = body.axis(tt)
    w, h = body.half_width(tt), body.half_height(tt)
    x = (np.arange(nx) * s)[:, None, None]
    y = (np.arange(ny) * s)[None, :, None]
    for margin, hu, label in ((0.0, tissues.skin, SKIN), (skin_mm, tissues.fat, SKIN)):
        ww, hh = np.maximum(w - margin, 0.05), np.maximum(h - margin, 0.05)
        r2 = ((x - cx) / ww) ** 2 + ((y - cy) / hh) ** 2
        canvas.paint((slice(None), slice(None), zs), r2 < 1.0, hu=hu, label=label)
    ww, hh = np.maximum(w - skin_mm - fat_mm, 0.05), np.maximum(h - skin_mm - fat_mm, 0.05)
    r2 = ((x - cx) / ww) ** 2 + ((y - cy) / hh) ** 2
    canvas.paint((slice(None), slice(None), zs), r2 < 1.0, hu=tissues.muscle, label=BODY)


def _paint_blob(
    canvas: Canvas, blob: Blob, *, hu: float | None, label: int | None, within: list[int] | None
) -> None:
    m = blob.mask(canvas)
    if m is not None:
        canvas.paint(m[0], m[1], hu=hu, label=label, within=within)


def _paint_tube(
    canvas: Canvas,
    points: np.ndarray,
    radii: Sequence[float] | np.ndarray | float,
    *,
    hu: float | None,
    label: int | None,
    within: list[int] | None,
) -> None:
    for box, mask in tube_masks(canvas, points, radii):
        canvas.paint(box, mask, hu=hu, label=label, within=within)


#: Thickness ranges (mm) of the fat around organs that would otherwise sit in the body's muscle.
#: In a mouse the heart lies in the pericardial sac with epicardial fat, the kidneys in perirenal
#: fat and the spleen in the peritoneal cavity against omental fat; without these layers a phantom
#: heart (blood ~45 HU) or kidney (~36 HU) meets muscle (~48 HU) with no visible edge, unlike real
#: native micro-CT. Neighbouring organs painted later still press directly against the organ
#: (spleen against liver and stomach stays a soft-tissue contact, hard in native CT).
PERICARDIAL_FAT_MM = (0.2, 0.5)
PERIRENAL_FAT_MM = (0.25, 0.8)
SPLENIC_FAT_MM = (0.15, 0.5)


def _fat_capsule(
    canvas: Canvas, organ: Blob, rng: np.random.Generator, thickness_mm: tuple[float, float], *, hu: float
) -> None:
    """Fat of a random thickness around ``organ``, painted into the body (label unchanged) before
    the organ itself, so whatever is painted later (the organ, its neighbours) replaces it."""
    margin = float(rng.uniform(*thickness_mm))
    _paint_blob(canvas, organ.grown(margin), hu=hu, label=None, within=[BODY])


def paint_mouse(
    canvas: Canvas,
    body: Body,
    tissues: Tissues,
    rng: np.random.Generator,
    *,
    tumor_volumes_mm3: list[float],
    tumor_rng: np.random.Generator,
    n_metastases: int,
    fat_rng: np.random.Generator,
) -> MouseRecord:
    """Paint one complete mouse; returns the placed lesions. ``fat_rng`` draws the fat capsules'
    thicknesses (its own stream, so adding them left every organ of a seed where it was)."""
    k = body.scale
    record = MouseRecord()
    paint_envelope(canvas, body, tissues, skin_mm=0.3, fat_mm=float(rng.uniform(0.25, 1.0)))

    def organ(t: float, fx: float, fy: float, axes: tuple[float, float, float], sd: float = 0.07) -> Blob:
        f = float(np.clip(rng.normal(1.0, sd), 0.8, 1.2))
        axes_mm = (axes[0] * k * f, axes[1] * k * f, axes[2] * k * f)
        centre = body.at(t + rng.normal(0, 0.006), fx + rng.normal(0, 0.03), fy + rng.normal(0, 0.03))
        return random_blob(rng, centre, axes_mm, tilt_rad=0.18, bumpiness=0.10)

    inner = [BODY]
    # Abdominal cavity: mesenteric fat around the gut, so organs sit in a fat-rich background.
    cavity = organ(0.70, 0.0, 0.1, (9.5, 7.5, 14.0), sd=0.03)
    _paint_blob(canvas, cavity, hu=tissues.visceral, label=None, within=inner)

    # Brain and spinal cord first: bone is painted around them afterwards.
    brain = organ(0.135, 0.0, -0.15, (5.0, 3.65, 6.6), sd=0.05)
    _paint_blob(canvas, brain, hu=tissues.brain, label=ID["brain"], within=inner)
    cord_t = np.linspace(0.185, 0.93, 40)
    cord_pts = np.array([body.at(float(t), 0.0, -0.6) for t in cord_t])
    cord_r = np.interp(cord_t, [0.185, 0.35, 0.6, 0.93], [0.85, 0.75, 0.6, 0.35]) * k
    _paint_tube(canvas, cord_pts, cord_r, hu=tissues.cord, label=ID["spinal_cord"], within=inner)

    # Thorax: heart in its pericardial fat, then lungs around it, then airways inside the lungs.
    heart = organ(0.375, -0.10, 0.22, (3.15, 3.05, 4.4))
    _fat_capsule(canvas, heart, fat_rng, PERICARDIAL_FAT_MM, hu=tissues.fat)
    _paint_blob(canvas, heart, hu=tissues.blood, label=ID["heart"], within=inner)
    lungs = {
        "lung_left": organ(0.37, -0.45, -0.05, (2.4, 3.2, 4.4)),
        "lung_right": organ(0.37, 0.45, -0.05, (2.6, 3.35, 4.6)),
    }
    for name, blob in lungs.items():
        _paint_blob(canvas, blob, hu=tissues.lung, label=ID[name], within=inner)
    carina = np.array(body.at(0.335, 0.0, 0.05))
    trachea = np.array([body.at(0.2, 0.0, 0.25), body.at(0.27, 0.0, 0.15), tuple(carina)])
    _paint_tube(canvas, trachea, 0.55 * k, hu=tissues.airway, label=None, within=inner)
    for name, blob in lungs.items():
        c = np.array(blob.centre_mm)
        _paint_tube(
            canvas, np.array([carina, c]), 0.42 * k, hu=tissues.airway, label=None, within=[*inner, ID[name]]
        )
        for _ in range(4):
            tip = c + rng.normal(0, 1.0, 3) * np.array(blob.semi_axes_mm) * 0.45
            _paint_tube(
                canvas,
                np.array([c, tip]),
                [0.3 * k, 0.12 * k],
                hu=tissues.airway,
                label=None,
                within=[ID[name]],
            )
    aorta = np.array([body.at(float(t), 0.05, -0.3) for t in np.linspace(0.36, 0.85, 12)])
    _paint_tube(canvas, aorta, 0.55 * k, hu=tissues.blood, label=None, within=inner)

    # Abdomen, in order of precedence where organs press against each other.
    for name, t, fx in (("kidney_left", 0.615, -0.42), ("kidney_right", 0.595, 0.42)):
        kid = organ(t, fx, -0.48, (3.05, 3.3, 5.0))
        _fat_capsule(canvas, kid, fat_rng, PERIRENAL_FAT_MM, hu=tissues.fat)
        _paint_blob(canvas, kid, hu=tissues.kidney, label=ID[name], within=inner)
        _paint_blob(canvas, kid.scaled(0.45), hu=tissues.kidney_medulla, label=None, within=[ID[name]])
    spleen = organ(0.575, -0.72, 0.0, (1.5, 2.3, 6.4))
    _fat_capsule(canvas, spleen, fat_rng, SPLENIC_FAT_MM, hu=tissues.visceral)
    _paint_blob(canvas, spleen, hu=tissues.spleen, label=ID["spleen"], within=inner)
    stomach = organ(0.525, -0.40, -0.05, (3.6, 3.0, 3.7))
    _paint_blob(canvas, stomach, hu=tissues.gut_content, label=ID["stomach"], within=inner)
    gas = stomach.scaled(0.55)
    gas_centre = (gas.centre_mm[0], gas.centre_mm[1] - 0.45 * stomach.semi_axes_mm[1], gas.centre_mm[2])
    if rng.random() < 0.8:
        _paint_blob(
            canvas,
            Blob(gas_centre, gas.semi_axes_mm, gas.rot, ()),
            hu=tissues.air,
            label=None,
            within=[ID["stomach"]],
        )
    for t, fx, fy, axes in (
        (0.50, 0.05, 0.25, (9.1, 4.3, 5.0)),
        (0.49, -0.40, 0.10, (4.8, 3.85, 4.5)),
        (0.52, 0.45, 0.05, (4.5, 3.85, 5.0)),
        (0.47, 0.0, 0.40, (4.3, 2.6, 3.7)),
    ):
        _paint_blob(canvas, organ(t, fx, fy, axes), hu=tissues.liver, label=ID["liver"], within=inner)
    bladder = organ(0.905, 0.0, 0.45, (2.4, 2.3, 2.9), sd=0.15)
    _paint_blob(canvas, bladder, hu=tissues.urine, label=ID["bladder"], within=inner)
    _paint_intestine(canvas, body, tissues, rng)

    _paint_skeleton(canvas, body, tissues, rng, brain)
    for volume in tumor_volumes_mm3:
        record.tumors.append(_paint_tumor(canvas, body, tissues, tumor_rng, volume))
    record.metastases = _paint_metastases(canvas, tissues, rng, n_metastases)
    return record


def _paint_intestine(canvas: Canvas, body: Body, tissues: Tissues, rng: np.random.Generator) -> None:
    k = body.scale
    centre = np.array(body.at(0.745, 0.0, 0.15))
    half = np.array([0.62 * body.half_width(0.745), 0.55 * body.half_height(0.745), 0.11 * body.length_mm])
    start = centre + rng.normal(0, 1.0, 3)
    path = smooth_path(
        rng, start, n_steps=int(320 * k), step_mm=0.8 * k, centre_mm=centre, half_extent_mm=half
    )
    lid = ID["intestine"]
    allowed = [BODY]
    _paint_tube(canvas, path, 1.25 * k, hu=tissues.gut_wall, label=lid, within=allowed)
    _paint_tube(canvas, path, 0.8 * k, hu=tissues.gut_content, label=None, within=[lid])
    caecum = random_blob(rng, body.at(0.72, 0.3, 0.2), (3.0 * k, 2.4 * k, 4.0 * k), bumpiness=0.1)
    _paint_blob(canvas, caecum, hu=tissues.gut_content, label=lid, within=allowed)
    # Gas pockets: a few short stretches of the lumen filled with air.
    for _ in range(int(rng.integers(2, 8))):
        i = int(rng.integers(0, len(path) - 6))
        _paint_tube(canvas, path[i : i + 5], 0.7 * k, hu=tissues.air, label=None, within=[lid])
    # Faecal pellets in the distal colon: dense, slightly mineralised content.
    colon = np.array([body.at(float(t), 0.05, -0.1) for t in np.linspace(0.8, 0.97, 8)])
    _paint_tube(canvas, colon, 1.0 * k, hu=tissues.gut_wall, label=lid, within=allowed)
    for t in rng.uniform(0.82, 0.95, size=int(rng.integers(1, 4))):
        pellet = Blob(body.at(float(t), 0.05, -0.1), (0.8 * k, 0.8 * k, 1.3 * k), np.eye(3), ())
        _paint_blob(canvas, pellet, hu=tissues.gut_content + 90, label=None, within=[lid])


def _paint_skeleton(
    canvas: Canvas, body: Body, tissues: Tissues, rng: np.random.Generator, brain: Blob
) -> None:
    k = body.scale
    bid = ID["bones"]
    soft = [BODY]
    _paint_blob(canvas, brain.grown(0.45 * k), hu=tissues.bone, label=bid, within=soft)
    for side in (-1, 1):
        jaw = np.array([body.at(0.03, side * 0.35, 0.45), body.at(0.16, side * 0.6, 0.55)])
        _paint_tube(canvas, jaw, 0.45 * k, hu=tissues.bone, label=bid, within=soft)
    nasal = np.array([body.at(0.02, 0.0, -0.3), body.at(0.12, 0.0, -0.45)])
    _paint_tube(canvas, nasal, 0.55 * k, hu=tissues.bone, label=bid, within=soft)
    teeth = np.array([body.at(0.0, 0.0, 0.2), body.at(0.05, 0.0, 0.35)])
    _paint_tube(canvas, teeth, 0.3 * k, hu=tissues.tooth, label=bid, within=[*soft, SKIN, 0])

    # Vertebrae: rings around the cord with a vertebral body ventral to it, one every ~2.4 mm.
    n_vert = int(body.length_mm * 0.8 / (2.4 * k))
    for t in np.linspace(0.19, 1.02, n_vert):
        half = 0.95 * k / body.length_mm
        ring = np.array([body.at(float(t - half), 0.0, -0.6), body.at(float(t + half), 0.0, -0.6)])
        radius = float(np.interp(t, [0.19, 0.6, 1.0], [1.55, 1.5, 0.9])) * k
        _paint_tube(canvas, ring, radius, hu=tissues.vertebra, label=bid, within=soft)
        vb = np.array([body.at(float(t - half), 0.0, -0.42), body.at(float(t + half), 0.0, -0.42)])
        _paint_tube(canvas, vb, 0.75 * radius, hu=tissues.vertebra, label=bid, within=soft)

    # Ribs and sternum.
    for t in np.linspace(0.30, 0.50, 12):
        for side in (-1, 1):
            phi = np.radians(np.linspace(-95, 60, 9))
            x0, y0, z0 = body.axis(t)
            w, h = body.half_width(t) * 0.84, body.half_height(t) * 0.84
            pts = np.stack(
                [x0 + side * w * np.cos(phi), y0 + h * np.sin(phi), z0 - 1.2 * k * (phi - phi[0]) / np.pi],
                axis=1,
            )
            _paint_tube(canvas, pts, 0.26 * k, hu=tissues.bone, label=bid, within=soft)
    sternum = np.array([body.at(float(t), 0.0, 0.84) for t in np.linspace(0.31, 0.5, 6)])
    _paint_tube(canvas, sternum, 0.45 * k, hu=tissues.bone, label=bid, within=soft)

    # Limbs: soft tissue sleeves (partly outside the trunk) with long bones inside.
    wiggle = rng.uniform(-0.08, 0.08, size=4)
    for side in (-1, 1):
        shoulder = body.at(0.33, side * 0.78, 0.25)
        elbow = body.at(0.30 + wiggle[0], side * (1.02 + wiggle[1]), 0.85)
        paw = body.at(0.25 + wiggle[0], side * 0.85, 1.12)
        arm = np.array([shoulder, elbow, paw])
        _paint_tube(canvas, arm, [1.7 * k, 1.3 * k, 0.8 * k], hu=tissues.muscle, label=BODY, within=[0, SKIN])
        _paint_tube(canvas, arm, [0.45 * k, 0.35 * k, 0.25 * k], hu=tissues.bone, label=bid, within=soft)
        scapula = random_blob(rng, body.at(0.34, side * 0.6, -0.5), (0.45 * k, 2.3 * k, 3.3 * k), bumpiness=0)
        _paint_blob(canvas, scapula, hu=tissues.bone, label=bid, within=soft)
        hip = body.at(0.905, side * 0.55, 0.0)
        knee = body.at(0.86 + wiggle[2], side * (1.08 + wiggle[3]), 0.65)
        foot = body.at(0.97 + wiggle[2], side * 0.95, 1.1)
        leg = np.array([hip, knee, foot])
        _paint_tube(canvas, leg, [2.2 * k, 1.6 * k, 0.9 * k], hu=tissues.muscle, label=BODY, within=[0, SKIN])
        _paint_tube(canvas, leg, [0.55 * k, 0.42 * k, 0.3 * k], hu=tissues.bone, label=bid, within=soft)
        pelvis = np.array([body.at(0.86, side * 0.18, -0.5), hip, body.at(0.95, side * 0.15, 0.5)])
        _paint_tube(canvas, pelvis, 0.5 * k, hu=tissues.bone, label=bid, within=soft)


def _paint_tumor(
    canvas: Canvas, body: Body, tissues: Tissues, rng: np.random.Generator, volume_mm3: float
) -> dict[str, object]:
    """A subcutaneous tumor on the flank or behind a front leg, bulging out of the body."""
    site = "flank" if rng.random() < 0.75 else "front_leg"
    t = float(rng.uniform(0.62, 0.82) if site == "flank" else rng.uniform(0.37, 0.45))
    side = 1 if rng.random() < 0.5 else -1
    phi = float(np.radians(rng.uniform(-35, 40)))
    x0, y0, z0 = body.axis(t)
    w, h = float(body.half_width(t)), float(body.half_height(t))
    surface = np.array([x0 + side * w * np.cos(phi), y0 + h * np.sin(phi), z0], dtype=float)
    normal = np.array([side * np.cos(phi) / w, np.sin(phi) / h, 0.0])
    normal /= np.linalg.norm(normal)
    radius = (3.0 * volume_mm3 / (4.0 * np.pi)) ** (1.0 / 3.0)
    aspect = rng.uniform(0.75, 1.3, size=3)
    aspect /= np.prod(aspect) ** (1.0 / 3.0)
    centre = surface + normal * radius * float(rng.uniform(0.1, 0.45))
    blob = random_blob(rng, tuple(centre), tuple(radius * aspect), tilt_rad=0.6, bumpiness=0.12)
    tid = ID["tumor"]
    _paint_blob(canvas, blob.grown(0.25), hu=tissues.skin, label=SKIN, within=[0])
    _paint_blob(canvas, blob, hu=tissues.tumor, label=tid, within=[0, BODY, SKIN])
    necrotic = volume_mm3 > 250 and rng.random() < 0.5
    if necrotic:
        core = random_blob(rng, tuple(centre), tuple(radius * aspect * rng.uniform(0.3, 0.55)), bumpiness=0.2)
        _paint_blob(canvas, core, hu=tissues.necrosis, label=None, within=[tid])
    return {
        "site": site,
        "side": "right" if side > 0 else "left",
        "centre_mm": [round(float(v), 3) for v in centre],
        "planned_volume_mm3": round(float(volume_mm3), 2),
        "necrotic_core": bool(necrotic),
    }


#: Where metastases seed, with relative frequency (lung and liver dominate, as in AIMOS' models).
MET_HOSTS = {
    "lung_left": 0.22,
    "lung_right": 0.23,
    "liver": 0.3,
    "kidney_left": 0.05,
    "kidney_right": 0.05,
    "spleen": 0.05,
    "brain": 0.05,
    "intestine": 0.05,
}


def _paint_metastases(
    canvas: Canvas, tissues: Tissues, rng: np.random.Generator, n: int
) -> list[dict[str, object]]:
    hosts = list(MET_HOSTS)
    weights = np.array([MET_HOSTS[h] for h in hosts])
    mid = ID["metastasis"]
    out: list[dict[str, object]] = []
    for _ in range(n):
        host = hosts[int(rng.choice(len(hosts), p=weights / weights.sum()))]
        hid = ID[host]
        # A voxel of the host organ picked at random: sample a few candidate positions cheaply.
        idx = np.flatnonzero(canvas.labels[::2, ::2, ::2] == hid)
        if idx.size == 0:
            continue
        sub = np.array(np.unravel_index(int(rng.choice(idx)), canvas.labels[::2, ::2, ::2].shape)) * 2
        centre = tuple(float(v) for v in sub * canvas.spacing_mm)
        diameter = float(np.exp(rng.uniform(np.log(0.2), np.log(2.0))))
        blob = Blob(centre, (diameter / 2,) * 3, np.eye(3), ())  # type: ignore[arg-type]
        contrast = 470.0 if host.startswith("lung") else (-18.0 if host == "liver" else 15.0)
        host_hu = tissues.lung if host.startswith("lung") else float(np.median(canvas.hu[tuple(sub)]))
        m = blob.mask(canvas)
        voxels = 0
        if m is not None:
            before = int(np.count_nonzero(canvas.labels[m[0]] == mid))
            canvas.paint(m[0], m[1], hu=host_hu + contrast, label=mid, within=[hid])
            voxels = int(np.count_nonzero(canvas.labels[m[0]] == mid)) - before
        out.append(
            {
                "organ": host,
                "organ_id": hid,
                "centre_mm": [round(c, 3) for c in centre],
                "diameter_mm": round(diameter, 3),
                "voxels": voxels,
            }
        )
    return out
