"""A user of lab A sees nothing of lab B (404, never 403), and anonymous clients see nothing at all."""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from .conftest import upload_annotation, upload_scan
from .niftis import labels_for, nifti_bytes, volume


@pytest.fixture
def lab_b_rows(client_b) -> dict[str, object]:
    scan = upload_scan(client_b, nifti_bytes(volume()), study="Secret study", mouse="B07").json()
    annotation = upload_annotation(client_b, scan["id"], nifti_bytes(labels_for(volume()))).json()
    upload = client_b.post("/api/uploads/", {"filename": "x.nii.gz", "size_bytes": 100}, format="json").json()
    return {"scan": scan, "annotation": annotation, "upload": upload}


def _lab_b_urls(rows: dict) -> list[str]:
    scan, annotation, upload = rows["scan"], rows["annotation"], rows["upload"]
    return [
        f"/api/scans/{scan['id']}/",
        f"/api/scans/{scan['id']}/file",
        f"/api/scans/{scan['id']}/thumbnail.png",
        f"/api/scans/{scan['id']}/annotations/",
        f"/api/annotations/{annotation['id']}/",
        f"/api/annotations/{annotation['id']}/file",
        f"/api/studies/{scan['study']}/",
        f"/api/mice/{scan['mouse']}/",
        f"/api/uploads/{upload['id']}/",
    ]


def test_a_user_of_lab_a_gets_404_for_every_row_and_file_of_lab_b(client_a, lab_b_rows):
    for url in _lab_b_urls(lab_b_rows):
        assert client_a.get(url).status_code == 404, url


def test_the_owner_lab_can_read_the_same_urls(client_b, lab_b_rows):
    for url in _lab_b_urls(lab_b_rows):
        assert client_b.get(url).status_code == 200, url


def test_lists_show_only_the_users_labs(client_a, lab_b_rows):
    for url in ("/api/scans/", "/api/studies/", "/api/mice/"):
        assert client_a.get(url).json()["count"] == 0, url
    assert [lab["name"] for lab in client_a.get("/api/labs/").json()["results"]] == ["Lab A"]


def test_a_user_of_lab_a_cannot_write_to_lab_b(client_a, lab_b_rows, snapshot):
    scan_id, upload_id = lab_b_rows["scan"]["id"], lab_b_rows["upload"]["id"]
    before = snapshot()

    annotation = upload_annotation(client_a, scan_id, nifti_bytes(labels_for(volume()), compressed=True))
    chunk = client_a.put(
        f"/api/uploads/{upload_id}/",
        b"x" * 10,
        content_type="application/octet-stream",
        HTTP_CONTENT_RANGE="bytes 0-9/100",
    )
    complete = client_a.post(f"/api/uploads/{upload_id}/complete/", {"sha256": "0" * 64}, format="json")
    into_b = upload_scan(client_a, nifti_bytes(volume() + 5), study="Secret study", lab="Lab B")

    assert (annotation.status_code, chunk.status_code, complete.status_code) == (404, 404, 404)
    assert into_b.status_code == 404
    before.assert_unchanged()


def test_an_anonymous_client_is_refused_everywhere(lab_b_rows):
    anonymous = APIClient()
    urls = [
        *_lab_b_urls(lab_b_rows),
        "/api/scans/",
        "/api/studies/",
        "/api/mice/",
        "/api/labs/",
        "/api/structures/",
    ]

    for url in urls:
        assert anonymous.get(url).status_code in (401, 403), url
    assert upload_scan(anonymous, nifti_bytes(volume())).status_code in (401, 403)
    assert anonymous.post(
        "/api/uploads/", {"filename": "a.nii", "size_bytes": 1}, format="json"
    ).status_code in (401, 403)


def test_token_authentication_works(alice, scan_bytes):
    from tests.factories import api_token

    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {api_token(alice)}")

    assert upload_scan(client, scan_bytes).status_code == 201
    assert client.get("/api/scans/").json()["count"] == 1


def test_the_structure_table_is_served_from_the_canonical_module(client_a):
    from inference.structures import as_json

    assert client_a.get("/api/structures/").json() == as_json()


def test_stored_files_are_not_served_from_the_media_url(client_a, client_b, lab_b_rows):
    from scans.models import Scan

    stored = Scan.objects.get(pk=lab_b_rows["scan"]["id"]).file.name

    assert client_a.get(f"/media/{stored}").status_code == 404
    assert client_b.get(f"/media/{stored}").status_code == 404


def test_uploading_into_another_labs_study_by_id_is_refused(client_a, lab_b_rows, snapshot):
    before = snapshot()

    response = upload_scan(client_a, nifti_bytes(volume() + 9), study=str(lab_b_rows["scan"]["study"]))

    assert response.status_code == 404
    assert "there is no study" in response.json()["detail"]
    before.assert_unchanged()


def test_a_new_study_needs_the_lab_when_the_user_has_several(client_a, alice, lab_b, scan_bytes):
    from labs.models import Membership

    Membership.objects.create(lab=lab_b, user=alice)

    without = upload_scan(client_a, scan_bytes, study="Brand new")
    with_lab = upload_scan(client_a, scan_bytes, study="Brand new", lab="Lab B")

    assert without.status_code == 400
    assert "say which lab" in without.json()["detail"]
    assert with_lab.status_code == 201
    assert with_lab.json()["lab"] == lab_b.pk
