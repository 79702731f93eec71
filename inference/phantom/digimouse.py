"""The Digimouse atlas: a real whole-body mouse label map, and CT rendered from it.

``../shared/realdata/digimouse/`` (beside the repository) holds the Digimouse atlas (Dogdas et al.,
Phys. Med. Biol. 2007; GPL-3.0, see the README and licence there): one 28 g nude male mouse, 21
tissues, 0.2 mm voxels. This module puts it in the procedural phantom's frame and speaks the
project's label table, so it can serve as real anatomy for training and as a held-out source for
evaluation (CT drawn from real organ shapes with a simple tissue model, noise and blur).

Public API:

``load(path=None) -> Digimouse``
    The atlas in closest-canonical RAS (nibabel ``as_closest_canonical``: x to the mouse's right,
    y ventral, z cranial; the frame of ``inference/phantom/canvas.py``), as three uint8 arrays of
    one shape (x, y, z) at 0.2 mm: ``labels`` (canonical ids of ``inference.structures``),
    ``tissues`` (indices into ``TISSUES``: what each voxel is made of, for rendering) and ``atlas``
    (the original Digimouse numbers, ``ATLAS_LABELS``). ``labelled`` names the canonical structures
    whose ground truth the atlas really gives: intestine and spinal cord are not labelled there
    (they are inside its "skin", i.e. all remaining soft tissue), so training must treat them with
    its partial-label loss and evaluation must score only ``labelled`` structures. The mouse is
    healthy: tumor and metastasis are labelled (as absent). Kidneys and lungs are one label each
    in the atlas and are split into left and right here (see ``_split_by_side``). Cached per path;
    the arrays are read-only.

``torso_range(labels, spacing_mm) -> (z_lo, z_hi)``
    The shoulders-to-hips slab of a canonical label map (Digimouse or procedural phantom), as a
    z index range ``[z_lo, z_hi)``: from the bladder's caudal end (hips) less ``HIP_MARGIN_MM`` to
    the lungs' apex (thoracic inlet, at the shoulders) plus ``SHOULDER_MARGIN_MM``.

``render_ct(mouse, *, seed, spacing_mm=0.21, crop="whole", ...) -> Phantom``
    A CT (int16 HU) and its ground truth on an isotropic grid of ``spacing_mm``, returned as the
    procedural generator's ``Phantom`` (affine ``diag(spacing)``, origin 0, canonical axes) so the
    same writers and evaluators take it; ``meta["labelled_structures"]`` carries ``labelled``.
    Deterministic for a seed. The tissue model is ``TISSUE_HU`` (override any entry with ``hu``).

Tissue model (``TISSUE_HU``, mean HU per tissue, no texture within a tissue): air -1000; lungs
-450 (../shared/science.md: -300 to -600 by inflation); soft tissue 40 (the atlas' "skin" label is
muscle, fat and gut together: muscle ~48 and gut ~25-48 in the phantom's ``Tissues``, pulled down a
little by fat at -100); liver 62, spleen 58, heart (blood) 45, kidney 36, brain 38, bladder (urine)
12, stomach (content) 25 (the phantom's own means in ``inference/phantom/anatomy.py``); bone 900
(between the phantom's vertebrae, 800, and long bones, 1150: the atlas' skeleton label includes
marrow); eye 10 (vitreous, water-like); testis 40, glands 45, masseter muscle 48. The scanner is
a Gaussian blur of ``blur_mm`` (sigma) at the atlas' 0.2 mm, an anti-alias blur when the output
voxel is coarser, linear resampling of the intensities (nearest for labels) and white Gaussian
noise of ``noise_hu`` at the output grid. The in-plane field is padded with air to at least
``fov_mm`` (the phantom's 40.32 mm) and the mouse centred in it.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import nibabel as nib
import numpy as np
from scipy import ndimage

from inference.phantom.generator import FOV_MM, Phantom
from inference.structures import BY_NAME, STRUCTURES

#: Where the atlas lives: the ``shared/`` folder beside the repository (or ``$LABSEG_SHARED_DIR``,
#: as in ``tests/conftest.py``, for a clone kept elsewhere).
DEFAULT_DIR = (
    Path(os.environ.get("LABSEG_SHARED_DIR", str(Path(__file__).resolve().parents[2].parent / "shared")))
    / "realdata"
    / "digimouse"
)
FILENAME = "digimouse_labels.nii.gz"
SPACING_MM = 0.2

#: The atlas' own label numbers (its ``labels.json``).
ATLAS_LABELS: dict[int, str] = {
    0: "background",
    1: "skin",
    2: "skeleton",
    3: "eye",
    4: "medulla",
    5: "cerebellum",
    6: "olfactory_bulbs",
    7: "external_cerebrum",
    8: "striatum",
    9: "heart",
    10: "rest_of_brain",
    11: "masseter_muscles",
    12: "lachrymal_glands",
    13: "bladder",
    14: "testis",
    15: "stomach",
    16: "spleen",
    17: "pancreas",
    18: "liver",
    19: "kidneys",
    20: "adrenal_glands",
    21: "lungs",
}
_A = {name: number for number, name in ATLAS_LABELS.items()}
BRAIN_PARTS = ("medulla", "cerebellum", "olfactory_bulbs", "external_cerebrum", "striatum", "rest_of_brain")

#: Atlas label -> canonical structure name, for the structures that map one to one (kidneys and
#: lungs are split by side separately; everything else is background in the canonical map).
_CANONICAL: dict[str, str] = {
    "skeleton": "bones",
    "heart": "heart",
    "bladder": "bladder",
    "stomach": "stomach",
    "spleen": "spleen",
    "liver": "liver",
    **{part: "brain" for part in BRAIN_PARTS},
}

#: Canonical structures whose ground truth the atlas gives (lesions: known absent, a healthy mouse).
LABELLED: tuple[str, ...] = tuple(
    s.name for s in STRUCTURES if s.name not in ("background", "intestine", "spinal_cord")
)

#: Tissue classes of the rendering map; the index is the value in ``Digimouse.tissues``.
TISSUES: tuple[str, ...] = (
    "air",
    "soft_tissue",
    "bone",
    "lung",
    "brain",
    "heart",
    "liver",
    "kidney",
    "spleen",
    "stomach",
    "bladder",
    "eye",
    "testis",
    "gland",
    "muscle",
)
_TISSUE_OF: dict[str, str] = {
    "background": "air",
    "skin": "soft_tissue",
    "skeleton": "bone",
    "eye": "eye",
    **{part: "brain" for part in BRAIN_PARTS},
    "heart": "heart",
    "masseter_muscles": "muscle",
    "lachrymal_glands": "gland",
    "bladder": "bladder",
    "testis": "testis",
    "stomach": "stomach",
    "spleen": "spleen",
    "pancreas": "gland",
    "liver": "liver",
    "kidneys": "kidney",
    "adrenal_glands": "gland",
    "lungs": "lung",
}

#: The renders' white noise (HU, one voxel's standard deviation): our phantoms' level.
DEFAULT_NOISE_HU = 20.0
#: The renders' blur (mm, Gaussian sigma).
DEFAULT_BLUR_MM = 0.15
#: Mean HU per tissue (sources in the module docstring).
TISSUE_HU: dict[str, float] = {
    "air": -1000.0,
    "soft_tissue": 40.0,
    "bone": 900.0,
    "lung": -450.0,
    "brain": 38.0,
    "heart": 45.0,
    "liver": 62.0,
    "kidney": 36.0,
    "spleen": 58.0,
    "stomach": 25.0,
    "bladder": 12.0,
    "eye": 10.0,
    "testis": 40.0,
    "gland": 45.0,
    "muscle": 48.0,
}

SHOULDER_MARGIN_MM = 3.0
HIP_MARGIN_MM = 2.0


@dataclass(frozen=True)
class Digimouse:
    """The atlas in canonical RAS: three read-only uint8 arrays of one (x, y, z) shape."""

    labels: np.ndarray
    tissues: np.ndarray
    atlas: np.ndarray
    spacing_mm: float
    labelled: tuple[str, ...]

    @property
    def affine(self) -> np.ndarray:
        return np.diag([self.spacing_mm, self.spacing_mm, self.spacing_mm, 1.0])


def _split_by_side(mask: np.ndarray, max_erosion: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """``(left, right)`` halves of a paired organ given as one mask (canonical axes: +x = right).

    The two organs are found as the two largest components after the fewest erosions that
    separate them (kidneys are apart already; the lungs touch behind the heart and part after
    three 6-connected erosions in the atlas); every voxel of the mask then goes to the nearer of the
    two. The one with the lower mean x is the left one. If no erosion separates them, the mask is
    cut at its own thinnest sagittal plane between the two lateral quarters.
    """
    box = ndimage.find_objects(mask.astype(np.uint8))[0]
    sub = mask[box]
    seeds: np.ndarray | None = None
    for it in range(max_erosion + 1):
        core = ndimage.binary_erosion(sub, iterations=it) if it else sub
        lab, n = ndimage.label(core)
        if n < 2:
            continue
        counts = np.bincount(lab.ravel())[1:]
        first, second = np.argsort(counts)[::-1][:2]
        if counts[second] >= 0.1 * counts[first]:
            seeds = np.zeros(sub.shape, np.uint8)
            seeds[lab == first + 1] = 1
            seeds[lab == second + 1] = 2
            break
    if seeds is None:
        profile = sub.sum(axis=(1, 2))
        q = max(len(profile) // 4, 1)
        cut = q + int(np.argmin(profile[q : len(profile) - q])) if len(profile) > 2 * q else len(profile) // 2
        left, right = np.zeros_like(sub), np.zeros_like(sub)
        left[:cut], right[cut:] = sub[:cut], sub[cut:]
    else:
        _, nearest = ndimage.distance_transform_edt(seeds == 0, return_indices=True)
        owner = seeds[tuple(nearest)]
        a, b = sub & (owner == 1), sub & (owner == 2)
        xs = np.arange(sub.shape[0])[:, None, None]
        a_x = float((xs * a).sum() / max(a.sum(), 1))
        b_x = float((xs * b).sum() / max(b.sum(), 1))
        left, right = (a, b) if a_x < b_x else (b, a)
    out_left, out_right = np.zeros_like(mask), np.zeros_like(mask)
    out_left[box], out_right[box] = left, right
    return out_left, out_right


@functools.lru_cache(maxsize=2)
def _load(path: str) -> Digimouse:
    file = Path(path) / FILENAME
    if not file.is_file():
        raise FileNotFoundError(
            f"the Digimouse atlas is not at {file}; it belongs in shared/realdata/digimouse/"
        )
    image = nib.as_closest_canonical(nib.load(str(file)))
    spacing = np.sqrt((image.affine[:3, :3] ** 2).sum(axis=0))
    if not np.allclose(spacing, SPACING_MM, atol=1e-4):
        raise ValueError(f"expected {SPACING_MM} mm voxels in {file}, found {spacing.tolist()}")
    atlas = np.ascontiguousarray(np.asanyarray(image.dataobj), dtype=np.uint8)
    lut_labels = np.zeros(256, np.uint8)
    lut_tissue = np.zeros(256, np.uint8)
    for number, name in ATLAS_LABELS.items():
        if name in _CANONICAL:
            lut_labels[number] = BY_NAME[_CANONICAL[name]].id
        lut_tissue[number] = TISSUES.index(_TISSUE_OF[name])
    labels = lut_labels[atlas]
    for organ, base in (("kidneys", "kidney"), ("lungs", "lung")):
        left, right = _split_by_side(atlas == _A[organ])
        labels[left] = BY_NAME[f"{base}_left"].id
        labels[right] = BY_NAME[f"{base}_right"].id
    tissues = lut_tissue[atlas]
    for array in (labels, tissues, atlas):
        array.setflags(write=False)
    return Digimouse(labels=labels, tissues=tissues, atlas=atlas, spacing_mm=SPACING_MM, labelled=LABELLED)


def load(path: Path | str | None = None) -> Digimouse:
    """The atlas from ``path`` (the folder holding ``digimouse_labels.nii.gz``; default
    ``DEFAULT_DIR``), in canonical RAS with canonical labels and a tissue map (see the module)."""
    return _load(str(Path(path or DEFAULT_DIR).resolve()))


def torso_range(labels: np.ndarray, spacing_mm: float) -> tuple[int, int]:
    """``[z_lo, z_hi)`` of the shoulders-to-hips slab of a canonical label map (uint8, (x, y, z)).

    Hips: the bladder's caudal end less ``HIP_MARGIN_MM``; shoulders: the lungs' cranial end plus
    ``SHOULDER_MARGIN_MM``. Raises ``ValueError`` when the map has no lungs or no bladder.
    """
    lungs = np.isin(labels, [BY_NAME["lung_left"].id, BY_NAME["lung_right"].id]).any(axis=(0, 1))
    bladder = (labels == BY_NAME["bladder"].id).any(axis=(0, 1))
    if not lungs.any() or not bladder.any():
        raise ValueError("a torso crop needs the lungs and the bladder in the label map")
    z_lo = int(np.flatnonzero(bladder)[0]) - round(HIP_MARGIN_MM / spacing_mm)
    z_hi = int(np.flatnonzero(lungs)[-1]) + 1 + round(SHOULDER_MARGIN_MM / spacing_mm)
    return max(z_lo, 0), min(z_hi, labels.shape[2])


def _pad_in_plane(array: np.ndarray, fov_vox: int, fill: int | float, body: np.ndarray) -> np.ndarray:
    """Pad x and y with ``fill`` to at least ``fov_vox`` voxels, centring the body's bounding box."""
    pads: list[tuple[int, int]] = []
    for axis in (0, 1):
        n = array.shape[axis]
        extra = max(fov_vox - n, 0)
        other = tuple(a for a in range(3) if a != axis)
        occupied = np.flatnonzero(body.any(axis=other))
        centre = 0.5 * (occupied[0] + occupied[-1] + 1) if occupied.size else n / 2
        before = int(np.clip(round(fov_vox / 2 - centre), 0, extra))
        pads.append((before, extra - before))
    pads.append((0, 0))
    return np.pad(array, pads, constant_values=fill)


