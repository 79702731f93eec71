"""Delete is soft: a scan in the bin hides with everything made from it, comes back on restore,
and the purge removes its rows and every file made from it, leaving no orphan in storage."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

from django.apps import apps
from django.db.models import FileField
from django.utils import timezone
from rest_framework.test import APIClient

from labs.models import Membership
from review.models import AnnotationTransition
from scans.models import Annotation, Scan
from scans.tasks import purge_bin_task
from tests.factories import member_of

from .conftest import upload_annotation, upload_scan
from .niftis import labels_for, nifti_bytes, volume


def _stored_files(media_root: Path) -> set[str]:
    files = (p.relative_to(media_root) for p in media_root.rglob("*") if p.is_file())
    return {str(p) for p in files if p.parts[0] != "tmp"}  # uploads in flight live in tmp/


def _named_by_rows() -> set[str]:
    names: set[str] = set()
    for model in apps.get_models():
        for field in model._meta.get_fields():
            if isinstance(field, FileField):
                stored = model._default_manager.values_list(field.attname, flat=True)
                names.update(str(v) for v in stored if v)
    return names


def test_a_scan_goes_to_the_bin_comes_back_and_is_purged_without_orphans(
    client_a: APIClient, alice: Any, lab_a: Any, media_root: Path, settings: Any
) -> None:
    kept = upload_scan(client_a, nifti_bytes(volume(seed=1)), mouse="M01").json()
    doomed = upload_scan(client_a, nifti_bytes(volume(seed=2)), mouse="M02").json()
    annotation = upload_annotation(client_a, doomed["id"], nifti_bytes(labels_for(volume(seed=2), value=14)))
    assert annotation.status_code == 201
    # A cached preview beside the stored files, as the viewer leaves one.
    cache = media_root / "previews" / f"scan_{doomed['id']}" / "ct.f2.nii.gz"
    cache.parent.mkdir(parents=True)
    cache.write_bytes(b"preview")
    admin = APIClient()
    admin.force_authenticate(member_of(lab_a, role=Membership.Role.ADMIN, username="adminne"))

    member_tries = client_a.delete(f"/api/scans/{doomed['id']}/")
    deleted = admin.delete(f"/api/scans/{doomed['id']}/")
    listed = [s["id"] for s in client_a.get("/api/scans/").json()["results"]]
    hidden = client_a.get(f"/api/scans/{doomed['id']}/")
    hidden_annotation = client_a.get(f"/api/annotations/{annotation.json()['id']}/")
    in_bin = [s["id"] for s in client_a.get("/api/bin/").json()["results"]]

    assert member_tries.status_code == 403 and "only an admin" in member_tries.json()["detail"]
    assert deleted.status_code == 200 and deleted.json()["deleted_at"]
    assert listed == [kept["id"]] and hidden.status_code == 404 and hidden_annotation.status_code == 404
    assert in_bin == [doomed["id"]]

    restored = admin.post(f"/api/bin/{doomed['id']}/restore")
    assert restored.status_code == 200 and restored.json()["deleted_at"] is None
    assert client_a.get(f"/api/scans/{doomed['id']}/").status_code == 200
    assert admin.post(f"/api/bin/{doomed['id']}/restore").status_code == 404  # not in the bin any more

    admin.delete(f"/api/scans/{doomed['id']}/")
    settings.LABSEG_BIN_RETENTION_DAYS = 30
    assert purge_bin_task() == {"scans": 0, "files": 0}  # in the bin for less than 30 days
    Scan.objects.filter(pk=doomed["id"]).update(deleted_at=timezone.now() - timedelta(days=31))
    before = _stored_files(media_root)

    report = purge_bin_task()

    after = _stored_files(media_root)
    assert report["scans"] == 1 and report["files"] >= 4  # scan, thumbnail, annotation, preview
    assert not Scan.objects.filter(pk=doomed["id"]).exists()
    assert not Annotation.objects.filter(scan_id=doomed["id"]).exists()
    assert not AnnotationTransition.objects.filter(annotation_id=annotation.json()["id"]).exists()
    assert after < before
    assert after == _named_by_rows(), "a file in storage that no row names (an orphan), or the reverse"
    assert client_a.get(f"/api/scans/{kept['id']}/file").status_code == 200
