"""A full disk answers 507 in words and keeps nothing: the upload's partial file is deleted at once,
no row is written, and the free space is what it was before the request.

The disk is real: MEDIA_ROOT (with the upload temp folder in it) is a 4 MiB tmpfs mounted for the
test, filled with a ballast file so the upload runs out of space part-way, and the kernel itself
answers ENOSPC. Mounting needs root (CI runs as root, see .ci/run); elsewhere the tests are skipped
with the reason. The plain-view path is checked with a real ENOSPC from ``/dev/full``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.http import HttpRequest

from labseg.refusals import DISK_FULL_MESSAGE, DiskFullMiddleware
from scans.models import Scan, UploadSession

from .conftest import Snapshot, upload_scan
from .niftis import iter_files, nifti_bytes, volume

DISK_BYTES = 4 * 1024**2
BALLAST = "ballast.bin"


@pytest.fixture
def small_disk(tmp_path: Path, settings) -> Iterator[Path]:  # type: ignore[no-untyped-def]
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root (CI runs as root)")
    root = tmp_path / "small-disk"
    root.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={DISK_BYTES},mode=0755", "tmpfs", str(root)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"this machine refuses a tmpfs mount: {mounted.stderr.strip()}")
    settings.MEDIA_ROOT = root
    settings.LABSEG_UPLOAD_TMP_DIR = ""  # MEDIA_ROOT/tmp: on the small disk
    settings.STORAGES = {
        **settings.STORAGES,
        "default": {
            "BACKEND": "django.core.files.storage.FileSystemStorage",
            "OPTIONS": {"location": str(root), "base_url": "/media/"},
        },
    }
    try:
        yield root
    finally:
        subprocess.run(["umount", str(root)], check=True)


def free_bytes(root: Path) -> int:
    stat = os.statvfs(root)
    return stat.f_bavail * stat.f_frsize


def fill(root: Path, *, leave: int) -> None:
    """Add ballast until only ``leave`` bytes are free (0: write until the kernel says ENOSPC)."""
    with (root / BALLAST).open("ab", buffering=0) as ballast:
        if leave:
            ballast.write(b"\0" * (free_bytes(root) - leave))
            return
        try:
            while True:
                ballast.write(b"\0" * 4096)
        except OSError as error:
            assert error.errno == 28
    assert free_bytes(root) == 0


def _only_ballast(root: Path) -> None:
    assert list(iter_files(root)) == [BALLAST]


def test_a_single_upload_onto_a_full_disk_answers_507_and_keeps_nothing(client_a, small_disk):
    (small_disk / "tmp").mkdir()
    fill(small_disk, leave=256 * 1024)
    free_before = free_bytes(small_disk)
    before = Snapshot(small_disk)
    content = nifti_bytes(volume((64, 64, 64)), compressed=False)  # 512 KiB: twice the free space

    response = upload_scan(client_a, content, filename="CT_M01_0h.nii")

    assert response.status_code == 507
    assert response.json() == {"detail": DISK_FULL_MESSAGE}
    assert "disk is full" in DISK_FULL_MESSAGE and "nothing was stored" in DISK_FULL_MESSAGE
    before.assert_unchanged()
    _only_ballast(small_disk)
    assert free_bytes(small_disk) == free_before


def test_a_chunk_onto_a_full_disk_answers_507_and_the_upload_is_removed(client_a, small_disk):
    content = nifti_bytes(volume((64, 64, 64)), compressed=False)
    opened = client_a.post(
        "/api/uploads/", {"filename": "CT_M01_0h.nii", "size_bytes": len(content)}, format="json"
    )
    assert opened.status_code == 201
    fill(small_disk, leave=128 * 1024)
    free_before = free_bytes(small_disk)

    response = client_a.put(
        f"/api/uploads/{opened.json()['id']}/",
        content,
        content_type="application/octet-stream",
        HTTP_CONTENT_RANGE=f"bytes 0-{len(content) - 1}/{len(content)}",
    )

    assert response.status_code == 507
    assert response.json()["detail"] == DISK_FULL_MESSAGE
    assert not UploadSession.objects.exists()
    _only_ballast(small_disk)
    assert free_bytes(small_disk) >= free_before


def test_storing_an_accepted_scan_on_a_full_disk_answers_507_and_keeps_nothing(client_a, small_disk):
    content = nifti_bytes(volume((48, 40, 32)), compressed=False)
    upload_id = client_a.post(
        "/api/uploads/", {"filename": "CT_M01_0h.nii", "size_bytes": len(content)}, format="json"
    ).json()["id"]
    sent = client_a.put(
        f"/api/uploads/{upload_id}/",
        content,
        content_type="application/octet-stream",
        HTTP_CONTENT_RANGE=f"bytes 0-{len(content) - 1}/{len(content)}",
    )
    assert sent.json()["offset"] == len(content)
    fill(small_disk, leave=0)  # the file is received; storing its thumbnail finds no room

    done = client_a.post(
        f"/api/uploads/{upload_id}/complete/",
        {
            "sha256": hashlib.sha256(content).hexdigest(),
            "study": "S",
            "mouse": "M01",
            "time_point": "0h",
        },
        format="json",
    )

    assert done.status_code == 507
    assert done.json()["detail"] == DISK_FULL_MESSAGE
    assert not Scan.objects.exists() and not UploadSession.objects.exists()
    _only_ballast(small_disk)  # the moved scan file, the partial thumbnail and the chunk file: gone


def test_a_full_disk_in_a_plain_view_answers_507_in_words() -> None:
    try:
        with open("/dev/full", "wb", buffering=0) as full:
            full.write(b"x")
    except OSError as error:
        raised = error
    assert raised.errno == 28  # the kernel's own ENOSPC

    response = DiskFullMiddleware(lambda request: None).process_exception(HttpRequest(), raised)  # type: ignore[arg-type,return-value]

    assert response is not None and response.status_code == 507
    assert DISK_FULL_MESSAGE.encode() in response.content
