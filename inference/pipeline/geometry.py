"""Geometry: reorient to closest canonical RAS, resample to a model's spacing, and undo both exactly.

Every transform has its inverse beside it. Array contracts:

- Scan arrays are 3D ``[i, j, k]`` in the file's own axis order; ``affine`` is the 4x4 voxel-to-world
  (mm) matrix of the file.
- Canonical arrays are ``[x, y, z]`` with x towards Right, y Anterior, z Superior (nibabel
  ``as_closest_canonical``). Reorientation only permutes and flips axes, so it is lossless; an
  oblique rotation stays in the affine and the output keeps the input affine unchanged.
- Resampling uses the "voxel areas" convention: output voxel ``j`` of an axis with ``n_in`` input
  and ``n_out`` output voxels sits at input index ``(j + 0.5) * n_in / n_out - 0.5``, so both grids
  cover the same field of view and equal sizes give the identity.
- Probability stacks are ``[K, x, y, z]`` float32, channel first.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import nibabel as nib
import numpy as np
from nibabel import orientations

from inference.pipeline.parallel import executor

Shape3 = tuple[int, int, int]


@dataclass(frozen=True)
class Geometry:
    """Where a scan's voxels are: everything needed to put a result back on its exact grid."""

    shape: Shape3
    affine: np.ndarray
    axcodes: tuple[str, str, str]
    canonical_shape: Shape3
    canonical_affine: np.ndarray
    #: Voxel size in mm along the canonical axes (x, y, z); oblique affines included.
    spacing_mm: tuple[float, float, float]
    _to_canonical: np.ndarray
    _from_canonical: np.ndarray

    @property
    def voxel_volume_mm3(self) -> float:
        return float(abs(np.linalg.det(self.affine[:3, :3])))

    def as_json(self) -> dict[str, object]:
        return {
            "shape": list(self.shape),
            "affine": [[float(v) for v in row] for row in self.affine],
            "orientation": "".join(self.axcodes),
            "canonical_shape": list(self.canonical_shape),
            "spacing_mm": list(self.spacing_mm),
        }


def record_geometry(shape: Sequence[int], affine: np.ndarray) -> Geometry:
    """The geometry of a 3D scan of ``shape`` with voxel-to-world ``affine``."""
    if len(shape) != 3:
        raise ValueError(f"expected a 3D scan, got shape {tuple(shape)}")
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
        raise ValueError("the scan's affine must be a finite 4x4 matrix")
    if abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise ValueError("the scan's affine is singular (a voxel size is zero)")
    source = orientations.io_orientation(affine)
    target = orientations.axcodes2ornt(("R", "A", "S"))
    forward = orientations.ornt_transform(source, target)
    backward = orientations.ornt_transform(target, source)
    shape3: Shape3 = (int(shape[0]), int(shape[1]), int(shape[2]))
    canonical_affine = affine @ orientations.inv_ornt_aff(forward, shape3)
    canonical_shape = tuple(int(shape3[int(axis)]) for axis in backward[:, 0])
    spacing = np.sqrt(np.sum(canonical_affine[:3, :3] ** 2, axis=0))
    return Geometry(
        shape=shape3,
        affine=affine,
        axcodes=tuple(str(c) for c in nib.aff2axcodes(affine)),  # type: ignore[arg-type]
        canonical_shape=(canonical_shape[0], canonical_shape[1], canonical_shape[2]),
        canonical_affine=canonical_affine,
        spacing_mm=(float(spacing[0]), float(spacing[1]), float(spacing[2])),
        _to_canonical=forward,
        _from_canonical=backward,
    )


