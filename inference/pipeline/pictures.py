"""Pictures the papers use: a mean-intensity coronal projection and a coronal slice, as PNG bytes.

Array contract for every function here: ``volume`` (and ``labels`` / ``outlines`` when given) are 3D
arrays in closest-canonical RAS axis order, ``[x, y, z]`` with x towards the subject's Right, y towards
Anterior, z towards Superior (nibabel ``as_closest_canonical``); ``spacing_mm`` is the voxel size along
those three axes. Coronal pictures show the x-z plane with Superior at the top and the subject's Left
on the picture's left (neurological convention, NiiVue's default). Pixels are square: the picture is
``round(nx * sx / s) x round(nz * sz / s)`` pixels (width x height) with ``s = min(sx, sz)``, shrunk
proportionally when that exceeds ``max_size_px``. Label values are canonical structure ids
(``inference.structures``) and are drawn in the canonical colours.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
from PIL import Image
from scipy import ndimage

from inference.structures import BY_ID

#: Opacity of organ fills over the grey picture.
FILL_ALPHA = 0.45
#: Largest side of a picture in pixels; thumbnails of 35 um atlases stay small.
DEFAULT_MAX_SIZE_PX = 1024


def picture_size(shape: Sequence[int], spacing_mm: Sequence[float], max_size_px: int) -> tuple[int, int]:
    """(width, height) in pixels of a coronal picture of a volume of ``shape`` ([x, y, z])."""
    sx, sz = float(spacing_mm[0]), float(spacing_mm[2])
    pixel_mm = min(sx, sz)
    width = max(1, round(shape[0] * sx / pixel_mm))
    height = max(1, round(shape[2] * sz / pixel_mm))
    scale = min(1.0, max_size_px / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def _grey(plane_xz: np.ndarray) -> np.ndarray:
    """Window a float plane to 0..255 between its 1st and 99.5th percentiles (robust to metal/air)."""
    finite = plane_xz[np.isfinite(plane_xz)]
    if finite.size == 0:
        return np.zeros(plane_xz.shape, dtype=np.float32)
    low, high = np.percentile(finite, [1.0, 99.5])
    if high <= low:
        high = low + 1.0
    return (np.clip((plane_xz - low) / (high - low), 0.0, 1.0) * 255.0).astype(np.float32)


def _to_picture(rgb_xz: np.ndarray, size: tuple[int, int]) -> bytes:
    """RGB plane ``[x, z, 3]`` -> PNG bytes, Superior up, resized to ``size`` (width, height)."""
    rows_cols = np.ascontiguousarray(np.transpose(rgb_xz, (1, 0, 2))[::-1])
    image = Image.fromarray(np.clip(rows_cols, 0, 255).astype(np.uint8))
    if image.size != size:
        image = image.resize(size, Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()


def _fill(rgb: np.ndarray, mask: np.ndarray, structure_id: int, alpha: float) -> None:
    colour = np.asarray(BY_ID[structure_id].colour, dtype=np.float32)
    rgb[mask] = rgb[mask] * (1.0 - alpha) + colour * alpha


def _structure_ids(labels: np.ndarray) -> list[int]:
    present = np.unique(labels)
    return [int(v) for v in present if int(v) != 0 and int(v) in BY_ID]


def _check(volume: np.ndarray, spacing_mm: Sequence[float], other: np.ndarray | None, name: str) -> None:
    if volume.ndim != 3:
        raise ValueError(f"a picture needs a 3D volume, got {volume.ndim} dimensions")
    if len(spacing_mm) != 3:
        raise ValueError("spacing_mm needs three voxel sizes (x, y, z)")
    if other is not None and other.shape != volume.shape:
        raise ValueError(f"{name} shape {other.shape} differs from the volume's {volume.shape}")


def projection_png(
    volume: np.ndarray,
    spacing_mm: Sequence[float],
    labels: np.ndarray | None = None,
    *,
    max_size_px: int = DEFAULT_MAX_SIZE_PX,
) -> bytes:
    """Mean-intensity coronal projection (mean along y) with semi-transparent organ fills.

    A structure is filled wherever it appears anywhere along the projection ray; structures are
    blended in id order so overlapping organs both stay visible.
    """
    _check(volume, spacing_mm, labels, "labels")
    projection = np.asarray(np.mean(volume, axis=1, dtype=np.float32))
    grey = _grey(projection)
    rgb = np.repeat(grey[..., None], 3, axis=2)
    if labels is not None:
        boxes = ndimage.find_objects(np.where(labels <= max(BY_ID), labels, 0).astype(np.int32))
        for index, box in enumerate(boxes):
            structure_id = index + 1
            if box is None:
                continue
            seen = np.any(labels[box] == structure_id, axis=1)
            mask = np.zeros(projection.shape, dtype=bool)
            mask[box[0], box[2]] = seen
            _fill(rgb, mask, structure_id, FILL_ALPHA)
    return _to_picture(rgb, picture_size(volume.shape, spacing_mm, max_size_px))


def coronal_slice_png(
    volume: np.ndarray,
    spacing_mm: Sequence[float],
    labels: np.ndarray | None = None,
    outlines: np.ndarray | None = None,
    *,
    y_index: int | None = None,
    max_size_px: int = DEFAULT_MAX_SIZE_PX,
) -> bytes:
    """One coronal slice with ``labels`` filled and the borders of ``outlines`` drawn opaque.

    ``y_index`` picks the slice; by default the centre of mass of the labelled voxels (or of the
    outlines), else the middle slice. Typical use: prediction filled, annotation outlined.
    """
    _check(volume, spacing_mm, labels, "labels")
    _check(volume, spacing_mm, outlines, "outlines")
    if y_index is None:
        y_index = volume.shape[1] // 2
        reference = labels if labels is not None else outlines
        if reference is not None and np.any(reference > 0):
            y_index = round(float(np.mean(np.nonzero(np.any(reference > 0, axis=(0, 2)))[0])))
    if not 0 <= y_index < volume.shape[1]:
        raise ValueError(f"slice {y_index} is outside the volume (0-{volume.shape[1] - 1})")
    grey = _grey(np.asarray(volume[:, y_index, :], dtype=np.float32))
    rgb = np.repeat(grey[..., None], 3, axis=2)
    if labels is not None:
        plane = np.asarray(labels[:, y_index, :])
        for structure_id in _structure_ids(plane):
            _fill(rgb, plane == structure_id, structure_id, FILL_ALPHA)
    if outlines is not None:
        plane = np.asarray(outlines[:, y_index, :])
        for structure_id in _structure_ids(plane):
            mask = plane == structure_id
            border = mask & ~ndimage.binary_erosion(mask)
            _fill(rgb, border, structure_id, 1.0)
    return _to_picture(rgb, picture_size(volume.shape, spacing_mm, max_size_px))


def nifti_projection_png(path: Path, *, max_size_px: int = 512) -> bytes:
    """Projection thumbnail straight from a NIfTI file (reoriented to closest canonical first)."""
    image = nib.as_closest_canonical(nib.load(str(path)))
    spacing_mm = tuple(float(z) for z in image.header.get_zooms()[:3])
    data = np.asanyarray(image.dataobj)
    if data.ndim == 4:
        data = data[..., 0]
    return projection_png(data, spacing_mm, max_size_px=max_size_px)
