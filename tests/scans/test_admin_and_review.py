"""Admin pages of every scans model, and the annotation review with a note."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.core.exceptions import PermissionDenied
from django.test import Client

from labs.models import Membership
from scans.models import Annotation
from scans.services import register_annotation, review_annotation
from tests.factories import member_of

from .conftest import upload_scan
from .niftis import labels_for, nifti_bytes, volume


@pytest.fixture
def annotation(client_a, lab_a) -> Annotation:
    from scans.models import Scan

    scan = Scan.objects.get(pk=upload_scan(client_a, nifti_bytes(volume())).json()["id"])
    return register_annotation(
        scan=scan, file=nifti_bytes_file(), original_filename="Annotator_A.nii.gz", annotator_name="A"
    )


def nifti_bytes_file():  # type: ignore[no-untyped-def]
    import io

    return io.BytesIO(nifti_bytes(labels_for(volume())))


def test_every_admin_list_and_change_page_opens(annotation):
    admin = get_user_model().objects.create_superuser(username="root", password="root-123456")
    client = Client()
    client.force_login(admin)

    for name in ("lab", "membership"):
        assert client.get(f"/admin/labs/{name}/").status_code == 200, name
    for name in (
        "study",
        "cohort",
        "mouse",
        "timepoint",
        "scan",
        "annotation",
        "uploadsession",
    ):
        assert client.get(f"/admin/scans/{name}/").status_code == 200, name
    assert client.get(f"/admin/scans/scan/{annotation.scan_id}/change/").status_code == 200
    assert client.get(f"/admin/scans/annotation/{annotation.pk}/change/").status_code == 200
    assert client.get("/admin/scans/scan/?q=M01").status_code == 200


def test_a_reviewer_approves_an_annotation_from_the_admin_with_a_note(annotation, lab_a):
    reviewer = member_of(lab_a, role=Membership.Role.REVIEWER, username="rita")
    reviewer.is_staff = True
    reviewer.is_superuser = True
    reviewer.save()
    client = Client()
    client.force_login(reviewer)
    form = {"action": "approve", "_selected_action": [annotation.pk]}

    confirm = client.post("/admin/scans/annotation/", form)
    done = client.post("/admin/scans/annotation/", {**form, "apply": "1", "note": "Tumour edges look right."})

    assert b"Tumour" not in confirm.content and b"note" in confirm.content
    assert done.status_code == 302
    annotation.refresh_from_db()
    assert (annotation.status, annotation.reviewer, annotation.review_note) == (
        "approved",
        reviewer,
        "Tumour edges look right.",
    )


def test_a_plain_member_cannot_review(annotation, alice):
    with pytest.raises(PermissionDenied, match="not a reviewer"):
        review_annotation(annotation=annotation, reviewer=alice, approve=False, note="no")

    annotation.refresh_from_db()
    assert annotation.status == "submitted"


def test_a_reviewer_of_another_lab_cannot_review(annotation, lab_b):
    outsider = member_of(lab_b, role=Membership.Role.ADMIN)

    with pytest.raises(PermissionDenied):
        review_annotation(annotation=annotation, reviewer=outsider, approve=True, note="")
