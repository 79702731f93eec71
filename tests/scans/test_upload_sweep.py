"""The beat sweep of abandoned resumable uploads and of temp files left by killed requests."""

from __future__ import annotations

import os
import time
from datetime import timedelta

from django.utils import timezone

from scans.files import upload_tmp_dir
from scans.models import UploadSession
from scans.tasks import sweep_uploads_task
from scans.uploads import chunk_path


def _open(client, size: int = 1000) -> str:  # type: ignore[no-untyped-def]
    created = client.post("/api/uploads/", {"filename": "CT_M01_0h.nii", "size_bytes": size}, format="json")
    assert created.status_code == 201
    return str(created.json()["id"])


def _age(path, hours: float) -> None:  # type: ignore[no-untyped-def]
    old = time.time() - hours * 3600
    os.utime(path, (old, old))


def test_the_sweep_removes_idle_uploads_and_stale_temp_files_and_keeps_live_ones(
    client_a, media_root, settings
):
    settings.LABSEG_UPLOAD_ABANDON_AFTER_H = 24
    idle, live = _open(client_a), _open(client_a)
    UploadSession.objects.filter(pk=idle).update(updated_at=timezone.now() - timedelta(hours=25))
    idle_part = chunk_path(UploadSession.objects.get(pk=idle))
    live_part = chunk_path(UploadSession.objects.get(pk=live))
    tmp = upload_tmp_dir()
    orphan_part = tmp / "chunks" / "00000000-0000-0000-0000-000000000000.part"
    killed_upload = tmp / "abc123.upload"
    fresh_upload = tmp / "def456.upload"
    for path in (orphan_part, killed_upload, fresh_upload):
        path.write_bytes(b"x" * 100)
    _age(orphan_part, 30)
    _age(killed_upload, 30)
    _age(live_part, 30)  # an old file whose session is still live stays: the session decides

    report = sweep_uploads_task()

    assert report == {"sessions": 1, "files": 3}
    assert not UploadSession.objects.filter(pk=idle).exists() and not idle_part.exists()
    assert not orphan_part.exists() and not killed_upload.exists()
    assert UploadSession.objects.filter(pk=live).exists() and live_part.exists()
    assert fresh_upload.exists()
    assert client_a.get(f"/api/uploads/{live}/").json()["offset"] == 0
    assert client_a.get(f"/api/uploads/{idle}/").status_code == 404
