"""Downsampled previews and full-resolution crops of volumes, for the viewer.

NiiVue renders in the browser (in software in a headless browser, about 5 s to the first frame for
a 192x192x520 scan with a label overlay), and a browser holds about 2 GB of texture at most, so the
viewer opens on a preview of at most ``max_voxels`` voxels and asks for full resolution of a region
when the researcher wants detail.

Array contract: volumes are numpy arrays in the NIfTI file's own axis order (i, j, k); ``affine``
is the 4x4 voxel-to-world (RAS+ mm) matrix of that grid. A preview with integer factor ``f`` keeps
voxel ``p`` for the block of source voxels ``p*f .. p*f+f-1`` on each axis, and its affine puts
voxel ``p`` at the centre of that block, so the CT, label and uncertainty previews of one scan share
one grid and overlay exactly. Pure numpy + nibabel: no Django here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from scans.levels import preview_factor

#: Slabs along the last axis are read one at a time, so a 2 GB scan never sits in memory whole.
_SLAB_BYTES = 64 * 1024**2


@dataclass(frozen=True)
class Grid:
    """A voxel grid: ``shape`` (i, j, k) and its 4x4 voxel-to-mm ``affine``."""

    shape: tuple[int, int, int]
    affine: np.ndarray


def preview_grid(grid: Grid, factor: int) -> Grid:
    """The grid of a preview with ``factor``: whole blocks only, voxel centres at block centres."""
    shape = tuple(max(1, s // factor) for s in grid.shape)
    scale = np.diag([factor, factor, factor, 1.0])
    scale[:3, 3] = (factor - 1) / 2.0
    return Grid(shape=shape, affine=grid.affine @ scale)  # type: ignore[arg-type]


def crop_grid(grid: Grid, start: tuple[int, int, int], stop: tuple[int, int, int]) -> Grid:
    """The grid of the sub-volume ``[start, stop)`` (voxel indices of ``grid``)."""
    shift = np.eye(4)
    shift[:3, 3] = start
    shape = tuple(int(b - a) for a, b in zip(start, stop, strict=True))
    return Grid(shape=shape, affine=grid.affine @ shift)  # type: ignore[arg-type]


def _slabs(depth: int, factor: int, plane_bytes: int) -> Iterable[tuple[int, int]]:
    """Ranges of source k indices, whole blocks of ``factor`` planes, each about _SLAB_BYTES."""
    blocks = depth // factor
    per_slab = max(1, _SLAB_BYTES // max(1, plane_bytes * factor))
    for first in range(0, blocks, per_slab):
        last = min(blocks, first + per_slab)
        yield first * factor, last * factor


def _blocks(slab: np.ndarray, factor: int) -> np.ndarray:
    """View a (X*f, Y*f, Z*f) slab as (X, Y, Z, f, f, f) blocks."""
    x, y, z = (s // factor for s in slab.shape)
    return slab.reshape(x, factor, y, factor, z, factor).transpose(0, 2, 4, 1, 3, 5)


def downsample_intensity(dataobj: object, factor: int) -> np.ndarray:
    """Block mean of an intensity volume (float32), read slab by slab from a nibabel ``dataobj``."""
    shape = tuple(int(s) for s in dataobj.shape[:3])  # type: ignore[attr-defined]
    out_shape = tuple(max(1, s // factor) for s in shape)
    out = np.empty(out_shape, dtype=np.float32)
    xs, ys = out_shape[0] * factor, out_shape[1] * factor
    if factor == 1:
        return np.asarray(dataobj, dtype=np.float32).reshape(shape)
    for k0, k1 in _slabs(shape[2], factor, xs * ys * 4):
        slab = np.asarray(dataobj[:xs, :ys, k0:k1], dtype=np.float32)  # type: ignore[index]
        out[:, :, k0 // factor : k1 // factor] = _blocks(slab, factor).mean(axis=(3, 4, 5))
    return out


def downsample_labels(dataobj: object, factor: int, *, keep_ids: Iterable[int] = ()) -> np.ndarray:
    """Label map preview (uint8): the block-centre label, except that any voxel of ``keep_ids``
    (the lesion structures) in a block marks the whole block, so small metastases stay visible."""
    shape = tuple(int(s) for s in dataobj.shape[:3])  # type: ignore[attr-defined]
    out_shape = tuple(max(1, s // factor) for s in shape)
    if factor == 1:
        return np.asarray(dataobj).reshape(shape).astype(np.uint8)
    out = np.empty(out_shape, dtype=np.uint8)
    xs, ys = out_shape[0] * factor, out_shape[1] * factor
    keep = sorted(set(keep_ids))
    centre = factor // 2
    for k0, k1 in _slabs(shape[2], factor, xs * ys):
        slab = np.asarray(dataobj[:xs, :ys, k0:k1]).astype(np.uint8)  # type: ignore[index]
        blocks = _blocks(slab, factor)
        part = blocks[:, :, :, centre, centre, centre].copy()
        # Later ids win, so a metastasis inside a tumor block still shows as a metastasis.
        for structure_id in keep:
            part[(blocks == structure_id).any(axis=(3, 4, 5))] = structure_id
        out[:, :, k0 // factor : k1 // factor] = part
    return out


def remap_labels(labels: np.ndarray, mapping: dict[int, int]) -> np.ndarray:
    """Relabel ``labels`` (uint8) with ``mapping`` (file value -> canonical id); others become 0."""
    table = np.zeros(256, dtype=np.uint8)
    for source, target in mapping.items():
        if 0 <= int(source) < 256:
            table[int(source)] = int(target)
    return table[labels]


def majority_labels(label_maps: list[np.ndarray]) -> np.ndarray:
    """Per-voxel label chosen by more than half of the maps (0 where no label has a majority)."""
    if not label_maps:
        raise ValueError("a consensus needs at least one annotation")
    stack = np.stack(label_maps)
    out = np.zeros(stack.shape[1:], dtype=np.uint8)
    needed = len(label_maps) // 2 + 1
    for value in np.unique(stack):
        if value == 0:
            continue
        out[(stack == value).sum(axis=0) >= needed] = value
    return out


def intensity_dtype(source_dtype: np.dtype, low: float, high: float) -> np.dtype:
    """int16 when the source is integer and fits (half the bytes of float32), else float32."""
    if np.issubdtype(source_dtype, np.integer) and low >= -32768 and high <= 32767:
        return np.dtype(np.int16)
    return np.dtype(np.float32)


def write_nifti_gz(path: Path, data: np.ndarray, affine: np.ndarray, *, label_intent: bool = False) -> None:
    """Write ``data`` on ``affine`` as .nii.gz (nibabel compresses at level 1: previews are cached
    and re-made on demand, so write speed matters more than the last few percent of size)."""
    image = nib.Nifti1Image(np.asarray(data), affine)
    image.header.set_qform(affine, code=1)
    image.header.set_sform(affine, code=1)
    if label_intent:
        # NIFTI_INTENT_LABEL: NiiVue draws such volumes as outlines when its atlasOutline is set,
        # so the viewer's outlined layers (annotations) carry it and its filled ones do not.
        image.header.set_intent("label")
    path.parent.mkdir(parents=True, exist_ok=True)
    # Written beside the target and renamed, so a reader never sees half a file.
    tmp = path.with_name(path.name.removesuffix(".nii.gz") + ".part.nii.gz")
    nib.save(image, str(tmp))
    tmp.replace(path)


def _load(source: Path) -> nib.Nifti1Image:
    """Open a NIfTI file lazily (its voxels are read slab by slab through ``dataobj``)."""
    image = nib.load(str(source))
    if not isinstance(image, nib.Nifti1Image):  # Nifti2Image subclasses Nifti1Image
        raise ValueError(f"{source.name} is not a NIfTI image")
    return image


def _grid(image: nib.Nifti1Image) -> Grid:
    shape = tuple(int(s) for s in image.shape[:3])
    return Grid((shape[0], shape[1], shape[2]), np.asarray(image.affine, dtype=float))


def make_intensity_preview(source: Path, target: Path, *, max_voxels: int) -> int:
    """Write the preview of the intensity volume ``source`` to ``target``; returns the factor."""
    image = _load(source)
    grid = _grid(image)
    factor = preview_factor(grid.shape, max_voxels=max_voxels)
    data = downsample_intensity(image.dataobj, factor)
    dtype = intensity_dtype(image.get_data_dtype(), float(data.min()), float(data.max()))
    if dtype == np.int16:
        data = np.rint(data).astype(np.int16)
    write_nifti_gz(target, data, preview_grid(grid, factor).affine)
    return factor


def make_label_preview(
    source: Path,
    target: Path,
    *,
    factor: int,
    keep_ids: Iterable[int] = (),
    relabel: Callable[[np.ndarray], np.ndarray] | None = None,
    label_intent: bool = False,
) -> None:
    """Write the uint8 preview of the label map ``source`` (same grid as its scan) to ``target``."""
    image = _load(source)
    grid = _grid(image)
    data = downsample_labels(image.dataobj, factor, keep_ids=keep_ids)
    if relabel is not None:
        data = relabel(data)
    write_nifti_gz(target, data, preview_grid(grid, factor).affine, label_intent=label_intent)


def crop_volume(
    source: Path,
    target: Path,
    *,
    start: tuple[int, int, int],
    stop: tuple[int, int, int],
    is_label: bool = False,
    relabel: Callable[[np.ndarray], np.ndarray] | None = None,
    label_intent: bool = False,
) -> None:
    """Write the full-resolution sub-volume ``[start, stop)`` of ``source`` to ``target``."""
    image = _load(source)
    grid = _grid(image)
    box = tuple(slice(a, b) for a, b in zip(start, stop, strict=True))
    data = np.asarray(image.dataobj[box])
    if is_label:
        data = data.astype(np.uint8)
        if relabel is not None:
            data = relabel(data)
    elif np.issubdtype(image.get_data_dtype(), np.integer) and data.dtype.kind == "f":
        data = np.rint(data).astype(np.int16) if np.abs(data).max(initial=0) < 32767 else data
    write_nifti_gz(target, data, crop_grid(grid, start, stop).affine, label_intent=label_intent)


def clamp_region(
    shape: tuple[int, int, int], centre: tuple[int, int, int], *, max_voxels: int
) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """A cube of at most ``max_voxels`` voxels centred on ``centre``, kept inside ``shape``."""
    side = max(8, int(round(max_voxels ** (1 / 3), 6)))  # round: 64 ** (1/3) is 3.9999...
    start: list[int] = []
    stop: list[int] = []
    for size, c in zip(shape, centre, strict=True):
        length = min(size, side)
        first = min(max(0, int(c) - length // 2), size - length)
        start.append(first)
        stop.append(first + length)
    return (start[0], start[1], start[2]), (stop[0], stop[1], stop[2])
