"""The brain fills its braincase: where the organ model drew it short, the skull says how far it goes.

On the real 8-bit head scans of ``../shared/realdata/mouse_ct_atlas/`` (calibrated, turned to their
pose) ``mouse-organs`` 2.2.0 draws the dorsal brain and leaves a rim under the skull and the ventral
brain undrawn: 242 and 273 mm^3 (2.4.0: 239 and 348), where an adult mouse brain is 400-500 mm^3 and
the atlas' endocranial label (label 15 of ``low_res_template_UCHAR-label.nii.gz``) holds 458 mm^3.
The braincase is measured here from the brain's centre outwards: along each of ``RAYS`` directions,
to the first bone met, where that bone lies within ``REACH_MM`` beyond the drawn brain (the skull
round it), else only to the drawn brain's edge (a foramen, or no skull drawn), and never more than
``SMOOTH_MM`` beyond what the neighbouring directions reach (a ray through a foramen that meets a
vertebra beyond it is held at the skull's wall round the opening); of what those radii enclose, the
soft tissue that is not bone nor another organ. Jaw and cheek bones lie behind the skull along every
ray, so they never widen it (a convex hull of the skull did, and grew the Digimouse brain into the
muscles beside it). The drawn brain fills 94 % of its braincase on the Digimouse CT, 94-99 % on
held-out phantoms, the true Digimouse brain 88 %, and 65 and 82 % on the real heads; a brain that fills
less than ``FILLED`` is grown into the rest (background voxels joined to the brain), and the manifest
says so with the volumes before and after.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from inference.pipeline.geometry import bounding_box, box_within
from inference.structures import BY_NAME

BRAIN = BY_NAME["brain"].id
BONES = BY_NAME["bones"].id
#: Bone met within this distance beyond the drawn brain is its braincase's wall (the undrawn rim
#: under the calvaria and the ventral brain of the real heads reach 3-4 mm along a ray: against the
#: atlas' registered cavity, 2, 3 and 4 mm score 0.832, 0.876 and 0.886 on C57BL6_J_). So long a
#: reach lets a ray through a foramen meet a bone outside the skull: ``SMOOTH_MM`` holds it back.
REACH_MM = 4.0
#: A braincase is smooth: no direction reaches more than this beyond the median of its
#: ``NEIGHBOURS`` nearest directions (a cone of about 20 degrees round it). A ray through an
#: opening in the skull that meets a bone beyond it (a vertebra, a cheek bone) is held at the
#: wall its neighbours found (``test_braincase.py``: a foramen with a ring of bone behind it).
SMOOTH_MM = 0.3
NEIGHBOURS = 60
#: Directions the braincase is measured along (about 4.5 degrees apart).
RAYS = 2000
#: Above air and lung: what a braincase holds (brain, cerebrospinal fluid) is soft tissue.
SOFT_HU = -300.0
#: A brain that fills at least this share of its braincase is left as the model drew it: just
#: under the share the true Digimouse brain fills (88 %; its CSF and meninges are not brain), which
#: the models' own brains on phantoms and on the Digimouse CT exceed (94-99 %). The real heads'
#: brains fill 65 and 82 % and are grown: against the atlas' endocranial cavity registered onto
#: them (``inference/training/real_heads.py``) the grown brains score higher (model card).
FILLED = 0.84
#: Under this share the model found too little brain to say where its braincase is.
SEEDED = 0.35
#: Fewer drawn brain voxels than this (mm^3) and there is no brain to measure a braincase by.
MIN_BRAIN_MM3 = 20.0


@dataclass(frozen=True)
class BraincaseFill:
    """What the braincase check measured (mm^3) and whether the brain was grown."""

    drawn_mm3: float
    braincase_mm3: float
    brain_mm3: float

    @property
    def filled(self) -> float:
        """The share of the braincase the model's brain filled."""
        return min(self.drawn_mm3 / self.braincase_mm3, 1.0) if self.braincase_mm3 else 1.0

    @property
    def grown(self) -> bool:
        return self.brain_mm3 > self.drawn_mm3

    @property
    def finding(self) -> str | None:
        """Plain words for the manifest where the brain was not left as drawn, else None."""
        if self.grown:
            return (
                f"The brain the model drew ({self.drawn_mm3:.0f} mm^3) filled {self.filled:.0%} of the "
                f"braincase its skull closes ({self.braincase_mm3:.0f} mm^3 of soft tissue): it was grown "
                f"into the rest of it ({self.brain_mm3:.0f} mm^3)."
            )
        if self.filled < SEEDED:
            return (
                f"The brain the model drew ({self.drawn_mm3:.0f} mm^3) fills only {self.filled:.0%} of the "
                "braincase measured around it: too little to say where the brain lies, so it is left as "
                "drawn. Check the brain before using its volume."
            )
        return None

    def as_json(self) -> dict[str, Any]:
        return {
            "drawn_mm3": round(self.drawn_mm3, 1),
            "braincase_mm3": round(self.braincase_mm3, 1),
            "brain_mm3": round(self.brain_mm3, 1),
            "filled": round(self.filled, 3),
            "grown": self.grown,
            "finding": self.finding,
        }