def turned(geometry: Geometry, ornt: np.ndarray) -> Geometry:
    """The geometry whose canonical array is the header-canonical one turned by ``ornt`` (an axis
    permutation with flips in nibabel's convention: canonical axis ``i`` becomes axis
    ``ornt[i, 0]``, reversed where ``ornt[i, 1] == -1``), e.g. the anatomy's pose from
    ``pipeline/orientation.py``. :func:`to_canonical` and :func:`from_canonical` then do and undo
    both steps as one lossless view; ``shape``, ``affine`` and ``axcodes`` stay the file's."""
    ornt = np.asarray(ornt, dtype=np.float64)
    forward = geometry._to_canonical.copy()
    for i in range(3):
        j = int(forward[i, 0])
        forward[i] = [ornt[j, 0], forward[i, 1] * ornt[j, 1]]
    backward = np.zeros_like(forward)
    for i in range(3):
        backward[int(forward[i, 0])] = [i, forward[i, 1]]
    shape = [0, 0, 0]
    spacing = [0.0, 0.0, 0.0]
    for i in range(3):
        shape[int(ornt[i, 0])] = geometry.canonical_shape[i]
        spacing[int(ornt[i, 0])] = geometry.spacing_mm[i]
    return Geometry(
        shape=geometry.shape,
        affine=geometry.affine,
        axcodes=geometry.axcodes,
        canonical_shape=(shape[0], shape[1], shape[2]),
        canonical_affine=geometry.canonical_affine
        @ orientations.inv_ornt_aff(ornt, geometry.canonical_shape),
        spacing_mm=(spacing[0], spacing[1], spacing[2]),
        _to_canonical=forward,
        _from_canonical=backward,
    )


def to_canonical(array: np.ndarray, geometry: Geometry) -> np.ndarray:
    """Scan-grid array (spatial axes first) -> canonical RAS axes. Returns a view, no copy."""
    if tuple(array.shape[:3]) != geometry.shape:
        raise ValueError(f"array shape {array.shape[:3]} is not the scan's {geometry.shape}")
    return orientations.apply_orientation(array, geometry._to_canonical)


def from_canonical(array: np.ndarray, geometry: Geometry) -> np.ndarray:
    """Inverse of :func:`to_canonical`: canonical array -> the scan's own axis order (a view)."""
    if tuple(array.shape[:3]) != geometry.canonical_shape:
        raise ValueError(f"array shape {array.shape[:3]} is not the canonical {geometry.canonical_shape}")
    return orientations.apply_orientation(array, geometry._from_canonical)


def bounding_box(mask: np.ndarray, pad: int) -> tuple[slice, ...] | None:
    """Slices around the voxels of ``mask``, ``pad`` voxels wider on every side (None if empty)."""
    mask = np.asarray(mask)
    if mask.ndim != 3:
        return _padded_box(
            [
                np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
                for axis in range(mask.ndim)
            ],
            mask.shape,
            pad,
        )
    # One pass over the whole mask (its projection across the first axis) gives the box across
    # the other two; the first axis is then read inside that box only. Three projections of the
    # whole mask took twice as long, and the rules take about 30 boxes a scan.
    plane = np.any(mask, axis=0)
    ys = np.flatnonzero(np.any(plane, axis=1))
    if ys.size == 0:
        return None
    zs = np.flatnonzero(np.any(plane, axis=0))
    xs = np.flatnonzero(np.any(mask[:, ys[0] : ys[-1] + 1, zs[0] : zs[-1] + 1], axis=(1, 2)))
    return _padded_box([xs, ys, zs], mask.shape, pad)


def _padded_box(along: Sequence[np.ndarray], shape: Sequence[int], pad: int) -> tuple[slice, ...] | None:
    """The slices from the first to the last index ``along`` each axis, ``pad`` wider, within ``shape``."""
    if any(a.size == 0 for a in along):
        return None
    return tuple(
        slice(max(int(a[0]) - pad, 0), min(int(a[-1]) + pad + 1, int(n)))
        for a, n in zip(along, shape, strict=True)
    )


def grown_box(
    box: Sequence[slice], reach: int | Sequence[int] | np.ndarray, shape: Sequence[int]
) -> tuple[slice, ...]:
    """``box`` grown by ``reach`` voxels (one count for every axis, or one per axis) on each side,
    within ``shape``."""
    reaches = np.broadcast_to(np.asarray(reach, dtype=int), (len(box),))
    return tuple(
        slice(max(b.start - int(r), 0), min(b.stop + int(r), int(n)))
        for b, r, n in zip(box, reaches, shape, strict=True)
    )


