"""Admin for every scans model: useful lists, filters and search; annotation review with a note.

Superusers see every lab; other staff users see only the rows of their own labs
(``labs.admin.LabScopedAdmin``). Labs and memberships are in ``labs/admin.py``.
"""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse

from labs.admin import LabScopedAdmin
from review.services import ReviewError

from .models import (
    Annotation,
    BodyWeight,
    CaliperMeasurement,
    Cohort,
    Mouse,
    Scan,
    Study,
    TimePoint,
    UploadSession,
)
from .services import review_annotation


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


class ReviewNoteForm(forms.Form):
    note = forms.CharField(widget=forms.Textarea(attrs={"rows": 4, "cols": 60}), required=False)


@admin.register(Annotation)
class AnnotationAdmin(LabScopedAdmin):
    list_display = ["id", "scan", "annotator_name", "status", "reviewer", "reviewed_at", "created_at"]
    list_filter = ["status", "scan__lab", "annotator_name"]
    search_fields = [
        "annotator_name",
        "original_filename",
        "scan__time_point__mouse__identifier",
        "review_note",
    ]
    readonly_fields = ["file", "sha256", "reviewer", "reviewed_at", "created_at", "updated_at"]
    actions = ["approve", "reject"]

    @admin.action(description="Approve selected annotations (with a note)")
    def approve(self, request: HttpRequest, queryset: QuerySet[Annotation]) -> HttpResponse | None:
        return self._review(request, queryset, approve=True)

    @admin.action(description="Reject selected annotations (with a note)")
    def reject(self, request: HttpRequest, queryset: QuerySet[Annotation]) -> HttpResponse | None:
        return self._review(request, queryset, approve=False)

    def _review(
        self, request: HttpRequest, queryset: QuerySet[Annotation], *, approve: bool
    ) -> HttpResponse | None:
        """First call shows a form for the note; the submitted form applies the review."""
        form = ReviewNoteForm(request.POST if "apply" in request.POST else None)
        if not form.is_valid():
            context = {
                **self.admin_site.each_context(request),
                "title": "Approve annotations" if approve else "Reject annotations",
                "annotations": queryset,
                "form": form,
                "action": request.POST.get("action"),
                "opts": self.model._meta,
                "action_checkbox_name": admin.helpers.ACTION_CHECKBOX_NAME,
            }
            return TemplateResponse(request, "admin/scans/annotation/review.html", context)
        done, refused = 0, []
        for annotation in queryset.select_related("scan__lab"):
            try:
                review_annotation(
                    annotation=annotation,
                    reviewer=request.user,
                    approve=approve,
                    note=form.cleaned_data["note"],
                )
                done += 1
            except (PermissionDenied, ReviewError) as error:
                refused.append(getattr(error, "message", str(error)))
        verb = "approved" if approve else "rejected"
        self.message_user(request, f"{done} annotation(s) {verb}.", messages.SUCCESS)
        for reason in sorted(set(refused)):
            self.message_user(request, reason, messages.ERROR)
        return None


@admin.register(UploadSession)
class UploadSessionAdmin(admin.ModelAdmin):
    list_display = ["id", "user", "filename", "offset", "size_bytes", "created_at", "updated_at"]
    search_fields = ["filename", "user__username"]
