"""Domain-randomised training volumes drawn from label maps (SynthSeg-style, Billot et al. 2023).

A *source* is a label map on the models' coarse grid (0.63 mm): per canonical structure id the
fraction of each coarse voxel it fills (soft labels), which structures the source labels at all,
and a map of the unlabelled body's tissue (air, fat-like, muscle-like). Sources come from the
procedural phantoms (``phantom_source``: generated at 0.21 mm and box-averaged by 3, exactly as
the pipeline box-averages a scan) and from the real Digimouse atlas (``digimouse_source``, via
``inference.phantom.digimouse``).

``synth_sample(source, seed)`` draws one training volume from a source with every generation
parameter random: a deformation (small rotation, anisotropic scale, smooth elastic field; the
label fractions move with it, so image and labels stay aligned), a field of view (head, thorax,
torso, whole body, in-plane crops), sometimes a second mouse and a bed, each tissue's mean HU and
spread sampled widely in CT's physical order (air < lung < fat < soft tissue < bone), textures in
the unlabelled body (with ``plain_body``, sometimes one smooth level near the organs' own and no
fat between them, so that only their shapes place their edges), and a scanner (blur, voxel size as
residual noise after box-averaging, noise 5-80 HU, bias field, rings, streaks, beam hardening near
bone; with ``clipped``, sometimes an export that cut the values off below -600..-300 HU and above
700-1500 HU, as the tumor database's [-400, 1000] does; with ``rolled``, sometimes a mouse lying
part-way on its side). The image is rendered directly on the
coarse grid as ``sum_k fraction_k * intensity_k``: that is what box-averaging a piecewise-constant
scan gives, so partial volume at every outline is right and a sample costs tens of milliseconds.

Array contract: every volume is (x, y, z) in closest-canonical RAS order (x to the mouse's right,
y ventral, z cranial), float32 HU for images, uint8 (255 = whole voxel) for fractions, with
channel ``c`` of a fractions array holding canonical structure id ``c`` (0 = background,
0..15). Deterministic: the same source and seed always give the same arrays.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from inference.structures import BY_NAME, STRUCTURES

log = logging.getLogger(__name__)

#: Coarse grid of the models (0.21 mm phantom voxels x 3).
COARSE_MM = 0.63
FACTOR = 3
N_IDS = len(STRUCTURES)
ID = {name: s.id for name, s in BY_NAME.items()}

#: Tissue classes of the unlabelled body (``Source.tissue``).
AIR, FAT, SOFT = 0, 1, 2


@dataclass
class Source:
    """A label map on the coarse grid.

    ``fractions`` uint8 [16, X, Y, Z] (channel = canonical id, 255 = the whole voxel);
    ``labelled`` bool [16]: does the source label that structure (an unlabelled one, e.g. the
    Digimouse gut, may hide inside the background and must not be taught as background);
    ``tissue`` uint8 [X, Y, Z]: AIR / FAT / SOFT for the part of each voxel no structure fills;
    ``ct`` float32 [X, Y, Z] the source's own scan on the grid when it has one (phantoms), else
    None; ``disagreement`` uint8 [X, Y, Z] the annotators' disagreement share when known.
    """

    name: str
    fractions: np.ndarray
    labelled: np.ndarray
    tissue: np.ndarray
    ct: np.ndarray | None = None
    disagreement: np.ndarray | None = None
    spacing_mm: float = COARSE_MM


def block_fractions(labels: np.ndarray, factor: int) -> np.ndarray:
    """uint8 [16, X/f, Y/f, Z/f]: 255 x the share of each f^3 block holding each canonical id."""
    x, y, z = (s // factor * factor for s in labels.shape)
    lab = labels[:x, :y, :z].reshape(x // factor, factor, y // factor, factor, z // factor, factor)
    lab = lab.transpose(0, 2, 4, 1, 3, 5).reshape(x // factor, y // factor, z // factor, -1)
    out = np.zeros((N_IDS, x // factor, y // factor, z // factor), np.float32)
    for sid in np.unique(lab):
        if sid < N_IDS:
            out[sid] = (lab == sid).mean(axis=-1)
    return np.rint(out * 255).astype(np.uint8)


def tissue_from_ct(ct: np.ndarray) -> np.ndarray:
    """AIR / FAT / SOFT from a coarse scan (block-mean HU): thresholds halfway between the
    phantom's air (-1000), fat (-100) and muscle (+48)."""
    tissue = np.full(ct.shape, SOFT, np.uint8)
    tissue[ct < -30] = FAT
    tissue[ct < -550] = AIR
    return tissue


