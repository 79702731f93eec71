"""Several mice in one field of view: which voxels belong to which animal.

Labs often scan two to four mice side by side on one bed ("mouse hotels"). The component rules
(``postprocess.clean``) keep one heart, one liver, one left and one right kidney: over the whole
field that keeps one animal's organs and drops the others'. They are applied per animal instead,
with animals found here, and the QC marks a scan with several animals for review, because its
volumes add up over all of them.

An animal is a 26-connected region of tissue (above ``TISSUE_HU``, which leaves out the air
and the lungs but keeps the skin, every organ and bone) holding at least ``MIN_SHARE`` of the
largest one's voxels, at least ``MIN_ANIMAL_MM3``, and tissue more than ``CORE_MM`` under its
surface; the lungs and gas inside its outline belong to it. An organ component belongs to the
animal it overlaps most (``postprocess.animal_of_components``). A bed that touches a mouse joins
its region; a bed apart from it is a plate with no tissue that deep, however much of the field it
holds (beside a head alone, a quarter of the tissue). Mice pressed against each other form one
region and are then treated as one animal, as before.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from inference.pipeline.postprocess import fill_holes

#: Tissue, not air or lung (lungs sit at -700 to -300 HU; fat from about -150 HU).
TISSUE_HU = -250.0
#: A region is an animal when it holds at least this share of the largest region's voxels...
MIN_SHARE = 0.25
#: ...and at least this volume (a mouse head alone is about 1,500 mm^3)...
MIN_ANIMAL_MM3 = 500.0
#: ...and tissue deeper than this under its surface (mm), at least ``MIN_SHARE`` of the deepest
#: region's: a bed's plate has none.
CORE_MM = 1.2
_CONNECTIVITY_26 = np.ones((3, 3, 3), dtype=bool)


def find_animals(hu: np.ndarray, spacing_mm: Sequence[float]) -> tuple[np.ndarray, int]:
    """``(label map, count)``: each animal's tissue numbered 1..count (int32, 0 elsewhere).

    ``hu`` is a scan in Hounsfield units on any grid (the models' 0.63 mm grid is enough)."""
    # Lungs and gut gas are rings of tissue in every cross-section: filled slice by slice (the
    # canonical z axis runs head to tail), they belong to their animal.
    tissue = fill_holes(np.asarray(hu) > TISSUE_HU, across=2)
    regions, count = ndimage.label(tissue, structure=_CONNECTIVITY_26)
    if count == 0:
        return regions, 0
    sizes = np.bincount(regions.ravel(), minlength=count + 1)
    sizes[0] = 0
    voxel_mm3 = float(np.prod([float(s) for s in spacing_mm]))
    threshold = max(MIN_SHARE * float(sizes.max()), MIN_ANIMAL_MM3 / voxel_mm3)
    # A head-only crop of a phantom on its bed was read as two mice: see the module notes.
    depth = max(1, math.ceil(CORE_MM / max(float(s) for s in spacing_mm)))
    core = np.bincount(regions[ndimage.binary_erosion(tissue, iterations=depth)], minlength=count + 1)
    core[0] = 0
    keep = np.flatnonzero((sizes >= threshold) & (core > 0) & (core >= MIN_SHARE * float(core.max())))
    # Number the animals from 1 along the first axis (left to right), the same on every run.
    centres = ndimage.center_of_mass(tissue, regions, keep) if keep.size else []
    order = [int(n) for _, n in sorted(zip((c[0] for c in centres), keep, strict=True))]
    renumber = np.zeros(count + 1, dtype=np.int32)
    for number, region in enumerate(order, start=1):
        renumber[region] = number
    return renumber[regions], len(order)
