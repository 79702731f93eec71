"""The audit log: each kind of change recorded with who and what, and read only by lab admins."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from rest_framework.test import APIClient

from audit.models import AuditEvent
from labs.models import Lab, Membership
from labs.services import add_lab_member
from review import services as review
from segmentation import decisions
from segmentation.models import InferenceJob, Lesion, ModelVersion, Prediction
from segmentation.services import cancel_job
from tests.factories import LabFactory, UserFactory, member_of
from tests.review.conftest import ball, make_annotation, make_scan, nifti_bytes, store
from tests.scans.conftest import upload_scan
from tests.scans.niftis import nifti_bytes as scan_nifti
from tests.scans.niftis import volume

pytestmark = pytest.mark.django_db

Action = AuditEvent.Action


@pytest.fixture(autouse=True)
def no_segmentation_on_upload(settings) -> None:  # type: ignore[no-untyped-def]
    settings.LABSEG_SEGMENT_ON_UPLOAD = False


@pytest.fixture
def lab_a() -> Lab:
    return LabFactory.create(name="Lab A")


@pytest.fixture
def lab_b() -> Lab:
    return LabFactory.create(name="Lab B")


def client_for(user: Any) -> APIClient:
    client = APIClient()
    client.force_login(user)
    return client


def only(action: str) -> AuditEvent:
    (event,) = AuditEvent.objects.filter(action=action)
    return event


def _scan_with_prediction(lab: Lab) -> tuple[Any, Prediction]:
    shape = (24, 22, 20)
    ct = np.where(ball(shape, (12, 11, 10), 5.0), 60, -700).astype(np.int16)
    scan = make_scan(lab=lab, ct=ct)
    model = ModelVersion.objects.create(
        name="tumor-net",
        version="1.0",
        task="tumor",
        sha256="0" * 64,
        structures=[0, 14],
        card={},
        folder="x",
    )
    job = InferenceJob.objects.create(scan=scan, model_version=model, state=InferenceJob.State.SUCCEEDED)
    labels = store(
        f"labs/{lab.pk}/predictions/p.nii.gz",
        nifti_bytes(ball(shape, (12, 11, 10), 5.0).astype(np.uint8) * 14),
    )
    prediction = Prediction.objects.create(
        job=job,
        scan=scan,
        model_version=model,
        labels=labels,
        uncertainty=labels,
        manifest={"qc": {"status": "needs_review", "reasons": ["a tumor outside the body"]}},
    )
    return scan, prediction


def test_uploads_deletes_and_restores_are_recorded_with_who_what_and_from_where(lab_a):
    alice = member_of(lab_a, username="alice")
    boss = member_of(lab_a, role=Membership.Role.ADMIN, username="boss")

    scan_id = upload_scan(client_for(alice), scan_nifti(volume())).json()["id"]
    deleted = client_for(boss).delete(f"/api/scans/{scan_id}/")
    restored = client_for(boss).post(f"/api/bin/{scan_id}/restore")

    assert deleted.status_code == 200 and restored.status_code == 200
    uploaded = only(Action.SCAN_UPLOADED)
    assert (uploaded.actor_name, uploaded.lab_id, uploaded.target_type, uploaded.target_id) == (
        "alice",
        lab_a.pk,
        "scan",
        str(scan_id),
    )
    assert uploaded.target_label == "CT_M01_0h.nii.gz (M01 0h, Flank tumours)"
    assert uploaded.ip == "127.0.0.1" and len(uploaded.detail["sha256"]) == 64
    for action in (Action.SCAN_DELETED, Action.SCAN_RESTORED):
        event = only(action)
        assert (event.actor_name, event.lab_id, event.target_id) == ("boss", lab_a.pk, str(scan_id))


def test_membership_and_role_changes_are_recorded(lab_a):
    ana = UserFactory.create(username="ana")
    boss = member_of(lab_a, role=Membership.Role.ADMIN, username="boss")

    add_lab_member(lab=lab_a, user=ana)  # a command or service: the system
    add_lab_member(lab=lab_a, user=ana, role=Membership.Role.REVIEWER)
    add_lab_member(lab=lab_a, user=ana, role=Membership.Role.REVIEWER)  # no change, no event
    Membership.objects.get(lab=lab_a, user=ana).delete()

    added = AuditEvent.objects.filter(action=Action.MEMBER_ADDED).order_by("id")
    assert [(e.detail["user"], e.detail["role"]) for e in added] == [("boss", "admin"), ("ana", "member")]
    changed = only(Action.ROLE_CHANGED)
    assert changed.detail == {"user": "ana", "from": "member", "to": "reviewer"}
    assert changed.actor_name == "" and changed.target_label == "ana in Lab A"
    removed = only(Action.MEMBER_REMOVED)
    assert (removed.lab_id, removed.detail["role"]) == (lab_a.pk, "reviewer")
    assert boss.pk  # the admin's own membership was the first event


def test_reviews_qc_decisions_lesion_reviews_promotions_and_cancellations_are_recorded(lab_a):
    rita = member_of(lab_a, role=Membership.Role.REVIEWER, username="rita")
    scan, prediction = _scan_with_prediction(lab_a)
    labels = ball((24, 22, 20), (12, 11, 10), 5.0).astype(np.uint8) * 14
    first = make_annotation(scan=scan, labels=labels, annotator="A")
    second = make_annotation(scan=scan, labels=labels, annotator="B")
    lesion = Lesion.objects.create(
        prediction=prediction,
        index=1,
        structure_id=14,
        centroid_x_mm=1,
        centroid_y_mm=1,
        centroid_z_mm=1,
        voxels=10,
        volume_mm3=0.8,
        max_diameter_mm=1.2,
        organ_name="",
        allocation="subcutaneous",
    )
    queued = InferenceJob.objects.create(
        scan=make_scan(lab=lab_a, ct=np.full((8, 8, 8), -700, np.int16)),
        model_version=prediction.model_version,
    )

    review.approve_annotation(annotation=first, reviewer=rita, note="fine")
    review.reject_annotation(annotation=second, reviewer=rita, note="misses the rim")
    review.reopen_annotation(annotation=first, reviewer=rita)
    decisions.decide_qc(prediction=prediction, user=rita, decision="accepted", note="checked by eye")
    decisions.review_lesion(lesion=lesion, user=rita, decision="excluded", reason="on the animal bed")
    promoted = review.promote_prediction(prediction=prediction, user=rita)
    assert cancel_job(job=queued, user=rita)
    assert not cancel_job(job=queued, user=rita)  # already cancelled: nothing happened, no event

    expected = {
        Action.ANNOTATION_APPROVED: (
            "annotation",
            first.pk,
            {"from": "submitted", "to": "approved", "note": "fine"},
        ),
        Action.ANNOTATION_REJECTED: ("annotation", second.pk, {"note": "misses the rim"}),
        Action.ANNOTATION_REOPENED: ("annotation", first.pk, {"from": "approved", "to": "submitted"}),
        Action.PREDICTION_QC: (
            "prediction",
            prediction.pk,
            {"decision": "accepted", "note": "checked by eye"},
        ),
        Action.LESION_REVIEWED: (
            "lesion",
            lesion.pk,
            {"decision": "excluded", "reason": "on the animal bed"},
        ),
        Action.PREDICTION_PROMOTED: ("annotation", promoted.pk, {"prediction": prediction.pk}),
        Action.JOB_CANCELLED: ("inferencejob", queued.pk, {"scan": queued.scan_id}),
    }
    for action, (target_type, target_id, detail) in expected.items():
        event = only(action)
        assert (event.actor_name, event.lab_id, event.target_type, event.target_id) == (
            "rita",
            lab_a.pk,
            target_type,
            str(target_id),
        ), action
        assert detail.items() <= event.detail.items(), (action, event.detail)


def test_lab_admins_read_their_labs_events_and_nobody_else_does(lab_a, lab_b):
    admin_a = member_of(lab_a, role=Membership.Role.ADMIN, username="admin_a")
    admin_b = member_of(lab_b, role=Membership.Role.ADMIN, username="admin_b")
    reviewer_a = member_of(lab_a, role=Membership.Role.REVIEWER, username="rev_a")
    upload_scan(client_for(admin_a), scan_nifti(volume()))
    root = UserFactory.create(username="root", is_superuser=True, is_staff=True)

    mine = client_for(admin_a).get("/api/audit/").json()
    theirs = client_for(admin_b).get(f"/api/audit/?lab={lab_a.pk}")
    b_all = client_for(admin_b).get("/api/audit/").json()
    not_admin = client_for(reviewer_a).get("/api/audit/")
    not_admin_lab = client_for(reviewer_a).get(f"/api/audit/?lab={lab_a.pk}")
    filtered = client_for(admin_a).get(f"/api/audit/?lab={lab_a.pk}&action=scan.uploaded").json()
    everything = client_for(root).get("/api/audit/").json()

    assert {e["lab"] for e in mine["results"]} == {lab_a.pk}
    assert {e["action"] for e in mine["results"]} == {"membership.added", "scan.uploaded"}
    assert theirs.status_code == 404
    assert {e["lab"] for e in b_all["results"]} == {lab_b.pk}
    assert not_admin.status_code == 403 and not_admin_lab.status_code == 403
    assert "admin" in not_admin_lab.json()["detail"]
    assert [(e["action"], e["actor"]) for e in filtered["results"]] == [("scan.uploaded", "admin_a")]
    # Superusers also read events of no lab (models made the default when migrate syncs them).
    assert {lab_a.pk, lab_b.pk} <= {e["lab"] for e in everything["results"]}
    assert everything["count"] == AuditEvent.objects.count()


def test_the_audit_page_lists_filters_and_pages_a_labs_events(lab_a, lab_b):
    admin_a = member_of(lab_a, role=Membership.Role.ADMIN, username="admin_a")
    member_a = member_of(lab_a, username="mem_a")
    admin_b = member_of(lab_b, role=Membership.Role.ADMIN, username="admin_b")
    for n in range(60):
        member_of(lab_a, username=f"extra{n}")

    page_one = client_for(admin_a).get(f"/labs/{lab_a.pk}/audit/")
    page_two = client_for(admin_a).get(f"/labs/{lab_a.pk}/audit/?page=2")
    filtered = client_for(admin_a).get(f"/labs/{lab_a.pk}/audit/?action=membership.role_changed")
    as_member = client_for(member_a).get(f"/labs/{lab_a.pk}/audit/")
    other_admin = client_for(admin_b).get(f"/labs/{lab_a.pk}/audit/")

    assert page_one.status_code == 200
    text = page_one.content.decode()
    assert f'href="/labs/{lab_a.pk}/audit/">Audit log</a>' in text  # the admin's menu links here
    assert "Page 1 of 2 (62 events)" in text and text.count('data-action="membership.added"') == 50
    assert "extra59" in text  # newest first
    assert "admin_a in Lab A" in page_two.content.decode()
    assert "No event of this kind yet." in filtered.content.decode()
    assert as_member.status_code == 403 and "only an admin of Lab A" in as_member.content.decode()
    assert other_admin.status_code == 404


def test_a_membership_added_in_the_admin_names_the_admin_who_did_it(lab_a):
    root = UserFactory.create(username="root", is_superuser=True, is_staff=True)
    ana = UserFactory.create(username="ana")
    client = APIClient()
    client.force_login(root)

    response = client.post(
        "/admin/labs/membership/add/", {"lab": lab_a.pk, "user": ana.pk, "role": Membership.Role.REVIEWER}
    )

    assert response.status_code == 302, response.content.decode()[:2000]
    event = only(Action.MEMBER_ADDED)
    assert (event.actor_name, event.lab_id, event.detail) == (
        "root",
        lab_a.pk,
        {"user": "ana", "role": "reviewer"},
    )
    assert event.ip == "127.0.0.1"


def test_a_labs_own_default_model_is_recorded_when_set_and_removed(lab_a):
    from segmentation.models import LabDefaultModel

    model = ModelVersion.objects.create(
        name="tumor-net",
        version="1.1",
        task="tumor",
        sha256="1" * 64,
        structures=[0, 14],
        card={},
        folder="x",
    )
    chosen = LabDefaultModel.objects.create(lab=lab_a, task="tumor", model_version=model)
    chosen.delete()

    made = AuditEvent.objects.get(action=Action.MODEL_MADE_DEFAULT, lab_id=lab_a.pk)
    removed = only(Action.MODEL_DEFAULT_REMOVED)
    assert (made.lab_id, made.target_type, made.target_id, made.detail["task"]) == (
        lab_a.pk,
        "modelversion",
        str(model.pk),
        "tumor",
    )
    assert (removed.lab_id, removed.target_id) == (lab_a.pk, str(model.pk))
