"""A demonstration scan with a prediction, for the viewer's benchmark and browser tests.

``write_phantom`` streams a synthetic mouse-like CT (HU, int16) and its canonical label map to
uncompressed NIfTI files slab by slab, so a 2 GB volume never sits in memory. ``add_prediction``
stores a label and uncertainty map as a finished prediction of a "demo-phantom" model version,
with its structure volumes, lesions and metastasis counts computed from the label map, so the
viewer can be measured without waiting for a model. Array axes are RAS (i -> Right, j ->
Anterior, k -> Superior); sizes are in voxels and mm.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import nibabel as nib
import numpy as np
from django.core.files import File
from django.db import transaction
from django.utils import timezone
from scipy import ndimage

from inference.structures import BY_ID, BY_NAME, ORGAN_NAMES
from scans.models import Scan
from segmentation.models import InferenceJob, Lesion, ModelVersion, Prediction, StructureVolume
from tests.nifti import load_nifti

_SLAB_VOXELS = 32 * 1024**2


@dataclass(frozen=True)
class Blob:
    """An ellipsoid: centre and radii as fractions of the volume's extent, a structure and HU."""

    structure: str
    centre: tuple[float, float, float]
    radii: tuple[float, float, float]
    hu: float


#: Drawn in order; later blobs overwrite earlier ones. The body is 40 HU in air (-1000 HU).
BLOBS: tuple[Blob, ...] = (
    Blob("lung_left", (0.62, 0.55, 0.70), (0.12, 0.15, 0.12), -700.0),
    Blob("lung_right", (0.38, 0.55, 0.70), (0.12, 0.15, 0.12), -700.0),
    Blob("heart", (0.50, 0.60, 0.66), (0.08, 0.09, 0.07), 60.0),
    Blob("liver", (0.45, 0.55, 0.50), (0.20, 0.16, 0.08), 70.0),
    Blob("stomach", (0.60, 0.60, 0.47), (0.07, 0.07, 0.05), 20.0),
    Blob("kidney_left", (0.64, 0.38, 0.40), (0.05, 0.06, 0.06), 45.0),
    Blob("kidney_right", (0.36, 0.38, 0.40), (0.05, 0.06, 0.06), 45.0),
    Blob("spleen", (0.70, 0.45, 0.45), (0.04, 0.05, 0.05), 55.0),
    Blob("intestine", (0.50, 0.55, 0.30), (0.18, 0.15, 0.08), 30.0),
    Blob("bladder", (0.50, 0.60, 0.16), (0.06, 0.06, 0.04), 10.0),
    Blob("bones", (0.50, 0.28, 0.50), (0.03, 0.03, 0.42), 900.0),
    Blob("spinal_cord", (0.50, 0.28, 0.50), (0.012, 0.012, 0.42), 35.0),
    Blob("tumor", (0.86, 0.42, 0.42), (0.09, 0.10, 0.08), 50.0),
    Blob("metastasis", (0.66, 0.58, 0.74), (0.02, 0.02, 0.02), 45.0),
    Blob("metastasis", (0.40, 0.50, 0.52), (0.025, 0.025, 0.02), 85.0),
    Blob("metastasis", (0.34, 0.57, 0.68), (0.02, 0.02, 0.02), 45.0),
)


def phantom_affine(spacing_mm: float) -> np.ndarray:
    return np.diag([spacing_mm, spacing_mm, spacing_mm, 1.0])


def _header(shape: tuple[int, int, int], spacing_mm: float, dtype: type) -> nib.Nifti1Header:
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(dtype)
    header.set_zooms((spacing_mm,) * 3)
    affine = phantom_affine(spacing_mm)
    header.set_qform(affine, code=1)
    header.set_sform(affine, code=1)
    header.set_xyzt_units("mm")
    return header


