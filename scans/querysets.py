"""Reusable filters. ``visible_to(user)`` scopes any lab-owned row to the user's labs."""

from __future__ import annotations

from typing import Any

from django.db import models


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
        if user is None or not user.is_authenticated:
            return self.none()
        return self.filter(**{f"{self.lab_path}__memberships__user": user}).distinct()

    def in_lab(self, lab: Any) -> LabScopedQuerySet:
        return self.filter(**{self.lab_path: lab})
