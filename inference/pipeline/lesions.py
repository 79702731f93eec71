"""Lesions (tumors, metastases) as rows, and the organ that holds each one.

Array contracts: ``organ_labels`` is a 3D label map on the scan's grid (any axis order) whose organ
voxels carry canonical structure ids; values that are not organs (background, lesions) count as "no
organ". ``affine`` is that grid's voxel-to-world matrix (mm). Lesions are given as either

- a 3D mask on the same grid: lesion structure ids (tumor, metastasis) keep their meaning, any other
  non-zero value is a lesion of ``default_structure_id`` (metastasis unless told); a lesion is a
  26-connected component; or
- points: an ``[N, 3]`` or ``[N, 4]`` array of world coordinates ``x_mm, y_mm, z_mm`` and an optional
  diameter in mm (NaN when unknown), e.g. read from a CSV with :func:`read_points_csv`.

Allocation, in order: the organ at the lesion's centroid ("centroid"; for points, the organ at the
point: "coordinates"); else the organ that overlaps the lesion grown by ``touch_mm`` (for points a
ball of the lesion's radius plus ``touch_mm``) the most ("overlap"); else none
("subcutaneous/other"). Diameters are the largest distance between the centres of two surface voxels.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Collection, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError
from scipy.spatial.distance import pdist

from inference.pipeline.geometry import grown_box
from inference.structures import BY_ID, BY_NAME, ORGAN_NAMES, by_name

SUBCUTANEOUS = "subcutaneous/other"
ORGAN_IDS = frozenset(BY_NAME[name].id for name in ORGAN_NAMES)
METASTASIS_ID = BY_NAME["metastasis"].id
LESION_IDS = frozenset(s.id for s in BY_ID.values() if s.kind == "lesion")
CONNECTIVITY_26 = np.ones((3, 3, 3), dtype=bool)
CSV_FIELDS = (
    "index",
    "structure_id",
    "structure",
    "x_mm",
    "y_mm",
    "z_mm",
    "voxels",
    "volume_mm3",
    "max_diameter_mm",
    "organ_id",
    "organ",
    "allocation",
)


class LesionInputError(ValueError):
    """A lesion mask or coordinate list that cannot be used (wrong grid, unreadable CSV...)."""


@dataclass(frozen=True)
class LesionRow:
    """One lesion: centroid in world mm, size, and the organ it is allocated to."""

    index: int
    structure_id: int
    centroid_mm: tuple[float, float, float]
    voxels: int
    volume_mm3: float
    max_diameter_mm: float
    organ_id: int | None
    organ_name: str
    allocation: str
    #: A point of the lesion itself, the voxel nearest its centroid: where "Go to" takes a viewer
    #: (a curved lesion's centroid can lie in air). The point itself for coordinate lesions.
    anchor_mm: tuple[float, float, float] | None = None

    def as_csv_row(self) -> dict[str, object]:
        return {
            "index": self.index,
            "structure_id": self.structure_id,
            "structure": BY_ID[self.structure_id].name,
            "x_mm": round(self.centroid_mm[0], 3),
            "y_mm": round(self.centroid_mm[1], 3),
            "z_mm": round(self.centroid_mm[2], 3),
            "voxels": self.voxels,
            "volume_mm3": round(self.volume_mm3, 4),
            "max_diameter_mm": round(self.max_diameter_mm, 3),
            "organ_id": "" if self.organ_id is None else self.organ_id,
            "organ": self.organ_name,
            "allocation": self.allocation,
        }

    def as_json(self) -> dict[str, object]:
        return asdict(self)


def spacing_of(affine: np.ndarray) -> np.ndarray:
    """Voxel size in mm along each array axis (column norms, so oblique affines work)."""
    return np.sqrt(np.sum(np.asarray(affine, dtype=np.float64)[:3, :3] ** 2, axis=0))


def _world(affine: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """Voxel indices ``[N, 3]`` -> world mm ``[N, 3]``."""
    return indices @ affine[:3, :3].T + affine[:3, 3]


def _organ_at(organ_labels: np.ndarray, index: np.ndarray) -> int | None:
    voxel = np.floor(np.asarray(index, dtype=np.float64) + 0.5).astype(int)
    if np.any(voxel < 0) or np.any(voxel >= organ_labels.shape):
        return None
    value = int(organ_labels[tuple(voxel)])
    return value if value in ORGAN_IDS else None


def _ball(radius_mm: float, spacing: np.ndarray) -> np.ndarray:
    reach = np.maximum(np.floor(radius_mm / spacing + 1e-9).astype(int), 0)
    grids = np.ogrid[tuple(slice(-r, r + 1) for r in reach)]
    distance2 = sum((g * s) ** 2 for g, s in zip(grids, spacing, strict=True))
    return np.asarray(distance2 <= radius_mm**2 + 1e-9)


def _most_overlapped(organ_labels: np.ndarray, region: np.ndarray, box: tuple[slice, ...]) -> int | None:
    values = organ_labels[box][region]
    values = values[np.isin(values, list(ORGAN_IDS))]
    if values.size == 0:
        return None
    counts = np.bincount(values.astype(np.int64))
    return int(np.argmax(counts))


def _grown(
    mask: np.ndarray, box: tuple[slice, ...], shape: tuple[int, ...], spacing: np.ndarray, reach_mm: float
) -> tuple[np.ndarray, tuple[slice, ...]]:
    """The component grown by ``reach_mm`` (Euclidean, in mm) inside a box padded by that reach.

    A distance transform costs the same whatever the reach, unlike dilation by a ball of
    (2 * 1 mm / 0.1 mm)^3 voxels.
    """
    reach = np.ceil(reach_mm / spacing).astype(int)
    padded = grown_box(box, reach, shape)
    local = np.ones(tuple(p.stop - p.start for p in padded), dtype=bool)
    inner = tuple(slice(b.start - p.start, b.stop - p.start) for b, p in zip(box, padded, strict=True))
    local[inner] = ~mask
    distance = ndimage.distance_transform_edt(local, sampling=spacing)
    return np.asarray(distance <= reach_mm + 1e-6), padded


def max_diameter_mm(mask: np.ndarray, offset: np.ndarray, affine: np.ndarray) -> float:
    """Largest distance (mm) between centres of surface voxels of ``mask`` (box at ``offset``)."""
    surface = mask & ~ndimage.binary_erosion(mask)
    points = _world(affine, np.argwhere(surface) + offset)
    if len(points) < 2:
        return 0.0
    if len(points) > 1500:
        try:
            points = points[ConvexHull(points).vertices]
        except QhullError:
            # Flat lesions (one voxel thick) have no 3D hull; a sample keeps the cost bounded.
            points = points[:: max(1, len(points) // 1500)]
    return float(pdist(points).max())


def _organ_name(organ_id: int | None) -> str:
    return BY_ID[organ_id].name if organ_id is not None else SUBCUTANEOUS


def _mask_lesions(
    organ_labels: np.ndarray,
    affine: np.ndarray,
    mask: np.ndarray,
    touch_mm: float,
    default_structure_id: int,
) -> list[LesionRow]:
    spacing = spacing_of(affine)
    voxel_mm3 = float(abs(np.linalg.det(affine[:3, :3])))
    rows: list[LesionRow] = []
    values = np.asarray(mask)
    # Work inside the lesions' bounding box: labelling and centroids over a whole 20-million-voxel
    # scan cost seconds, the box around a few tumors and nodules a fraction of that.
    nonzero = values != 0
    if not nonzero.any():
        return rows
    spans = [np.flatnonzero(nonzero.any(axis=tuple(a for a in range(3) if a != axis))) for axis in range(3)]
    crop = tuple(slice(int(span[0]), int(span[-1]) + 1) for span in spans)
    corner = np.array([c.start for c in crop])
    values = values[crop]
    present = [int(v) for v in np.unique(values) if v != 0]
    groups: dict[int, list[int]] = {}
    for value in present:
        groups.setdefault(value if value in LESION_IDS else default_structure_id, []).append(value)
    for structure_id in sorted(groups):
        selected = np.isin(values, groups[structure_id])
        labelled, count = ndimage.label(selected, structure=CONNECTIVITY_26)
        if count == 0:
            continue
        numbers = np.arange(1, count + 1)
        # One pass over the volume for every component's size and centroid.
        sizes = np.bincount(labelled.ravel(), minlength=count + 1)[1:]
        centroids = np.asarray(ndimage.center_of_mass(selected, labelled, numbers), dtype=np.float64)
        for number, local in enumerate(ndimage.find_objects(labelled), start=1):
            if local is None:
                continue
            component = labelled[local] == number
            box = tuple(slice(b.start + c, b.stop + c) for b, c in zip(local, corner, strict=True))
            offset = np.array([b.start for b in box])
            centroid_index = centroids[number - 1] + corner
            organ_id = _organ_at(organ_labels, centroid_index)
            allocation = "centroid"
            if organ_id is None:
                grown, padded = _grown(component, box, organ_labels.shape, spacing, touch_mm)
                organ_id = _most_overlapped(organ_labels, grown, padded)
                allocation = "overlap" if organ_id is not None else "none"
            centroid = _world(affine, centroid_index[None])[0]
            inside = np.argwhere(component) + offset
            nearest = inside[np.argmin((((inside - centroid_index) * spacing) ** 2).sum(axis=1))]
            anchor = _world(affine, nearest[None].astype(np.float64))[0]
            rows.append(
                LesionRow(
                    index=0,
                    structure_id=structure_id,
                    centroid_mm=(float(centroid[0]), float(centroid[1]), float(centroid[2])),
                    anchor_mm=(float(anchor[0]), float(anchor[1]), float(anchor[2])),
                    voxels=int(sizes[number - 1]),
                    volume_mm3=float(sizes[number - 1]) * voxel_mm3,
                    max_diameter_mm=max_diameter_mm(component, offset, affine),
                    organ_id=organ_id,
                    organ_name=_organ_name(organ_id),
                    allocation=allocation,
                )
            )
    return rows


def _point_lesions(
    organ_labels: np.ndarray, affine: np.ndarray, points: np.ndarray, touch_mm: float, structure_id: int
) -> list[LesionRow]:
    spacing = spacing_of(affine)
    inverse = np.linalg.inv(affine)
    rows: list[LesionRow] = []
    for point in points:
        world = np.asarray(point[:3], dtype=np.float64)
        diameter = float(point[3]) if len(point) > 3 and np.isfinite(point[3]) else 0.0
        index = inverse[:3, :3] @ world + inverse[:3, 3]
        organ_id = _organ_at(organ_labels, index)
        allocation = "coordinates"
        if organ_id is None:
            ball = _ball(diameter / 2.0 + touch_mm, spacing)
            reach = np.array([n // 2 for n in ball.shape])
            centre = np.floor(index + 0.5).astype(int)
            low, high = centre - reach, centre + reach + 1
            clipped_low = np.maximum(low, 0)
            clipped_high = np.minimum(high, organ_labels.shape)
            organ_id = None
            if np.all(clipped_high > clipped_low):
                box = tuple(slice(int(a), int(b)) for a, b in zip(clipped_low, clipped_high, strict=True))
                region = ball[
                    tuple(
                        slice(int(a - lo), int(b - lo))
                        for a, b, lo in zip(clipped_low, clipped_high, low, strict=True)
                    )
                ]
                organ_id = _most_overlapped(organ_labels, region, box)
            allocation = "overlap" if organ_id is not None else "none"
        rows.append(
            LesionRow(
                index=0,
                structure_id=structure_id,
                centroid_mm=(float(world[0]), float(world[1]), float(world[2])),
                anchor_mm=(float(world[0]), float(world[1]), float(world[2])),
                voxels=0,
                volume_mm3=math.pi / 6.0 * diameter**3,
                max_diameter_mm=diameter,
                organ_id=organ_id,
                organ_name=_organ_name(organ_id),
                allocation=allocation,
            )
        )
    return rows


def allocate(
    organ_labels: np.ndarray,
    affine: np.ndarray,
    lesion_mask_or_points: np.ndarray,
    *,
    touch_mm: float = 1.0,
    default_structure_id: int = METASTASIS_ID,
) -> list[LesionRow]:
    """Lesion rows (numbered from 1) with their organs; see the module notes for the rules."""
    organ_labels = np.asarray(organ_labels)
    affine = np.asarray(affine, dtype=np.float64)
    lesions = np.asarray(lesion_mask_or_points)
    if organ_labels.ndim != 3:
        raise LesionInputError(f"the organ label map must be 3D, got shape {organ_labels.shape}")
    if default_structure_id not in LESION_IDS:
        raise LesionInputError(f"structure {default_structure_id} is not a lesion structure")
    if lesions.ndim == 3:
        if lesions.shape != organ_labels.shape:
            raise LesionInputError(
                f"the lesion mask has shape {lesions.shape} but the organ labels have {organ_labels.shape}; "
                "both must lie on the same grid"
            )
        rows = _mask_lesions(organ_labels, affine, lesions, touch_mm, default_structure_id)
    elif (lesions.ndim == 2 and lesions.shape[1] in (3, 4)) or lesions.size == 0:
        points = lesions.reshape(-1, lesions.shape[-1] if lesions.ndim == 2 else 3)
        rows = _point_lesions(organ_labels, affine, points.astype(np.float64), touch_mm, default_structure_id)
    else:
        raise LesionInputError(
            f"lesions must be a 3D mask or an N x 3 (or N x 4 with diameter) array of mm coordinates, "
            f"got shape {lesions.shape}"
        )
    return [
        LesionRow(**{**asdict(row), "index": number, "centroid_mm": row.centroid_mm})
        for number, row in enumerate(rows, start=1)
    ]


def metastasis_counts(
    lesions: Iterable[LesionRow], assessed: Collection[str] | None = None
) -> dict[str, int | None]:
    """Metastases per organ name, every organ listed, plus ``subcutaneous/other``.

    ``assessed`` names the organs where metastases were looked for (see
    :func:`metastasis_assessed_organs`); every other organ is ``None``, "not assessed", never 0: a
    model that only looks in the lungs has not found the liver free of metastases. ``None`` means
    every organ was assessed (lesions given by a person). ``subcutaneous/other`` is assessed
    whenever any organ is.
    """
    names = (*ORGAN_NAMES, SUBCUTANEOUS)
    if assessed is None:
        looked = set(names)
    else:
        looked = set(assessed) & set(ORGAN_NAMES)
        if looked:
            looked.add(SUBCUTANEOUS)
    counts: dict[str, int | None] = {name: (0 if name in looked else None) for name in names}
    for row in lesions:
        if row.structure_id == METASTASIS_ID and counts.get(row.organ_name) is not None:
            counts[row.organ_name] = int(counts[row.organ_name] or 0) + 1
    return counts


def metastasis_assessed_organs(present: Collection[int] | None, searched: Collection[str]) -> list[str]:
    """The organs where metastases were really looked for in this scan: those the models search
    (``searched``, from the model cards) that this scan's organ map holds (``present``: its ids,
    ``volumes.labels_present``; None without an organ map). An organ outside the field of view,
    or not found, was not assessed."""
    if present is None:
        return []
    return [name for name in ORGAN_NAMES if name in searched and BY_NAME[name].id in present]


def read_points_csv(path: Path) -> tuple[np.ndarray, int | None]:
    """``x_mm,y_mm,z_mm[,diameter_mm][,structure]`` rows -> (``[N, 4]`` points, structure id or None).

    The diameter is NaN where absent. A ``structure`` column (tumor or metastasis) must be the same
    on every row; otherwise the caller's default applies.
    """
    try:
        with Path(path).open(newline="") as handle:
            reader = csv.DictReader(handle)
            fields = {f.strip().lower(): f for f in reader.fieldnames or []}
            missing = [f for f in ("x_mm", "y_mm", "z_mm") if f not in fields]
            if missing:
                raise LesionInputError(
                    f"{Path(path).name}: the CSV needs columns x_mm, y_mm, z_mm "
                    f"(missing {', '.join(missing)})"
                )
            points: list[list[float]] = []
            structures: set[int] = set()
            for line, row in enumerate(reader, start=2):
                try:
                    values = [float(row[fields[f]]) for f in ("x_mm", "y_mm", "z_mm")]
                    raw_diameter = row.get(fields.get("diameter_mm", ""), "") or ""
                    values.append(float(raw_diameter) if raw_diameter.strip() else math.nan)
                except (TypeError, ValueError):
                    raise LesionInputError(
                        f"{Path(path).name} line {line}: coordinates must be numbers"
                    ) from None
                if not all(math.isfinite(v) for v in values[:3]):
                    raise LesionInputError(f"{Path(path).name} line {line}: coordinates must be finite")
                points.append(values)
                if "structure" in fields and (row[fields["structure"]] or "").strip():
                    try:
                        structures.add(by_name(row[fields["structure"]]).id)
                    except KeyError as error:
                        raise LesionInputError(f"{Path(path).name} line {line}: {error.args[0]}") from None
    except (OSError, UnicodeDecodeError) as error:
        raise LesionInputError(f"cannot read the coordinates file {path}: {error}") from None
    if len(structures) > 1:
        raise LesionInputError(f"{Path(path).name}: give one structure per file (found {sorted(structures)})")
    structure = structures.pop() if structures else None
    if structure is not None and structure not in LESION_IDS:
        raise LesionInputError(f"{Path(path).name}: {BY_ID[structure].name} is not a lesion structure")
    return np.asarray(points, dtype=np.float64).reshape(-1, 4), structure


def write_lesions_csv(path: Path, lesions: Iterable[LesionRow]) -> None:
    with Path(path).open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for row in lesions:
            writer.writerow(row.as_csv_row())
