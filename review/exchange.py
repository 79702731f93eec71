"""Label maps to and from desktop tools (3D Slicer, ITK-SNAP), for predictions and annotations.

Downloads: any prediction's or annotation's label map as a Slicer ``.seg.nrrd`` with labseg's
canonical names, colours and values (annotations are turned to canonical ids through their
``structures`` table), and the canonical table as an ITK-SNAP label description file beside the
NIfTI downloads. Uploads: a ``.seg.nrrd`` edited in Slicer is turned into a NIfTI label map with
canonical ids before the annotation lifecycle checks and stores it, like any other label map (a
new annotation, or a new version through ``replace``). The formats are read and written by
``inference.pipeline.exchange``.
"""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from django.conf import settings
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db.models.fields.files import FieldFile
from django.http import HttpResponse

from inference.pipeline.exchange import LabelMapFormatError, itksnap_label_file, read_seg_nrrd, seg_nrrd_bytes
from labseg.downloads import attach
from scans.validation import ScanRejected

from .files import label_values, load_label_map

SEG_NRRD = ".seg.nrrd"


def is_seg_nrrd(filename: str) -> bool:
    return filename.lower().endswith(SEG_NRRD)


def nifti_upload_from_seg_nrrd(upload: Any, filename: str) -> tuple[SimpleUploadedFile, str]:
    """A ``.seg.nrrd`` upload as a gzipped NIfTI upload (canonical ids) and its new file name."""
    size = getattr(upload, "size", None) or 0
    if size > settings.LABSEG_MAX_UPLOAD_BYTES:
        raise ScanRejected("the segmentation is larger than the upload limit", status=413)
    upload.seek(0)
    try:
        labels, affine = read_seg_nrrd(upload.read())
    except LabelMapFormatError as error:
        raise ScanRejected(f"{filename}: {error}") from None
    image = nib.Nifti1Image(labels, affine)
    image.header.set_data_dtype(np.uint8)
    name = filename[: -len(SEG_NRRD)] + ".nii.gz"
    return SimpleUploadedFile(name, gzip.compress(image.to_bytes(), compresslevel=6, mtime=0)), name


def canonical_labels(field: FieldFile, structures: dict[str, int] | None) -> tuple[np.ndarray, np.ndarray]:
    """A stored label map with canonical ids (an annotation's own values mapped through its table)."""
    stored = load_label_map(field)
    canonical = np.zeros(stored.data.shape, dtype=np.uint8)
    for structure_id, value in label_values(structures, stored.data).items():
        canonical[stored.data == value] = structure_id
    return canonical, np.asarray(stored.affine)


def seg_nrrd_response(field: FieldFile, structures: dict[str, int] | None, filename: str) -> HttpResponse:
    labels, affine = canonical_labels(field, structures)
    response = HttpResponse(seg_nrrd_bytes(labels, affine), content_type="application/octet-stream")
    return attach(response, Path(filename).name)


def itksnap_response() -> HttpResponse:
    response = HttpResponse(itksnap_label_file(), content_type="text/plain; charset=utf-8")
    return attach(response, "labseg_labels.txt")