@lru_cache(maxsize=1)
def _directions(count: int) -> np.ndarray:
    """``count`` unit vectors spread evenly over the sphere (a Fibonacci lattice)."""
    i = np.arange(count) + 0.5
    polar = np.arccos(1 - 2 * i / count)
    azimuth = np.pi * (1 + 5**0.5) * i
    return np.stack([np.cos(azimuth) * np.sin(polar), np.sin(azimuth) * np.sin(polar), np.cos(polar)], axis=1)


@lru_cache(maxsize=1)
def _neighbours(count: int, k: int) -> np.ndarray:
    """``[count, k]``: the ``k`` nearest other directions of each of ``_directions(count)``."""
    directions = _directions(count)
    return cKDTree(directions).query(directions, k=k + 1)[1][:, 1:]


def _radii(brain: np.ndarray, bone: np.ndarray, centre: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """Per direction of ``_directions(RAYS)``: how far (mm) from ``centre`` the braincase reaches."""
    directions = _directions(RAYS)
    # Far enough for the brain's furthest voxel plus the reach to the skull, and no further.
    furthest = float(np.linalg.norm(np.argwhere(brain) * spacing - centre, axis=1).max())
    radii = np.arange(0.0, furthest + REACH_MM + float(spacing.max()), float(spacing.min()) / 2)
    points = np.rint((centre + radii[None, :, None] * directions[:, None, :]) / spacing).astype(np.int64)
    inside = ((points >= 0) & (points < np.array(brain.shape))).all(axis=-1)
    points = np.minimum(np.maximum(points, 0), np.array(brain.shape) - 1)
    at = (points[..., 0], points[..., 1], points[..., 2])
    on_brain, on_bone = brain[at] & inside, bone[at] & inside
    steps = np.arange(radii.size)
    brain_edge = radii[np.where(on_brain, steps, 0).max(axis=1)]
    first_bone = np.where(on_bone, steps, radii.size - 1).min(axis=1)
    wall = on_bone.any(axis=1) & (radii[first_bone] <= brain_edge + REACH_MM)
    reach = np.where(wall, radii[first_bone], brain_edge)
    smooth = np.median(reach[_neighbours(RAYS, NEIGHBOURS)], axis=1) + SMOOTH_MM
    # Held back to its neighbours, never inside the brain the model drew along the ray.
    return np.minimum(reach, np.maximum(smooth, brain_edge))


def _within(
    candidates: np.ndarray, step: int, centre: np.ndarray, spacing: np.ndarray, reach: np.ndarray
) -> np.ndarray:
    """Which of the ``candidates`` voxels (every ``step``-th of their box) lie within ``reach`` of
    ``centre`` along their nearest measured direction."""
    sub = candidates[(slice(None, None, step),) * 3]
    points = np.argwhere(sub)
    offset = points * step * spacing - centre
    distance = np.linalg.norm(offset, axis=1)
    # Beyond the longest radius no direction needs looking up (most of the box's corners).
    near = np.flatnonzero(distance <= reach.max())
    _, nearest = cKDTree(_directions(RAYS)).query(offset[near] / np.maximum(distance[near], 1e-6)[:, None])
    inside = near[distance[near] <= reach[nearest]]
    found = np.zeros(sub.shape, dtype=bool)
    found[tuple(points[inside].T)] = True
    return found


def fill_braincase(organs: np.ndarray, hu: np.ndarray, spacing_mm: Sequence[float]) -> BraincaseFill | None:
    """Grow the brain of ``organs`` (labels, modified in place) into its braincase where it fills
    less than ``FILLED`` of it; ``hu`` is the scan as the threshold rules read it, on the same
    grid. Each brain (several mice in one field) is measured in its own skull; the volumes are
    summed. Returns what was measured, or None where no brain, or no bone near it, was drawn."""
    voxel_mm3 = float(np.prod(spacing_mm))
    brain = organs == BRAIN
    if brain.sum() * voxel_mm3 < MIN_BRAIN_MM3:
        return None
    margin = max(math.ceil((REACH_MM + 1.0) / s) for s in spacing_mm)
    outer = bounding_box(brain, margin)
    assert outer is not None  # the brain holds voxels (checked above)
    parts, count = ndimage.label(brain[outer], structure=np.ones((3, 3, 3), dtype=bool))
    sizes = np.bincount(parts.ravel(), minlength=count + 1)
    found = []
    for index in np.flatnonzero(sizes * voxel_mm3 >= MIN_BRAIN_MM3):
        if index == 0:
            continue
        one = parts == index
        inner = bounding_box(one, margin)
        assert inner is not None
        box = box_within(outer, inner)
        result = _fill_one(organs[box], one[inner], hu[box], spacing_mm)
        if result is not None:
            found.append(result)
    if not found:
        return None
    return BraincaseFill(
        *(sum(getattr(f, key) for f in found) for key in ("drawn_mm3", "braincase_mm3", "brain_mm3"))
    )


def _fill_one(
    sub: np.ndarray, sub_brain: np.ndarray, hu: np.ndarray, spacing_mm: Sequence[float]
) -> BraincaseFill | None:
    """``fill_braincase`` for one brain ``sub_brain`` in the box ``sub`` (a view, changed in place)."""
    voxel_mm3 = float(np.prod(spacing_mm))
    spacing = np.asarray(spacing_mm, dtype=float)
    bone = sub == BONES
    if not bone.any():
        return None
    centre = np.argwhere(sub_brain).mean(axis=0) * spacing
    reach = _radii(sub_brain, bone, centre, spacing)
    holds = ~bone & (hu > SOFT_HU) & ((sub == 0) | sub_brain)
    # Measured on every second voxel: enough for a share and a volume, 8 times fewer lookups.
    coarse = (slice(None, None, 2),) * 3
    case = _within(holds, 2, centre, spacing, reach)
    drawn = float(sub_brain.sum() * voxel_mm3)
    filled = float((case & sub_brain[coarse]).sum()) / max(float(case.sum()), 1.0)
    measured = BraincaseFill(drawn, drawn / filled if filled > 0 else 0.0, drawn)
    if filled >= FILLED or filled < SEEDED:
        return measured
    case = _within(holds, 1, centre, spacing, reach)
    # Only what joins the drawn brain: a pocket cut off from it by bone is not brain.
    parts, _ = ndimage.label(case, structure=np.ones((3, 3, 3), dtype=bool))
    joined = np.unique(parts[sub_brain & case])
    gained = np.isin(parts, joined[joined > 0]) & (sub == 0)
    sub[gained] = BRAIN
    return BraincaseFill(drawn, float(case.sum() * voxel_mm3), drawn + float(gained.sum() * voxel_mm3))
