"""Volume per structure, with a range that carries the model's uncertainty.

Array contracts: ``labels`` uint8 3D label map on the scan's grid (canonical structure ids);
``uncertainty`` uint8 on the same grid, 0 = certain, 255 = maximally uncertain (or None).

Definition of the range (documented for researchers in the export):

- ``volume_low_mm3``: voxels of the structure whose uncertainty is below 50 % (value < 128), i.e.
  the part of the structure the model is sure of;
- ``volume_high_mm3``: every voxel of the structure plus the uncertain voxels (value >= 128)
  labelled otherwise that touch it (6-neighbourhood), i.e. what the structure could grow into at
  its uncertain border.

Without an uncertainty map both bounds equal the volume.

Each CSV row carries an ``assessment`` (``inference.assessment.judge_volume``): an organ the model
did not draw is "not found" and has no volume, never 0 mm^3 (the scan may not hold it); one the
scanned field cuts through has none either. The product's exports say the same.
"""

from __future__ import annotations

import csv
from collections.abc import Collection, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from inference.assessment import judge_volume
from inference.structures import BY_ID

UNCERTAIN_FROM = 128
CSV_FIELDS = (
    "structure_id",
    "structure",
    "voxels",
    "volume_mm3",
    "volume_low_mm3",
    "volume_high_mm3",
    "assessment",
)


@dataclass(frozen=True)
class VolumeRow:
    structure_id: int
    name: str
    voxels: int
    volume_mm3: float
    volume_low_mm3: float
    volume_high_mm3: float

    def as_csv_row(self, cut: Collection[str] = ()) -> dict[str, object]:
        """The CSV row; the volume cells are empty where there is no measurement (``judge_volume``)."""
        found, assessment = judge_volume(self.structure_id, self.voxels, cut)
        return {
            "structure_id": self.structure_id,
            "structure": self.name,
            "voxels": self.voxels,
            "volume_mm3": round(self.volume_mm3, 4) if found else "",
            "volume_low_mm3": round(self.volume_low_mm3, 4) if found else "",
            "volume_high_mm3": round(self.volume_high_mm3, 4) if found else "",
            "assessment": assessment,
        }

    def as_json(self) -> dict[str, object]:
        return asdict(self)


#: A uint8 map whose highest value is under this is counted value by value: one comparison and
#: one count per value (about 2 ms each for 19 M voxels) beat ``np.bincount``, which widens
#: every voxel to 8 bytes first (57 ms for that map in 1 M-voxel slabs, 35 ms by value).
BY_VALUE_BELOW = 24


