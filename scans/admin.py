"""Admin for the scans models: useful lists, filters and search.

Superusers see every lab; other staff users see and manage only the rows of their own labs, as
their role there allows (``labs.admin_scoping.LabScopedAdmin``). A scan deleted here goes to the
bin (``scans/deletion.py``), as from the API. Labs and memberships are in ``labs/admin.py``;
annotations have one admin, the review app's "Annotations to review" (``review/admin.py``),
because every change of their status goes through the annotation lifecycle (``review.services``).
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.urls import reverse

from labs.admin_scoping import LabScopedAdmin, LabScopedInline, is_global
from labseg.refusals import Refused

from . import deletion
from .models import (
    BodyWeight,
    CaliperMeasurement,
    Cohort,
    Mouse,
    Scan,
    Study,
    TimePoint,
    UploadSession,
)


class BinAdmin(LabScopedAdmin):
    """Deletes go to the bin (``scans/deletion.py``: restorable, purged with their files after
    ``LABSEG_BIN_RETENTION_DAYS``), never a hard delete: the delete page, and the "move to the bin"
    action in place of Django's bulk delete."""

    actions = ["move_to_bin"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Any]:
        # Rows in the bin are listed by the bin (``GET /api/bin/``), not here.
        return super().get_queryset(request).filter(deleted_at__isnull=True)

    def get_actions(self, request: HttpRequest) -> dict[str, Any]:
        actions = super().get_actions(request)
        actions.pop("delete_selected", None)  # a hard delete: "move to the bin" replaces it
        return actions

    @admin.action(description="Move the selected rows to the bin", permissions=["delete"])
    def move_to_bin(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        moved = self._to_bin(request, list(queryset.select_related("lab")))
        name = self.model._meta.verbose_name_plural if moved != 1 else self.model._meta.verbose_name
        self.message_user(request, f"{moved} {name} moved to the bin; {self._restorable()}")

    def send_to_bin(self, row: Any, user: Any) -> None:
        """Each admin names its row's bin function (scans/deletion.py); there is no default."""
        raise NotImplementedError(f"{type(self).__name__} must say how its rows go to the bin")

    def delete_model(self, request: HttpRequest, obj: Any) -> None:
        self._to_bin(request, [obj])

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        self._to_bin(request, list(queryset.select_related("lab")))

    def _to_bin(self, request: HttpRequest, scans: list[Any]) -> int:
        moved = 0
        for scan in scans:
            if not self.has_delete_permission(request, scan):
                refusal = f"Not moved to the bin: {scan} (only a lab admin can)"
                self.message_user(request, refusal, messages.ERROR)
                continue
            try:
                self.send_to_bin(scan, request.user)
                moved += 1
            except Refused as refusal:
                self.message_user(request, f"Not moved to the bin: {refusal.message}", messages.ERROR)
        return moved

    def get_deleted_objects(self, objs: Any, request: HttpRequest) -> Any:
        # Nothing is deleted: the rows go to the bin with everything made from them.
        scans = list(objs)
        name = str(self.model._meta.verbose_name)
        perms_needed = {name} if not all(self.has_delete_permission(request, s) for s in scans) else set()
        return [f"{scan} (to the bin)" for scan in scans], {name: len(scans)}, perms_needed, []

    def response_delete(self, request: HttpRequest, obj_display: str, obj_id: Any) -> HttpResponse:
        name = str(self.model._meta.verbose_name).capitalize()
        self.message_user(request, f"{name} {obj_display} moved to the bin; {self._restorable()}")
        return HttpResponseRedirect(reverse(f"admin:scans_{self.model._meta.model_name}_changelist"))

    def _restorable(self) -> str:
        return f"restorable for {settings.LABSEG_BIN_RETENTION_DAYS:g} days."


class CohortInline(LabScopedInline, admin.TabularInline):  # type: ignore[type-arg]
    model = Cohort
    extra = 0


@admin.register(Study)
class StudyAdmin(BinAdmin):
    def send_to_bin(self, row: Any, user: Any) -> None:
        deletion.delete_study(study=row, user=user)

    list_display = ["name", "lab", "created_at"]
    list_filter = ["lab"]
    search_fields = ["name", "description"]
    inlines = [CohortInline]


@admin.register(Cohort)
class CohortAdmin(LabScopedAdmin):
    list_display = ["name", "study", "treatment"]
    list_filter = ["study__lab"]
    search_fields = ["name", "treatment", "study__name"]


class TimePointInline(LabScopedInline, admin.TabularInline):  # type: ignore[type-arg]
    model = TimePoint
    extra = 0


class BodyWeightInline(LabScopedInline, admin.TabularInline):  # type: ignore[type-arg]
    model = BodyWeight
    extra = 0


class CaliperInline(LabScopedInline, admin.TabularInline):  # type: ignore[type-arg]
    model = CaliperMeasurement
    extra = 0


@admin.register(Mouse)
class MouseAdmin(BinAdmin):
    def send_to_bin(self, row: Any, user: Any) -> None:
        deletion.delete_mouse(mouse=row, user=user)

    list_display = ["identifier", "study", "lab", "strain", "sex", "cohort", "date_of_birth"]
    list_filter = ["lab", "study", "sex", "strain"]
    search_fields = ["identifier", "strain", "notes", "study__name"]
    inlines = [TimePointInline, BodyWeightInline, CaliperInline]


@admin.register(TimePoint)
class TimePointAdmin(LabScopedAdmin):
    list_display = ["mouse", "label", "offset_hours", "acquired_on"]
    list_filter = ["mouse__lab", "mouse__study"]
    search_fields = ["mouse__identifier", "label"]


@admin.register(Scan)
class ScanAdmin(BinAdmin):
    def send_to_bin(self, row: Any, user: Any) -> None:
        deletion.delete_scan(scan=row, user=user)

    list_display = [
        "id",
        "original_filename",
        "time_point",
        "modality",
        "shape",
        "orientation",
        "lab",
        "uploaded_at",
    ]
    list_filter = ["lab", "modality", "orientation", "dtype", "time_point__mouse__study"]
    search_fields = ["original_filename", "sha256", "time_point__mouse__identifier", "time_point__label"]
    date_hierarchy = "uploaded_at"
    # A scan is what was uploaded: its file and measured header never change after upload.
    readonly_fields = [
        "file",
        "sha256",
        "size_bytes",
        "shape",
        "spacing_mm",
        "affine",
        "dtype",
        "orientation",
        "intensity_min",
        "intensity_max",
        "intensity_mean",
        "intensity_std",
        "thumbnail",
        "uploaded_by",
        "uploaded_at",
        "deleted_at",
        "deleted_by",
    ]


@admin.register(UploadSession)
class UploadSessionAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    """Resumable uploads belong to a user, not yet to a lab: others see only their own."""

    list_display = ["id", "user", "filename", "offset", "size_bytes", "created_at", "updated_at"]
    search_fields = ["filename", "user__username"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Any]:
        rows = super().get_queryset(request)
        return rows if is_global(request.user) else rows.filter(user_id=request.user.pk)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # opened through the API only

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
