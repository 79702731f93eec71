"""Reading label maps from storage and writing derived NIfTI maps back to it.

Array contract: arrays are in the file's own voxel axis order (no reorientation), so every mask
read from an annotation, a prediction or a consensus of one scan lies on the scan's grid, and
``spacing_mm`` (the header zooms) gives the voxel size along those axes.
"""

from __future__ import annotations

import gzip
from collections.abc import Mapping
from dataclasses import dataclass
from typing import cast

import nibabel as nib
import numpy as np
import numpy.typing as npt
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db.models.fields.files import FieldFile

from inference.structures import BY_NAME, STRUCTURES
from labseg.storage import local_path


@dataclass(frozen=True)
class LabelMap:
    data: npt.NDArray[np.integer]
    affine: npt.NDArray[np.float64]
    spacing_mm: tuple[float, float, float]


def load_label_map(field: FieldFile) -> LabelMap:
    """The integer voxel array of a stored NIfTI label map, with its affine and spacing."""
    with local_path(field.name) as path:
        # Stored label maps are NIfTI (annotations are checked on upload, consensus maps are ours).
        image = cast(nib.Nifti1Image, nib.load(path))
        data = np.asanyarray(image.dataobj)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise ValueError(f"{field.name} is not a 3-D label map (shape {data.shape})")
    if not np.issubdtype(data.dtype, np.integer):
        data = np.rint(data).astype(np.int32)
    zooms = image.header.get_zooms()[:3]
    return LabelMap(
        data=data, affine=image.affine, spacing_mm=(float(zooms[0]), float(zooms[1]), float(zooms[2]))
    )


def annotation_values(structures_table: Mapping[str, int] | None) -> dict[int, int]:
    """Canonical structure id -> voxel value in an annotation's file: the one reader of
    ``Annotation.structures``.

    The table is written by ``services.structure_table`` when the annotation is created: canonical
    structure names -> the label values its file uses, every value of the file mapped (an imported
    tumor-database file stores ``{"tumor": 1}``). An empty table means a file with no structure
    drawn; nothing is guessed for it.
    """
    return {
        BY_NAME[name].id: int(value) for name, value in (structures_table or {}).items() if name in BY_NAME
    }


def label_values(structures_table: Mapping[str, int] | None, data: npt.NDArray) -> dict[int, int]:
    """Canonical structure id -> voxel value in this file.

    An annotation's ``structures`` table is read by :func:`annotation_values`; a file without a
    table (predictions, consensus maps) uses the canonical ids of the values present in ``data``.
    """
    if structures_table:
        return annotation_values(structures_table)
    present = {int(v) for v in np.unique(data)}
    return {s.id: s.id for s in STRUCTURES if s.id in present and s.kind != "background"}


def save_nifti(name: str, data: npt.NDArray, affine: npt.NDArray) -> str:
    """Write ``data`` as a gzipped NIfTI to storage under ``name``; returns the stored name."""
    image = nib.Nifti1Image(data, affine)
    image.header.set_data_dtype(data.dtype)
    return default_storage.save(name, ContentFile(gzip.compress(image.to_bytes(), compresslevel=6)))
