"""The admin is scoped to labs (``labs/admin_scoping.py``): a staff user with every Django model
permission still sees, picks and changes only the rows of their labs, as their lab role allows;
only a lab's admins manage its memberships; a scan deleted in the admin goes to the bin."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from django.contrib import admin
from django.contrib.auth.models import Permission, User
from django.core.files.storage import default_storage
from django.db import models
from django.test import Client
from django.urls import reverse

from labs.admin_scoping import lab_path_of
from labs.models import Lab, Membership
from labs.rules import lab_of
from review.models import Agreement, AnnotationTransition, Consensus
from scans.models import Annotation, Cohort, Scan, UploadSession
from segmentation.models import InferenceJob, ModelVersion, Prediction
from tests.factories import LabFactory, UserFactory, member_of
from tests.review.conftest import ball, make_annotation, make_scan

pytestmark = pytest.mark.django_db

_seeds = itertools.count(101)


@dataclass
class LabRows:
    lab: Lab
    scan: Scan
    annotation: Annotation


def fill(lab: Lab) -> LabRows:
    """One row of every lab-scoped model in ``lab``."""
    shape = (12, 12, 10)
    rng = np.random.default_rng(next(_seeds))
    ct = np.where(ball(shape, (6, 6, 5), 3.0), 60, -700).astype(np.int16) + rng.integers(0, 9, shape).astype(
        np.int16
    )
    scan = make_scan(lab=lab, ct=ct, mouse=f"M{next(_seeds)}")
    member = member_of(lab)
    lab_field = {"lab": lab} if any(f.name == "lab" for f in UploadSession._meta.fields) else {}
    UploadSession.objects.create(user=member, filename="CT.nii.gz", size_bytes=10, **lab_field)
    labels = ball(shape, (6, 6, 5), 3.0).astype(np.uint8)
    annotation = make_annotation(scan=scan, labels=labels, annotator="A")
    Cohort.objects.create(study=scan.time_point.mouse.study, name=f"Vehicle {lab.name}")
    AnnotationTransition.objects.create(annotation=annotation, from_status="", to_status="submitted")
    Consensus.objects.create(
        scan=scan,
        structure_id=1,
        majority="m.nii.gz",
        staple="s.nii.gz",
        disagreement="d.nii.gz",
        majority_volume_mm3=1.0,
        staple_volume_mm3=1.0,
        disagreeing_voxels=0,
    )
    Agreement.objects.create(
        scan=scan,
        structure_id=1,
        n_annotators=1,
        mean_pairwise_dice=1.0,
        mean_pairwise_jaccard=1.0,
        ci_gen=1.0,
        fleiss_kappa=1.0,
        mean_volume_mm3=1.0,
        max_volume_difference_mm3=0.0,
        volume_rmse_mm3=0.0,
    )
    model_version = ModelVersion.objects.first()
    assert model_version is not None, "the test database has no registered model"
    job = InferenceJob.objects.create(scan=scan, model_version=model_version, state="failed")
    Prediction.objects.create(
        job=job,
        scan=scan,
        model_version=model_version,
        labels="l.nii.gz",
        uncertainty="u.nii.gz",
        manifest={},
    )
    return LabRows(lab=lab, scan=scan, annotation=annotation)


@pytest.fixture
def lab_a() -> LabRows:
    return fill(LabFactory.create(name="Lab A"))


@pytest.fixture
def lab_b() -> LabRows:
    return fill(LabFactory.create(name="Lab B"))


def staff(user: User) -> Client:
    """``user`` as staff with every Django model permission: only the lab rules hold them back."""
    user.is_staff = True
    user.save(update_fields=["is_staff"])
    user.user_permissions.set(Permission.objects.all())
    client = Client()
    client.force_login(user)
    return client


def belongs_to_a_lab(model: type[models.Model]) -> bool:
    return lab_path_of(model) is not None or any(
        isinstance(f, models.ForeignKey) and f.related_model is Lab for f in model._meta.get_fields()
    )


def changelist(model: type[models.Model]) -> str:
    return reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_changelist")


def test_a_lab_admin_cannot_make_themselves_admin_of_another_lab_nor_download_its_scans(lab_a, lab_b):
    mallory = member_of(lab_a.lab, role=Membership.Role.ADMIN, username="mallory")
    client = staff(mallory)
    theirs = Membership.objects.create(lab=lab_b.lab, user=UserFactory.create(username="bea"), role="member")

    added = client.post(
        "/admin/labs/membership/add/", {"lab": lab_b.lab.pk, "user": mallory.pk, "role": "admin"}
    )
    escalation = {"lab": lab_b.lab.pk, "user": mallory.pk, "role": "admin"}
    promoted = client.post(f"/admin/labs/membership/{theirs.pk}/change/", escalation)
    through_the_lab = client.post(
        f"/admin/labs/lab/{lab_b.lab.pk}/change/",
        {
            "name": "Lab B",
            "memberships-TOTAL_FORMS": "1",
            "memberships-INITIAL_FORMS": "0",
            "memberships-0-user": mallory.pk,
            "memberships-0-role": "admin",
        },
    )
    download = client.get(f"/api/scans/{lab_b.scan.pk}/file")

    assert added.status_code == 200 and "Select a valid choice" in added.content.decode()
    assert promoted.status_code in (302, 403) and through_the_lab.status_code in (302, 403)
    assert not Membership.objects.filter(lab=lab_b.lab, user=mallory).exists()
    theirs.refresh_from_db()
    assert (theirs.user.username, theirs.role) == ("bea", "member")
    assert download.status_code == 404


def test_a_member_with_every_model_permission_manages_no_membership(lab_a):
    member = member_of(lab_a.lab, role=Membership.Role.MEMBER, username="max")
    client = staff(member)

    form = {"lab": lab_a.lab.pk, "user": member.pk, "role": "admin"}
    added = client.post("/admin/labs/membership/add/", form)
    own = Membership.objects.get(user=member)
    changed = client.post(
        f"/admin/labs/membership/{own.pk}/change/", {"lab": lab_a.lab.pk, "user": member.pk, "role": "admin"}
    )

    assert added.status_code == 403 and changed.status_code == 403
    assert Membership.objects.get(user=member).role == "member"


def test_a_lab_admin_changes_roles_in_their_lab(lab_a):
    adele = member_of(lab_a.lab, role=Membership.Role.ADMIN, username="adele")
    max_ = Membership.objects.create(lab=lab_a.lab, user=UserFactory.create(username="max"), role="member")

    form = {"lab": lab_a.lab.pk, "user": max_.user_id, "role": "reviewer"}
    response = staff(adele).post(f"/admin/labs/membership/{max_.pk}/change/", form)

    assert response.status_code == 302
    max_.refresh_from_db()
    assert max_.role == "reviewer"


def test_every_changelist_of_a_model_with_a_lab_shows_only_the_users_labs(lab_a, lab_b):
    client = staff(member_of(lab_a.lab, role=Membership.Role.ADMIN, username="adele"))
    root = Client()
    root.force_login(UserFactory.create(username="root", is_staff=True, is_superuser=True))
    checked = []

    for model in admin.site._registry:
        if not belongs_to_a_lab(model):
            continue
        # Every model with a lab is scoped by the shared base (or by its own means, tested below).
        response = client.get(changelist(model))
        assert response.status_code in (200, 403), model._meta.label
        shown = list(response.context["cl"].queryset) if response.status_code == 200 else []
        everything = list(root.get(changelist(model)).context["cl"].queryset)
        # Rows of no lab (shipped models) are for everyone; another lab's rows are never shown.
        assert {lab_of(row) for row in shown} <= {lab_a.lab, None}, model._meta.label
        checked.append(model._meta.label)
        if lab_path_of(model) is not None:  # the models fill() made rows of in both labs
            assert {lab_of(row) for row in everything} >= {lab_a.lab, lab_b.lab}, model._meta.label
            # Lab A's rows are shown (upload sessions: only the user's own, and this user has none).
            assert shown or model is UploadSession, model._meta.label

    assert len(checked) >= 14, checked
    print(f"admin models scoped: {len(checked)}: {', '.join(sorted(checked))}")


def test_another_labs_row_has_no_change_page(lab_a, lab_b):
    client = staff(member_of(lab_a.lab, role=Membership.Role.ADMIN, username="adele"))

    for row in (lab_b.scan, lab_b.scan.time_point.mouse.study, lab_b.annotation, lab_b.lab):
        model = type(row)
        name = "reviewqueue" if model is Annotation else model._meta.model_name
        app = "review" if model is Annotation else model._meta.app_label
        response = client.get(f"/admin/{app}/{name}/{row.pk}/change/", follow=True)
        assert response.redirect_chain and response.redirect_chain[-1][0] == "/admin/", model
        assert "doesn’t exist" in response.content.decode()


def test_dropdowns_and_filters_offer_only_the_labs_the_user_manages(lab_a, lab_b):
    # Admin of lab A, plain member of lab B: lab B's rows are seen, never picked for a change.
    adele = member_of(lab_a.lab, role=Membership.Role.ADMIN, username="adele")
    Membership.objects.create(lab=lab_b.lab, user=adele, role="member")
    outsider = member_of(LabFactory.create(name="Lab C"), username="carl")
    client = staff(adele)

    study_form = client.get("/admin/scans/study/add/").context["adminform"].form
    mouse_form = client.get("/admin/scans/mouse/add/").context["adminform"].form
    membership_form = client.get("/admin/labs/membership/add/").context["adminform"].form
    scans = client.get("/admin/scans/scan/").content.decode()

    assert list(study_form.fields["lab"].queryset) == [lab_a.lab]
    assert list(mouse_form.fields["lab"].queryset) == [lab_a.lab]
    assert {s.lab for s in mouse_form.fields["study"].queryset} == {lab_a.lab}
    assert list(membership_form.fields["lab"].queryset) == [lab_a.lab]
    assert outsider not in membership_form.fields["user"].queryset
    assert adele in membership_form.fields["user"].queryset
    assert "Lab C" not in scans and "Lab A" in scans


def test_a_scan_deleted_in_the_admin_goes_to_the_bin_with_its_file(lab_a):
    client = staff(member_of(lab_a.lab, role=Membership.Role.ADMIN, username="adele"))
    scan = lab_a.scan

    confirm = client.get(f"/admin/scans/scan/{scan.pk}/delete/")
    deleted = client.post(f"/admin/scans/scan/{scan.pk}/delete/", {"post": "yes"}, follow=True)

    assert confirm.status_code == 200 and "to the bin" in confirm.content.decode()
    assert "moved to the bin" in deleted.content.decode()
    scan.refresh_from_db()
    assert scan.deleted_at is not None and scan.deleted_by is not None
    assert default_storage.exists(scan.file.name)
    assert client.get(changelist(Scan)).context["cl"].result_count == 0
    restored = Client()
    restored.force_login(scan.deleted_by)
    assert restored.get("/api/bin/").json()["count"] == 1


def test_the_bulk_delete_is_the_bin_too_and_a_member_cannot_delete(lab_a):
    second = fill(lab_a.lab).scan
    member = staff(member_of(lab_a.lab, username="max"))
    adele = staff(member_of(lab_a.lab, role=Membership.Role.ADMIN, username="adele"))
    form = {"action": "delete_selected", "_selected_action": [lab_a.scan.pk, second.pk], "post": "yes"}

    by_member = member.post(f"/admin/scans/scan/{lab_a.scan.pk}/delete/", {"post": "yes"})
    hard = adele.post(changelist(Scan), form)
    to_bin = adele.post(changelist(Scan), {**form, "action": "move_to_bin"}, follow=True)

    assert by_member.status_code == 403
    assert hard.status_code == 302  # "No action selected": the hard delete is not offered
    assert "2 scans moved to the bin" in to_bin.content.decode()
    assert Scan.objects.filter(pk__in=[lab_a.scan.pk, second.pk], deleted_at__isnull=False).count() == 2


def test_a_study_goes_to_the_bin_and_a_time_point_holding_scans_is_not_deleted(lab_a):
    study = lab_a.scan.time_point.mouse.study
    client = staff(member_of(lab_a.lab, role=Membership.Role.ADMIN, username="adele"))

    time_point = client.post(f"/admin/scans/timepoint/{lab_a.scan.time_point_id}/delete/", {"post": "yes"})
    binned = client.post(f"/admin/scans/study/{study.pk}/delete/", {"post": "yes"}, follow=True)

    assert time_point.status_code == 200
    assert f"scan {lab_a.scan}: delete it first (it goes to the bin)" in time_point.content.decode()
    assert "moved to the bin" in binned.content.decode()
    study.refresh_from_db()
    assert study.deleted_at is not None
    assert Scan.objects.filter(pk=lab_a.scan.pk).exists()


def test_users_and_groups_are_for_superusers_only(lab_a):
    client = staff(member_of(lab_a.lab, role=Membership.Role.ADMIN, username="adele"))
    root = Client()
    root.force_login(UserFactory.create(username="root", is_staff=True, is_superuser=True))

    for url in ("/admin/auth/user/", "/admin/auth/group/", "/admin/auth/user/add/"):
        assert client.get(url).status_code == 403, url
        assert root.get(url).status_code == 200, url


def test_a_superuser_stays_global_and_moves_any_scan_to_the_bin(lab_a, lab_b):
    root = Client()
    root.force_login(UserFactory.create(username="root", is_staff=True, is_superuser=True))

    shown: Any = list(root.get(changelist(Scan)).context["cl"].queryset)
    root.post(f"/admin/scans/scan/{lab_b.scan.pk}/delete/", {"post": "yes"})

    assert set(shown) == {lab_a.scan, lab_b.scan}
    lab_b.scan.refresh_from_db()
    assert lab_b.scan.deleted_at is not None
