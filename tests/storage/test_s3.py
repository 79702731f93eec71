"""Object storage for real: django-storages and boto3 against an S3 server over HTTP (moto's server,
``tests/s3.py``), PostgreSQL, a private Redis and real ``celery worker`` processes, with no local
media folder at all (MEDIA_ROOT lies under a plain file, see ``conftest.py``).

The path of a scan: a plain and a resumable upload (parts on the web host's temp folder, the file
streamed to the bucket), segmentation by a worker that reads the scan and writes its maps through
storage, downloads as 302s to presigned URLs fetched with a real HTTP client (sha256 compared), the
viewer's layers, previews and QC picture made from the bucket, and a purge that leaves no object.
"""

from __future__ import annotations

import gzip
import hashlib
import shutil
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import nibabel as nib
import numpy as np
import pytest
from django.http import FileResponse
from django.test import Client
from rest_framework.test import APIClient

from scans.deletion import purge_scan
from scans.models import Scan, UploadSession
from scans.services import register_scan
from segmentation import services
from segmentation.models import InferenceJob, ModelVersion, Prediction
from tests.s3 import Bucket
from tests.segmentation.tiny import write_phantom
from tests.uploads import resumable_upload
from tests.workers import PrivateRedis, Workers, private_broker, started_workers, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

CHUNK_BYTES = 64 * 1024


@pytest.fixture
def broker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[PrivateRedis]:
    if shutil.which("redis-server") is None:
        pytest.fail("the object-storage tests need redis-server on PATH")
    yield from private_broker(tmp_path, monkeypatch)


@pytest.fixture
def workers(tmp_path: Path, media_root: Path, broker: PrivateRedis) -> Iterator[Workers]:
    yield from started_workers(tmp_path, media_root, broker)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _resumable_upload(client: APIClient, path: Path, **fields: str) -> Any:
    return resumable_upload(client, path.read_bytes(), path.name, chunk_bytes=CHUNK_BYTES, **fields)


def _follow_presigned(response: Any, bucket: Bucket) -> tuple[bytes, dict[str, str]]:
    """Fetch a 302's presigned URL from the S3 server with a real HTTP client: body and headers."""
    assert response.status_code == 302, getattr(response, "content", response)
    location = response["Location"]
    assert location.startswith(f"{bucket.endpoint_url}/{bucket.name}/"), location
    assert "X-Amz-Signature=" in urlparse(location).query
    assert response["Cache-Control"] == "private, no-store"
    with urllib.request.urlopen(location, timeout=30) as answer:
        return answer.read(), {k.lower(): v for k, v in answer.headers.items()}


def _nifti(body: bytes) -> nib.Nifti1Image:
    return nib.Nifti1Image.from_bytes(gzip.decompress(body) if body[:2] == b"\x1f\x8b" else body)


def _streamed(response: Any) -> bytes:
    assert response.status_code == 200, response.content
    assert isinstance(response, FileResponse), type(response).__name__
    return bytes(response.getvalue())


