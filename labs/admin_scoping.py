"""The admin's lab scoping: ``LabScopedAdmin``, the base of every admin whose rows belong to a lab.

For a user who is not a superuser, every changelist, change page, dropdown (a foreign key to a lab,
a study, a scan, a user, ...), list filter, action and delete is limited to the user's labs, and
each change or delete also needs the user's role in the row's lab (``labs.rules``), on top of
Django's model permissions: a staff user with every model permission still edits only the labs
they administer. Superusers stay global.

A model's way to its lab is its ``lab_path`` (the same one ``labs.querysets.LabScopedQuerySet``
follows); a ``Lab`` is its own lab. Rows of soft-deletable models (``deleted_path ==
"deleted_at"``: scans) are never removed by an admin cascade: deleting a study that still holds
scans is refused until its scans are in the bin (``scans/deletion.py``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import rules
from django.contrib import admin
from django.contrib.admin.utils import NestedObjects, get_fields_from_path
from django.contrib.auth import get_user_model
from django.core.exceptions import PermissionDenied
from django.db import models, router
from django.db.models import QuerySet
from django.http import HttpRequest

from .models import Lab, Membership

#: The roles that pass each lab rule (``labs.rules.RULES``).
ROLES: dict[str, tuple[str, ...]] = {
    "labs.member": tuple(Membership.Role.values),
    "labs.reviewer": (Membership.Role.REVIEWER, Membership.Role.ADMIN),
    "labs.admin": (Membership.Role.ADMIN,),
}


def is_global(user: Any) -> bool:
    """Superusers see and manage every lab in the admin."""
    return bool(user.is_authenticated and user.is_active and user.is_superuser)


def lab_path_of(model: type[models.Model]) -> str | None:
    """The lookup from ``model`` to its lab: "" for ``Lab``, the model's ``lab_path``, or None for
    a model that belongs to no lab."""
    if issubclass(model, Lab):
        return ""
    path = getattr(model, "lab_path", None)
    return None if path is None else str(path)


def labs_where(user: Any, rule: str = "labs.member") -> QuerySet[Lab]:
    """The labs in which ``user`` holds a role that passes ``rule``."""
    roles = Membership.objects.filter(user_id=user.pk, role__in=ROLES[rule]).values("lab_id")
    return Lab.objects.filter(pk__in=roles)


def scope(queryset: QuerySet[Any], user: Any, rule: str = "labs.member") -> QuerySet[Any]:
    """The rows of ``queryset`` in the labs where ``user`` passes ``rule``: every row for a
    superuser, none of a model without a lab. Rows of a scan in the bin are hidden, as in
    ``LabScopedQuerySet.visible_to``."""
    if is_global(user):
        return queryset
    if not user.is_authenticated:
        return queryset.none()
    model = queryset.model
    if issubclass(model, get_user_model()):
        # The people the user works with: members of the same labs (and the user).
        colleagues = Membership.objects.filter(lab__in=labs_where(user, rule)).values("user_id")
        return queryset.filter(pk__in=colleagues)
    path = lab_path_of(model)
    if path is None:
        return queryset.none()
    rows = queryset.filter(**{f"{path}__in" if path else "pk__in": labs_where(user, rule)})
    deleted_path = getattr(model, "deleted_path", None)
    if deleted_path:
        rows = rows.filter(**{f"{deleted_path}__isnull": True})
    return rows


class LabScopedMixin:
    """What an admin and an inline share: role checks and scoped dropdowns."""

    #: Rule (``labs.rules.RULES``) to see a row, and to add, change or delete one. Curation is a
    #: lab admin's job (``scans/curation.py``), and so is deletion (``scans/deletion.py``).
    view_rule = "labs.member"
    change_rule = "labs.admin"
    delete_rule = "labs.admin"

    def rule_holds(self, request: HttpRequest, rule: str, obj: Any = None) -> bool:
        """``rule`` holds for the user on ``obj``'s lab; without ``obj``, in at least one lab."""
        user = request.user
        if is_global(user):
            return True
        if obj is None:
            return labs_where(user, rule).exists()
        return bool(rules.test_rule(rule, user, obj))

    def formfield_for_foreignkey(self, db_field: Any, request: HttpRequest, **kwargs: Any) -> Any:
        # A row may point only at rows of the labs where the user holds the change role: another
        # lab's id posted by hand fails the form's validation ("Select a valid choice").
        if "queryset" not in kwargs and not is_global(request.user):
            related = db_field.remote_field.model
            kwargs["queryset"] = scope(related._default_manager.all(), request.user, self.change_rule)
        return super().formfield_for_foreignkey(db_field, request, **kwargs)  # type: ignore[misc]

    def formfield_for_manytomany(self, db_field: Any, request: HttpRequest, **kwargs: Any) -> Any:
        if "queryset" not in kwargs and not is_global(request.user):
            related = db_field.remote_field.model
            kwargs["queryset"] = scope(related._default_manager.all(), request.user, self.change_rule)
        return super().formfield_for_manytomany(db_field, request, **kwargs)  # type: ignore[misc]

    def get_autocomplete_fields(self, request: HttpRequest) -> list[str]:
        # Autocompletion asks the related model's admin (the users' admin is for superusers only);
        # others get a plain dropdown of the scoped choices.
        fields = super().get_autocomplete_fields(request)  # type: ignore[misc]
        return list(fields) if is_global(request.user) else []


