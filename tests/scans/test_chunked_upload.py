"""Resumable chunked uploads, including a resume after a chunk sent at the wrong offset."""

from __future__ import annotations

import hashlib

import pytest

from scans import uploads
from scans.models import Scan, UploadSession
from tests.uploads import send_chunks

from .niftis import iter_files, nifti_bytes, volume


def _put(client, upload_id: str, content: bytes, start: int, total: int):  # type: ignore[no-untyped-def]
    end = start + len(content) - 1
    return client.put(
        f"/api/uploads/{upload_id}/",
        content,
        content_type="application/octet-stream",
        HTTP_CONTENT_RANGE=f"bytes {start}-{end}/{total}",
    )


FIELDS = {"study": "Chunked", "mouse": "M05", "time_point": "24h", "modality": "contrast_ct"}


def test_a_chunked_upload_resumes_after_a_wrong_offset_and_completes(client_a, media_root):
    content = nifti_bytes(volume(), compressed=False)
    total = len(content)
    created = client_a.post(
        "/api/uploads/", {"filename": "CT_M05_24h.nii", "size_bytes": total}, format="json"
    )
    assert created.status_code == 201
    upload_id = created.json()["id"]
    assert created.json()["offset"] == 0

    first = _put(client_a, upload_id, content[:5000], 0, total)
    skipped = _put(client_a, upload_id, content[9000:], 9000, total)
    resume_at = client_a.get(f"/api/uploads/{upload_id}/").json()["offset"]
    rest = _put(client_a, upload_id, content[resume_at:], resume_at, total)
    done = client_a.post(
        f"/api/uploads/{upload_id}/complete/",
        {"sha256": hashlib.sha256(content).hexdigest(), **FIELDS},
        format="json",
    )

    assert first.json()["offset"] == 5000
    assert skipped.status_code == 409
    assert skipped.json()["offset"] == 5000
    assert resume_at == 5000
    assert rest.json()["offset"] == total
    assert done.status_code == 201, done.json()
    scan = Scan.objects.get(pk=done.json()["id"])
    assert (scan.modality, scan.time_point.offset_hours, scan.size_bytes) == ("contrast_ct", 24.0, total)
    assert not UploadSession.objects.exists()
    assert not [name for name in iter_files(media_root) if name.startswith("tmp/")]


def test_a_checksum_mismatch_is_refused_and_the_chunks_are_removed(client_a, media_root):
    content = nifti_bytes(volume())
    upload_id = client_a.post(
        "/api/uploads/", {"filename": "a.nii.gz", "size_bytes": len(content)}, format="json"
    ).json()["id"]
    _put(client_a, upload_id, content, 0, len(content))

    done = client_a.post(
        f"/api/uploads/{upload_id}/complete/", {"sha256": "ab" * 32, **FIELDS}, format="json"
    )

    assert done.status_code == 400
    assert "sha256 mismatch" in done.json()["detail"]
    assert not UploadSession.objects.exists()
    assert list(iter_files(media_root)) == []


def test_a_bad_file_sent_in_chunks_is_refused_and_the_chunks_are_removed(client_a, media_root):
    content = nifti_bytes(volume()[:, :, 0])
    upload_id = client_a.post(
        "/api/uploads/", {"filename": "a.nii.gz", "size_bytes": len(content)}, format="json"
    ).json()["id"]
    _put(client_a, upload_id, content, 0, len(content))

    done = client_a.post(
        f"/api/uploads/{upload_id}/complete/",
        {"sha256": hashlib.sha256(content).hexdigest(), **FIELDS},
        format="json",
    )

    assert done.status_code == 400
    assert "is 2D" in done.json()["detail"]
    assert not UploadSession.objects.exists()
    assert list(iter_files(media_root)) == []


def test_completing_too_early_keeps_the_upload_for_a_resume(client_a):
    upload_id = client_a.post(
        "/api/uploads/", {"filename": "a.nii.gz", "size_bytes": 100}, format="json"
    ).json()["id"]
    _put(client_a, upload_id, b"x" * 40, 0, 100)

    done = client_a.post(
        f"/api/uploads/{upload_id}/complete/", {"sha256": "ab" * 32, **FIELDS}, format="json"
    )

    assert done.status_code == 400
    assert "40 of 100 bytes received" in done.json()["detail"]
    assert client_a.get(f"/api/uploads/{upload_id}/").json() == {"offset": 40, "size_bytes": 100}


def test_a_chunk_without_content_range_is_refused(client_a):
    upload_id = client_a.post(
        "/api/uploads/", {"filename": "a.nii.gz", "size_bytes": 100}, format="json"
    ).json()["id"]

    response = client_a.put(f"/api/uploads/{upload_id}/", b"x" * 10, content_type="application/octet-stream")

    assert response.status_code == 400
    assert "Content-Range" in response.json()["detail"]


def test_an_upload_over_the_limit_is_refused_before_any_byte(client_a, settings):
    settings.LABSEG_MAX_UPLOAD_BYTES = 1000

    response = client_a.post("/api/uploads/", {"filename": "a.nii.gz", "size_bytes": 5000}, format="json")

    assert response.status_code == 413


@pytest.mark.parametrize("hashed_on_arrival", [True, False])
def test_the_sha256_is_checked_whether_or_not_this_process_saw_every_chunk(client_a, hashed_on_arrival):
    content = nifti_bytes(volume(), compressed=False)
    total = len(content)
    half = total // 2
    digest = hashlib.sha256(content).hexdigest()
    for claimed, status in (("ab" * 32, 400), (digest, 201)):
        upload_id = client_a.post(
            "/api/uploads/", {"filename": "CT_M05_24h.nii", "size_bytes": total}, format="json"
        ).json()["id"]
        assert _put(client_a, upload_id, content[:half], 0, total).status_code == 200
        if not hashed_on_arrival:
            uploads._hashes.clear()  # as if another web process had taken the first chunk
        assert _put(client_a, upload_id, content[half:], half, total).status_code == 200
        whole = uploads._hashes.get(upload_id)
        assert (whole is not None and whole[1] == total) is hashed_on_arrival

        done = client_a.post(
            f"/api/uploads/{upload_id}/complete/", {"sha256": claimed, **FIELDS}, format="json"
        )

        assert done.status_code == status, done.json()
        if status == 400:
            assert "sha256 mismatch" in done.json()["detail"]
            assert not Scan.objects.exists()
        else:
            assert Scan.objects.get().sha256 == digest
        assert upload_id not in uploads._hashes
    assert not UploadSession.objects.exists()


def test_an_upload_that_is_gone_is_refused_in_words(client_a):
    content = nifti_bytes(volume(), compressed=False)
    upload_id = send_chunks(client_a, content, "CT_M05_24h.nii", chunk_bytes=len(content))
    refused = client_a.post(
        f"/api/uploads/{upload_id}/complete/", {"sha256": "ab" * 32, **FIELDS}, format="json"
    )
    assert refused.status_code == 400

    for answer in (
        client_a.get(f"/api/uploads/{upload_id}/"),
        _put(client_a, upload_id, content, 0, len(content)),
        client_a.post(f"/api/uploads/{upload_id}/complete/", {"sha256": "ab" * 32, **FIELDS}, format="json"),
    ):
        assert answer.status_code == 404
        assert "no upload in progress with this id" in answer.json()["detail"]
