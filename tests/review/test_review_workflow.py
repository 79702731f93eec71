"""Review transitions through the services and the REST API, with the lab roles enforced."""

from __future__ import annotations

import numpy as np
import pytest
from rest_framework.test import APIClient

from labs.models import Membership
from review.models import AnnotationRevision, AnnotationTransition
from review.services import (
    ReviewConflictError,
    ReviewError,
    ReviewPermissionError,
    approve_annotation,
    reject_annotation,
    submit_annotation,
)
from scans.models import Annotation
from tests.factories import member_of
from tests.review.conftest import ball, nifti_bytes

pytestmark = pytest.mark.django_db


def client_for(user) -> APIClient:  # type: ignore[no-untyped-def]
    client = APIClient()
    client.force_authenticate(user)
    return client


def test_a_reviewer_approves_a_submitted_annotation_and_the_move_is_recorded(tumor_scan, reviewer):
    _, (annotation, *_) = tumor_scan()

    response = client_for(reviewer).post(f"/api/annotations/{annotation.pk}/approve", {"note": "tidy"})

    assert response.status_code == 200, response.content
    assert response.json()["status"] == "approved"
    annotation.refresh_from_db()
    assert (annotation.status, annotation.reviewer, annotation.review_note) == ("approved", reviewer, "tidy")
    transition = AnnotationTransition.objects.get(annotation=annotation)
    assert (transition.from_status, transition.to_status, transition.by) == (
        "submitted",
        "approved",
        reviewer,
    )


def test_a_member_cannot_approve(tumor_scan, member):
    _, (annotation, *_) = tumor_scan()

    response = client_for(member).post(f"/api/annotations/{annotation.pk}/approve")

    assert response.status_code == 403
    assert "only reviewers and admins" in response.json()["detail"]
    annotation.refresh_from_db()
    assert annotation.status == "submitted"
    assert not AnnotationTransition.objects.exists()


def test_a_reviewer_of_lab_a_cannot_review_lab_b_annotations(tumor_scan, reviewer, other_lab):
    _, (annotation, *_) = tumor_scan(lab=other_lab)

    response = client_for(reviewer).post(f"/api/annotations/{annotation.pk}/reject", {"note": "no"})

    assert response.status_code == 404  # lab B's rows are invisible to lab A's people
    with pytest.raises(ReviewPermissionError):
        approve_annotation(annotation=annotation, reviewer=reviewer)
    annotation.refresh_from_db()
    assert annotation.status == "submitted"


def test_a_reviewer_in_one_lab_and_member_in_another_cannot_review_there(tumor_scan, reviewer, other_lab):
    Membership.objects.create(lab=other_lab, user=reviewer, role=Membership.Role.MEMBER)
    _, (annotation, *_) = tumor_scan(lab=other_lab)

    response = client_for(reviewer).post(f"/api/annotations/{annotation.pk}/approve")

    assert response.status_code == 403


def test_a_rejection_needs_a_note(tumor_scan, reviewer):
    _, (annotation, *_) = tumor_scan()

    response = client_for(reviewer).post(f"/api/annotations/{annotation.pk}/reject", {"note": "  "})

    assert response.status_code == 400
    assert "note" in response.json()["detail"]
    rejected = reject_annotation(annotation=annotation, reviewer=reviewer, note="misses the rim")
    assert (rejected.status, rejected.review_note) == ("rejected", "misses the rim")


def test_an_approved_annotation_cannot_be_rejected_afterwards(tumor_scan, reviewer):
    _, (annotation, *_) = tumor_scan()
    approve_annotation(annotation=annotation, reviewer=reviewer)

    response = client_for(reviewer).post(
        f"/api/annotations/{annotation.pk}/reject/", {"note": "changed my mind"}
    )

    assert response.status_code == 409
    assert "approved" in response.json()["detail"]


def test_a_stale_copy_loses_the_compare_and_set(tumor_scan, reviewer):
    _, (annotation, *_) = tumor_scan()
    stale = Annotation.objects.get(pk=annotation.pk)
    approve_annotation(annotation=annotation, reviewer=reviewer)

    with pytest.raises(ReviewConflictError, match="someone else"):
        reject_annotation(annotation=stale, reviewer=reviewer, note="late")


def test_a_member_submits_a_draft(tumor_scan, member):
    _, (annotation, *_) = tumor_scan(statuses=("draft",))

    response = client_for(member).post(f"/api/annotations/{annotation.pk}/submit")

    assert response.status_code == 200
    assert response.json()["status"] == "submitted"
    with pytest.raises(ReviewError):
        submit_annotation(annotation=Annotation.objects.get(pk=annotation.pk), user=member)


