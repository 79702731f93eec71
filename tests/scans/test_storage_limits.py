"""Storage limits: only lab members open uploads; the per-upload size limit and the per-lab quota
(``scans/quota.py``), checked when an upload is opened, as its chunks arrive and when it is stored."""

from __future__ import annotations

import hashlib

from rest_framework.test import APIClient

from labs.models import Membership
from scans.models import Scan, UploadSession
from tests.factories import LabFactory, UserFactory, member_of

from .conftest import upload_scan
from .niftis import iter_files, nifti_bytes, volume


def _open(client: APIClient, size: int, **extra: str):  # type: ignore[no-untyped-def]
    return client.post(
        "/api/uploads/", {"filename": "CT_M01_0h.nii", "size_bytes": size, **extra}, format="json"
    )


def _put(client: APIClient, upload_id: str, content: bytes, start: int, total: int):  # type: ignore[no-untyped-def]
    return client.put(
        f"/api/uploads/{upload_id}/",
        content,
        content_type="application/octet-stream",
        HTTP_CONTENT_RANGE=f"bytes {start}-{start + len(content) - 1}/{total}",
    )


def test_a_user_in_no_lab_can_open_no_upload_and_send_no_scan(db, media_root, scan_bytes, snapshot):
    loner = APIClient()
    loner.force_login(UserFactory.create(username="loner"))
    before = snapshot()

    opened = _open(loner, 4 * 1024**3)
    sent = upload_scan(loner, scan_bytes)

    assert opened.status_code == 403 and sent.status_code == 403
    assert "not a member of any lab" in opened.json()["detail"]
    assert "not a member of any lab" in sent.json()["detail"]
    before.assert_unchanged()
    assert not UploadSession.objects.exists()


def test_an_upload_for_another_lab_is_refused(client_a, lab_b):
    response = _open(client_a, 1000, lab=str(lab_b.pk))

    assert response.status_code == 404
    assert not UploadSession.objects.exists()


def test_the_size_limit_is_checked_on_opening_and_as_chunks_arrive(client_a, settings):
    settings.LABSEG_MAX_UPLOAD_BYTES = 2_000_000

    too_big = _open(client_a, 3_500_000)
    opened = _open(client_a, 1000)
    beyond = _put(client_a, opened.json()["id"], b"x" * 1500, 0, 1000)

    assert too_big.status_code == 413
    assert too_big.json()["detail"] == "the file (3.5 MB) is larger than the upload limit of 2.0 MB"
    assert beyond.status_code == 400  # a chunk past the declared size never lands
    assert client_a.get(f"/api/uploads/{opened.json()['id']}/").json()["offset"] == 0


def test_the_lab_quota_counts_scans_and_reserves_uploads_in_progress(client_a, lab_a, settings, media_root):
    content = nifti_bytes(volume(), compressed=False)
    stored = upload_scan(client_a, content, filename="CT_M01_0h.nii")
    assert stored.status_code == 201
    settings.LABSEG_LAB_QUOTA_BYTES = len(content) + 3_000_000

    first = _open(client_a, 2_000_000)  # the user's only lab: reserved against Lab A
    second = _open(client_a, 1_500_000)
    other_lab_user = APIClient()
    other_lab_user.force_login(member_of(LabFactory.create(name="Lab C"), username="carol"))
    elsewhere = _open(other_lab_user, 1_500_000)  # Lab C's quota is its own

    assert first.status_code == 201
    assert UploadSession.objects.get(pk=first.json()["id"]).lab == lab_a
    assert second.status_code == 413, second.json()
    detail = second.json()["detail"]
    assert detail.startswith(f"Lab A has used {(len(content) + 2_000_000) / 1e6:.1f} MB of its")
    assert "(2.0 MB of it in uploads in progress)" in detail
    assert "1.0 MB is free and this file (1.5 MB) does not fit" in detail
    assert elsewhere.status_code == 201

    # An abandoned upload (removed by the sweep, test_upload_sweep.py) gives its room back.
    UploadSession.objects.filter(pk=first.json()["id"]).delete()
    assert _open(client_a, 1_500_000).status_code == 201


def test_a_single_upload_over_the_quota_is_refused_and_leaves_nothing(client_a, settings, snapshot):
    content = nifti_bytes(volume(), compressed=False)
    settings.LABSEG_LAB_QUOTA_BYTES = len(content) - 1
    before = snapshot()

    response = upload_scan(client_a, content, filename="CT_M01_0h.nii")

    assert response.status_code == 413
    assert "storage quota" in response.json()["detail"]
    before.assert_unchanged()


def test_the_quota_is_checked_at_completion_for_a_user_of_several_labs(lab_a, lab_b, settings, media_root):
    user = member_of(lab_a, username="dana")
    Membership.objects.create(lab=lab_b, user=user)
    client = APIClient()
    client.force_login(user)
    content = nifti_bytes(volume(), compressed=False)
    settings.LABSEG_LAB_QUOTA_BYTES = len(content) - 1

    opened = _open(client, len(content))  # two labs, none named: no reservation yet
    upload_id = opened.json()["id"]
    _put(client, upload_id, content, 0, len(content))
    done = client.post(
        f"/api/uploads/{upload_id}/complete/",
        {
            "sha256": hashlib.sha256(content).hexdigest(),
            "study": "S",
            "lab": "Lab B",
            "mouse": "M1",
            "time_point": "0h",
        },
        format="json",
    )

    assert opened.status_code == 201
    assert done.status_code == 413
    assert done.json()["detail"].startswith("Lab B has used 0.0 MB of its")
    assert not Scan.objects.exists() and not UploadSession.objects.exists()
    assert not [name for name in iter_files(media_root) if name.startswith("tmp/chunks/")]
