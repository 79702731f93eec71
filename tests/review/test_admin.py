"""The reviewers' admin: filters, bulk approve through the review services, lab scoping."""

from __future__ import annotations

import pytest
from django.test import Client

pytestmark = pytest.mark.django_db

CHANGELIST = "/admin/review/reviewqueue/"


def staff_client(user) -> Client:  # type: ignore[no-untyped-def]
    user.is_staff = True
    user.save(update_fields=["is_staff"])
    client = Client()
    client.force_login(user)
    return client


def bulk_approve(client: Client, ids: list[int]):  # type: ignore[no-untyped-def]
    return client.post(CHANGELIST, {"action": "approve_selected", "_selected_action": ids}, follow=True)


def test_a_reviewer_bulk_approves_annotations_of_their_lab(tumor_scan, reviewer):
    _, annotations = tumor_scan()

    response = bulk_approve(staff_client(reviewer), [a.pk for a in annotations])

    assert response.status_code == 200
    assert "3 annotation(s) approved" in response.content.decode()
    for annotation in annotations:
        annotation.refresh_from_db()
        assert (annotation.status, annotation.reviewer) == ("approved", reviewer)


def test_a_member_cannot_bulk_approve(tumor_scan, member):
    _, annotations = tumor_scan()

    response = bulk_approve(staff_client(member), [a.pk for a in annotations])

    body = response.content.decode()
    assert "Not approved" in body and "only reviewers and admins" in body
    for annotation in annotations:
        annotation.refresh_from_db()
        assert annotation.status == "submitted"


def test_a_reviewer_of_lab_a_neither_sees_nor_approves_lab_b_annotations(tumor_scan, reviewer, other_lab):
    _, theirs = tumor_scan(lab=other_lab)
    client = staff_client(reviewer)

    listing = client.get(CHANGELIST)
    bulk_approve(client, [a.pk for a in theirs])

    assert listing.status_code == 200
    assert "0 annotations to review" in listing.content.decode()
    for annotation in theirs:
        annotation.refresh_from_db()
        assert annotation.status == "submitted"


def test_the_list_filters_by_status_annotator_study_and_structure(tumor_scan, reviewer, lab):
    scan, annotations = tumor_scan()
    client = staff_client(reviewer)
    study = scan.study.pk

    def count(query: str) -> int:
        return len(client.get(CHANGELIST + query).context["cl"].result_list)

    assert count("") == 3
    assert count("?status__exact=submitted") == 3
    assert count("?status__exact=approved") == 0
    assert count("?annotator_name=B") == 1
    assert count(f"?study={study}") == 3
    assert count("?structure=tumor") == 3
    assert count("?structure=heart") == 0


def test_staff_who_belong_to_no_lab_do_not_get_the_review_admin(tumor_scan):
    from tests.factories import UserFactory

    client = staff_client(UserFactory())
    tumor_scan()

    assert client.get(CHANGELIST).status_code == 403


def review_with_note(client: Client, action: str, ids: list[int], note: str):  # type: ignore[no-untyped-def]
    form = {"action": action, "_selected_action": ids}
    confirm = client.post(CHANGELIST, form)
    done = client.post(CHANGELIST, {**form, "apply": "1", "note": note}, follow=True)
    return confirm, done


def test_a_reviewer_approves_with_a_note_and_the_trail_records_it(tumor_scan, reviewer):
    _, annotations = tumor_scan()
    first = annotations[0]

    confirm, done = review_with_note(
        staff_client(reviewer), "approve_with_note", [first.pk], "Tumour edges look right."
    )

    assert b"Tumour" not in confirm.content and b"note" in confirm.content  # the form comes first
    assert "1 annotation(s) approved" in done.content.decode()
    first.refresh_from_db()
    assert (first.status, first.reviewer, first.review_note) == (
        "approved",
        reviewer,
        "Tumour edges look right.",
    )
    assert list(first.transitions.values_list("from_status", "to_status", "by", "note")) == [
        ("submitted", "approved", reviewer.pk, "Tumour edges look right.")
    ]


def test_a_rejection_from_the_admin_needs_a_note_and_a_member_cannot_reject(tumor_scan, reviewer, member):
    _, annotations = tumor_scan()
    first = annotations[0]

    _, without_note = review_with_note(staff_client(reviewer), "reject_with_note", [first.pk], "")
    _, by_member = review_with_note(staff_client(member), "reject_with_note", [first.pk], "Too wide.")

    assert "Not rejected" in without_note.content.decode() and "needs a note" in without_note.content.decode()
    assert "only reviewers and admins" in by_member.content.decode()
    first.refresh_from_db()
    assert first.status == "submitted"
