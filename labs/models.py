"""Labs and memberships (a user's role in a lab).

The tables keep the names they had when these models lived in the scans app (``scans_lab``,
``scans_membership``): the move to this app changed Django's model state only (see
``migrations/0001_initial.py`` and ``scans/migrations/0003_lab_moves_to_labs.py``).
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db import models

from .querysets import LabQuerySet


class Lab(models.Model):
    name = models.CharField(max_length=120, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)
    members: models.ManyToManyField[Any, Any] = models.ManyToManyField(
        settings.AUTH_USER_MODEL, through="Membership", related_name="labs"
    )

    objects = LabQuerySet.as_manager()

    class Meta:
        db_table = "scans_lab"
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class Membership(models.Model):
    class Role(models.TextChoices):
        MEMBER = "member", "Member"
        REVIEWER = "reviewer", "Reviewer"
        ADMIN = "admin", "Lab admin"

    lab = models.ForeignKey(Lab, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.MEMBER)
    created_at = models.DateTimeField(auto_now_add=True)

    lab_path = "lab"  # to labs.Lab (the admin's scoping, labs/admin_scoping.py)

    class Meta:
        db_table = "scans_membership"
        constraints = [models.UniqueConstraint(fields=["lab", "user"], name="unique_membership")]

    def __str__(self) -> str:
        return f"{self.user} in {self.lab} ({self.role})"


class LoginFailure(models.Model):
    """A failed sign-in on ``/login/`` or ``/admin/login/`` (``labs/lockout.py``): past
    ``LABSEG_LOGIN_FAILURE_LIMIT`` of them within ``LABSEG_LOGIN_COOLOFF_MIN`` the account's
    sign-ins are refused, the right password too, until the oldest ages out."""

    username = models.CharField(max_length=150, db_index=True)
    address = models.CharField(max_length=64, blank=True)
    at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-at"]

    def __str__(self) -> str:
        return f"{self.username} from {self.address} at {self.at:%Y-%m-%d %H:%M:%S}"


class ApiToken(models.Model):
    """An API token, stored as the sha256 of the secret (``labs/tokens.py``): the database never
    holds a usable token. ``prefix`` (the secret's first characters) names it in lists; it expires
    after ``LABSEG_TOKEN_TTL_DAYS``."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens")
    prefix = models.CharField(max_length=16, db_index=True)
    digest = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField()
    last_used_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.prefix}… of {self.user}"