def box_within(outer: Sequence[slice], inner: Sequence[slice]) -> tuple[slice, ...]:
    """``inner``, a box in ``array[outer]``, as a box in ``array``."""
    return tuple(slice(o.start + i.start, o.start + i.stop) for o, i in zip(outer, inner, strict=True))


def fortran_copy(array: np.ndarray) -> np.ndarray:
    """``array`` (3D) in Fortran order, as NIfTI stores voxels; itself when it already is.

    ``np.asfortranarray`` of a C-ordered map walks one of the two arrays a byte at a time across
    its largest stride (0.09 s for a 192 x 192 x 520 uint8 map); copied one plane across the
    middle axis at a time, both sides stay within a few cache lines per row (0.02 s)."""
    if array.flags.f_contiguous:
        return array
    out = np.empty(array.shape, dtype=array.dtype, order="F")
    for j in range(array.shape[1]):
        out[:, j, :] = array[:, j, :]
    return out


def resampled_shape(
    shape: Sequence[int], spacing_mm: Sequence[float], target_spacing_mm: Sequence[float]
) -> Shape3:
    """Voxel counts covering the same field of view at ``target_spacing_mm`` (at least 1 each)."""
    counts = [
        max(1, math.floor(n * s / t + 0.5))
        for n, s, t in zip(shape, spacing_mm, target_spacing_mm, strict=True)
    ]
    return (counts[0], counts[1], counts[2])


def resampled_affine(affine: np.ndarray, in_shape: Sequence[int], out_shape: Sequence[int]) -> np.ndarray:
    """Affine of the resampled grid: output voxel j sits at input index (j + 0.5) * r - 0.5."""
    ratio = np.array([n_in / n_out for n_in, n_out in zip(in_shape, out_shape, strict=True)])
    index_map = np.eye(4)
    index_map[:3, :3] = np.diag(ratio)
    index_map[:3, 3] = (ratio - 1.0) / 2.0
    return np.asarray(affine, dtype=np.float64) @ index_map


@dataclass(frozen=True)
class AxisMap:
    """Linear interpolation along one axis: out[j] = in[lo[j]] * (1 - w[j]) + in[hi[j]] * w[j]."""

    lo: np.ndarray
    hi: np.ndarray
    w: np.ndarray
    nearest: np.ndarray

    @property
    def identity(self) -> bool:
        # Every output voxel on its own input voxel, in order. An odd whole-factor shrink (5 voxels
        # to 1) also samples input voxels exactly, but fewer of them: not the identity.
        return bool(np.all(self.w == 0) and np.array_equal(self.lo, np.arange(self.lo.size)))


