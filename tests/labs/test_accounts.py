"""Accounts: the sign-in lockout (``labs/lockout.py``) on /login/ and /admin/login/, and the
hashed, expiring API tokens (``labs/tokens.py``, ``labseg/authentication.py``)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.core.cache import cache
from django.db import connection
from django.test import Client
from django.utils import timezone
from rest_framework.test import APIClient

from labs.models import ApiToken, LoginFailure
from labs.tokens import digest, issue
from tests.factories import LabFactory, UserFactory, api_token, member_of

pytestmark = pytest.mark.django_db

PASSWORD = "labseg-pass-123"  # tests.factories.UserFactory's


def sign_in(client: Client, url: str, username: str, password: str) -> tuple[bool, str]:
    response = client.post(url, {"username": username, "password": password})
    return response.status_code == 302, response.content.decode()


@pytest.mark.parametrize("url", ["/login/", "/admin/login/"])
def test_after_n_failures_the_right_password_is_refused_until_the_cool_off_ends(settings, url):
    settings.LABSEG_LOGIN_FAILURE_LIMIT = 5
    settings.LABSEG_LOGIN_COOLOFF_MIN = 15
    UserFactory.create(username="ana", is_staff=True)
    client = Client()

    failures = [sign_in(client, url, "ana", f"wrong-{n}")[0] for n in range(5)]
    locked, page = sign_in(client, url, "ana", PASSWORD)
    also_other_case, _ = sign_in(client, url, "ANA", PASSWORD)

    assert failures == [False] * 5
    assert not locked and not also_other_case
    assert "Too many failed sign-ins for ana" in page and "Try again in 15 minute(s)" in page
    assert LoginFailure.objects.filter(username="ana").count() == 5  # refused tries are not counted

    # The cool-off passes: the failures are older than LABSEG_LOGIN_COOLOFF_MIN.
    LoginFailure.objects.update(at=timezone.now() - timedelta(minutes=16))
    signed_in, _ = sign_in(client, url, "ana", PASSWORD)

    assert signed_in
    assert not LoginFailure.objects.filter(username="ana").exists()  # a success clears them


def test_fewer_failures_than_the_limit_do_not_lock_and_other_accounts_are_not_locked(settings):
    settings.LABSEG_LOGIN_FAILURE_LIMIT = 3
    UserFactory.create(username="ana")
    UserFactory.create(username="ben")
    client = Client()

    for _ in range(2):
        sign_in(client, "/login/", "ana", "wrong")
    ana_ok, _ = sign_in(Client(), "/login/", "ana", PASSWORD)
    for _ in range(3):
        sign_in(client, "/login/", "ana", "wrong")
    ben_ok, _ = sign_in(Client(), "/login/", "ben", PASSWORD)

    assert ana_ok and ben_ok
    assert not sign_in(Client(), "/login/", "ana", PASSWORD)[0]


def test_a_token_is_stored_as_its_sha256_only(settings):
    settings.LABSEG_TOKEN_TTL_DAYS = 90
    user = member_of(LabFactory.create(), username="robot")

    token, secret = issue(user)

    with connection.cursor() as cursor:
        cursor.execute(f"SELECT * FROM {ApiToken._meta.db_table}")
        stored = " ".join(str(value) for row in cursor.fetchall() for value in row)
    assert secret not in stored and digest(secret) in stored
    assert token.prefix == secret[:8]
    assert abs((token.expires_at - timezone.now()) - timedelta(days=90)) < timedelta(minutes=1)


def test_a_valid_token_signs_in_and_an_expired_one_answers_401_in_words():
    user = member_of(LabFactory.create(), username="robot")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {api_token(user)}")
    expired = APIClient()
    expired.credentials(HTTP_AUTHORIZATION=f"Token {api_token(user, days=1)}")
    ApiToken.objects.filter(expires_at__lt=timezone.now() + timedelta(days=2)).update(
        expires_at=timezone.now() - timedelta(seconds=1)
    )

    ok = client.get("/api/labs/")
    refused = expired.get("/api/labs/")

    assert ok.status_code == 200
    assert ApiToken.objects.filter(last_used_at__isnull=False).count() == 1
    assert refused.status_code == 401
    assert refused.headers["WWW-Authenticate"] == "Token"
    assert "This API token expired on" in refused.json()["detail"]


def test_bad_tokens_answer_401_then_429_in_bursts(settings):
    cache.clear()
    settings.LABSEG_AUTH_FAILURES_PER_MIN = 3
    guesser = APIClient()
    guesser.credentials(HTTP_AUTHORIZATION="Token not-a-real-token")

    codes = [guesser.get("/api/labs/").status_code for _ in range(5)]

    assert codes == [401, 401, 401, 429, 429]
    cache.clear()


def test_plain_drf_tokens_are_hashed_by_the_migration(settings):
    """The data migration: an ``authtoken_token`` row becomes an ApiToken with the same secret."""
    from importlib import import_module

    from django.apps import apps

    settings.LABSEG_TOKEN_TTL_DAYS = 90
    user = UserFactory.create(username="old-client")
    with connection.cursor() as cursor:
        cursor.execute(
            "CREATE TABLE IF NOT EXISTS authtoken_token "
            "(key varchar(40) PRIMARY KEY, created timestamptz, user_id integer)"
        )
        cursor.execute(
            "INSERT INTO authtoken_token VALUES (%s, now(), %s)",
            ["0123456789abcdef0123456789abcdef01234567", user.pk],
        )

    migration = import_module("labs.migrations.0003_hash_plain_tokens")
    with connection.schema_editor() as editor:
        migration.hash_plain_tokens(apps, editor)

    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM authtoken_token")
        assert cursor.fetchone() == (0,)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Token 0123456789abcdef0123456789abcdef01234567")
    assert client.get("/api/labs/").status_code == 200