def phantom_source(seed: int, modality: str = "native") -> Source:
    """A procedural phantom (``generate_phantom``) at 0.21 mm, box-averaged onto the 0.63 mm grid."""
    from inference.phantom.generator import generate_phantom

    phantom = generate_phantom(seed, modality=modality)
    labels = phantom.labels
    f = FACTOR
    x, y, z = (s // f * f for s in labels.shape)

    def mean(a: np.ndarray) -> np.ndarray:
        a = a[:x, :y, :z].astype(np.float32)
        return a.reshape(x // f, f, y // f, f, z // f, f).mean(axis=(1, 3, 5))

    ct = mean(phantom.ct)
    maps = list(phantom.annotators.values())
    differ = np.zeros(labels.shape, bool)
    for other in maps[1:]:
        differ |= other != maps[0]
    return Source(
        name=f"{modality}_{seed:05d}",
        fractions=block_fractions(labels, f),
        labelled=np.ones(N_IDS, bool),
        tissue=tissue_from_ct(ct),
        ct=ct,
        disagreement=np.rint(mean(differ) * 255).astype(np.uint8),
        spacing_mm=phantom.spacing_mm * f,
    )


def save_source(source: Source, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, Any] = {  # Any: numpy's savez stub reads **arrays as its allow_pickle too
        "fractions": source.fractions,
        "labelled": source.labelled,
        "tissue": source.tissue,
        "spacing_mm": np.asarray(source.spacing_mm, np.float32),
    }
    if source.ct is not None:
        arrays["ct"] = source.ct
    if source.disagreement is not None:
        arrays["disagreement"] = source.disagreement
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, **arrays)  # type: ignore[arg-type]
    tmp.replace(path)


def load_source(path: Path) -> Source:
    with np.load(path) as z:
        return Source(
            name=path.stem,
            fractions=z["fractions"],
            labelled=z["labelled"],
            tissue=z["tissue"],
            ct=z.get("ct", None),
            disagreement=z.get("disagreement", None),
            spacing_mm=float(z["spacing_mm"]),
        )


def phantom_pool(folder: Path, seeds: range, modality: str = "native") -> list[Path]:
    """Cache ``phantom_source`` of each seed as ``folder/<modality>_<seed>.npz`` (kept if present)."""
    paths = []
    for seed in seeds:
        path = folder / f"{modality}_{seed:05d}.npz"
        if not path.exists():
            save_source(phantom_source(seed, modality), path)
            log.info("cached %s", path)
        paths.append(path)
    return paths


# --------------------------------------------------------------------------------------------
# Digimouse as a source


def digimouse_source(path: Path | str | None = None) -> Source:
    """The Digimouse atlas (``inference.phantom.digimouse``) on the 0.63 mm grid.

    Label fractions are box-averaged from the atlas' 0.2 mm (as the pipeline box-averages a
    scan); ``labelled`` is the atlas' own list (no intestine, no spinal cord: they hide in its
    "skin"); the tissue map marks the body as SOFT (its skin label is muscle, fat and gut
    together: ``synth_sample`` splits it into random fat- and muscle-like textures).
    """
    from inference.phantom import digimouse
    from inference.pipeline.geometry import resample_linear

    mouse = digimouse.load(path)
    ratio = mouse.spacing_mm / COARSE_MM
    shape = [max(round(n * ratio), 1) for n in mouse.labels.shape]
    fractions = np.zeros((N_IDS, *shape), np.uint8)
    for sid in np.unique(mouse.labels):
        share = resample_linear((mouse.labels == sid).astype(np.float32), shape, antialias=True)
        fractions[sid] = np.rint(np.clip(share, 0, 1) * 255).astype(np.uint8)
    body = resample_linear((mouse.tissues > 0).astype(np.float32), shape, antialias=True)
    labelled = np.zeros(N_IDS, bool)
    labelled[0] = True
    for name in mouse.labelled:
        labelled[ID[name]] = True
    tissue = np.where(body >= 0.5, SOFT, AIR).astype(np.uint8)
    return Source(
        name="digimouse",
        fractions=fractions,
        labelled=labelled,
        tissue=tissue,
        ct=None,
        disagreement=None,
        spacing_mm=COARSE_MM,
    )


# --------------------------------------------------------------------------------------------
# Drawing a sample


@dataclass
class Sample:
    """One synthetic training volume on the coarse grid (all arrays (x, y, z)).

    ``ct`` float32 HU; ``fractions`` uint8 [16, ...] (channel = canonical id); ``labelled`` bool
    [16]; ``ignore`` uint8 (255 = leave the voxel out of the loss: a second mouse's organs);
    ``disagreement`` uint8 (the source's annotator disagreement, or an outline band when the source
    has none); ``bed`` bool (voxels of the bed: background, never tumor); ``params`` what was drawn.
    """

    ct: np.ndarray
    fractions: np.ndarray
    labelled: np.ndarray
    ignore: np.ndarray
    disagreement: np.ndarray
    bed: np.ndarray
    params: dict[str, object]


#: (low, high) HU of each tissue class's mean, in CT's physical order: air < lung < fat < soft
#: tissue < bone (the ranges do not overlap, so every draw keeps the order).
HU_RANGES: dict[str, tuple[float, float]] = {
    "air": (-1020.0, -960.0),
    "lung": (-820.0, -250.0),
    "fat": (-220.0, -45.0),
    "soft": (-25.0, 130.0),
    "bone": (280.0, 1800.0),
}
_LUNGS = (ID["lung_left"], ID["lung_right"])
_BONE = ID["bones"]
#: Paired organs share their tissue (one draw for both sides).
_PAIR = {ID["lung_right"]: ID["lung_left"], ID["kidney_right"]: ID["kidney_left"]}


def tissue_class(sid: int) -> str:
    if sid in _LUNGS:
        return "lung"
    if sid == _BONE:
        return "bone"
    return "soft"


def tissue_levels(rng: np.random.Generator) -> dict[int, float]:
    """Each structure's mean HU (ids 1 .. N_IDS - 1), drawn in its class's range, so CT's physical
    order holds; paired organs a few HU apart; half the time the soft organs pulled towards one
    level, as they lie close together in native micro-CT."""
    means: dict[int, float] = {}
    for sid in range(1, N_IDS):
        if sid in _PAIR:
            continue
        lo, hi = HU_RANGES[tissue_class(sid)]
        means[sid] = float(rng.uniform(lo, hi))
    for sid, twin in _PAIR.items():
        means[sid] = means[twin] + float(rng.normal(0.0, 4.0))
    if rng.random() < 0.5:
        anchor = float(rng.uniform(20.0, 70.0))
        pull = float(rng.uniform(0.3, 0.9))
        for sid in means:
            if tissue_class(sid) == "soft":
                means[sid] = anchor + (1 - pull) * (means[sid] - anchor)
    return means


#: Hollow organs a contrast agent can fill, and how far it lifts their contents (HU): oral barium
#: or iodine and excreted iodine read from a few hundred to several thousand HU.
LUMEN_ORGANS = (ID["stomach"], ID["intestine"], ID["bladder"])
CONTRAST_LIFT_HU = (300.0, 3000.0)


def lumen_contrast(
    frac: np.ndarray, present: Sequence[int], shape: tuple[int, int, int], rng: np.random.Generator
) -> dict[int, tuple[np.ndarray, float]]:
    """For ``synth_sample``: which hollow organs a contrast agent fills, where, and by how many HU.
    Each present one is filled with a chance of 0.6: the stomach and gut in smooth patches (a
    bolus fills part of the lumen), the bladder wholly (urine mixes); at least one is."""
    filled: dict[int, tuple[np.ndarray, float]] = {}
    organs = [sid for sid in LUMEN_ORGANS if sid in present and frac[sid].any()]
    for sid in organs:
        if rng.random() >= 0.6 and (filled or sid != organs[-1]):
            continue
        if sid == ID["bladder"]:
            where = np.ones((), bool)  # everywhere in the organ
        else:
            where = _smooth_field(rng, shape, float(rng.uniform(1.0, 2.5))) > float(rng.uniform(-0.6, 0.6))
        filled[sid] = (where, float(rng.uniform(*CONTRAST_LIFT_HU)))
    return filled


def lean_body_hu(means: dict[int, float], rng: np.random.Generator) -> float:
    """The level of a lean mouse's unlabelled body: near its soft organs' mean (``means`` as
    ``tissue_levels`` draws them), with no fat between them."""
    soft = [m for sid, m in means.items() if tissue_class(sid) == "soft"]
    return float(np.clip(np.mean(soft) + rng.normal(0.0, 10.0), *HU_RANGES["soft"]))


def _interp_matrix(n_out: int, n_in: int, step: float) -> np.ndarray:
    """[n_out, n_in] linear interpolation weights: output i reads input position i / step."""
    pos = np.clip(np.arange(n_out, dtype=np.float32) / step, 0, n_in - 1)
    lo = np.minimum(np.floor(pos).astype(int), n_in - 2) if n_in > 1 else np.zeros(n_out, int)
    w = pos - lo
    m = np.zeros((n_out, n_in), np.float32)
    m[np.arange(n_out), lo] = 1 - w
    if n_in > 1:
        m[np.arange(n_out), lo + 1] += w
    return m


def _smooth_field(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    """A zero-mean, unit-sd Gaussian random field of correlation length ~``sigma`` voxels, drawn on
    a grid ``sigma`` times coarser and interpolated linearly (cheap: three small matrix products)."""
    step = max(float(sigma), 1.0)
    small = tuple(int(np.ceil(n / step)) + 2 for n in shape)
    field = ndimage.gaussian_filter(rng.standard_normal(small).astype(np.float32), 0.7)
    # Separable interpolation as three matrix products (z, then y, then x), no transposes.
    mx, my, mz = (_interp_matrix(n, m, step) for n, m in zip(shape, small, strict=True))
    field = np.matmul(my[None], field @ mz.T)
    field = (mx @ field.reshape(small[0], -1)).reshape(shape)
    field -= field.mean()
    return (field / max(float(field.std()), 1e-6)).astype(np.float32)


def _trilinear(volumes: np.ndarray, coords: np.ndarray, fill: np.ndarray) -> np.ndarray:
    """Sample ``volumes`` [C, X, Y, Z] at ``coords`` [3, ...] (voxel units), trilinear, ``fill[c]``
    outside; returns float32 [C, ...]. One gather per cube corner for all channels at once."""
    # Only the region the coordinates reach is copied (channels last, a voxel of fill around it).
    c = coords.reshape(3, -1)
    lo = np.clip(np.floor(c.min(axis=1)).astype(int), 0, np.array(volumes.shape[1:]) - 1)
    hi = np.clip(np.ceil(c.max(axis=1)).astype(int) + 1, lo + 1, np.array(volumes.shape[1:]))
    region = volumes[:, lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
    n_c = volumes.shape[0]
    padded = np.empty((region.shape[1] + 2, region.shape[2] + 2, region.shape[3] + 2, n_c), np.float32)
    padded[...] = fill.astype(np.float32)
    padded[1:-1, 1:-1, 1:-1] = np.moveaxis(region, 0, -1)
    flat = padded.reshape(-1, n_c)
    dims = np.array(padded.shape[:3])
    c = c - lo[:, None] + 1.0
    c = np.clip(c, 0.0, (dims - 1.001)[:, None])
    base = np.floor(c).astype(np.int64)
    frac = (c - base).astype(np.float32)
    strides = np.array([dims[1] * dims[2], dims[2], 1])
    index = (base * strides[:, None]).sum(axis=0)
    out = np.zeros((index.size, n_c), np.float32)
    for dx in (0, 1):
        wx = frac[0] if dx else 1 - frac[0]
        for dy in (0, 1):
            wy = wx * (frac[1] if dy else 1 - frac[1])
            for dz in (0, 1):
                w = wy * (frac[2] if dz else 1 - frac[2])
                out += flat[index + dx * strides[0] + dy * strides[1] + dz] * w[:, None]
    return np.moveaxis(out, -1, 0).reshape(n_c, *coords.shape[1:])


def _rotation(ax: float, ay: float, az: float) -> np.ndarray:
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def _z_extent(frac: np.ndarray, ids: tuple[int, ...]) -> tuple[int, int] | None:
    present = np.flatnonzero((frac[list(ids)] > 127).any(axis=(0, 1, 2)))
    return (int(present[0]), int(present[-1]) + 1) if present.size else None


def _field_of_view(source: Source, rng: np.random.Generator) -> tuple[str, int, int]:
    """(kind, z_lo, z_hi) of the scanned slab in source voxels: head, thorax, torso, whole, or a
    random window."""
    nz = source.fractions.shape[3]
    mm = 1.0 / source.spacing_mm
    brain = _z_extent(source.fractions, (ID["brain"],))
    lungs = _z_extent(source.fractions, _LUNGS)
    liver = _z_extent(source.fractions, (ID["liver"],))
    bladder = _z_extent(source.fractions, (ID["bladder"],))
    kind = str(rng.choice(["whole", "torso", "thorax", "head", "window"], p=[0.3, 0.3, 0.15, 0.1, 0.15]))
    lo, hi = 0, nz
    if kind == "torso" and lungs and bladder:
        lo = bladder[0] - int(rng.uniform(0, 6) * mm)
        hi = lungs[1] + int(rng.uniform(0, 8) * mm)
    elif kind == "thorax" and lungs and liver:
        lo = int(rng.uniform(liver[0], (liver[0] + liver[1]) / 2))
        hi = lungs[1] + int(rng.uniform(1, 10) * mm)
    elif kind == "head" and brain:
        lo = brain[0] - int(rng.uniform(1, 12) * mm)
        hi = nz
    elif kind == "window":
        length = int(rng.uniform(18, 60) * mm)
        lo = int(rng.integers(0, max(nz - length, 1)))
        hi = lo + length
    else:
        kind = "whole"
    lo, hi = max(lo, 0), min(hi, nz)
    if hi - lo < 8:
        return "whole", 0, nz
    return kind, lo, hi


def _warp_coordinates(
    source: Source,
    shape: tuple[int, int, int],
    origin: np.ndarray,
    rng: np.random.Generator,
    variety: float = 1.0,
    extra_roll: float = 0.0,
    sizes: tuple[float, float] = (0.85, 1.15),
) -> tuple[np.ndarray, dict[str, object]]:
    """Source coordinates [3, X, Y, Z] of every output voxel: the output box at ``origin`` (source
    voxels), rotated and scaled about its centre, bent along the spine, deformed elastically, and
    each of a few organs grown or shrunk about its own centre.

    ``variety`` above 1 widens the anatomy drawn from one source (``synth_sample``'s docstring);
    at 1 the draws are exactly those of the committed 2.0.0 runs. ``extra_roll`` (radians) turns
    the mouse further about its long axis, part-way onto its side. ``sizes`` bounds the overall
    scale drawn for the mouse (1 = the source's own size)."""
    centre_out = (np.array(shape) - 1) / 2.0
    pose = str(rng.choice(["prone", "supine", "lateral"], p=[0.88, 0.08, 0.04]))
    roll = {"prone": 0.0, "supine": np.pi, "lateral": float(rng.choice([-0.5, 0.5])) * np.pi}[pose]
    small = rng.normal(0.0, [0.07, 0.07, 0.1])
    rot = _rotation(float(small[0]), float(small[1]), roll + extra_roll + float(small[2]))
    spread = 0.07 * (1.0 + 0.5 * (variety - 1.0))
    scale = rng.uniform(*sizes) * rng.uniform(1.0 - spread, 1.0 + spread, size=3)
    # Output voxel p samples the source at origin + c + R^-1 diag(1/s) (p - c) (+ displacements).
    inv = rot.T / scale[:, None]
    grid = np.indices(shape, dtype=np.float32).reshape(3, -1) - centre_out[:, None].astype(np.float32)
    coords = (inv.astype(np.float32) @ grid).reshape(3, *shape)
    coords += (origin + centre_out)[:, None, None, None].astype(np.float32)
    # Spine bend: a smooth lateral and dorsoventral sway along the body axis (several mm).
    z = np.linspace(0.0, 1.0, shape[2], dtype=np.float32)
    mm = 1.0 / source.spacing_mm
    for axis in (0, 1):
        amp = float(rng.normal(0.0, 1.5)) * mm
        freq = float(rng.uniform(0.5, 2.0)) * np.pi
        coords[axis] += amp * np.sin(freq * z + float(rng.uniform(0, 2 * np.pi)))[None, None, :]
    # Elastic: smooth random displacement, correlation ~4-8 voxels, up to ~1.5 voxels.
    strength = float(rng.uniform(0.0, 1.6 * variety))
    sigma = float(rng.uniform(4.0, 8.0 + 4.0 * (variety - 1.0)))
    for axis in range(3):
        coords[axis] += strength * _smooth_field(rng, shape, sigma)
    # Per-organ: a few organs grow or shrink (0.8-1.2 in size) about their centre, the tissue
    # around them following smoothly.
    organs = [sid for sid in range(1, N_IDS) if sid != _BONE and source.labelled[sid]]
    grown: dict[str, float] = {}
    n_organs = min(round(4 + 2 * (variety - 1.0)), len(organs))
    for sid in rng.choice(organs, size=n_organs, replace=False):
        mask = source.fractions[sid] > 127
        if mask.sum() < 8:
            continue
        idx = np.argwhere(mask)
        c = idx.mean(axis=0)
        radius = float(np.sqrt(((idx - c) ** 2).sum(axis=1).mean())) + 1.0
        half = 0.2 * (1.0 + 0.5 * (variety - 1.0))
        factor = float(rng.uniform(1.0 - half, 1.0 + half))
        d2 = ((coords - c[:, None, None, None].astype(np.float32)) ** 2).sum(axis=0)
        weight = np.exp(-d2 / (2 * (1.5 * radius) ** 2)).astype(np.float32)
        # Near the organ, output p samples the source at c + (p - c) / factor.
        coords += (coords - c[:, None, None, None].astype(np.float32)) * ((1.0 / factor - 1.0) * weight)
        if variety > 1.0:
            # Another mouse's organ also sits a little elsewhere among its neighbours: the
            # organ and the tissue near it move together (up to ~1 mm per axis at variety 2).
            shift = rng.normal(0.0, 0.5 * (variety - 1.0), size=3) * mm
            coords -= (shift[:, None, None, None] * weight[None]).astype(np.float32)
        grown[STRUCTURES[sid].name] = round(factor, 3)
    params: dict[str, object] = {
        "pose": pose,
        "rotation_rad": [round(float(a), 3) for a in small],
        "extra_roll_deg": round(float(np.degrees(extra_roll)), 1),
        "scale": [round(float(s), 3) for s in scale],
        "elastic_voxels": round(strength, 2),
        "organ_scale": grown,
    }
    return coords, params


def _bed(body: np.ndarray, rng: np.random.Generator, spacing_mm: float) -> tuple[np.ndarray, str]:
    """A bed under (or, for a supine mouse, over in y) the animal: flat slab, curved cradle or a
    tube around it; float32 share of each voxel, 0 where the body is."""
    nx, ny, _ = body.shape
    mm = 1.0 / spacing_mm
    occupied = np.flatnonzero(body.max(axis=(0, 2)) > 0.3)
    cols = np.flatnonzero(body.max(axis=(1, 2)) > 0.3)
    if occupied.size == 0 or cols.size == 0:
        return np.zeros(body.shape, np.float32), "none"
    kind = str(rng.choice(["slab", "cradle", "tube"], p=[0.4, 0.4, 0.2]))
    thick = rng.uniform(0.5, 2.5) * mm
    gap = rng.uniform(0.0, 0.8) * mm
    x = np.arange(nx, dtype=np.float32)[:, None]
    y = np.arange(ny, dtype=np.float32)[None, :]
    below = rng.random() < 0.8
    if kind == "tube":
        cx = (cols[0] + cols[-1]) / 2
        cy = (occupied[0] + occupied[-1]) / 2
        r = max(cols[-1] - cols[0], occupied[-1] - occupied[0]) / 2 + gap + 1.0
        dist = np.sqrt((x - cx) ** 2 + (y - cy) ** 2)
        share = np.clip(np.minimum(dist - r, r + thick - dist) + 0.5, 0, 1)
    else:
        curve = rng.uniform(0.01, 0.05) * (x - (cols[0] + cols[-1]) / 2) ** 2 if kind == "cradle" else 0 * x
        if below:
            top = occupied[-1] + 1 + gap - curve * spacing_mm
            share = np.clip(np.minimum(y - top, top + thick - y) + 0.5, 0, 1)
        else:
            top = occupied[0] - gap + curve * spacing_mm
            share = np.clip(np.minimum(top - y, y - (top - thick)) + 0.5, 0, 1)
    share = np.broadcast_to(share[:, :, None], body.shape).astype(np.float32)
    return share * np.clip(1.0 - body, 0, 1), kind


def synth_sample(
    source: Source,
    seed: int,
    *,
    shape: tuple[int, int, int] | None = None,
    centre: tuple[int, int, int] | None = None,
    variety: float = 1.0,
    plain_body: float = 0.0,
    clipped: float = 0.0,
    rolled: float = 0.0,
    sizes: tuple[float, float] = (0.85, 1.15),
    contrast: float = 0.0,
) -> Sample:
    """One randomised training volume from ``source`` (see the module docstring).

    ``shape`` is the output box in coarse voxels (default: the source's whole grid); ``centre``
    where in the source that box is centred before the random field of view and pose (default:
    the source's centre, moved at random). ``variety`` (>= 1) widens the anatomy one source
    yields, so that one real mouse stands for many: per-axis scale +-7 % -> +-10.5 %, elastic
    field up to 1.6 -> 3.2 voxels with a longer correlation, 4 -> 6 organs grown or shrunk by
    +-20 % -> +-30 %, and each of them moved by ~0.5 mm (per axis, s.d.) among its neighbours
    (figures at variety 2). ``plain_body`` is the chance that the unlabelled body is drawn as one
    smooth tissue near the organs' level with no fat between them (at 0, the default, every volume
    is drawn as by 2.2.0's generator). ``clipped`` is the chance that the scan's values are cut
    off at both ends as some exports do (air then reads -600..-300 HU inside the field of view; at
    0, the default, none is). ``rolled`` is the chance that the mouse lies part-way on its side:
    turned a further 10-40 degrees either way about its long axis (beside the few degrees every
    volume gets; at 0, the default, none is). ``sizes`` is the range of the mouse's overall
    scale against its source (default 0.85-1.15, as every committed model was trained; a mouse
    1.3 times the atlas' 28 g mouse in length weighs about 60 g). ``contrast`` is the chance that
    a contrast agent fills the hollow organs' lumen (``lumen_contrast``: oral barium or iodine in
    patches of the stomach and gut, excreted iodine in the bladder), reading far above soft tissue
    and as bright as bone or brighter (at 0, the default, none does). Same source, seed and
    options, same arrays.
    """
    for name, chance in (
        ("plain_body", plain_body),
        ("clipped", clipped),
        ("rolled", rolled),
        ("contrast", contrast),
    ):
        if not 0.0 <= chance <= 1.0:
            raise ValueError(f"{name} is a chance: 0 to 1, not {chance}")
    if not 0.0 < sizes[0] <= sizes[1]:
        raise ValueError(f"sizes is a range of scales, low to high and above 0, not {sizes}")
    rng = np.random.default_rng([seed, 19])
    src_shape = np.array(source.fractions.shape[1:])
    kind, z_lo, z_hi = _field_of_view(source, rng)
    nx, ny, nz = (int(s) for s in (shape if shape is not None else src_shape))
    out_shape = (nx, ny, nz)
    if centre is None:
        c = src_shape / 2.0 + rng.normal(0, 2.0, size=3)
        c[2] = rng.uniform(z_lo, z_hi)
    else:
        c = np.asarray(centre, dtype=float)
    origin = c - (np.array(out_shape) - 1) / 2.0
    roll_rng = np.random.default_rng([seed, 37])  # its own stream: rolled=0 draws as before
    extra_roll = 0.0
    if rolled and roll_rng.random() < rolled:
        extra_roll = float(roll_rng.choice([-1.0, 1.0]) * np.radians(roll_rng.uniform(10.0, 40.0)))
    coords, params = _warp_coordinates(source, out_shape, origin, rng, variety, extra_roll, sizes)
    params["field_of_view"] = kind

    # Field of view: the scanned slab along the body, sometimes cut in-plane.
    keep = (coords[2] >= z_lo) & (coords[2] <= z_hi - 1)
    if rng.random() < 0.2:
        axis = int(rng.integers(0, 2))
        n = src_shape[axis]
        lo = rng.uniform(0, 0.3) * n
        hi = n - rng.uniform(0, 0.3) * n
        keep &= (coords[axis] >= lo) & (coords[axis] <= hi)
        params["in_plane_crop"] = [axis, round(float(lo), 1), round(float(hi), 1)]

    # Everything that moves with the anatomy is warped in one pass: label fractions, the body
    # share, the fat share of the unlabelled body and the annotators' disagreement.
    present = [sid for sid in range(1, N_IDS) if source.fractions[sid].any()]
    if source.ct is not None:
        body_src = np.clip((source.ct + 1000.0) / 1000.0, 0.0, 1.0)
        fat_src = np.clip((40.0 - source.ct) / 140.0, 0.0, 1.0)
    else:
        body_src = (source.tissue != AIR).astype(np.float32)
        fat_src = np.zeros(body_src.shape, np.float32)
    dis_src = (
        source.disagreement.astype(np.float32) / 255.0
        if source.disagreement is not None
        else np.zeros(body_src.shape, np.float32)
    )
    stack = np.concatenate(
        [source.fractions[present].astype(np.float32) / 255.0, np.stack([body_src, fat_src, dis_src])]
    )
    fill = np.zeros(len(stack), np.float32)
    fill[-2] = 1.0
    warped = _trilinear(stack, coords, fill)
    frac = np.zeros((N_IDS, *out_shape), np.float32)
    frac[present] = warped[: len(present)]
    frac *= keep[None]
    labelled_total = frac[1:].sum(axis=0)
    body = np.maximum(warped[-3] * keep, labelled_total)
    fat_warped = warped[-2] if source.ct is not None else None
    frac[0] = np.clip(1.0 - labelled_total, 0.0, 1.0)
    rest = np.clip(body - labelled_total, 0.0, 1.0)  # unlabelled body (muscle, fat, gut ...)
    air = np.clip(1.0 - body, 0.0, 1.0)

    ignore = np.zeros(out_shape, np.float32)
    # A second mouse beside this one: its body (shifted copy) joins the field as unlabelled
    # tissue; its organs are left out of the loss (either answer is defensible there).
    if rng.random() < 0.12:
        cols = np.flatnonzero(body.max(axis=(1, 2)) > 0.3)
        if cols.size:
            width = cols[-1] - cols[0] + 1
            side = 1 if rng.random() < 0.5 else -1
            shift = side * int(width + rng.uniform(0.5, 3.0) / source.spacing_mm)
            other = np.roll(body, shift, axis=0)
            other_org = np.roll(labelled_total, shift, axis=0)
            if side > 0:
                other[:shift] = 0
                other_org[:shift] = 0
            else:
                other[shift:] = 0
                other_org[shift:] = 0
            other = np.minimum(other, air)
            rest += other
            air -= other
            ignore = np.maximum(ignore, (other_org > 0.1).astype(np.float32))
            params["second_mouse"] = side

    bed_share = np.zeros(out_shape, np.float32)
    if rng.random() < 0.5:
        bed_share, bed_kind = _bed(body, rng, source.spacing_mm)
        bed_share *= air * keep
        air -= bed_share
        params["bed"] = bed_kind

    contrast_rng = np.random.default_rng([seed, 41])  # its own stream: contrast=0 draws as before
    lumen = lumen_contrast(frac, present, out_shape, contrast_rng) if contrast_rng.random() < contrast else {}
    if lumen:
        params["contrast_hu"] = {STRUCTURES[sid].name: round(lift, 1) for sid, (_, lift) in lumen.items()}
    means = tissue_levels(rng)
    air_hu = float(rng.uniform(*HU_RANGES["air"]))
    fat_hu = float(rng.uniform(*HU_RANGES["fat"]))
    muscle_hu = float(rng.uniform(*HU_RANGES["soft"]))
    bed_hu = float(rng.uniform(-300.0, 400.0))
    # Textures: two smooth fields mixed per tissue, spread 0-30 HU (lung and bone more).
    fields = [_smooth_field(rng, out_shape, float(rng.uniform(1.5, 3.0))) for _ in range(2)]
    image = air * air_hu + bed_share * bed_hu
    for sid in present:
        spread = float(rng.uniform(0.0, 30.0)) * (3.0 if tissue_class(sid) in ("lung", "bone") else 1.0)
        w = float(rng.uniform(-1, 1))
        tex = means[sid] + spread * (w * fields[0] + np.sqrt(1 - w * w) * fields[1])
        if sid in (ID["intestine"], ID["stomach"]) and rng.random() < 0.4:
            # Gas in the gut: part of its volume far darker than its wall.
            gas = _smooth_field(rng, out_shape, 1.5) > rng.uniform(0.3, 1.5)
            tex = np.where(gas, float(rng.uniform(-900, -300)), tex)
        if sid in lumen:
            filled, lift = lumen[sid]
            tex = np.where(filled, tex + lift, tex)
        image += frac[sid] * tex
    # The unlabelled body: fat- and muscle-like textures, the fat where the source says (phantom)
    # and/or where a random field puts it, plus a subcutaneous layer.
    share = _smooth_field(rng, out_shape, float(rng.uniform(1.5, 4.0)))
    fat = np.clip((share - rng.uniform(-0.5, 1.5)) * 2.0, 0.0, 1.0)
    if fat_warped is not None and rng.random() < 0.6:
        fat = np.maximum(fat * float(rng.uniform(0, 1)), fat_warped)
    surface = ndimage.gaussian_filter(body, 1.0) < rng.uniform(0.6, 0.95)
    fat = np.where(surface & (rng.random() < 0.7), np.maximum(fat, 0.8), fat)
    rest_tex = (fat * fat_hu + (1 - fat) * muscle_hu) + float(rng.uniform(0, 20)) * fields[1]
    plain_rng = np.random.default_rng([seed, 29])  # its own stream: plain_body=0 draws as before
    if plain_rng.random() < plain_body:
        # A plain body: the unlabelled tissue one smooth level close to the organs' own, no fat
        # between them (a lean mouse; a simple tissue model). Organ edges are then barely in the
        # image and the network has to place them by their shapes.
        muscle_hu = lean_body_hu(means, plain_rng)
        fat = np.where(surface & (plain_rng.random() < 0.5), 0.8, 0.0)
        rest_tex = fat * fat_hu + (1 - fat) * muscle_hu + float(plain_rng.uniform(0, 8)) * fields[1]
        params["plain_body"] = True
    image += rest * rest_tex

    # Scanner: beam hardening near bone, rings, streaks, bias, blur, noise (as left after the
    # pipeline box-averages a scan of 0.1-0.4 mm voxels onto this grid).
    bone = frac[_BONE]
    scanner: dict[str, object] = {}
    if rng.random() < 0.5 and bone.any():
        bh = float(rng.uniform(10.0, 80.0))
        near = ndimage.gaussian_filter(bone, float(rng.uniform(1.0, 3.0)))
        image -= bh * near * (1 - bone) * (body > 0.5)
        scanner["beam_hardening_hu"] = round(bh, 1)
    matter = body > 0.2
    if rng.random() < 0.3:
        cx, cy = (np.array(out_shape[:2]) - 1) / 2 + rng.normal(0, 3, size=2)
        r = np.sqrt((np.arange(out_shape[0])[:, None] - cx) ** 2 + (np.arange(out_shape[1])[None] - cy) ** 2)
        ring = np.zeros(out_shape[:2], np.float32)
        for _ in range(int(rng.integers(1, 5))):
            ring += float(rng.uniform(-40, 40)) * np.exp(-((r - rng.uniform(0, out_shape[0] / 2)) ** 2) / 0.5)
        image += ring[:, :, None] * matter
        scanner["rings"] = True
    if rng.random() < 0.25 and bone.any():
        # Streaks: thin bright/dark lines in axial planes through a dense bone, over a z range.
        for _ in range(int(rng.integers(1, 4))):
            angle = rng.uniform(0, np.pi)
            idx = np.argwhere(bone > 0.5)
            if not len(idx):
                break
            p = idx[int(rng.integers(len(idx)))]
            x = np.arange(out_shape[0])[:, None] - p[0]
            y = np.arange(out_shape[1])[None] - p[1]
            dist = np.abs(x * np.sin(angle) - y * np.cos(angle))
            line = float(rng.uniform(-120, 120)) * np.exp(-(dist**2) / 0.5)
            zr = slice(max(p[2] - int(rng.integers(2, 12)), 0), p[2] + int(rng.integers(2, 12)))
            image[:, :, zr] += line[:, :, None]
        scanner["streaks"] = True
    bias = float(rng.uniform(0.0, 40.0))
    image += bias * _smooth_field(rng, out_shape, 16.0) * matter
    blur_mm = float(rng.uniform(0.0, 0.35))
    if blur_mm > 0.05:
        image = ndimage.gaussian_filter(image, blur_mm / source.spacing_mm, truncate=2.5)
    voxel_mm = float(rng.uniform(0.1, 0.4))
    noise_hu = float(rng.uniform(5.0, 80.0))
    # Box-averaging (voxel / 0.63 mm)^3 voxels divides the noise by the square root of their count.
    residual = noise_hu * (voxel_mm / source.spacing_mm) ** 1.5
    image += residual * rng.standard_normal(out_shape).astype(np.float32)
    scanner.update(
        blur_mm=round(blur_mm, 3),
        voxel_mm=round(voxel_mm, 3),
        noise_hu=round(noise_hu, 1),
        residual_noise_hu=round(residual, 2),
        bias_hu=round(bias, 1),
    )
    clip_rng = np.random.default_rng([seed, 31])  # its own stream: clipped=0 draws as before
    if clipped and clip_rng.random() < clipped:
        # An export clipped at both ends: air inside the field of view reads as dark as lung, so
        # the network must not take "brighter than -1000" for body.
        low, high = float(clip_rng.uniform(-600.0, -300.0)), float(clip_rng.uniform(700.0, 1500.0))
        image = np.clip(image, low, high)
        scanner["clipped_hu"] = [round(low, 1), round(high, 1)]
    params["scanner"] = scanner
    params["hu"] = {
        "air": round(air_hu, 1),
        "fat": round(fat_hu, 1),
        "muscle": round(muscle_hu, 1),
        "bed": round(bed_hu, 1),
        **{STRUCTURES[s].name: round(m, 1) for s, m in means.items()},
    }
    # Outside the scanned slab the trainer pads with air, as the pipeline pads a scan.
    image = np.where(keep, image, -1000.0).astype(np.float32)

    if source.disagreement is not None:
        dis = warped[-1] * keep
    else:
        # No annotators: the outlines, where people would part, stand in.
        dis = np.clip(2.0 * (1.0 - frac.max(axis=0)), 0.0, 1.0) * (body > 0.05)
    return Sample(
        ct=image,
        fractions=np.rint(np.clip(frac, 0, 1) * 255).astype(np.uint8),
        labelled=source.labelled.copy(),
        ignore=np.rint(ignore * 255).astype(np.uint8),
        disagreement=np.rint(np.clip(dis, 0, 1) * 255).astype(np.uint8),
        bed=bed_share > 0.5,
        params=params,
    )


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m inference.phantom.synth", description=__doc__)
    parser.add_argument("--pool", type=Path, default=Path("data/.cache/synth-sources"))
    parser.add_argument("--first", type=int, default=1000)
    parser.add_argument("--count", type=int, default=60)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    phantom_pool(args.pool, range(args.first, args.first + args.count))


if __name__ == "__main__":
    main()
