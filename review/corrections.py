"""Corrections drawn in the viewer: a prediction redrawn by a person, stored as a new annotation
version that records the prediction it started from. The prediction itself is never edited.

The viewer (``frontend/static/frontend/js/viewer.js``) starts from the prediction's label map, or
from the newest correction of it, and uploads the whole drawn label map as NIfTI on the scan's
grid. :func:`save_correction` checks it like any annotation (``services.create_annotation``: same
grid, whole-number labels; a refusal stores nothing), allows only the model's own structures,
measures each structure, and records version, source prediction and volumes on the lineage row
(``AnnotationRevision``). :func:`newest_corrections` is what ``segmentation.corrections`` asks
for everywhere volumes are shown: the newest correction of each prediction that no reviewer
rejected.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import nibabel as nib
import numpy as np
from django.db import transaction
from django.db.models import Max

from inference import structures as canonical
from labseg.storage import local_path
from scans.models import Annotation
from scans.validation import ScanRejected
from segmentation.corrections import Correction
from segmentation.models import Prediction

from .models import AnnotationRevision
from .services import Status, create_annotation, require_member

#: Largest file name kept from the browser's upload.
FILENAME = "correction.nii.gz"


def model_structures(prediction: Prediction) -> dict[str, int]:
    """Canonical name -> id of the structures the prediction's model draws (the drawable labels)."""
    ids = {int(s) for s in prediction.model_version.structures}
    return {s.name: s.id for s in canonical.STRUCTURES if s.id in ids and s.kind != "background"}


def _measure(annotation: Annotation) -> dict[str, list[float]]:
    """Canonical id (as text, JSON keys) -> [voxels, mm^3] of the stored label map."""
    with local_path(annotation.file.name) as path:
        image = cast(nib.Nifti1Image, nib.load(str(path)))
        labels = np.asarray(image.dataobj).astype(np.int64, copy=False)
        voxel_mm3 = float(np.prod(image.header.get_zooms()[:3]))
    values, counts = np.unique(labels, return_counts=True)
    return {
        str(int(v)): [int(n), round(float(n) * voxel_mm3, 4)]
        for v, n in zip(values, counts, strict=True)
        if v
    }


def save_correction(
    *, prediction: Prediction, file: Any, user: Any, original_filename: str = FILENAME
) -> Annotation:
    """Store the label map drawn over ``prediction`` as its next correction version (submitted).

    Refused in plain words (``Refused`` kinds, nothing stored): a user outside the lab (403), a
    file not on the scan's grid or with values that are not the model's structures (400), a file
    identical to one already stored for the scan (409).
    """
    scan = prediction.scan
    require_member(user, scan.lab)
    previous = AnnotationRevision.objects.filter(prediction=prediction, correction=True)
    version = (previous.aggregate(top=Max("version"))["top"] or 0) + 1
    drawable = model_structures(prediction)
    try:
        annotation = create_annotation(
            scan=scan,
            file=file,
            original_filename=original_filename or FILENAME,
            user=user,
            structures=drawable,
            status=Status.SUBMITTED,
            note=f"corrected in the viewer from prediction {prediction.pk} "
            f"({prediction.model_version.label}), version {version}",
        )
    except ScanRejected as refusal:
        if "not in the structure mapping" not in str(refusal):
            raise
        # The file holds labels the model does not draw: say so in the drawing's own terms.
        names = ", ".join(canonical.by_id(i).display_name for i in sorted(drawable.values()))
        raise ScanRejected(
            f"the drawing holds label values that are not structures of {prediction.model_version.label} "
            f"({str(refusal).split(' appear')[0].removeprefix('label values ')}); "
            f"draw only its structures: {names}"
        ) from None
    try:
        volumes = _measure(annotation)
        with transaction.atomic():
            AnnotationRevision.objects.create(
                annotation=annotation,
                prediction=prediction,
                correction=True,
                version=version,
                volumes=volumes,
                created_by=user,
            )
    except BaseException:
        annotation.file.delete(save=False)  # the file first, then its row: nothing half-stored
        annotation.delete()
        raise
    return annotation


def newest_corrections(predictions: Sequence[Prediction]) -> dict[int, Correction]:
    """Prediction id -> its newest correction whose annotation no reviewer rejected."""
    revisions = (
        AnnotationRevision.objects.filter(prediction__in=list(predictions), correction=True)
        .exclude(annotation__status=Status.REJECTED)
        .select_related("annotation")
        .order_by("prediction_id", "-version", "-pk")
    )
    found: dict[int, Correction] = {}
    for revision in revisions:
        if revision.prediction_id is None or revision.prediction_id in found:
            continue
        found[revision.prediction_id] = Correction(
            annotation_id=revision.annotation_id,
            by=revision.annotation.annotator_name,
            version=revision.version,
            volumes={int(k): (int(v[0]), float(v[1])) for k, v in (revision.volumes or {}).items()},
        )
    return found
