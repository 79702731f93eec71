"""The worker's intensity check: a scan in arbitrary units is calibrated to Hounsfield units and
segmented as its HU original; one that cannot be calibrated fails its job with the pipeline's own
plain message, at once and without a retry."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from django.core.files.storage import default_storage

from inference import structures
from scans.models import Scan
from segmentation import services
from segmentation.models import InferenceJob, ModelVersion, Prediction
from segmentation.tasks import segment_scan_task

from .tiny import SPACING_MM, expected_voxels, phantom_volume

pytestmark = pytest.mark.django_db


def _replace_file(scan: Scan, volume: np.ndarray) -> None:
    """Put ``volume`` in place of the scan's stored file (after its upload checks)."""
    affine = np.diag([SPACING_MM, SPACING_MM, SPACING_MM, 1.0])
    nib.save(nib.Nifti1Image(volume, affine), Path(default_storage.path(scan.file.name)))


@pytest.mark.parametrize(
    ("make", "says"),
    [
        # Uniform noise: no air, no soft tissue, nothing to calibrate from.
        (
            lambda rng, shape: rng.uniform(0, 1000, shape),
            (
                "The intensities of this scan are not in Hounsfield units (HU)",
                "shows no clear peak at all",
                "Export the scan in HU",
            ),
        ),
        # Air in HU and its noise, nothing else: a scan of the empty bed.
        (
            lambda rng, shape: rng.normal(-1000.0, 20.0, shape),
            (
                "This scan holds no animal: every voxel reads as air",
                "Check that the animal lies in the field of view",
            ),
        ),
    ],
    ids=["no peaks", "air alone"],
)
def test_a_scan_that_cannot_be_read_as_hu_fails_with_the_plain_reason(
    models: dict[str, ModelVersion],
    upload_scan: Callable[..., Scan],
    make: Callable[[np.random.Generator, tuple[int, ...]], np.ndarray],
    says: tuple[str, ...],
) -> None:
    scan = upload_scan()
    _replace_file(scan, make(np.random.default_rng(0), tuple(scan.shape)).astype(np.float32))  # after upload
    [job] = services.request_segmentation(scan=scan, model_versions=[models["organs"]])

    result = segment_scan_task.apply(args=[job.pk]).get()

    job.refresh_from_db()
    assert result == "failed" and job.state == InferenceJob.State.FAILED
    assert job.attempts == 1
    assert job.error.startswith(says[0])
    assert all(words in job.error for words in says[1:])
    assert "IntensityCalibrationError" not in job.error and "Segmentation failed during" not in job.error
    assert not Prediction.objects.exists()


def test_an_export_in_arbitrary_units_is_calibrated_and_finds_the_same_lesions(
    models: dict[str, ModelVersion], upload_scan: Callable[..., Scan]
) -> None:
    scan = upload_scan()
    hu = phantom_volume(tuple(scan.shape)) + np.random.default_rng(0).normal(0, 1, tuple(scan.shape))
    _replace_file(scan, ((hu + 1024) * 0.5).astype(np.float32))  # air at 12, soft tissue at 532
    [job] = services.request_segmentation(scan=scan, model_versions=[models["tumor"]])

    finished = services.run_job(job.pk, worker_host="worker-a")

    assert finished is not None and finished.state == InferenceJob.State.SUCCEEDED, (
        finished and finished.error
    )
    intensity = finished.prediction.manifest["intensity"]
    assert (intensity["units"], intensity["mode"]) == ("calibrated", "auto")
    assert intensity["slope"] == pytest.approx(2.0, rel=0.03)
    found = {
        structures.by_id(lesion.structure_id).name: lesion.voxels
        for lesion in finished.prediction.lesions.all()
    }
    assert found == expected_voxels()
