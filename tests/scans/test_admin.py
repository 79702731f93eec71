"""Admin pages of every scans model (labs in tests/labs, annotations in tests/review/test_admin.py)."""

from __future__ import annotations

import io

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from review.services import create_annotation
from scans.models import Annotation, Scan

from .conftest import upload_scan
from .niftis import labels_for, nifti_bytes, volume


@pytest.fixture
def annotation(client_a, lab_a) -> Annotation:
    scan = Scan.objects.get(pk=upload_scan(client_a, nifti_bytes(volume())).json()["id"])
    return create_annotation(
        scan=scan,
        file=io.BytesIO(nifti_bytes(labels_for(volume()))),
        original_filename="Annotator_A.nii.gz",
        annotator_name="A",
    )


def test_every_admin_list_and_change_page_opens(annotation):
    admin = get_user_model().objects.create_superuser(username="root", password="root-123456")
    client = Client()
    client.force_login(admin)

    for name in ("lab", "membership"):
        assert client.get(f"/admin/labs/{name}/").status_code == 200, name
    for name in ("study", "cohort", "mouse", "timepoint", "scan", "uploadsession"):
        assert client.get(f"/admin/scans/{name}/").status_code == 200, name
    assert client.get(f"/admin/scans/scan/{annotation.scan_id}/change/").status_code == 200
    assert client.get("/admin/scans/scan/?q=M01").status_code == 200
    # Annotations have one admin page, the review app's (every status change is a lifecycle move).
    assert client.get("/admin/scans/annotation/").status_code == 404
    assert client.get(f"/admin/review/reviewqueue/{annotation.pk}/change/").status_code == 200
