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

    class Meta:
        db_table = "scans_membership"
        constraints = [models.UniqueConstraint(fields=["lab", "user"], name="unique_membership")]

    def __str__(self) -> str:
        return f"{self.user} in {self.lab} ({self.role})"
