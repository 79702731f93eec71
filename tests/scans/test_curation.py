"""Curation through the API by a lab's admin: rename a mouse, give it a cohort, move a scan to
another mouse and time point, merge two mice; members are refused; the rows and files follow."""

from __future__ import annotations

from typing import Any

from rest_framework.test import APIClient

from labs.models import Membership
from scans.models import Mouse, Scan, TimePoint
from tests.factories import member_of

from .conftest import upload_scan
from .niftis import nifti_bytes, volume


def test_an_admin_renames_regroups_moves_and_merges_and_a_member_cannot(
    client_a: APIClient, lab_a: Any, media_root: Any
) -> None:
    admin = APIClient()
    admin.force_authenticate(member_of(lab_a, role=Membership.Role.ADMIN, username="adele"))
    first = upload_scan(client_a, nifti_bytes(volume(seed=1)), mouse="M01", time_point="0h").json()
    second = upload_scan(client_a, nifti_bytes(volume(seed=2)), mouse="M1", time_point="8d").json()
    study = first["study"]
    m01, m1 = first["mouse"], second["mouse"]

    refused = client_a.patch(f"/api/mice/{m01}/", {"identifier": "M01b"}, format="json")
    cohort = admin.post(
        f"/api/studies/{study}/cohorts", {"name": "Treated", "treatment": "drug X"}, format="json"
    )
    taken = admin.patch(f"/api/mice/{m01}/", {"identifier": "M1"}, format="json")
    renamed = admin.patch(
        f"/api/mice/{m01}/", {"identifier": "M01-A", "cohort": cohort.json()["id"], "sex": "F"}, format="json"
    )
    moved = admin.post(f"/api/scans/{second['id']}/move", {"mouse": m01, "time_point": "24h"}, format="json")

    assert refused.status_code == 403 and "only an admin" in refused.json()["detail"]
    assert cohort.status_code == 201
    assert taken.status_code == 409 and "merge the two instead" in taken.json()["detail"]
    assert renamed.status_code == 200 and renamed.json()["identifier"] == "M01-A"
    assert renamed.json()["cohort_name"] == "Treated"
    assert moved.status_code == 200 and moved.json()["time_point_label"] == "24h"
    assert moved.json()["mouse"] == m01
    assert not TimePoint.objects.filter(mouse_id=m1).exists()  # the emptied time point went
    assert client_a.get(f"/api/scans/{second['id']}/file").status_code == 200  # the file followed

    third = upload_scan(client_a, nifti_bytes(volume(seed=3)), mouse="M9", time_point="0h").json()
    merged = admin.post(f"/api/mice/{third['mouse']}/merge", {"into": m01}, format="json")
    bad = admin.post(f"/api/mice/{m01}/merge", {"into": "M01"}, format="json")

    assert merged.status_code == 200
    assert not Mouse.objects.filter(pk=third["mouse"]).exists()
    labels = sorted(Scan.objects.filter(time_point__mouse_id=m01).values_list("time_point__label", flat=True))
    assert labels == ["0h", "0h", "24h"]
    assert bad.status_code == 400 and "must be the id" in bad.json()["detail"]
