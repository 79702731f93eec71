"""Admin for labs and memberships, and ``LabScopedAdmin``: the base every app's admin uses to
limit non-superusers to the rows of their labs."""

from __future__ import annotations

from typing import Any

import rules
from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest

from .models import Lab, Membership


def lab_scoped(queryset: QuerySet[Any], request: HttpRequest) -> QuerySet[Any]:
    """Every row for a superuser, else the rows of the user's labs (``visible_to``)."""
    if rules.is_superuser(request.user):
        return queryset
    return queryset.visible_to(request.user)  # type: ignore[attr-defined]


class LabScopedAdmin(admin.ModelAdmin):
    """Limits non-superusers to the rows of their labs (the model's ``visible_to``)."""

    def get_queryset(self, request: HttpRequest) -> QuerySet[Any]:
        return lab_scoped(super().get_queryset(request), request)


class LabStaffAdmin(LabScopedAdmin):
    """Read-only pages for staff who belong to a lab (the ``labs.staff`` rule), rows limited to
    their labs; nothing is added, changed or deleted by hand."""

    def _is_lab_staff(self, request: HttpRequest) -> bool:
        return bool(rules.test_rule("labs.staff", request.user))

    def has_module_permission(self, request: HttpRequest) -> bool:
        return self._is_lab_staff(request)

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return self._is_lab_staff(request)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 1
    autocomplete_fields = ["user"]


@admin.register(Lab)
class LabAdmin(admin.ModelAdmin):
    list_display = ["name", "member_count", "created_at"]
    search_fields = ["name"]
    inlines = [MembershipInline]

    @admin.display(description="members")
    def member_count(self, lab: Lab) -> int:
        return lab.memberships.count()


@admin.register(Membership)
class MembershipAdmin(admin.ModelAdmin):
    list_display = ["user", "lab", "role", "created_at"]
    list_filter = ["role", "lab"]
    search_fields = ["user__username", "lab__name"]