def render_ct(
    mouse: Digimouse,
    *,
    seed: int,
    spacing_mm: float = 0.21,
    crop: Literal["whole", "torso"] = "whole",
    noise_hu: float = DEFAULT_NOISE_HU,
    blur_mm: float = DEFAULT_BLUR_MM,
    fov_mm: float = FOV_MM,
    hu: Mapping[str, float] | None = None,
) -> Phantom:
    """A CT of the atlas (see the module docstring for the tissue and scanner model).

    Returns a ``Phantom``: ``ct`` int16 HU and ``labels`` uint8 canonical ids, (x, y, z) canonical
    RAS on an isotropic ``spacing_mm`` grid, ``annotators`` empty, ``affine`` ``diag(spacing)``;
    ``meta`` records the settings, the volumes and ``labelled_structures``. ``crop="torso"`` keeps
    the ``torso_range`` slab (shoulders to hips). Same arguments, same arrays.
    """
    if crop not in ("whole", "torso"):
        raise ValueError(f"crop must be 'whole' or 'torso', not {crop!r}")
    if spacing_mm <= 0 or noise_hu < 0 or blur_mm < 0:
        raise ValueError("spacing must be positive and noise and blur not negative")
    table = {**TISSUE_HU, **(hu or {})}
    unknown = set(table) - set(TISSUES)
    if unknown:
        raise ValueError(f"unknown tissues {sorted(unknown)}; known: {', '.join(TISSUES)}")
    lut = np.array([table[t] for t in TISSUES], np.float32)
    labels, tissues = mouse.labels, mouse.tissues
    if crop == "torso":
        z_lo, z_hi = torso_range(labels, mouse.spacing_mm)
        labels, tissues = labels[:, :, z_lo:z_hi], tissues[:, :, z_lo:z_hi]
    body = tissues > 0
    fov_vox = int(np.ceil(fov_mm / mouse.spacing_mm))
    labels = _pad_in_plane(labels, fov_vox, 0, body)
    tissues = _pad_in_plane(tissues, fov_vox, 0, body)
    hu_native = lut[tissues]
    # Anti-alias: a coarser output grid sees each voxel's average, not a point sample.
    coarser = max(spacing_mm - mouse.spacing_mm, 0.0)
    sigma_mm = float(np.hypot(blur_mm, 0.4 * coarser))
    if sigma_mm > 0:
        ndimage.gaussian_filter(hu_native, sigma=sigma_mm / mouse.spacing_mm, output=hu_native, truncate=3.0)
    ratio = spacing_mm / mouse.spacing_mm
    shape = tuple(max(int(np.floor((n - 1) / ratio)) + 1, 1) for n in labels.shape)
    if np.isclose(ratio, 1.0):
        ct_f, out_labels = hu_native, np.ascontiguousarray(labels)
    else:
        zoom = [ratio] * 3
        ct_f = ndimage.affine_transform(hu_native, zoom, output_shape=shape, order=1, mode="nearest")
        out_labels = ndimage.affine_transform(labels, zoom, output_shape=shape, order=0, mode="nearest")
    rng = np.random.default_rng([seed, 7])
    if noise_hu > 0:
        ct_f = ct_f + rng.standard_normal(size=ct_f.shape, dtype=np.float32) * np.float32(noise_hu)
    ct = np.clip(np.rint(ct_f), -1024, 3071).astype(np.int16)
    out_labels = out_labels.astype(np.uint8)
    voxel_mm3 = spacing_mm**3
    counts = np.bincount(out_labels.ravel(), minlength=len(STRUCTURES))
    meta: dict[str, object] = {
        "source": "digimouse",
        "seed": seed,
        "spacing_mm": spacing_mm,
        "crop": crop,
        "shape": list(ct.shape),
        "scanner": {"blur_mm": blur_mm, "noise_hu": noise_hu},
        "tissues_hu": {t: float(table[t]) for t in TISSUES},
        "volumes_mm3": {s.name: round(float(counts[s.id]) * voxel_mm3, 3) for s in STRUCTURES[1:]},
        "tumor_volume_mm3": 0.0,
        "labelled_structures": list(mouse.labelled),
    }
    affine = np.diag([spacing_mm, spacing_mm, spacing_mm, 1.0])
    return Phantom(ct=ct, labels=out_labels, annotators={}, affine=affine, meta=meta)
