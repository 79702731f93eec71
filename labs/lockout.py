"""Sign-in lockout for ``/login/`` and ``/admin/login/``: after ``LABSEG_LOGIN_FAILURE_LIMIT``
failed sign-ins of one account within ``LABSEG_LOGIN_COOLOFF_MIN`` minutes, its sign-ins are
refused, the right password too, with a plain message, until the oldest of those failures is
older than the cool-off. A successful sign-in clears the account's failures.

Failures are rows (``labs.models.LoginFailure``), so every web process sees the same count. A
refused attempt is not recorded: the lock lifts on time even while someone keeps trying.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django import forms
from django.conf import settings
from django.contrib.admin.forms import AdminAuthenticationForm
from django.contrib.auth.forms import AuthenticationForm
from django.utils import timezone

from .models import LoginFailure


def _window() -> timedelta:
    return timedelta(minutes=float(settings.LABSEG_LOGIN_COOLOFF_MIN))


def minutes_locked(username: str) -> int:
    """Minutes until ``username`` may sign in again; 0 when it is not locked."""
    since = timezone.now() - _window()
    recent = list(
        LoginFailure.objects.filter(username__iexact=username, at__gte=since).values_list("at", flat=True)
    )
    limit = int(settings.LABSEG_LOGIN_FAILURE_LIMIT)
    if len(recent) < limit:
        return 0
    # Unlocked when fewer than ``limit`` failures remain in the window.
    unlock = sorted(recent, reverse=True)[limit - 1] + _window()
    return max(1, int((unlock - timezone.now()).total_seconds() // 60) + 1)


def record_failure(username: str, address: str) -> None:
    LoginFailure.objects.filter(at__lt=timezone.now() - _window()).delete()
    LoginFailure.objects.create(username=username[:150], address=address[:64])


def clear(username: str) -> None:
    LoginFailure.objects.filter(username__iexact=username).delete()


class LockoutMixin:
    """For Django's sign-in forms: refuse a locked account before checking its password."""

    request: Any
    cleaned_data: dict[str, Any]

    def clean(self) -> dict[str, Any]:
        username = str(self.cleaned_data.get("username") or "")
        if username:
            minutes = minutes_locked(username)
            if minutes:
                raise forms.ValidationError(
                    f"Too many failed sign-ins for {username}: this account is locked. "
                    f"Try again in {minutes} minute(s), or ask an administrator.",
                    code="locked",
                )
        try:
            cleaned: dict[str, Any] = super().clean()  # type: ignore[misc]
        except forms.ValidationError as error:
            if username and getattr(error, "code", None) == "invalid_login":
                record_failure(username, (self.request.META.get("REMOTE_ADDR") or "") if self.request else "")
            raise
        if username:
            clear(username)
        return cleaned


class LockoutAuthenticationForm(LockoutMixin, AuthenticationForm):
    pass


class LockoutAdminAuthenticationForm(LockoutMixin, AdminAuthenticationForm):
    pass
