"""Uploads stored on S3 (moto's server over HTTP, ``tests/s3.py``): the file goes to the bucket in
parts read from disk as they are sent (``labseg.storage.store_file``), while the web process checks
the data (``scans.services.register_scan``); a refusal found meanwhile leaves nothing in the bucket,
no multipart upload open, no row. A resumable upload's parts go while the rest still arrives
(``scans/upload_parts.py``); those missing at completion are sent then, from the chunk file."""

from __future__ import annotations

import hashlib
import os
import tracemalloc
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from rest_framework.test import APIClient

from labs.models import Lab, Membership
from labseg.storage import (
    UPLOAD_PART_BYTES,
    abort_multipart,
    open_multipart,
    send_part,
    sent_parts,
    store_file,
)
from scans import upload_parts
from scans.models import Scan, UploadSession
from scans.uploads import chunk_path, sweep_abandoned_uploads
from tests.factories import LabFactory
from tests.s3 import Bucket
from tests.scans.niftis import nifti_bytes, volume
from tests.uploads import put_chunk, resumable_upload, send_chunks

pytestmark = pytest.mark.django_db

FIELDS = {"study": "S3 uploads", "mouse": "M01", "time_point": "8d", "modality": "native_ct"}
CHUNK_BYTES = 4 * 1024 * 1024
#: 18 MB of int16: larger than two upload parts, so the upload runs in parts beside the data check.
SHAPE = (240, 240, 160)


def _open_multipart_uploads(bucket: Bucket) -> list[Any]:
    return list(bucket.client().list_multipart_uploads(Bucket=bucket.name).get("Uploads", []))


def test_store_file_sends_parts_from_disk_without_holding_them(tmp_path: Path, bucket: Bucket) -> None:
    parts = 5
    path = tmp_path / "big.nii"
    with path.open("wb") as target:
        for _ in range(parts):
            target.write(os.urandom(UPLOAD_PART_BYTES))

    warm_up = tmp_path / "warm-up.nii"
    warm_up.write_bytes(b"\0" * 1024)
    store_file(warm_up, "labs/1/scans/abc/warm-up.nii")  # boto3 loads its S3 model once, ~20 MiB

    tracemalloc.start()
    try:
        stored = store_file(path, "labs/1/scans/abc/big.nii")
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    # Storage.save (upload_fileobj) reads each part into memory, AWS_S3_MAX_CONCURRENCY (4) at a time
    # plus those queued: 43 MiB traced for this file. From disk, no part is held whole: what is
    # traced (6-7 MiB) is botocore's 1 MiB reads for each part's CRC32 and its buffers, per thread.
    assert peak < 2 * UPLOAD_PART_BYTES, f"{peak / 2**20:.1f} MiB traced while storing"
    head = bucket.client().head_object(Bucket=bucket.name, Key=stored)
    assert head["ContentLength"] == parts * UPLOAD_PART_BYTES
    assert head["ETag"].strip('"').endswith(f"-{parts}")  # a multipart upload, in 8 MiB parts
    assert head["ContentType"] == "application/octet-stream"  # as Storage.save sets it
    body = bucket.client().get_object(Bucket=bucket.name, Key=stored)["Body"].read()
    assert hashlib.sha256(body).digest() == hashlib.sha256(path.read_bytes()).digest()
    assert _open_multipart_uploads(bucket) == []


def test_store_file_keeps_the_names_storage_save_gives(tmp_path: Path, bucket: Bucket) -> None:
    path = tmp_path / "small.nii.gz"
    path.write_bytes(b"not checked here")

    first = store_file(path, "labs/1/scans/abc/small.nii.gz")
    second = store_file(path, "labs/1/scans/abc/small.nii.gz")

    assert first == "labs/1/scans/abc/small.nii.gz"
    assert second != first and second.startswith("labs/1/scans/abc/small")  # file_overwrite False
    head = bucket.client().head_object(Bucket=bucket.name, Key=first)
    assert head["ContentEncoding"] == "gzip"  # mimetypes' guess for .gz, as Storage.save sets it