def _centres(n_in: int, n_out: int) -> np.ndarray:
    """Input index of each output voxel's centre ("voxel areas" convention, module docstring)."""
    return (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5


def axis_map(n_in: int, n_out: int) -> AxisMap:
    """The interpolation weights that map an axis of ``n_in`` voxels onto ``n_out`` voxels."""
    if n_in == n_out:
        lo = np.arange(n_in, dtype=np.intp)
        return AxisMap(lo=lo, hi=lo, w=np.zeros(n_in, dtype=np.float32), nearest=lo)
    return _map_at(_centres(n_in, n_out), n_in)


def _map_at(position: np.ndarray, n_in: int) -> AxisMap:
    """Linear interpolation weights at fractional input ``position`` (clipped to the axis)."""
    position = np.clip(position, 0.0, n_in - 1)
    lo = np.minimum(np.floor(position).astype(np.intp), n_in - 1)
    hi = np.minimum(lo + 1, n_in - 1)
    w = (position - lo).astype(np.float32)
    # floor(p + 0.5): halves round up, so an integer down-then-up round trip is voxel-exact.
    nearest = np.minimum(np.floor(position + 0.5).astype(np.intp), n_in - 1)
    return AxisMap(lo=lo, hi=hi, w=w, nearest=nearest)


def take(array: np.ndarray, indices: np.ndarray, axis: int) -> np.ndarray:
    """``np.take`` along ``axis`` by basic + advanced indexing, which keeps the input's memory order:
    NIfTI data is Fortran-ordered, where ``np.take`` first makes a C-ordered copy (seconds for
    a 200 M voxel scan) while indexing gathers whole contiguous planes."""
    return array[(slice(None),) * axis + (indices,)]


def _interpolate_axis(array: np.ndarray, amap: AxisMap, axis: int) -> np.ndarray:
    """Linear interpolation along one axis; float32 result (the input may be any numeric dtype,
    cast only after the gather so a big int16 scan is never copied whole to float). Where every
    sample falls on an input voxel (whole-factor shrinking) it is one gather."""
    low = take(array, amap.lo, axis).astype(np.float32, copy=False)
    if not amap.w.any():
        return low
    shape = [1] * array.ndim
    shape[axis] = amap.w.size
    w = amap.w.reshape(shape)
    high = take(array, amap.hi, axis).astype(np.float32, copy=False)
    low *= 1.0 - w
    high *= w
    low += high
    return low


def _box_axis(array: np.ndarray, n_out: int, axis: int) -> np.ndarray:
    """Shrink one axis by averaging ``round(n_in / n_out)`` input samples around each output
    voxel's centre (a box filter), so the result keeps the noise level of a block average instead
    of one voxel's: for a whole factor (0.21 -> 0.63 mm) it is exactly the mean of each block, the
    grid the models were trained on. Gathers only output-sized arrays."""
    n_in = int(array.shape[axis])
    taps = max(round(n_in / n_out), 1)
    centre = _centres(n_in, n_out)
    shifts = [k - (taps - 1) / 2 for k in range(taps)]
    total = _interpolate_axis(array, _map_at(centre + shifts[0], n_in), axis)
    for shift in shifts[1:]:
        total += _interpolate_axis(array, _map_at(centre + shift, n_in), axis)
    total *= np.float32(1.0 / taps)
    return total


def resample_linear(
    volume: np.ndarray, out_shape: Sequence[int], *, first_axis: int = 0, antialias: bool = False
) -> np.ndarray:
    """Trilinear resampling of ``volume``'s three spatial axes (starting at ``first_axis``).

    Separable: one axis at a time, shrinking axes first so intermediates stay small. With
    ``antialias`` a shrinking axis is box-averaged (``_box_axis``) rather than point-sampled: a
    3x coarser grid then averages 27 voxels per sample instead of keeping one (noise / 5). Returns
    float32; equal shapes return the input as float32 unchanged.
    """
    result = np.asarray(volume)
    axes = [first_axis + i for i in range(3)]
    ratios = [out_shape[i] / result.shape[axes[i]] for i in range(3)]
    strides = [abs(result.strides[a]) for a in axes]
    # Shrink first (intermediates get smaller), starting with the axis of largest stride, whose
    # samples are whole contiguous planes; then grow, least-growing axis first.
    order = sorted(range(3), key=lambda i: (ratios[i] >= 1, -strides[i] if ratios[i] < 1 else ratios[i]))
    for i in order:
        axis = axes[i]
        n_in, n_out = int(result.shape[axis]), int(out_shape[i])
        if n_in == n_out:
            continue
        if antialias and n_out < n_in:
            result = _box_axis(result, n_out, axis)
        else:
            result = _interpolate_axis(result, axis_map(n_in, n_out), axis)
    return result.astype(np.float32, copy=False)


def upsample_to_uint8(
    values: np.ndarray, out_shape: Sequence[int], *, scale: float = 255.0, chunk_voxels: int = 1 << 18
) -> np.ndarray:
    """Trilinear upsampling of a float ``[x, y, z]`` map in 0..1 to uint8 ``round(scale * v)``.

    Done in slabs along x of about ``chunk_voxels`` output voxels, so the float intermediates stay
    in cache instead of streaming several full-size float32 arrays through memory.
    """
    low = np.asarray(values, dtype=np.float32) * np.float32(scale)
    maps = [axis_map(int(low.shape[a]), int(out_shape[a])) for a in range(3)]
    out = np.empty(tuple(int(s) for s in out_shape), dtype=np.uint8)
    plane = int(out_shape[1]) * int(out_shape[2])
    step = max(1, chunk_voxels // max(plane, 1))
    for start in range(0, int(out_shape[0]), step):
        x_slice = slice(start, min(start + step, int(out_shape[0])))
        part = AxisMap(
            lo=maps[0].lo[x_slice],
            hi=maps[0].hi[x_slice],
            w=maps[0].w[x_slice],
            nearest=maps[0].nearest[x_slice],
        )
        slab = _interpolate_axis(low, part, 0)
        slab = _interpolate_axis(slab, maps[1], 1)
        slab = _interpolate_axis(slab, maps[2], 2)
        slab += 0.5
        np.clip(slab, 0.0, scale, out=slab)
        out[x_slice] = slab.astype(np.uint8)
    return out


def resample_nearest(labels: np.ndarray, out_shape: Sequence[int]) -> np.ndarray:
    """Nearest-neighbour resampling of a 3D label map (keeps dtype)."""
    result = labels
    for axis in range(3):
        if result.shape[axis] != out_shape[axis]:
            result = take(result, axis_map(result.shape[axis], int(out_shape[axis])).nearest, axis)
    return result


def _gather(array: np.ndarray, maps: Sequence[AxisMap], x_slice: slice) -> np.ndarray:
    """``array[lo_x[x_slice]][:, lo_y][:, :, lo_z]``: the low-res cell of every output voxel."""
    result = array[maps[0].lo[x_slice]]
    result = result[:, maps[1].lo]
    return result[:, :, maps[2].lo]


def _cells_touching(mask: np.ndarray) -> np.ndarray:
    """True at cell (i, j, k) when ``mask`` holds at any of its 8 corners (i..i+1, j..j+1, k..k+1)."""
    padded = np.pad(mask, ((0, 1), (0, 1), (0, 1)), mode="edge")
    nx, ny, nz = mask.shape
    result = np.zeros_like(mask)
    for dx in (0, 1):
        for dy in (0, 1):
            for dz in (0, 1):
                result |= padded[dx : dx + nx, dy : dy + ny, dz : dz + nz]
    return result


def _trilinear_at(
    values: np.ndarray, corner: tuple[np.ndarray, ...], weights: tuple[np.ndarray, ...]
) -> np.ndarray:
    x0, x1, y0, y1, z0, z1 = corner
    wx, wy, wz = weights
    c00 = values[x0, y0, z0] * (1 - wz) + values[x0, y0, z1] * wz
    c01 = values[x0, y1, z0] * (1 - wz) + values[x0, y1, z1] * wz
    c10 = values[x1, y0, z0] * (1 - wz) + values[x1, y0, z1] * wz
    c11 = values[x1, y1, z0] * (1 - wz) + values[x1, y1, z1] * wz
    return (c00 * (1 - wy) + c01 * wy) * (1 - wx) + (c10 * (1 - wy) + c11 * wy) * wx


def channel_argmax(scores: np.ndarray) -> np.ndarray:
    """``argmax`` over axis 0 of ``[K, ...]`` as uint8 (first channel wins ties).

    A loop over the K channels: about twice as fast as ``np.argmax(axis=0)``, which walks the
    channel axis with a large stride.
    """
    best = np.array(scores[0], dtype=np.float32, copy=True)
    index = np.zeros(best.shape, dtype=np.uint8)
    for k in range(1, scores.shape[0]):
        better = scores[k] > best
        index[better] = k
        np.maximum(best, scores[k], out=best)
    return index


def upsample_argmax(
    scores: np.ndarray,
    out_shape: Sequence[int],
    class_values: Sequence[int],
    *,
    chunk_voxels: int = 1 << 20,
    workers: int = 1,
) -> np.ndarray:
    """Label map on ``out_shape``: argmax over K of the trilinearly interpolated class ``scores``.

    ``scores`` (probabilities or logits) is ``[K, x, y, z]`` on a coarser (or equal) grid with the
    same field of view; the result is uint8 ``class_values[argmax]`` on ``out_shape``. The full
    ``K x out`` float array is never built. Where all 8 corners of a voxel's cell share one argmax
    class, interpolation (a convex combination with the same weights for every class) cannot
    change the winner, so that label is copied. Elsewhere (near borders) the interpolated score of
    every class that is the argmax at one of the cell's corners is compared. Work is done in slabs
    along x of about ``chunk_voxels`` output voxels, ``workers`` slabs at a time (NumPy's indexing
    and arithmetic release the GIL, so threads share the work).
    """
    scores = np.asarray(scores, dtype=np.float32)
    n_classes = scores.shape[0]
    values = np.asarray(class_values, dtype=np.uint8)
    if values.size != n_classes:
        raise ValueError(f"{values.size} class values for {n_classes} probability channels")
    low_res = scores.shape[1:]
    maps = [axis_map(int(low_res[a]), int(out_shape[a])) for a in range(3)]
    argmax = channel_argmax(scores)
    if all(m.identity for m in maps):
        return values[argmax]
    # A cell is mixed when any corner's class differs from another's: compare to each neighbour.
    padded = np.pad(argmax, ((0, 1), (0, 1), (0, 1)), mode="edge")
    nx, ny, nz = argmax.shape
    mixed = np.zeros(argmax.shape, dtype=bool)
    for dx, dy, dz in ((0, 0, 1), (0, 1, 0), (0, 1, 1), (1, 0, 0), (1, 0, 1), (1, 1, 0), (1, 1, 1)):
        mixed |= padded[dx : dx + nx, dy : dy + ny, dz : dz + nz] != argmax
    present = [k for k in range(n_classes) if np.any(argmax == k)]
    touching = {k: _cells_touching(argmax == k) for k in present} if np.any(mixed) else {}

    # Output voxels whose cell is all channel 0 (background) are background: only the box of
    # the other cells is computed (a tumor map's is a few percent of the scan).
    out = np.full(tuple(int(s) for s in out_shape), values[0], dtype=np.uint8)
    cells = bounding_box(mixed | (argmax != 0), 0)
    if cells is None:
        return out
    ranges = [
        slice(
            int(np.searchsorted(m.lo, c.start, side="left")),
            int(np.searchsorted(m.lo, c.stop - 1, side="right")),
        )
        for m, c in zip(maps, cells, strict=True)
    ]
    maps = [maps[0], *(_sliced(m, r) for m, r in zip(maps[1:], ranges[1:], strict=True))]
    inner = out[:, ranges[1], ranges[2]]
    plane = inner.shape[1] * inner.shape[2]
    step = max(1, chunk_voxels // max(plane, 1))

    def fill(start: int) -> None:
        x_slice = slice(start, min(start + step, ranges[0].stop))
        labels = _gather(argmax, maps, x_slice)
        border = _gather(mixed, maps, x_slice)
        if np.any(border):
            ix, iy, iz = np.nonzero(border)
            cx = maps[0].lo[x_slice][ix]
            cy, cz = maps[1].lo[iy], maps[2].lo[iz]
            corner = (cx, maps[0].hi[x_slice][ix], cy, maps[1].hi[iy], cz, maps[2].hi[iz])
            weights = (maps[0].w[x_slice][ix], maps[1].w[iy], maps[2].w[iz])
            best = np.full(ix.size, -np.inf, dtype=np.float32)
            winner = np.zeros(ix.size, dtype=np.uint8)
            for k in present:
                candidate = touching[k][cx, cy, cz]
                if not np.any(candidate):
                    continue
                sub_corner = tuple(c[candidate] for c in corner)
                sub_weights = tuple(w[candidate] for w in weights)
                value = _trilinear_at(scores[k], sub_corner, sub_weights)
                index = np.nonzero(candidate)[0]
                better = value > best[index]
                best[index[better]] = value[better]
                winner[index[better]] = k
            labels[ix, iy, iz] = winner
        inner[x_slice] = values[labels]

    with executor(workers, "upsample") as pool:
        list(pool.map(fill, range(ranges[0].start, ranges[0].stop, step)))
    return out


def _sliced(m: AxisMap, part: slice) -> AxisMap:
    """The interpolation of the output voxels ``part`` of an axis."""
    return AxisMap(lo=m.lo[part], hi=m.hi[part], w=m.w[part], nearest=m.nearest[part])
