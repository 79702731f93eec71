"""Ids that are not ids, and texts with a NUL character, answer 400 in words, never 500
(labseg/ids.py, labseg/refusals.py). Ids: "null", a superscript digit ("²".isdigit() is True but
int() refuses it), a number past bigint. Each case was a 500; tests/labseg/test_schemathesis.py
found PATCH /api/mice/{id}/ {"cohort": "null"} and GET /api/scans/?time_point=<text with NUL>."""

from __future__ import annotations

from typing import Any

import pytest
from rest_framework.test import APIClient

from labs.models import Membership
from labseg.ids import MAX_ID, is_id, parse_id
from labseg.refusals import Refused
from scans.models import Mouse
from scans.services import resolve_upload_target
from scans.validation import ScanRejected
from tests.factories import LabFactory, MouseFactory, StudyFactory, member_of

pytestmark = pytest.mark.django_db

NOT_IDS = ["null", "²", "١٢x", str(MAX_ID + 1), "99999999999999999999999", "-1", "1.5", "", " "]


@pytest.fixture
def admin() -> Any:
    return member_of(LabFactory.create(name="Ids lab"), role=Membership.Role.ADMIN)


@pytest.fixture
def mouse(admin: Any) -> Mouse:
    lab = admin.memberships.get().lab
    return MouseFactory.create(study=StudyFactory.create(lab=lab))


@pytest.fixture
def client(admin: Any) -> APIClient:
    client = APIClient()
    client.force_authenticate(admin)
    return client


def test_parse_id_takes_whole_numbers_that_fit_bigint_only() -> None:
    assert parse_id("42", "scan") == 42 and parse_id(7, "scan") == 7 and parse_id(str(MAX_ID), "x") == MAX_ID
    for value in [*NOT_IDS, None, True, 1.5, [1], {"id": 1}]:
        assert not is_id(value)
        with pytest.raises(Refused, match="must be the id"):
            parse_id(value, "scan")


@pytest.mark.parametrize("cohort", ["null", "²", str(MAX_ID + 1), "abc"])
def test_a_mouse_cohort_that_is_not_an_id_is_refused_and_nothing_changes(
    client: APIClient, mouse: Mouse, cohort: str
) -> None:
    answer = client.patch(f"/api/mice/{mouse.pk}/", {"cohort": cohort, "notes": "changed"})
    assert answer.status_code == 400, answer.content
    assert "cohort must be the id" in answer.json()["detail"]
    mouse.refresh_from_db()
    assert (mouse.cohort, mouse.notes) == (None, "")


@pytest.mark.parametrize("value", ["²", str(MAX_ID + 1), "null"])
def test_merge_and_move_targets_that_are_not_ids_answer_400(
    client: APIClient, mouse: Mouse, value: str
) -> None:
    merged = client.post(f"/api/mice/{mouse.pk}/merge", {"into": value}, format="json")
    assert merged.status_code == 400 and "into must be the id" in merged.json()["detail"]


@pytest.mark.parametrize(
    "url",
    [
        "/api/scans/?study=²",
        "/api/scans/?mouse=²",
        f"/api/scans/?lab={MAX_ID + 1}",
        "/api/mice/?study=²",
        "/api/jobs/?scan=²",
        f"/api/jobs/?scan={MAX_ID + 1}",
        f"/api/jobs/?ids=1,{MAX_ID + 1}",
        "/api/jobs/?ids=1,²",
    ],
)
def test_filters_that_are_not_ids_answer_400(client: APIClient, url: str) -> None:
    answer = client.get(url)
    assert answer.status_code == 400, answer.content
    assert "must be" in str(answer.json())


@pytest.mark.parametrize("study", ["²", str(MAX_ID + 1), "99999999999999999999999"])
def test_an_upload_to_a_study_named_like_a_huge_number_is_refused_in_words(admin: Any, study: str) -> None:
    with pytest.raises(ScanRejected) as refused:
        resolve_upload_target(user=admin, study=study, lab=None)
    assert refused.value.status == 404 and "no study" in refused.value.message


def test_an_upload_to_a_lab_named_like_a_huge_number_is_refused_in_words(admin: Any) -> None:
    with pytest.raises(ScanRejected, match="not a member of a lab"):
        resolve_upload_target(user=admin, study="New study", lab=str(MAX_ID + 1))


def test_a_text_with_a_nul_character_answers_400_and_stores_nothing(client: APIClient, mouse: Mouse) -> None:
    # GET /api/scans/?time_point=...%00... was a 500 (schemathesis, PostgreSQL refuses NUL in text).
    listed = client.get("/api/scans/", {"time_point": "8d\x00", "mouse_name": "M\x00"})
    assert listed.status_code == 400 and "NUL character" in listed.json()["detail"]
    patched = client.patch(f"/api/mice/{mouse.pk}/", {"notes": "a\x00b", "strain": "C57BL/6"}, format="json")
    assert patched.status_code == 400 and "NUL character" in patched.json()["detail"]
    mouse.refresh_from_db()
    assert (mouse.notes, mouse.strain) == ("", "")
