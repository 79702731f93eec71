"""Admin for the scans models: useful lists, filters and search.

Superusers see every lab; other staff users see only the rows of their own labs
(``labs.admin.LabScopedAdmin``). Labs and memberships are in ``labs/admin.py``; annotations have one
admin, the review app's "Annotations to review" (``review/admin.py``), because every change of
their status goes through the annotation lifecycle (``review.services``).
"""

from __future__ import annotations

from django.contrib import admin

from labs.admin import LabScopedAdmin

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


class CohortInline(admin.TabularInline):
    model = Cohort
    extra = 0


@admin.register(Study)
class StudyAdmin(LabScopedAdmin):
    list_display = ["name", "lab", "created_at"]
    list_filter = ["lab"]
    search_fields = ["name", "description"]
    inlines = [CohortInline]


@admin.register(Cohort)
class CohortAdmin(LabScopedAdmin):
    list_display = ["name", "study", "treatment"]
    list_filter = ["study__lab"]
    search_fields = ["name", "treatment", "study__name"]


class TimePointInline(admin.TabularInline):
    model = TimePoint
    extra = 0


class BodyWeightInline(admin.TabularInline):
    model = BodyWeight
    extra = 0


class CaliperInline(admin.TabularInline):
    model = CaliperMeasurement
    extra = 0


@admin.register(Mouse)
class MouseAdmin(LabScopedAdmin):
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
class ScanAdmin(LabScopedAdmin):
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
    ]


@admin.register(UploadSession)
class UploadSessionAdmin(admin.ModelAdmin):
    list_display = ["id", "user", "filename", "offset", "size_bytes", "created_at", "updated_at"]
    search_fields = ["filename", "user__username"]
