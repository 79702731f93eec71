"""Retraining refuses with plain 4xx and stores nothing; lab-owned models stay in their lab."""

from __future__ import annotations

from typing import Any

import pytest
from rest_framework.test import APIClient

from labs.models import Lab, Membership
from retraining.models import Promotion, TrainingSet
from segmentation import services as segmentation
from segmentation.models import ModelVersion
from tests.factories import LabFactory, StudyFactory, member_of

pytestmark = pytest.mark.django_db


def _client(user: Any) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


@pytest.fixture
def lab() -> Lab:
    return LabFactory.create(name="Lab A")


@pytest.fixture
def lab_model(lab: Lab) -> ModelVersion:
    return ModelVersion.objects.create(
        name="mouse-tumor",
        version=f"lab{lab.pk}.t1",
        task="tumor",
        sha256="0" * 64,
        structures=[0, 14, 15],
        card={},
        folder="/nonexistent",
        lab=lab,
        stored_prefix=f"labs/{lab.pk}/models/mouse-tumor/lab{lab.pk}.t1",
    )


def test_training_sets_need_a_reviewer_and_two_labelled_mice(lab: Lab) -> None:
    study = StudyFactory.create(lab=lab)
    member = _client(member_of(lab))
    answer = member.post(
        "/api/training-sets/", {"name": "x", "task": "tumor", "study": study.pk}, format="json"
    )
    assert answer.status_code == 403
    assert "reviewers" in answer.json()["detail"]
    reviewer = _client(member_of(lab, role=Membership.Role.REVIEWER))
    answer = reviewer.post(
        "/api/training-sets/", {"name": "x", "task": "tumor", "study": study.pk}, format="json"
    )
    assert answer.status_code == 400
    assert "at least two mice" in answer.json()["detail"]
    answer = reviewer.post(
        "/api/training-sets/", {"name": "x", "task": "lungs", "study": study.pk}, format="json"
    )
    assert answer.status_code == 400 and "task must be one of" in answer.json()["detail"]
    answer = reviewer.post(
        "/api/training-sets/", {"name": "x", "task": "tumor", "study": study.pk, "validation_fraction": "a"}
    )
    assert answer.status_code == 400 and "validation_fraction" in answer.json()["detail"]
    assert not TrainingSet.objects.exists()


def test_another_labs_model_is_invisible_and_promotion_needs_an_admin(
    lab: Lab, lab_model: ModelVersion
) -> None:
    other = _client(member_of(LabFactory.create(name="Lab B"), role=Membership.Role.ADMIN))
    assert lab_model.pk not in [m["id"] for m in other.get("/api/models/").json()]
    assert other.post(f"/api/models/{lab_model.pk}/promote", {"reason": "mine"}).status_code == 404
    assert other.get(f"/api/labs/{lab.pk}/models/").status_code == 404
    reviewer = _client(member_of(lab, role=Membership.Role.REVIEWER))
    answer = reviewer.post(f"/api/models/{lab_model.pk}/promote", {"reason": "better"})
    assert answer.status_code == 403 and "admins" in answer.json()["detail"]
    admin = _client(member_of(lab, role=Membership.Role.ADMIN))
    assert admin.post(f"/api/models/{lab_model.pk}/promote", {"reason": ""}).status_code == 400
    assert admin.post(f"/api/labs/{lab.pk}/models/tumor/roll-back").status_code == 409
    assert not Promotion.objects.exists()

    promoted = admin.post(f"/api/models/{lab_model.pk}/promote", {"reason": "better on our scanner"})
    assert promoted.status_code == 201, promoted.content
    assert segmentation.lab_default(lab, "tumor") == lab_model
    # Another lab keeps the shipped default (registered by migrate's sync_models).
    shipped = ModelVersion.objects.get(task="tumor", is_default=True, lab__isnull=True)
    assert segmentation.lab_default(LabFactory.create(name="Lab C"), "tumor") == shipped
    assert admin.post(f"/api/models/{lab_model.pk}/promote", {"reason": "again"}).status_code == 409
    rolled = admin.post(f"/api/labs/{lab.pk}/models/tumor/roll-back", {"reason": "check"})
    assert rolled.status_code == 201, rolled.content
    assert rolled.json()["model"]["id"] == shipped.pk and rolled.json()["by"] is not None
    assert segmentation.lab_default(lab, "tumor") == shipped
    assert [p.action for p in Promotion.objects.filter(lab=lab)] == ["roll_back", "promote"]
