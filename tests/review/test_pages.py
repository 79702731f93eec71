"""The review page, its volumes and the study QC page are scoped to the user's labs."""

from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np
import pytest
from django.test import Client

from inference import metrics
from tests.factories import member_of

pytestmark = pytest.mark.django_db


def signed_in(user) -> Client:  # type: ignore[no-untyped-def]
    client = Client()
    client.force_login(user)
    return client


def test_the_review_page_lists_each_annotator_with_review_buttons_for_reviewers(tumor_scan, reviewer, member):
    scan, annotations = tumor_scan()

    as_reviewer = signed_in(reviewer).get(f"/review/scans/{scan.pk}/").content.decode()
    as_member = signed_in(member).get(f"/review/scans/{scan.pk}/").content.decode()

    for name in ("A", "B", "C"):
        assert f'data-testid="annotator-{name}"' in as_reviewer
    assert as_reviewer.count('value="reject"') == 3
    assert 'value="reject"' not in as_member
    assert "only the lab's reviewers approve or reject" in as_member


def test_the_live_disagreement_map_is_computed_from_the_annotations_shown(tumor_scan, reviewer):
    scan, annotations = tumor_scan()

    response = signed_in(reviewer).get(f"/review/scans/{scan.pk}/disagreement/tumor.nii.gz")

    image = nib.Nifti1Image.from_bytes(gzip.decompress(b"".join(response.streaming_content)))
    masks = []
    for a in annotations:
        with a.file.open("rb") as handle:
            masks.append(
                np.asanyarray(nib.Nifti1Image.from_bytes(gzip.decompress(handle.read())).dataobj) == 14
            )
    assert np.asanyarray(image.dataobj) == pytest.approx(metrics.disagreement_map(masks))


def test_people_of_another_lab_get_nothing(tumor_scan, other_lab):
    scan, (annotation, *_) = tumor_scan()
    outsider = signed_in(member_of(other_lab, role="admin"))

    for url in (
        f"/review/scans/{scan.pk}/",
        f"/review/scans/{scan.pk}/ct.nii.gz",
        f"/review/annotations/{annotation.pk}/labels.nii.gz",
        f"/review/scans/{scan.pk}/disagreement/tumor.nii.gz",
        f"/review/studies/{scan.study.pk}/qc/",
    ):
        assert outsider.get(url).status_code == 404, url


def test_signed_out_visitors_are_sent_to_sign_in(tumor_scan):
    scan, _ = tumor_scan()

    response = Client().get(f"/review/scans/{scan.pk}/")

    assert response.status_code == 302
    assert response["Location"].startswith("/login/")


def test_the_study_qc_page_shows_the_box_plot_and_variability(tumor_scan, reviewer):
    scan, _ = tumor_scan()

    body = signed_in(reviewer).get(f"/review/studies/{scan.study.pk}/qc/").content.decode()

    assert 'id="dice-data"' in body and "review/study_qc.js" in body
    assert "Volumetry variability" in body