def _resumable(client: APIClient, content: bytes, sha256: str, filename: str = "CT_M01_8d.nii") -> Any:
    return resumable_upload(client, content, filename, chunk_bytes=CHUNK_BYTES, sha256=sha256, **FIELDS)


@pytest.fixture
def api(member: Any, settings: Any) -> APIClient:
    settings.LABSEG_SEGMENT_ON_UPLOAD = False
    client = APIClient()
    client.force_authenticate(member)
    return client


def test_a_resumable_upload_is_stored_whole_while_it_is_checked(api: APIClient, bucket: Bucket) -> None:
    content = nifti_bytes(volume(SHAPE), compressed=False)
    assert len(content) > 2 * UPLOAD_PART_BYTES

    done = _resumable(api, content, hashlib.sha256(content).hexdigest())

    assert done.status_code == 201, done.content
    scan = Scan.objects.get(pk=done.json()["id"])
    stored = bucket.client().get_object(Bucket=bucket.name, Key=scan.file.name)["Body"].read()
    assert hashlib.sha256(stored).hexdigest() == scan.sha256 == hashlib.sha256(content).hexdigest()
    assert sorted(bucket.object_names()) == sorted([scan.file.name, scan.thumbnail.name])
    assert _open_multipart_uploads(bucket) == []
    assert not UploadSession.objects.exists()


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("sha256", "sha256 mismatch"),
        ("constant", "every voxel has the same value"),
        ("duplicate-claim", "sha256 mismatch"),
    ],
)
def test_a_refusal_found_while_the_file_is_stored_leaves_nothing_behind(
    api: APIClient, bucket: Bucket, case: str, message: str
) -> None:
    content = nifti_bytes(volume(SHAPE), compressed=False)
    sha256 = hashlib.sha256(content).hexdigest()
    if case == "sha256":
        sha256 = "ab" * 32
    elif case == "constant":
        # Refused by the pass over the data, which runs while the upload does.
        constant = volume(SHAPE)
        constant[...] = 7
        content = nifti_bytes(constant, compressed=False)
        sha256 = hashlib.sha256(content).hexdigest()
    else:
        # The claimed sha256 is a scan's already in the lab, but the file sent is another: it is
        # refused as damaged, not as that scan's duplicate.
        first = nifti_bytes(volume((24, 20, 16), seed=3), compressed=False)
        kept = _resumable(api, first, hashlib.sha256(first).hexdigest(), filename="first.nii")
        assert kept.status_code == 201, kept.content
        sha256 = hashlib.sha256(first).hexdigest()
    names_before = bucket.object_names()

    refused = _resumable(api, content, sha256)

    assert refused.status_code == 400, refused.content
    assert message in refused.json()["detail"]
    assert bucket.object_names() == names_before
    assert _open_multipart_uploads(bucket) == []
    assert Scan.objects.count() == (1 if case == "duplicate-claim" else 0)
    assert not UploadSession.objects.exists()


def _upload_until_complete(client: APIClient, content: bytes, chunk_bytes: int, **opening: Any) -> str:
    return send_chunks(client, content, "CT_M01_8d.nii", chunk_bytes=chunk_bytes, **opening)


def _complete(client: APIClient, upload_id: str, content: bytes, **fields: str) -> Any:
    digest = hashlib.sha256(content).hexdigest()
    body = {"sha256": digest, **FIELDS, **fields}
    return client.post(f"/api/uploads/{upload_id}/complete/", body, format="json")


def _parts_in_bucket(session: UploadSession) -> list[int]:
    """The numbers of the parts of ``session`` the bucket holds, once this process's sends landed."""
    upload_parts._collect(session)
    multipart = upload_parts.multipart_of(session)
    assert multipart is not None
    return sorted(sent_parts(multipart))


