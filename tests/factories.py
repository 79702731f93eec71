"""factory_boy factories shared by every test folder."""

from __future__ import annotations

import factory
from django.contrib.auth import get_user_model
from django.contrib.auth.models import User

from labs.models import Lab, Membership
from scans.models import Mouse, Study, TimePoint, parse_offset_hours


class UserFactory(factory.django.DjangoModelFactory[User]):
    class Meta:
        model = get_user_model()
        django_get_or_create = ("username",)

    username = factory.Sequence(lambda n: f"user{n}")
    password = factory.django.Password("labseg-pass-123")


class LabFactory(factory.django.DjangoModelFactory[Lab]):
    class Meta:
        model = Lab
        django_get_or_create = ("name",)

    name = factory.Sequence(lambda n: f"Lab {n}")


class MembershipFactory(factory.django.DjangoModelFactory[Membership]):
    class Meta:
        model = Membership

    lab = factory.SubFactory(LabFactory)
    user = factory.SubFactory(UserFactory)
    role = Membership.Role.MEMBER


class StudyFactory(factory.django.DjangoModelFactory[Study]):
    class Meta:
        model = Study

    lab = factory.SubFactory(LabFactory)
    name = factory.Sequence(lambda n: f"Study {n}")


class MouseFactory(factory.django.DjangoModelFactory[Mouse]):
    class Meta:
        model = Mouse

    study = factory.SubFactory(StudyFactory)
    lab = factory.SelfAttribute("study.lab")
    identifier = factory.Sequence(lambda n: f"M{n:02d}")


class TimePointFactory(factory.django.DjangoModelFactory[TimePoint]):
    class Meta:
        model = TimePoint

    mouse = factory.SubFactory(MouseFactory)
    label = "0h"
    offset_hours = factory.LazyAttribute(lambda o: parse_offset_hours(o.label))


def member_of(lab: Lab, *, role: str = Membership.Role.MEMBER, username: str | None = None) -> User:
    """A user who belongs to ``lab`` with ``role``."""
    user = UserFactory.create(username=username) if username else UserFactory.create()
    Membership.objects.create(lab=lab, user=user, role=role)
    return user


def api_token(user: User, *, days: float | None = None) -> str:
    """A new API token of ``user`` (the secret; ``labs/tokens.py`` stores only its hash)."""
    from labs.tokens import issue

    return issue(user, days=days)[1]
