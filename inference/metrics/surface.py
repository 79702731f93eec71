"""Surface distances in millimetres between two binary masks on the same (possibly anisotropic) grid.

Array contract: masks are boolean (or 0/1) arrays of equal shape ``(X, Y, Z)`` (any number of axes
works); ``spacing_mm`` gives the voxel size along each array axis in that order.

The surface of a mask is its set of border voxels: voxels inside the mask with at least one
face-neighbour (6-connectivity in 3D) outside it; voxels on the edge of the array count as border
because the mask is padded with background. The distance from a surface voxel of A to the surface
of B is the Euclidean distance in mm between voxel centres, found with an exact Euclidean distance
transform that honours the anisotropic spacing.

Empty masks: when both masks are empty every distance is 0.0; when exactly one is empty the
distances are ``math.inf`` (there is no surface to reach).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from .overlap import as_mask, check_same_shape

Spacing = Sequence[float]


def _check_spacing(mask: npt.NDArray[np.bool_], spacing_mm: Spacing) -> tuple[float, ...]:
    spacing = tuple(float(s) for s in spacing_mm)
    if len(spacing) != mask.ndim:
        raise ValueError(f"spacing_mm has {len(spacing)} values but the masks have {mask.ndim} axes")
    if any(s <= 0 for s in spacing):
        raise ValueError(f"spacing_mm must be positive; got {spacing}")
    return spacing


def surface_voxels(mask: npt.ArrayLike) -> npt.NDArray[np.bool_]:
    """Border voxels of ``mask`` (same shape): inside, with a face-neighbour outside or off the array."""
    m = as_mask(mask)
    if not m.any():
        return np.zeros_like(m)
    structure = ndimage.generate_binary_structure(m.ndim, 1)
    # Pad so that the array edge counts as outside: a mask touching the edge still has a surface there.
    padded = np.pad(m, 1, constant_values=False)
    eroded = ndimage.binary_erosion(padded, structure=structure)
    inner = tuple(slice(1, -1) for _ in range(m.ndim))
    return m & ~eroded[inner]


def directed_surface_distances_mm(a: npt.ArrayLike, b: npt.ArrayLike, spacing_mm: Spacing) -> npt.NDArray:
    """For every surface voxel of ``a``, the distance in mm to the nearest surface voxel of ``b``.

    1-D float64 array, one value per surface voxel of ``a`` (C order). See the module docstring for
    empty masks: an empty ``a`` gives an empty array, a non-empty ``a`` against an empty ``b`` gives
    ``inf`` for every voxel.
    """
    check_same_shape([a, b])
    ma, mb = as_mask(a), as_mask(b)
    spacing = _check_spacing(ma, spacing_mm)
    sa, sb = surface_voxels(ma), surface_voxels(mb)
    if not sa.any():
        return np.zeros(0, dtype=np.float64)
    if not sb.any():
        return np.full(int(sa.sum()), math.inf)
    distance_to_b = ndimage.distance_transform_edt(~sb, sampling=spacing)
    return np.asarray(distance_to_b[sa], dtype=np.float64)


def surface_distances_mm(
    a: npt.ArrayLike, b: npt.ArrayLike, spacing_mm: Spacing
) -> tuple[npt.NDArray, npt.NDArray]:
    """Both directed distance sets: ``(a -> b, b -> a)``, each as in ``directed_surface_distances_mm``."""
    return directed_surface_distances_mm(a, b, spacing_mm), directed_surface_distances_mm(b, a, spacing_mm)


def _percentile(distances: npt.NDArray, percentile: float) -> float:
    if distances.size == 0:
        return 0.0
    if np.isinf(distances).any():
        return math.inf
    return float(np.percentile(distances, percentile))


def hd95_mm(
    a: npt.ArrayLike,
    b: npt.ArrayLike,
    spacing_mm: Spacing,
    symmetric: bool = True,
    percentile: float = 95.0,
) -> float:
    """95th-percentile Hausdorff distance in mm.

    ``symmetric=True`` (what most tools report): the larger of the two directed 95th percentiles,
    ``max(P95(d(a->b)), P95(d(b->a)))``. ``symmetric=False`` (AIMOS's form): only the directed
    percentile from each surface voxel of ``a`` (the reference) to the nearest surface voxel of
    ``b`` (the prediction). 0.0 when both masks are empty, ``inf`` when exactly one is.
    """
    ma, mb = as_mask(a), as_mask(b)
    if not ma.any() and not mb.any():
        return 0.0
    if not ma.any() or not mb.any():
        return math.inf
    ab = directed_surface_distances_mm(ma, mb, spacing_mm)
    if not symmetric:
        return _percentile(ab, percentile)
    ba = directed_surface_distances_mm(mb, ma, spacing_mm)
    return max(_percentile(ab, percentile), _percentile(ba, percentile))


def msd_mm(a: npt.ArrayLike, b: npt.ArrayLike, spacing_mm: Spacing) -> float:
    """Symmetric mean surface distance in mm (average symmetric surface distance).

    The mean over the union of both directed distance sets, so every surface voxel of either mask
    counts once. 0.0 when both masks are empty, ``inf`` when exactly one is.
    """
    ma, mb = as_mask(a), as_mask(b)
    if not ma.any() and not mb.any():
        return 0.0
    if not ma.any() or not mb.any():
        return math.inf
    ab, ba = surface_distances_mm(ma, mb, spacing_mm)
    return float(np.concatenate([ab, ba]).mean())


def centre_of_mass_mm(mask: npt.ArrayLike, spacing_mm: Spacing) -> npt.NDArray:
    """Centre of mass in mm along each array axis, measured from the centre of voxel 0.

    ``nan`` per axis for an empty mask.
    """
    m = as_mask(mask)
    spacing = _check_spacing(m, spacing_mm)
    if not m.any():
        return np.full(m.ndim, math.nan)
    return np.asarray(ndimage.center_of_mass(m), dtype=np.float64) * np.asarray(spacing)


def com_displacement_mm(a: npt.ArrayLike, b: npt.ArrayLike, spacing_mm: Spacing) -> float:
    """``||CoM(a) - CoM(b)||`` in mm (AIMOS eq. 3); ``nan`` when either mask is empty."""
    check_same_shape([a, b])
    ca, cb = centre_of_mass_mm(a, spacing_mm), centre_of_mass_mm(b, spacing_mm)
    return float(np.linalg.norm(ca - cb))


def volume_mm3(mask: npt.ArrayLike, spacing_mm: Spacing) -> float:
    """Volume in mm^3: voxel count times the voxel volume."""
    m = as_mask(mask)
    spacing = _check_spacing(m, spacing_mm)
    return float(np.count_nonzero(m)) * float(np.prod(spacing))
