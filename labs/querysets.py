"""The lab-scoped queryset: every app limits rows to the user's labs with ``visible_to(user)``.

A model that belongs to a lab names the path from itself to ``Lab`` once, as the class attribute
``lab_path`` (``"scan__lab"`` for a row of a scan), and declares
``objects = LabScopedQuerySet.as_manager()``; ``Lab`` itself uses ``LabQuerySet``.
"""

from __future__ import annotations

from typing import Any, Self, TypeVar

from django.db import models

_M = TypeVar("_M", bound=models.Model)


def _signed_in(user: Any) -> bool:
    return user is not None and bool(user.is_authenticated)


class LabScopedQuerySet(models.QuerySet[_M]):
    """Rows of a model whose ``lab_path`` class attribute leads to ``Lab`` ("lab" when absent)."""

    @property
    def lab_path(self) -> str:
        return str(getattr(self.model, "lab_path", "lab"))

    def visible_to(self, user: Any) -> Self:
        """Rows of the labs the user is a member of (none for anonymous users)."""
        if not _signed_in(user):
            return self.none()
        rows = self.filter(**{f"{self.lab_path}__memberships__user": user})
        # A model whose rows belong to a scan names the scan's ``deleted_at`` as ``deleted_path``:
        # a scan in the bin hides with everything made from it.
        deleted_path = getattr(self.model, "deleted_path", None)
        if deleted_path:
            rows = rows.filter(**{f"{deleted_path}__isnull": True})
        return rows.distinct()

    def in_lab(self, lab: Any) -> Self:
        return self.filter(**{self.lab_path: lab})


class LabQuerySet(models.QuerySet[Any]):
    """Labs themselves: ``visible_to(user)`` is the labs the user belongs to."""

    def visible_to(self, user: Any) -> Self:
        if not _signed_in(user):
            return self.none()
        return self.filter(memberships__user=user).distinct()