@pytest.mark.parametrize("chunk_bytes", [3 * 1024 * 1024, 8 * 1024 * 1024, 11 * 1024 * 1024 + 5])
def test_the_parts_go_to_the_bucket_while_the_rest_arrives(
    api: APIClient, bucket: Bucket, chunk_bytes: int
) -> None:
    content = nifti_bytes(volume(SHAPE), compressed=False)
    parts = -(-len(content) // UPLOAD_PART_BYTES)
    assert parts == 3

    upload_id = _upload_until_complete(api, content, chunk_bytes)

    session = UploadSession.objects.get(pk=upload_id)
    assert session.storage_upload_id and session.stored_name.endswith("/CT_M01_8d.nii")
    # Before completion every part is in the bucket, 8 MiB each whatever the client's chunks were.
    assert _parts_in_bucket(session) == [1, 2, 3]
    assert bucket.object_names() == []

    done = _complete(api, upload_id, content)

    assert done.status_code == 201, done.content
    scan = Scan.objects.get(pk=done.json()["id"])
    assert scan.file.name == session.stored_name
    head = bucket.client().head_object(Bucket=bucket.name, Key=scan.file.name)
    assert head["ETag"].strip('"').endswith(f"-{parts}")
    stored = bucket.client().get_object(Bucket=bucket.name, Key=scan.file.name)["Body"].read()
    assert hashlib.sha256(stored).hexdigest() == scan.sha256
    assert sorted(bucket.object_names()) == sorted([scan.file.name, scan.thumbnail.name])
    assert _open_multipart_uploads(bucket) == []


def test_parts_that_never_arrived_are_sent_at_completion(api: APIClient, bucket: Bucket) -> None:
    content = nifti_bytes(volume(SHAPE), compressed=False)
    upload_id = _upload_until_complete(api, content, CHUNK_BYTES)
    session = UploadSession.objects.get(pk=upload_id)
    assert _parts_in_bucket(session) == [1, 2, 3]
    # As if another web process had taken the chunks and died before sending them: only part 2
    # reached the bucket (parts 1 and 3 are sent, from the chunk file, at completion).
    sent = upload_parts.multipart_of(session)
    assert sent is not None
    abort_multipart(sent)
    reopened = open_multipart(session.stored_name, session.size_bytes)
    assert reopened is not None
    send_part(reopened, 2, chunk_path(session))
    UploadSession.objects.filter(pk=upload_id).update(storage_upload_id=reopened.upload_id)

    done = _complete(api, upload_id, content)

    assert done.status_code == 201, done.content
    scan = Scan.objects.get(pk=done.json()["id"])
    stored = bucket.client().get_object(Bucket=bucket.name, Key=scan.file.name)["Body"].read()
    assert hashlib.sha256(stored).hexdigest() == hashlib.sha256(content).hexdigest()
    assert _open_multipart_uploads(bucket) == []


def test_an_upload_completed_into_another_lab_or_abandoned_leaves_no_parts(
    api: APIClient, bucket: Bucket, member: Any
) -> None:
    content = nifti_bytes(volume(SHAPE), compressed=False)
    first_lab = Lab.objects.get(memberships__user=member)
    other = LabFactory.create(name="Second lab")
    Membership.objects.create(lab=other, user=member, role=Membership.Role.MEMBER)
    upload_id = _upload_until_complete(api, content, CHUNK_BYTES, lab=first_lab.pk)
    assert _open_multipart_uploads(bucket) != []

    # Completed into the other lab: the scan is stored under that lab's folder, the parts sent
    # under the first lab's name are dropped.
    done = _complete(api, upload_id, content, lab=str(other.pk), study="Second lab's study")
    assert done.status_code == 201, done.content
    scan = Scan.objects.get(pk=done.json()["id"])
    assert scan.lab == other and scan.file.name.startswith(f"labs/{other.pk}/")
    assert _open_multipart_uploads(bucket) == []

    # Abandoned half-way: the hourly sweep aborts what it sent.
    names = bucket.object_names()
    half = content[: 2 * UPLOAD_PART_BYTES + 5]
    opened = {"filename": "late.nii", "size_bytes": len(content), "lab": first_lab.pk}
    late = api.post("/api/uploads/", opened, format="json").json()["id"]
    assert put_chunk(api, late, half, 0, len(content)).status_code == 200
    assert _open_multipart_uploads(bucket) != []

    assert sweep_abandoned_uploads(older_than=timedelta(0)).sessions == 1
    assert _open_multipart_uploads(bucket) == []
    assert bucket.object_names() == names
