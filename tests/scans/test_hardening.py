"""Inputs that used to reach a 500 or slip through, and the production settings: names with control
or bidi characters, decomposed Unicode, broken intensity scaling, unbounded page sizes, weak
passwords, bursts of anonymous requests, and ``check --deploy``."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import unicodedata

import nibabel as nib
import pytest
from django.contrib.auth import get_user_model
from django.core.cache import cache
from django.core.management import call_command
from django.core.management.base import CommandError
from rest_framework.request import Request
from rest_framework.test import APIClient, APIRequestFactory
from rest_framework.throttling import UserRateThrottle

from labseg.pagination import BoundedLimitOffsetPagination
from scans.models import Mouse, Scan
from tests.conftest import REPO

from .conftest import upload_scan
from .niftis import nifti_bytes, volume


@pytest.mark.parametrize(
    ("name", "code"),
    [("N1\r\nSet-Cookie: pwn=1", "U+000A, U+000D"), ("M\u202e10", "U+202E"), ("M\u200b1", "U+200B")],
)
def test_names_with_control_or_bidi_characters_are_refused(client_a, media_root, name, code) -> None:
    response = upload_scan(client_a, nifti_bytes(volume()), mouse=name)

    assert response.status_code == 400
    assert f"invisible or control characters ({code})" in response.json()["detail"]
    assert not Scan.objects.exists()


def test_a_decomposed_name_is_the_same_mouse_as_its_composed_spelling(client_a, media_root) -> None:
    composed = unicodedata.normalize("NFC", "Mäus-1")
    decomposed = unicodedata.normalize("NFD", "Mäus-1")
    assert composed != decomposed

    first = upload_scan(client_a, nifti_bytes(volume(seed=1)), mouse=composed, time_point="0h")
    second = upload_scan(client_a, nifti_bytes(volume(seed=2)), mouse=decomposed, time_point="24h")

    assert first.status_code == second.status_code == 201
    assert list(Mouse.objects.values_list("identifier", flat=True)) == [composed]


@pytest.mark.parametrize(("slope", "inter"), [(float("inf"), 0.0), (1e30, 0.0), (1.0, -1e20)])
def test_broken_intensity_scaling_is_refused_with_a_message(client_a, media_root, slope, inter) -> None:
    image = nib.Nifti1Image(volume(), None)
    # Written into the header's fields directly: nibabel's setter refuses such values.
    image.header._structarr["scl_slope"] = slope
    image.header._structarr["scl_inter"] = inter
    buffer = io.BytesIO()
    image.to_file_map({"image": nib.FileHolder(fileobj=buffer)})

    response = upload_scan(client_a, buffer.getvalue(), filename="CT_M01_0h.nii")

    assert response.status_code == 400
    assert "intensity scaling" in response.json()["detail"]
    assert not Scan.objects.exists()


def test_a_page_never_holds_more_than_1000_rows() -> None:
    request = Request(APIRequestFactory().get("/api/scans/", {"limit": "1000000000"}))

    assert BoundedLimitOffsetPagination().get_limit(request) == 1000


def test_guessing_tokens_is_slowed_down_and_bursts_are_throttled(db, settings, monkeypatch) -> None:
    cache.clear()
    settings.LABSEG_AUTH_FAILURES_PER_MIN = 5
    guesser = APIClient()
    guesser.credentials(HTTP_AUTHORIZATION="Token not-a-real-token")

    codes = [guesser.get("/api/scans/").status_code for _ in range(8)]
    waited = guesser.get("/api/scans/")

    assert codes[:5] == [401] * 5 and codes[5:] == [429] * 3  # 401: "not valid", counted
    assert "throttled" in waited.json()["detail"].lower()
    # A signed-in client past its rate gets 429 too (DRF's user throttle).
    cache.clear()
    monkeypatch.setattr(UserRateThrottle, "THROTTLE_RATES", {"anon": "5/min", "user": "3/min"})
    user = get_user_model().objects.create_user("burst", password="tall-mice-31")
    client = APIClient()
    client.force_authenticate(user)
    assert [client.get("/api/structures/").status_code for _ in range(5)] == [200, 200, 200, 429, 429]


def test_add_lab_member_applies_the_password_validators(db) -> None:
    for weak in ("1", "12345678", "password123"):
        with pytest.raises(CommandError, match="too weak"):
            call_command("add_lab_member", "--lab", "L", "--user", "ana", "--create-user", "--password", weak)
    call_command(
        "add_lab_member", "--lab", "L", "--user", "ana", "--create-user", "--password", "tall-mice-31"
    )


def test_production_settings_pass_check_deploy_with_no_warning() -> None:
    # The browser tests' DJANGO_ALLOW_ASYNC_UNSAFE is theirs, not production's.
    env = {
        **{k: v for k, v in os.environ.items() if k != "DJANGO_ALLOW_ASYNC_UNSAFE"},
        "DJANGO_DEBUG": "false",
        "DJANGO_SECRET_KEY": "a" * 20 + "production-key-with-enough-variety-0123456789-XYZ!",
        "DJANGO_ALLOWED_HOSTS": "labseg.example.org",
        "DJANGO_SETTINGS_MODULE": "labseg.settings",
    }
    done = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert done.returncode == 0, done.stdout + done.stderr
    assert "System check identified no issues" in done.stdout