class LabScopedAdmin(LabScopedMixin, admin.ModelAdmin):  # type: ignore[type-arg]
    """The base of every admin of a model that belongs to a lab (see the module's docstring)."""

    def get_queryset(self, request: HttpRequest) -> QuerySet[Any]:
        return scope(super().get_queryset(request), request.user)

    def get_list_filter(self, request: HttpRequest) -> list[Any]:
        # A filter by a related row (lab, study, model version) offers only the rows that the
        # scoped list holds, never every lab's.
        filters: list[Any] = []
        for item in super().get_list_filter(request):
            if isinstance(item, str) and get_fields_from_path(self.model, item)[-1].is_relation:
                item = (item, admin.RelatedOnlyFieldListFilter)
            filters.append(item)
        return filters

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return super().has_view_permission(request, obj) and self.rule_holds(request, self.view_rule, obj)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return super().has_add_permission(request) and self.rule_holds(request, self.change_rule)

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return super().has_change_permission(request, obj) and self.rule_holds(request, self.change_rule, obj)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return super().has_delete_permission(request, obj) and self.rule_holds(request, self.delete_rule, obj)

    def save_model(self, request: HttpRequest, obj: Any, form: Any, change: bool) -> None:
        # The row as it will be saved (its new lab included) must be in a lab the user manages.
        if not self.rule_holds(request, self.change_rule, obj):
            raise PermissionDenied
        super().save_model(request, obj, form, change)

    def delete_model(self, request: HttpRequest, obj: Any) -> None:
        if not self.rule_holds(request, self.delete_rule, obj):
            raise PermissionDenied
        super().delete_model(request, obj)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        if not all(self.rule_holds(request, self.delete_rule, obj) for obj in queryset):
            raise PermissionDenied
        super().delete_queryset(request, queryset)

    def get_deleted_objects(self, objs: Sequence[Any] | QuerySet[Any], request: HttpRequest) -> Any:
        deleted, counts, perms_needed, protected = super().get_deleted_objects(objs, request)
        kept = self.kept_rows(objs)
        if kept:  # the delete is refused either way: name what to delete first
            return deleted, counts, set(), [*protected, *kept]
        return deleted, counts, perms_needed, protected

    def kept_rows(self, objs: Iterable[Any]) -> list[str]:
        """Rows of soft-deletable models (scans) that deleting ``objs`` would remove: listed as
        protected, so the admin refuses the delete and names them."""
        collector = NestedObjects(using=router.db_for_write(self.model))
        collector.collect(list(objs))
        return [
            f"{model._meta.verbose_name} {row}: delete it first (it goes to the bin)"
            for model, rows in collector.data.items()
            if model is not self.model and getattr(model, "deleted_path", None) == "deleted_at"
            for row in rows
        ]


class LabScopedInline(LabScopedMixin):
    """An inline of a lab-scoped admin: changes need the change role in the parent's lab."""

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return super().has_add_permission(request, obj) and self.rule_holds(  # type: ignore[misc]
            request, self.change_rule, obj
        )

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return super().has_change_permission(request, obj) and self.rule_holds(  # type: ignore[misc]
            request, self.change_rule, obj
        )

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return super().has_delete_permission(request, obj) and self.rule_holds(  # type: ignore[misc]
            request, self.delete_rule, obj
        )


class LabStaffAdmin(LabScopedAdmin):
    """Read-only pages for staff who belong to a lab (the ``labs.staff`` rule) without model
    permissions (the review pages), rows limited to their labs; nothing is added, changed or
    deleted by hand."""

    def _is_lab_staff(self, request: HttpRequest) -> bool:
        return bool(rules.test_rule("labs.staff", request.user))

    def has_module_permission(self, request: HttpRequest) -> bool:
        return self._is_lab_staff(request)

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return self._is_lab_staff(request) and self.rule_holds(request, self.view_rule, obj)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class SuperuserOnlyAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    """Global rows (users, groups, the model registry's edits) are managed by superusers only."""

    def has_module_permission(self, request: HttpRequest) -> bool:
        return is_global(request.user)

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return is_global(request.user)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return is_global(request.user) and super().has_add_permission(request)

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return is_global(request.user) and super().has_change_permission(request, obj)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return is_global(request.user) and super().has_delete_permission(request, obj)
