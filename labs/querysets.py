"""The lab-scoped queryset: every app limits rows to the user's labs with ``visible_to(user)``.

A model that belongs to a lab declares the path from itself to ``Lab`` once
(``LabScopedQuerySet.as_manager(lab_path="scan__lab")``); ``Lab`` itself uses ``LabQuerySet``.
"""

from __future__ import annotations

from typing import Any

from django.db import models


def _signed_in(user: Any) -> bool:
    return user is not None and bool(user.is_authenticated)


class LabScopedQuerySet(models.QuerySet):
    """A queryset that knows the path from its model to ``Lab`` (``lab_path``)."""

    lab_path = "lab"

    @classmethod
    def as_manager(cls, lab_path: str = "lab") -> Any:  # type: ignore[override]
        scoped = type(f"{cls.__name__}_{lab_path.replace('__', '_')}", (cls,), {"lab_path": lab_path})
        manager = models.Manager.from_queryset(scoped)()
        manager._built_with_as_manager = True
        return manager

    def visible_to(self, user: Any) -> LabScopedQuerySet:
        """Rows of the labs the user is a member of (none for anonymous users)."""
        if not _signed_in(user):
            return self.none()
        return self.filter(**{f"{self.lab_path}__memberships__user": user}).distinct()

    def in_lab(self, lab: Any) -> LabScopedQuerySet:
        return self.filter(**{self.lab_path: lab})


class LabQuerySet(models.QuerySet):
    """Labs themselves: ``visible_to(user)`` is the labs the user belongs to."""

    def visible_to(self, user: Any) -> LabQuerySet:
        if not _signed_in(user):
            return self.none()
        return self.filter(memberships__user=user).distinct()
