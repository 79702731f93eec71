"""Running a job: outputs stored first, rows last; permanent failures explained, transient ones retried."""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
from django.core.files.storage import FileSystemStorage, default_storage
from django.db import connection
from django.utils import timezone

from inference import structures
from scans.models import Scan
from segmentation import services
from segmentation.models import InferenceJob, ModelVersion, Prediction
from segmentation.tasks import segment_scan_task
from tests.nifti import load_nifti

from .tiny import expected_voxels

pytestmark = pytest.mark.django_db


def _job(scan: Scan, model: ModelVersion) -> InferenceJob:
    [job] = services.request_segmentation(scan=scan, model_versions=[model])
    return job


def _stored_labels(prediction: Prediction) -> nib.Nifti1Image:
    return load_nifti(default_storage.path(prediction.labels.name))


def test_an_organ_job_records_a_prediction_whose_volumes_match_its_label_file(
    models: dict[str, ModelVersion], upload_scan: Callable[..., Scan]
) -> None:
    scan = upload_scan()
    job = _job(scan, models["organs"])

    finished = services.run_job(job.pk, worker_host="worker-a")

    assert finished is not None and finished.state == InferenceJob.State.SUCCEEDED, (
        finished and finished.error
    )
    assert (finished.progress, finished.attempts, finished.worker_host) == (100, 1, "worker-a")
    assert finished.stage_seconds["download"] >= 0 and len(finished.stage_seconds) > 2
    prediction = Prediction.objects.get(job=finished)
    labels = _stored_labels(prediction)
    assert labels.shape == tuple(scan.shape)
    np.testing.assert_allclose(labels.affine, np.asarray(scan.affine), atol=1e-5)
    data = np.asarray(labels.dataobj)
    assert data.dtype == np.uint8
    voxel_mm3 = float(np.prod(scan.spacing_mm))
    found = {v.name: v for v in prediction.volumes.all()}
    assert set(found) == {"liver", "heart"}
    for volume in found.values():
        assert volume.voxels == int((data == volume.structure_id).sum()) > 0
        assert volume.volume_mm3 == pytest.approx(volume.voxels * voxel_mm3)
        assert volume.volume_low_mm3 <= volume.volume_mm3 <= volume.volume_high_mm3
    assert default_storage.exists(prediction.uncertainty.name)
    assert prediction.manifest["server"]["models_run"] == ["tiny-organs@1.0.0"]
    assert models["organs"].sha256 in json.dumps(prediction.manifest), "the manifest names the exact weights"


def test_a_lesion_job_allocates_each_lesion_to_the_organ_that_holds_it(
    models: dict[str, ModelVersion], upload_scan: Callable[..., Scan]
) -> None:
    scan = upload_scan()
    job = _job(scan, models["tumor"])

    finished = services.run_job(job.pk, worker_host="worker-a")

    assert finished is not None and finished.state == InferenceJob.State.SUCCEEDED, (
        finished and finished.error
    )
    prediction = finished.prediction
    lesions = {structures.by_id(lesion.structure_id).name: lesion for lesion in prediction.lesions.all()}
    assert set(lesions) == {"tumor", "metastasis"}
    assert (lesions["metastasis"].organ_name, lesions["metastasis"].allocation) == ("liver", "centroid")
    assert lesions["tumor"].organ_id is None and lesions["tumor"].allocation == "none"
    expected = expected_voxels()
    assert lesions["metastasis"].voxels == expected["metastasis"]
    assert lesions["tumor"].voxels == expected["tumor"]
    assert prediction.metastasis_counts["liver"] == 1
    # Organs the organ map does not hold (the tiny models draw a liver and a heart) are not
    # assessed: None, never 0.
    assessed = {k: v for k, v in prediction.metastasis_counts.items() if v is not None}
    assert sum(assessed.values()) == 1 and "liver" in assessed and "heart" in assessed
    assert prediction.metastasis_counts["kidney_left"] is None
    # Organ volumes belong to the organ model's own prediction, not to the lesion model's.
    assert {v.name for v in prediction.volumes.all()} == {"tumor", "metastasis"}
    assert prediction.manifest["server"]["models_run"] == ["tiny-organs@1.0.0", "tiny-lesions@1.0.0"]


def test_running_or_requesting_a_finished_job_again_makes_no_second_prediction(
    models: dict[str, ModelVersion], upload_scan: Callable[..., Scan], django_capture_on_commit_callbacks: Any
) -> None:
    scan = upload_scan()
    job = _job(scan, models["organs"])
    services.run_job(job.pk, worker_host="worker-a")

    again = services.run_job(job.pk, worker_host="worker-b")
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        [requested] = services.request_segmentation(scan=scan, model_versions=[models["organs"]])

    assert again is None
    assert requested.pk == job.pk and requested.state == InferenceJob.State.SUCCEEDED
    assert callbacks == []
    assert Prediction.objects.filter(scan=scan).count() == 1


def test_an_unreadable_scan_fails_with_a_message_and_no_retry(
    models: dict[str, ModelVersion], upload_scan: Callable[..., Scan]
) -> None:
    scan = upload_scan()
    Path(default_storage.path(scan.file.name)).write_bytes(b"this is not a NIfTI file at all" * 40)
    job = _job(scan, models["organs"])

    result = segment_scan_task.apply(args=[job.pk]).get()

    job.refresh_from_db()
    assert result == "failed" and job.state == InferenceJob.State.FAILED
    assert job.attempts == 1
    assert "could not be read" in job.error
    assert not Prediction.objects.exists()