def test_a_rejected_annotation_is_replaced_by_a_new_version_that_remembers_it(tumor_scan, reviewer, member):
    scan, (annotation, *_) = tumor_scan()
    reject_annotation(annotation=annotation, reviewer=reviewer, note="too generous")
    corrected = ball(tuple(scan.shape), (16, 15, 14), 7.0).astype(np.uint8) * 14
    upload = nifti_bytes(corrected, tuple(scan.spacing_mm))

    from django.core.files.uploadedfile import SimpleUploadedFile

    response = client_for(member).post(
        f"/api/annotations/{annotation.pk}/replace",
        {"file": SimpleUploadedFile("Annotator_A_v2.nii.gz", upload)},
        format="multipart",
    )

    assert response.status_code == 201, response.content
    body = response.json()
    assert (body["status"], body["version"], body["replaces"], body["annotator_name"]) == (
        "submitted",
        2,
        annotation.pk,
        "A",
    )
    assert AnnotationRevision.objects.get(annotation_id=body["id"]).replaces == annotation
    again = client_for(member).post(
        f"/api/annotations/{annotation.pk}/replace",
        {"file": SimpleUploadedFile("Annotator_A_v3.nii.gz", upload)},
        format="multipart",
    )
    assert again.status_code == 409


def test_only_a_rejected_annotation_can_be_replaced(tumor_scan, member):
    scan, (annotation, *_) = tumor_scan()
    from django.core.files.uploadedfile import SimpleUploadedFile

    response = client_for(member).post(
        f"/api/annotations/{annotation.pk}/replace",
        {"file": SimpleUploadedFile("x.nii.gz", b"not a nifti")},
        format="multipart",
    )

    assert response.status_code == 409
    assert annotation.scan.annotations.count() == 3


def test_history_lists_every_transition_in_order(tumor_scan, reviewer):
    _, (annotation, *_) = tumor_scan(statuses=("draft",))
    submit_annotation(annotation=annotation, user=reviewer)
    reject_annotation(annotation=annotation, reviewer=reviewer, note="redo the caudal slices")

    response = client_for(reviewer).get(f"/api/annotations/{annotation.pk}/history")

    moves = [(t["from_status"], t["to_status"], t["note"]) for t in response.json()["transitions"]]
    assert moves == [("draft", "submitted", ""), ("submitted", "rejected", "redo the caudal slices")]


def test_a_lab_admin_may_review_too(tumor_scan, lab):
    admin = member_of(lab, role=Membership.Role.ADMIN, username="ada")
    _, (annotation, *_) = tumor_scan()

    response = client_for(admin).post(f"/api/annotations/{annotation.pk}/approve")

    assert response.status_code == 200


def test_a_replacement_may_bring_its_own_label_table(tumor_scan, reviewer, member):
    from django.core.files.uploadedfile import SimpleUploadedFile

    scan, (annotation, *_) = tumor_scan()
    reject_annotation(annotation=annotation, reviewer=reviewer, note="redo")
    corrected = ball(tuple(scan.shape), (16, 15, 14), 7.0).astype(np.uint8)  # tumor drawn as 1

    response = client_for(member).post(
        f"/api/annotations/{annotation.pk}/replace",
        {"file": SimpleUploadedFile("A_v2.nii.gz", nifti_bytes(corrected)), "structures": '{"tumor": 1}'},
        format="multipart",
    )

    assert response.status_code == 201, response.content
    assert response.json()["structures"] == {"tumor": 1}


def test_a_review_can_be_undone_and_the_trail_keeps_both_moves(tumor_scan, reviewer, member):
    _, (annotation, *_) = tumor_scan()
    reviewing = client_for(reviewer)
    reviewing.post(f"/api/annotations/{annotation.pk}/reject", {"note": "tumor cut short"})

    refused = client_for(member).post(f"/api/annotations/{annotation.pk}/reopen")
    undone = reviewing.post(f"/api/annotations/{annotation.pk}/reopen", {"note": "wrong annotation"})
    again = reviewing.post(f"/api/annotations/{annotation.pk}/reopen")
    approved = reviewing.post(f"/api/annotations/{annotation.pk}/approve", {"note": "fine after all"})

    assert refused.status_code == 403
    assert undone.status_code == 200 and undone.json()["status"] == "submitted"
    assert undone.json()["review_note"] == ""
    assert again.status_code == 409
    assert again.json()["detail"] == (
        "this annotation is submitted; only one that is approved or rejected can become submitted"
    )
    assert approved.json()["status"] == "approved"
    moves = list(
        AnnotationTransition.objects.filter(annotation=annotation)
        .order_by("pk")
        .values_list("from_status", "to_status", "note")
    )
    assert moves[-3:] == [
        ("submitted", "rejected", "tumor cut short"),
        ("rejected", "submitted", "wrong annotation"),
        ("submitted", "approved", "fine after all"),
    ]
