"""A scan whose values are not Hounsfield units and cannot be calibrated fails its job with the
pipeline's own plain message, at once and without a retry."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from django.core.files.storage import default_storage

from scans.models import Scan
from segmentation import services
from segmentation.models import InferenceJob, ModelVersion, Prediction
from segmentation.tasks import segment_scan_task

from .tiny import SPACING_MM

pytestmark = pytest.mark.django_db


def test_a_scan_without_air_and_soft_tissue_peaks_fails_with_the_plain_reason(
    models: dict[str, ModelVersion], upload_scan: Callable[..., Scan]
) -> None:
    scan = upload_scan()
    # Uniform noise: no air, no soft tissue, nothing to calibrate from (replaced after upload).
    noise = np.random.default_rng(0).uniform(0, 1000, tuple(scan.shape)).astype(np.float32)
    affine = np.diag([SPACING_MM, SPACING_MM, SPACING_MM, 1.0])
    nib.save(nib.Nifti1Image(noise, affine), Path(default_storage.path(scan.file.name)))
    [job] = services.request_segmentation(scan=scan, model_versions=[models["organs"]])

    result = segment_scan_task.apply(args=[job.pk]).get()

    job.refresh_from_db()
    assert result == "failed" and job.state == InferenceJob.State.FAILED
    assert job.attempts == 1
    assert job.error.startswith("The intensities of this scan are not in Hounsfield units (HU)")
    assert "shows no clear peak at all" in job.error and "Export the scan in HU" in job.error
    assert "IntensityCalibrationError" not in job.error and "Segmentation failed during" not in job.error
    assert not Prediction.objects.exists()
