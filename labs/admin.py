"""Admin for labs and memberships, and the users' admin, all scoped by ``labs.admin_scoping``.

Only a lab's admins change it and its memberships (a lab admin cannot add a membership to
another lab, nor make themselves admin of one); labs are added and deleted, and users and groups
managed, by superusers only.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.contrib.auth import get_user_model
from django.contrib.auth.admin import GroupAdmin, UserAdmin
from django.contrib.auth.models import Group
from django.db.models import QuerySet
from django.http import HttpRequest

from .admin_scoping import (
    LabScopedAdmin,
    LabScopedInline,
    LabStaffAdmin,
    SuperuserOnlyAdmin,
    is_global,
    scope,
)
from .lockout import LockoutAdminAuthenticationForm
from .models import ApiToken, Lab, LoginFailure, Membership

__all__ = ["LabScopedAdmin", "LabStaffAdmin", "lab_scoped"]


def lab_scoped(queryset: QuerySet[Any], request: HttpRequest) -> QuerySet[Any]:
    """Every row for a superuser, else the rows of the user's labs."""
    return scope(queryset, request.user)


class MembershipInline(LabScopedInline, admin.TabularInline):  # type: ignore[type-arg]
    model = Membership
    extra = 1
    autocomplete_fields = ["user"]


@admin.register(Lab)
class LabAdmin(LabScopedAdmin):
    list_display = ["name", "member_count", "created_at"]
    search_fields = ["name"]
    inlines = [MembershipInline]

    @admin.display(description="members")
    def member_count(self, lab: Lab) -> int:
        return lab.memberships.count()

    def has_add_permission(self, request: HttpRequest) -> bool:
        return is_global(request.user) and super().has_add_permission(request)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return is_global(request.user) and super().has_delete_permission(request, obj)


@admin.register(Membership)
class MembershipAdmin(LabScopedAdmin):
    list_display = ["user", "lab", "role", "created_at"]
    list_filter = ["role", "lab"]
    search_fields = ["user__username", "lab__name"]
    autocomplete_fields = ["user"]


admin.site.unregister(get_user_model())
admin.site.unregister(Group)


@admin.register(get_user_model())
class LabUserAdmin(SuperuserOnlyAdmin, UserAdmin):  # type: ignore[type-arg]
    """Django's users' admin, for superusers only: staff flags and model permissions are global."""


@admin.register(Group)
class LabGroupAdmin(SuperuserOnlyAdmin, GroupAdmin):
    """Groups carry global model permissions: superusers only."""


# Sign-ins on /admin/login/ count toward the account's lockout (``labs/lockout.py``).
admin.site.login_form = LockoutAdminAuthenticationForm


@admin.register(ApiToken)
class ApiTokenAdmin(SuperuserOnlyAdmin):
    """Tokens are listed by their first characters (the secret is never stored); deleting one
    revokes it. New ones come from ``manage.py create_api_token``."""

    list_display = ["prefix", "user", "created_at", "expires_at", "last_used_at"]
    search_fields = ["prefix", "user__username"]
    readonly_fields = ["user", "prefix", "digest", "created_at", "expires_at", "last_used_at"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False


@admin.register(LoginFailure)
class LoginFailureAdmin(SuperuserOnlyAdmin):
    """Failed sign-ins; deleting an account's rows unlocks it before its cool-off ends."""

    list_display = ["username", "address", "at"]
    search_fields = ["username", "address"]
    readonly_fields = ["username", "address", "at"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False