def _slab(
    shape: tuple[int, int, int], k0: int, k1: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """HU (int16) and labels (uint8) of planes ``k0:k1``, both shaped (X, Y, k1 - k0)."""
    nx, ny, nz = shape
    x = ((np.arange(nx) + 0.5) / nx)[:, None, None]
    y = ((np.arange(ny) + 0.5) / ny)[None, :, None]
    z = ((np.arange(k0, k1) + 0.5) / nz)[None, None, :]
    body = ((x - 0.5) / 0.40) ** 2 + ((y - 0.45) / 0.30) ** 2 <= 1.0
    body = np.broadcast_to(body, (nx, ny, k1 - k0)) & np.broadcast_to(
        (z > 0.04) & (z < 0.96), (nx, ny, k1 - k0)
    )
    hu = np.where(body, 40.0, -1000.0).astype(np.float32)
    labels = np.zeros((nx, ny, k1 - k0), dtype=np.uint8)
    for blob in BLOBS:
        (cx, cy, cz), (rx, ry, rz) = blob.centre, blob.radii
        inside = ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 + ((z - cz) / rz) ** 2 <= 1.0
        if not inside.any():
            continue
        hu[inside] = blob.hu
        labels[inside] = BY_NAME[blob.structure].id
    hu += rng.normal(0.0, 12.0, size=hu.shape).astype(np.float32)
    return np.clip(np.rint(hu), -1024, 3071).astype(np.int16), labels


def write_phantom(
    scan_path: Path,
    labels_path: Path,
    uncertainty_path: Path,
    *,
    shape: tuple[int, int, int],
    spacing_mm: float,
) -> None:
    """Write the phantom CT (int16 HU), its labels (uint8) and an uncertainty map (uint8 0-255,
    high on structure borders) as uncompressed .nii files, streamed slab by slab."""
    rng = np.random.default_rng(7)
    planes = max(1, _SLAB_VOXELS // (shape[0] * shape[1]))
    outputs = []
    for path, dtype in ((scan_path, np.int16), (labels_path, np.uint8), (uncertainty_path, np.uint8)):
        header = _header(shape, spacing_mm, dtype)
        if dtype is np.uint8 and path != uncertainty_path:
            header.set_intent("label")
        handle = path.open("wb")
        header.write_to(handle)
        handle.write(b"\x00" * (int(header.get_data_offset()) - handle.tell()))
        outputs.append(handle)
    try:
        for k0 in range(0, shape[2], planes):
            k1 = min(shape[2], k0 + planes)
            hu, labels = _slab(shape, k0, k1, rng)
            border = labels != ndimage.grey_erosion(labels, size=(3, 3, 1))
            uncertainty = np.where(border, 200, 0).astype(np.uint8)
            for handle, data in zip(outputs, (hu, labels, uncertainty), strict=True):
                handle.write(np.asfortranarray(data).tobytes(order="F"))
    finally:
        for handle in outputs:
            handle.close()


def demo_model_version() -> ModelVersion:
    version, _ = ModelVersion.objects.get_or_create(
        name="demo-phantom",
        version="0",
        defaults={
            "task": ModelVersion.Task.TUMOR,
            "sha256": "0" * 64,
            "structures": [s.id for s in BY_ID.values()],
            "card": {"name": "demo-phantom", "note": "phantom labels drawn by frontend.demo, not a model"},
            "folder": "",
        },
    )
    return version


def _statistics(labels_path: Path, uncertainty_path: Path) -> tuple[np.ndarray, np.ndarray, float]:
    """Voxels per label value and voxels per label with uncertainty >= 50 %, read slab by slab,
    and the volume of one voxel in mm^3."""
    labels_image = load_nifti(str(labels_path))
    unsure_image = load_nifti(str(uncertainty_path))
    shape = labels_image.shape
    planes = max(1, _SLAB_VOXELS // (shape[0] * shape[1]))
    counts = np.zeros(256, dtype=np.int64)
    unsure = np.zeros(256, dtype=np.int64)
    for k0 in range(0, shape[2], planes):
        labels = np.asarray(labels_image.dataobj[:, :, k0 : k0 + planes], dtype=np.uint8)
        doubt = np.asarray(unsure_image.dataobj[:, :, k0 : k0 + planes], dtype=np.uint8) >= 128
        counts += np.bincount(labels.ravel(), minlength=256)
        unsure += np.bincount(labels[doubt].ravel(), minlength=256)
    return counts, unsure, float(np.prod(labels_image.header.get_zooms()[:3]))


def _lesions(labels_path: Path) -> list[tuple[int, np.ndarray, int, int | None]]:
    """Metastasis components (index, centroid mm, voxels, organ id around it), found on a grid
    subsampled to at most ~16M voxels so that a 2 GB phantom stays cheap."""
    image = load_nifti(str(labels_path))
    step = max(1, math.ceil((math.prod(image.shape) / 16e6) ** (1 / 3)))
    labels = np.asarray(image.dataobj[::step, ::step, ::step], dtype=np.uint8)
    organs = np.where(np.isin(labels, [BY_NAME[n].id for n in ORGAN_NAMES]), labels, 0)
    components, _ = ndimage.label(labels == BY_NAME["metastasis"].id)
    out = []
    for index, box in enumerate(ndimage.find_objects(components), start=1):
        mask = components[box] == index
        centre_vox = (np.array([s.start for s in box]) + np.array(ndimage.center_of_mass(mask))) * step
        centroid_mm = (image.affine @ np.array([*centre_vox, 1.0]))[:3]
        # The organ around the lesion: the most frequent organ label in a 2-voxel shell.
        grown = ndimage.binary_dilation(components == index, iterations=2)
        around = organs[grown & (components != index)]
        around = around[around > 0]
        organ_id = int(np.bincount(around).argmax()) if around.size else None
        out.append((index, centroid_mm, int(mask.sum()) * step**3, organ_id))
    return out


def add_prediction(
    *, scan: Scan, labels_path: Path, uncertainty_path: Path, seconds: float = 1.0
) -> Prediction:
    """Store the phantom's label and uncertainty maps as a finished prediction of ``scan``."""
    version = demo_model_version()
    counts, unsure, voxel_mm3 = _statistics(labels_path, uncertainty_path)
    metastasis_id = BY_NAME["metastasis"].id
    lesions = _lesions(labels_path)
    now = timezone.now()
    with transaction.atomic():
        job = InferenceJob.objects.create(
            scan=scan,
            model_version=version,
            state=InferenceJob.State.SUCCEEDED,
            progress=100,
            started_at=now - timedelta(seconds=seconds),
            finished_at=now,
            stage_seconds={"total": seconds},
        )
        metastasis_counts: dict[str, int] = {}
        for _, _, _, organ_id in lesions:
            organ = BY_ID[organ_id].name if organ_id else "none"
            metastasis_counts[organ] = metastasis_counts.get(organ, 0) + 1
        with labels_path.open("rb") as lab_file, uncertainty_path.open("rb") as unc_file:
            prediction = Prediction(
                job=job,
                scan=scan,
                model_version=version,
                manifest={"model": version.label, "provider": "phantom (no model run)"},
                metastasis_counts=metastasis_counts,
            )
            prediction.labels.save(f"scan{scan.pk}_labels.nii", File(lab_file), save=False)
            prediction.uncertainty.save(f"scan{scan.pk}_uncertainty.nii", File(unc_file), save=False)
            prediction.save()
        StructureVolume.objects.bulk_create(
            StructureVolume(
                prediction=prediction,
                structure_id=sid,
                name=BY_ID[sid].name,
                voxels=int(counts[sid]),
                volume_mm3=float(counts[sid]) * voxel_mm3,
                volume_low_mm3=float(counts[sid] - unsure[sid]) * voxel_mm3,
                volume_high_mm3=float(counts[sid] + unsure[sid]) * voxel_mm3,
            )
            for sid in range(1, len(BY_ID))
            if counts[sid] > 0
        )
        Lesion.objects.bulk_create(
            Lesion(
                prediction=prediction,
                index=index,
                structure_id=metastasis_id,
                centroid_x_mm=float(c[0]),
                centroid_y_mm=float(c[1]),
                centroid_z_mm=float(c[2]),
                voxels=voxels,
                volume_mm3=voxels * voxel_mm3,
                max_diameter_mm=2.0 * math.cbrt(3.0 * voxels * voxel_mm3 / (4.0 * math.pi)),
                organ_id=organ_id,
                organ_name=BY_ID[organ_id].name if organ_id else "none",
                allocation=Lesion.Allocation.OVERLAP if organ_id else Lesion.Allocation.NONE,
            )
            for index, c, voxels, organ_id in lesions
        )
    return prediction
