"""The lab rules (``labs.rules``): one set of predicates for services, views, DRF, admin and
templates, and the lab-scoped queryset every app uses."""

from __future__ import annotations

import pytest
import rules
from django.contrib.auth.models import AnonymousUser
from django.template import Context, Template
from rest_framework.test import APIRequestFactory

from labs.models import Lab, Membership
from labs.permissions import LabRule
from labs.querysets import LabScopedQuerySet
from labs.rules import lab_of, role_of
from scans.models import Mouse, Study, TimePoint
from tests.factories import LabFactory, TimePointFactory, UserFactory, member_of

pytestmark = pytest.mark.django_db


@pytest.fixture
def time_point() -> TimePoint:
    return TimePointFactory.create(mouse__study__lab=LabFactory.create(name="Imaging lab"))


def test_lab_of_follows_any_row_to_its_lab(time_point):
    lab = time_point.mouse.lab

    assert lab_of(lab) is lab
    assert lab_of(time_point.mouse.study) == lab
    assert lab_of(time_point) == lab  # time point -> mouse -> lab
    assert lab_of(None) is None
    assert lab_of(object()) is None
    # A row two steps from a scan (a lesion of a prediction, a transition of an annotation).
    scan_row = type("Row", (), {"lab": lab})()
    lesion = type("Row", (), {"prediction": type("Row", (), {"scan": scan_row})()})()
    transition = type("Row", (), {"annotation": type("Row", (), {"scan": scan_row})()})()
    assert lab_of(lesion) == lab and lab_of(transition) == lab


@pytest.mark.parametrize(
    ("role", "member", "reviewer", "admin"),
    [
        (Membership.Role.MEMBER, True, False, False),
        (Membership.Role.REVIEWER, True, True, False),
        (Membership.Role.ADMIN, True, True, True),
    ],
)
def test_each_role_passes_the_rules_of_its_rank(time_point, role, member, reviewer, admin):
    user = member_of(time_point.mouse.lab, role=role)

    assert role_of(user, time_point) == role
    assert rules.test_rule("labs.member", user, time_point) is member
    assert rules.test_rule("labs.reviewer", user, time_point) is reviewer
    assert rules.test_rule("labs.admin", user, time_point) is admin


def test_no_role_in_another_lab_for_anyone_even_a_superuser(time_point):
    other = LabFactory(name="Other lab")
    reviewer_elsewhere = member_of(other, role=Membership.Role.ADMIN)
    superuser = UserFactory(is_superuser=True, is_staff=True)

    for user in (reviewer_elsewhere, superuser, AnonymousUser()):
        assert role_of(user, time_point) is None
        assert not rules.test_rule("labs.member", user, time_point)
        assert not rules.test_rule("labs.reviewer", user, time_point)


def test_lab_staff_are_active_staff_who_belong_to_a_lab_or_superusers(time_point):
    staff_member = member_of(time_point.mouse.lab)
    staff_member.is_staff = True
    staff_without_lab = UserFactory(is_staff=True)
    member_not_staff = member_of(time_point.mouse.lab)
    superuser = UserFactory(is_staff=True, is_superuser=True)

    assert rules.test_rule("labs.staff", staff_member)
    assert rules.test_rule("labs.staff", superuser)
    assert not rules.test_rule("labs.staff", staff_without_lab)
    assert not rules.test_rule("labs.staff", member_not_staff)


def test_visible_to_limits_every_model_to_the_users_labs(time_point):
    mine = time_point.mouse.lab
    theirs = TimePointFactory(mouse__study__lab=LabFactory(name="Other lab")).mouse.lab
    user = member_of(mine)

    assert list(Lab.objects.visible_to(user)) == [mine]
    assert list(Study.objects.visible_to(user).values_list("lab", flat=True)) == [mine.pk]
    assert list(Mouse.objects.visible_to(user)) == [time_point.mouse]
    assert list(TimePoint.objects.visible_to(user)) == [time_point]
    assert not Study.objects.visible_to(AnonymousUser()).exists()
    assert Study.objects.in_lab(theirs).count() == 1
    assert isinstance(Study.objects.all(), LabScopedQuerySet)


def test_the_same_rule_serves_drf_and_templates(time_point):
    reviewer = member_of(time_point.mouse.lab, role=Membership.Role.REVIEWER)
    member = member_of(time_point.mouse.lab)
    view = type("View", (), {"lab_rule": "labs.reviewer"})()
    template = Template('{% load rules %}{% test_rule "labs.reviewer" user row as ok %}{{ ok|yesno }}')

    for user, expected in ((reviewer, True), (member, False)):
        request = APIRequestFactory().get("/")
        request.user = user
        assert LabRule().has_object_permission(request, view, time_point) is expected
        rendered = template.render(Context({"user": user, "row": time_point}))
        assert rendered == ("yes" if expected else "no")
