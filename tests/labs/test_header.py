"""The header's lab context (``labs.context_processors.lab_header``): which labs, which lab the
page shows and the user's role there."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import AnonymousUser, User
from django.contrib.sessions.backends.base import SessionBase
from django.http import HttpRequest
from django.test import Client, RequestFactory

from labs.context_processors import lab_header
from labs.current import SESSION_KEY, show_lab
from labs.models import Membership
from tests.factories import LabFactory, member_of

pytestmark = pytest.mark.django_db


def request_for(user: User | AnonymousUser, session: dict[str, Any] | None = None) -> HttpRequest:
    request = RequestFactory().get("/")
    request.user = user
    # An in-memory session (no session key: nothing is loaded or saved) holding ``session``.
    request.session = SessionBase()
    request.session.update(session or {})
    return request


def test_the_header_names_the_session_lab_and_the_role_in_it():
    first, second = LabFactory(name="A lab"), LabFactory(name="B lab")
    user = member_of(first)
    Membership.objects.create(lab=second, user=user, role=Membership.Role.REVIEWER)

    default = lab_header(request_for(user))
    chosen = lab_header(request_for(user, {SESSION_KEY: second.pk}))

    assert (default["labs"], default["current_lab"], default["role"]) == ([first, second], first, "member")
    assert (chosen["current_lab"], chosen["role"]) == (second, "reviewer")


def test_a_page_about_a_row_shows_that_rows_lab():
    first, second = LabFactory(name="A lab"), LabFactory(name="B lab")
    user = member_of(first, role=Membership.Role.ADMIN)
    Membership.objects.create(lab=second, user=user)
    request = request_for(user, {SESSION_KEY: first.pk})

    show_lab(request, second)

    assert (lab_header(request)["current_lab"], lab_header(request)["role"]) == (second, "member")


def test_anonymous_visitors_get_an_empty_header():
    assert lab_header(request_for(AnonymousUser())) == {"labs": [], "current_lab": None, "role": None}


def test_the_rendered_header_shows_the_role_in_the_current_lab():
    lab = LabFactory(name="Imaging lab")
    client = Client()
    client.force_login(member_of(lab, role=Membership.Role.REVIEWER))

    page = client.get("/").content.decode()

    assert "Reviewer of Imaging lab" in page