def test_changed_model_weights_fail_the_job_with_what_to_do(
    tmp_path: Path, settings: Any, tiny_models_root: Path, upload_scan: Callable[..., Scan]
) -> None:
    root = tmp_path / "models"
    shutil.copytree(tiny_models_root, root)
    settings.LABSEG_MODELS_DIR = root
    services.sync_models(root=root)
    onnx_path = root / "tiny-organs" / "1.0.0" / "model.onnx"
    onnx_path.write_bytes(onnx_path.read_bytes() + b"tampered")
    job = _job(upload_scan(), ModelVersion.objects.get(name="tiny-organs"))

    finished = services.run_job(job.pk, worker_host="worker-a")

    assert finished is not None and finished.state == InferenceJob.State.FAILED
    assert "tiny-organs@1.0.0 could not be loaded" in finished.error
    assert "sync_models" in finished.error


class FlakyStorage(FileSystemStorage):
    """Local storage whose reads fail while ``failures_left`` > 0, like an unreachable S3 bucket."""

    failures_left = 0

    def open(self, name: str, mode: str = "rb") -> Any:
        if FlakyStorage.failures_left > 0:
            FlakyStorage.failures_left -= 1
            raise ConnectionResetError("connection reset by the storage server")
        return super().open(name, mode)


@pytest.fixture
def flaky_storage(settings: Any, media_root: Path) -> type[FlakyStorage]:
    settings.STORAGES = {
        **settings.STORAGES,
        "default": {
            "BACKEND": f"{__name__}.FlakyStorage",
            "OPTIONS": {"location": str(media_root), "base_url": "/media/"},
        },
    }
    return FlakyStorage


def test_a_storage_blip_is_retried_by_the_task_and_the_job_succeeds(
    models: dict[str, ModelVersion], upload_scan: Callable[..., Scan], flaky_storage: type[FlakyStorage]
) -> None:
    job = _job(upload_scan(), models["organs"])
    flaky_storage.failures_left = 1

    result = segment_scan_task.apply(args=[job.pk]).get()

    job.refresh_from_db()
    assert result == "succeeded" and job.state == InferenceJob.State.SUCCEEDED
    assert job.attempts == 2
    assert Prediction.objects.filter(job=job).count() == 1


def test_a_storage_outage_that_lasts_fails_the_job_after_the_last_attempt(
    models: dict[str, ModelVersion], upload_scan: Callable[..., Scan], flaky_storage: type[FlakyStorage]
) -> None:
    job = _job(upload_scan(), models["organs"])
    flaky_storage.failures_left = 1000

    with pytest.raises(services.TransientJobError):
        services.run_job(job.pk, worker_host="worker-a")
    job.refresh_from_db()
    assert job.state == InferenceJob.State.QUEUED and "will be retried" in job.error

    result = segment_scan_task.apply(args=[job.pk]).get()

    job.refresh_from_db()
    assert result == "failed" and job.state == InferenceJob.State.FAILED
    assert job.attempts == services.MAX_ATTEMPTS
    assert "storage and the database are reachable" in job.error
    flaky_storage.failures_left = 0


def test_a_worker_presumed_lost_cannot_overwrite_the_run_that_replaced_it(
    models: dict[str, ModelVersion], upload_scan: Callable[..., Scan]
) -> None:
    job = _job(upload_scan(), models["organs"])
    slow = services.claim_job(job.pk, worker_host="slow-worker")
    assert slow is not None
    InferenceJob.objects.filter(pk=job.pk).update(heartbeat_at=timezone.now() - timedelta(seconds=600))
    services.reconcile_jobs(timeout_s=60, enqueue=lambda *, job_id: True)

    finished = services.run_job(job.pk, worker_host="fresh-worker")

    assert finished is not None and finished.state == InferenceJob.State.SUCCEEDED
    assert not services._Heartbeat(slow).beat(), "the old claim must no longer touch the row"
    assert Prediction.objects.filter(job=job).count() == 1


def test_deleting_a_scan_deletes_its_jobs_and_predictions(
    models: dict[str, ModelVersion], upload_scan: Callable[..., Scan]
) -> None:
    scan = upload_scan()
    job = _job(scan, models["tumor"])
    services.run_job(job.pk, worker_host="worker-a")

    scan.delete()

    assert not InferenceJob.objects.exists() and not Prediction.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_cancelling_a_running_job_stops_it_and_leaves_no_prediction_or_files(
    models: dict[str, ModelVersion], upload_scan: Callable[..., Scan], member: Any, media_root: Path
) -> None:
    # Created directly: outside a test transaction, a request would also publish to the broker.
    job = InferenceJob.objects.create(scan=upload_scan(shape=(160, 128, 128)), model_version=models["organs"])
    ended: list[InferenceJob | None] = []

    def worker() -> None:
        try:
            ended.append(services.run_job(job.pk, worker_host="worker-a"))
        finally:
            connection.close()

    thread = threading.Thread(target=worker)
    thread.start()
    deadline = time.monotonic() + 30
    while not InferenceJob.objects.filter(pk=job.pk, state="running").exists():
        assert time.monotonic() < deadline, "the job never started"
        time.sleep(0.02)
    assert services.cancel_job(job=job, user=member)
    thread.join(timeout=60)

    assert ended and ended[0] is not None and ended[0].state == InferenceJob.State.CANCELLED
    assert not Prediction.objects.exists()
    assert not list((media_root / "labs").glob("*/predictions/**/*.nii.gz"))