def test_upload_segment_download_view_and_purge_through_s3_without_a_media_folder(
    models: dict[str, ModelVersion],
    bucket: Bucket,
    workers: Workers,
    member: Any,
    media_root: Path,
    tmp_path: Path,
    settings: Any,
) -> None:
    settings.LABSEG_SEGMENT_ON_UPLOAD = True
    settings.LABSEG_PREVIEW_MAX_VOXELS = 20_000  # the phantom (76,800 voxels) opens on a preview
    client = APIClient()
    client.force_authenticate(member)
    workers.start("w1", env={**bucket.env, "LABSEG_PREVIEW_MAX_VOXELS": "20000"})
    plain_path = write_phantom(tmp_path / "CT_M07_0h.nii.gz", seed=7)
    resumable_path = write_phantom(tmp_path / "CT_M08_0h.nii.gz", seed=8)

    with plain_path.open("rb") as handle:
        plain = client.post(
            "/api/scans/",
            {"file": handle, "study": "S3 study", "mouse": "M07", "time_point": "0h"},
            format="multipart",
        )
    resumable = _resumable_upload(client, resumable_path, study="S3 study", mouse="M08", time_point="0h")
    assert plain.status_code == 201, plain.content
    assert resumable.status_code == 201, resumable.content
    scans = {
        path: Scan.objects.get(pk=answer.json()["id"])
        for path, answer in ((plain_path, plain), (resumable_path, resumable))
    }
    assert not UploadSession.objects.exists()
    assert not any(Path(settings.LABSEG_UPLOAD_TMP_DIR).rglob("*.*")), "upload parts were left behind"
    for path, scan in scans.items():
        stored = bucket.client().get_object(Bucket=bucket.name, Key=scan.file.name)["Body"].read()
        assert _sha256(stored) == _sha256(path.read_bytes()) == scan.sha256

    jobs = InferenceJob.objects.filter(scan__in=scans.values())
    assert jobs.count() == 4  # two default models per scan, queued on upload
    wait_for(
        lambda: set(jobs.values_list("state", flat=True)) <= {"succeeded", "failed"},
        timeout_s=120,
        what="the four segmentations",
        workers=workers,
    )
    for job in jobs:
        assert job.state == "succeeded", f"{job.error}\n{workers.logs()}"
        assert job.worker_host.startswith("w1@")
    keys = bucket.object_names()
    for scan in scans.values():
        for prediction in Prediction.objects.filter(scan=scan):
            assert prediction.labels.name in keys and prediction.uncertainty.name in keys

    # Downloads: 302 to a presigned URL, fetched from the S3 server with the file name set.
    for path, scan in scans.items():
        body, headers = _follow_presigned(client.get(f"/api/scans/{scan.pk}/file"), bucket)
        assert _sha256(body) == _sha256(path.read_bytes())
        assert headers["content-disposition"] == f'attachment; filename="{path.name}"'
        assert headers["content-type"] == "application/gzip"
    scan = scans[resumable_path]
    prediction = Prediction.objects.get(scan=scan, model_version=models["organs"])
    labels_body, headers = _follow_presigned(
        client.get(f"/api/predictions/{prediction.pk}/labels.nii.gz"), bucket
    )
    labels = _nifti(labels_body)
    assert labels.shape == tuple(scan.shape[:3])
    assert set(np.unique(np.asarray(labels.dataobj))) >= {0}
    assert _sha256(labels_body) == _sha256(prediction.labels.read())
    assert "tiny-organs" in headers["content-disposition"]

    # The viewer: config, CT and label previews made from the bucket, full resolution, QC picture.
    browser = Client()
    browser.force_login(member)
    config = browser.get(f"/scans/{scan.pk}/viewer.json")
    assert config.status_code == 200, config.content
    assert config.json()["factor"] == 2
    ct_preview = _nifti(_streamed(browser.get(f"/scans/{scan.pk}/layers/ct.nii.gz")))
    assert ct_preview.shape == tuple(s // 2 for s in scan.shape[:3])
    label_preview = _nifti(_streamed(browser.get(f"/scans/{scan.pk}/layers/pred-{prediction.pk}.nii.gz")))
    assert label_preview.shape == ct_preview.shape
    full = _nifti(_streamed(browser.get(f"/scans/{scan.pk}/layers/pred-{prediction.pk}.nii.gz?level=full")))
    assert np.array_equal(np.asarray(full.dataobj), np.asarray(labels.dataobj))
    region = browser.get(f"/scans/{scan.pk}/layers/ct.nii.gz?region=0,0,0")
    assert _nifti(_streamed(region)).shape[0] > 0 and region["X-Labseg-Region"]
    download = browser.get(f"/scans/{scan.pk}/layers/pred-{prediction.pk}.nii.gz?download=1")
    assert _follow_presigned(download, bucket)[0] == labels_body
    picture = browser.get(f"/scans/{scan.pk}/qc.png")
    assert picture.status_code == 200 and picture.getvalue()[:8] == b"\x89PNG\r\n\x1a\n"
    assert any(key.startswith(f"previews/scan_{scan.pk}/") for key in bucket.object_names())

    # Nothing was ever written to a local media folder; a purge leaves no object in the bucket.
    assert not media_root.exists() and media_root.parent.is_file()
    for each in scans.values():
        purge_scan(each)
    assert bucket.object_names() == []
    assert not Scan.objects.exists() and not Prediction.objects.exists()


def test_on_s3_without_presigned_downloads_the_file_is_streamed(
    bucket: Bucket, member: Any, tmp_path: Path, settings: Any
) -> None:
    settings.LABSEG_SEGMENT_ON_UPLOAD = False
    settings.LABSEG_PRESIGNED_DOWNLOADS = False
    client = APIClient()
    client.force_authenticate(member)
    path = write_phantom(tmp_path / "CT_M09_0h.nii.gz", seed=9)
    uploaded = _resumable_upload(client, path, study="S3 study", mouse="M09", time_point="0h")
    assert uploaded.status_code == 201, uploaded.content

    response = client.get(f"/api/scans/{uploaded.json()['id']}/file")

    assert _sha256(_streamed(response)) == _sha256(path.read_bytes())
    assert response["Content-Disposition"] == 'attachment; filename="CT_M09_0h.nii.gz"'
    assert len(bucket.object_names()) == 2  # the scan and its thumbnail


def test_a_scan_missing_from_the_bucket_fails_its_job_in_plain_words(
    models: dict[str, ModelVersion],
    bucket: Bucket,
    broker: PrivateRedis,
    member: Any,
    tmp_path: Path,
    settings: Any,
) -> None:
    settings.LABSEG_SEGMENT_ON_UPLOAD = False
    path = write_phantom(tmp_path / "CT_M10_0h.nii.gz", seed=10)
    scan = register_scan(
        lab=member.memberships.get().lab,
        uploaded_file_path_or_file=path,
        original_filename=path.name,
        study_name="S3 study",
        mouse_identifier="M10",
        time_point_label="0h",
        user=member,
    )
    bucket.client().delete_object(Bucket=bucket.name, Key=scan.file.name)
    [job] = services.request_segmentation(scan=scan, model_versions=[models["organs"]])

    finished = services.run_job(job.pk, worker_host="worker-a")

    assert finished is not None and finished.state == "failed"
    assert finished.error == "The scan's file is missing from storage. Upload the scan again."
    assert not Prediction.objects.filter(scan=scan).exists()
    assert not [name for name in bucket.object_names() if "/predictions/" in name]