def label_counts(labels: np.ndarray, bins: int) -> np.ndarray:
    """Voxels per label value (``bins`` values; larger values are not counted).

    ``np.bincount`` of a whole scan first widens every uint8 voxel to 8 bytes (150 MB for a
    192 x 192 x 520 map); counting in 1 M-voxel slabs of the C-ordered view does not, and a
    label map of few values is counted value by value (``BY_VALUE_BELOW``)."""
    labels = np.asarray(labels)
    if labels.ndim and labels.flags.f_contiguous and not labels.flags.c_contiguous:
        labels = labels.T
    counts = np.zeros(bins, dtype=np.int64)
    if labels.ndim == 0 or labels.size == 0:
        return counts
    if labels.dtype == np.uint8 and (top := int(labels.max())) < BY_VALUE_BELOW:
        for value in range(min(top + 1, bins)):
            counts[value] = np.count_nonzero(labels == value)
        return counts
    step = max(1, (1 << 20) // max(1, labels[0].size))
    for start in range(0, labels.shape[0], step):
        counts += np.bincount(labels[start : start + step].ravel(), minlength=bins)[:bins]
    return counts


def labels_present(labels: np.ndarray) -> frozenset[int]:
    """The label values ``labels`` holds (background included when there is any)."""
    return frozenset(int(v) for v in np.flatnonzero(label_counts(labels, 256)))


def _neighbour_bits_sparse(labels: np.ndarray, flat: np.ndarray) -> np.ndarray:
    """Bit ``k`` set when the voxel at flat index ``flat`` (of the C-ordered ``labels``) has a
    6-neighbour labelled ``k`` (not its own). Flat indices, because ``np.nonzero`` of a 3D mask
    costs five times ``np.flatnonzero`` of its ravel."""
    values = labels.reshape(-1)
    own = values[flat]
    seen = np.zeros(own.size, dtype=np.uint64)
    strides = np.cumprod((1, *labels.shape[:0:-1]))[::-1]
    for axis, (n, stride) in enumerate(zip(labels.shape, strides, strict=True)):
        coordinate = flat // int(stride) % n if axis else flat // int(stride)
        for step in (-1, 1):
            inside = (coordinate + step >= 0) & (coordinate + step < n)
            value = values[np.where(inside, flat + step * int(stride), flat)]
            keep = inside & (value != own) & (value != 0)
            seen[keep] |= np.left_shift(np.uint64(1), value[keep].astype(np.uint64))
    return seen


def _neighbour_bits_dense(labels: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """As the sparse form, on whole shifted arrays: cheaper when most voxels are candidates."""
    dtype = np.uint16 if int(labels.max(initial=0)) < 16 else np.uint64
    seen = np.zeros(labels.shape, dtype=dtype)
    bits = np.left_shift(dtype(1), labels.astype(dtype))
    for axis in range(3):
        for here, there in ((slice(1, None), slice(None, -1)), (slice(None, -1), slice(1, None))):
            index_here = (slice(None),) * axis + (here,)
            index_there = (slice(None),) * axis + (there,)
            value = labels[index_there]
            keep = (value != labels[index_here]) & (value != 0)
            seen[index_here] |= bits[index_there] * keep
    return seen[candidates].astype(np.uint64)


def _uncertain_counts(labels: np.ndarray, uncertain: np.ndarray, bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Per structure id: the uncertain voxels it holds, and the uncertain voxels labelled
    otherwise that have a 6-neighbour of that id.

    Each uncertain voxel collects the ids of its neighbours that differ from its own as bits of
    one integer (ids < 64), so a voxel touching the same structure on several faces counts once,
    without sorting pairs. Uncertain voxels are few (about 1 % of a scan: the outline bands), so
    their neighbours are read where they are; a voxel inside a structure collects no bit.
    """
    counts = np.zeros(bins, dtype=np.int64)
    if labels.flags.f_contiguous and not labels.flags.c_contiguous:
        # The pipeline's maps are Fortran-ordered (as NIfTI stores them); the shifted comparisons
        # below mix them with fresh C-ordered arrays, a strided walk several times slower. The
        # 6-neighbourhood is the same on the transposed (C-ordered) view, so the counts are too.
        labels, uncertain = labels.T, uncertain.T
    labels, uncertain = np.ascontiguousarray(labels), np.ascontiguousarray(uncertain)
    flat = np.flatnonzero(uncertain)
    if flat.size == 0:
        return counts, counts.copy()
    held = np.bincount(labels.reshape(-1)[flat], minlength=bins)[:bins]
    if flat.size > labels.size // 8:
        seen = _neighbour_bits_dense(labels, uncertain)
    else:
        seen = _neighbour_bits_sparse(labels, flat)
    for structure_id in range(1, min(bins, 64)):
        counts[structure_id] = int(np.count_nonzero(seen & np.uint64(1 << structure_id)))
    return held, counts


def structure_volumes(
    labels: np.ndarray,
    voxel_volume_mm3: float,
    uncertainty: np.ndarray | None = None,
    *,
    structure_ids: Sequence[int] | None = None,
) -> list[VolumeRow]:
    """One row per structure in ``structure_ids`` (default: every non-background id present)."""
    bins = max(BY_ID) + 1
    voxels = label_counts(labels, bins)
    if structure_ids is None:
        structure_ids = [i for i in range(1, bins) if voxels[i] > 0]
    if uncertainty is not None:
        uncertain = np.asarray(uncertainty) >= UNCERTAIN_FROM
        unsure, growth = _uncertain_counts(np.asarray(labels), uncertain, bins)
    else:
        unsure = np.zeros(bins, dtype=np.int64)
        growth = np.zeros(bins, dtype=np.int64)
    rows = []
    for structure_id in structure_ids:
        if structure_id == 0:
            continue
        count = int(voxels[structure_id])
        rows.append(
            VolumeRow(
                structure_id=int(structure_id),
                name=BY_ID[int(structure_id)].name,
                voxels=count,
                volume_mm3=count * voxel_volume_mm3,
                volume_low_mm3=(count - int(unsure[structure_id])) * voxel_volume_mm3,
                volume_high_mm3=(count + int(growth[structure_id])) * voxel_volume_mm3,
            )
        )
    return rows


def write_volumes_csv(path: Path, rows: Iterable[VolumeRow], cut: Collection[str] = ()) -> None:
    """``rows`` as CSV; ``cut``: the organs the scanned field cuts through (no volume for them)."""
    with Path(path).open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for row in rows:
            writer.writerow(row.as_csv_row(cut))
