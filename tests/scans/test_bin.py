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
from scans.models import Annotation, Mouse, Scan, Study
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


def test_mice_and_studies_go_to_the_bin_with_their_scans_come_back_and_are_purged_without_orphans(
    client_a: APIClient, alice: Any, lab_a: Any, media_root: Path, settings: Any
) -> None:
    kept = upload_scan(client_a, nifti_bytes(volume(seed=1)), mouse="M01").json()
    early = upload_scan(client_a, nifti_bytes(volume(seed=2)), mouse="M02", time_point="0h").json()
    late = upload_scan(client_a, nifti_bytes(volume(seed=3)), mouse="M02", time_point="8d").json()
    other = upload_scan(client_a, nifti_bytes(volume(seed=4)), study="Other study", mouse="M03").json()
    assert (
        upload_annotation(client_a, late["id"], nifti_bytes(labels_for(volume(seed=3), value=14))).status_code
        == 201
    )
    admin = APIClient()
    admin.force_authenticate(member_of(lab_a, role=Membership.Role.ADMIN, username="adminne"))
    m02 = Mouse.objects.get(identifier="M02")
    other_study = Study.objects.get(name="Other study")
    admin.delete(f"/api/scans/{early['id']}/")  # in the bin on its own, before its mouse

    member_tries = client_a.delete(f"/api/mice/{m02.pk}/")
    deleted = admin.delete(f"/api/mice/{m02.pk}/")
    mice = [m["identifier"] for m in client_a.get("/api/mice/").json()["results"]]
    scans = {s["id"] for s in client_a.get("/api/scans/").json()["results"]}
    binned = client_a.get("/api/bin/mice/").json()
    scan_alone = admin.post(f"/api/bin/{late['id']}/restore")
    reused = upload_scan(client_a, nifti_bytes(volume(seed=5)), mouse="M02", time_point="2w")

    assert member_tries.status_code == 403 and "only an admin" in member_tries.json()["detail"]
    assert deleted.status_code == 200 and deleted.json()["deleted_at"]
    assert "M02" not in mice and client_a.get(f"/api/mice/{m02.pk}/").status_code == 404
    assert scans == {kept["id"], other["id"]}
    assert [(m["identifier"], m["scans"]) for m in binned] == [("M02", 2)]
    assert scan_alone.status_code == 409 and "restore the mouse" in scan_alone.json()["detail"]
    assert reused.status_code == 409 and "M02 is in the bin" in reused.json()["detail"]

    restored = admin.post(f"/api/bin/mice/{m02.pk}/restore")
    assert restored.status_code == 200 and restored.json()["deleted_at"] is None
    scans = {s["id"] for s in client_a.get("/api/scans/").json()["results"]}
    assert late["id"] in scans and early["id"] not in scans  # only what went with the mouse came back

    # A study goes with its mice; restoring one of its mice alone is refused in words.
    assert admin.delete(f"/api/studies/{other_study.pk}/").status_code == 200
    assert client_a.get(f"/api/studies/{other_study.pk}/").status_code == 404
    assert [s["name"] for s in client_a.get("/api/bin/studies/").json()] == ["Other study"]
    m03 = Mouse.objects.get(identifier="M03")
    alone = admin.post(f"/api/bin/mice/{m03.pk}/restore")
    assert alone.status_code == 409 and "restore the study" in alone.json()["detail"]
    assert admin.post(f"/api/bin/studies/{other_study.pk}/restore").status_code == 200
    assert other["id"] in {s["id"] for s in client_a.get("/api/scans/").json()["results"]}

    # Both in the bin past the retention: the purge leaves no row and no orphan file.
    assert admin.delete(f"/api/mice/{m02.pk}/").status_code == 200
    assert admin.delete(f"/api/studies/{other_study.pk}/").status_code == 200
    long_ago = timezone.now() - timedelta(days=31)
    Scan.objects.exclude(pk=kept["id"]).update(deleted_at=long_ago)
    Mouse.objects.filter(deleted_at__isnull=False).update(deleted_at=long_ago)
    Study.objects.filter(deleted_at__isnull=False).update(deleted_at=long_ago)
    before = _stored_files(media_root)

    report = purge_bin_task()

    after = _stored_files(media_root)
    assert report["scans"] == 3 and report["mice"] == 1 and report["studies"] == 1
    assert set(Mouse.objects.values_list("identifier", flat=True)) == {"M01"}
    assert list(Study.objects.values_list("name", flat=True)) == ["Flank tumours"]
    assert after < before
    assert after == _named_by_rows(), "a file in storage that no row names (an orphan), or the reverse"
    assert client_a.get(f"/api/scans/{kept['id']}/file").status_code == 200
