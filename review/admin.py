"""Admin for reviewers: "Annotations to review", the one admin page of annotations (a proxy of
scans.Annotation), with filters by status, annotator, study and structure, approve and reject with
a note, a bulk approve, the annotation's trail and a link to each scan's review page. Every action
goes through the annotation lifecycle (``review.services``, so the lab rules hold here too) and
every list is scoped to the user's labs."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.html import format_html

from inference.structures import STRUCTURES
from labs.admin import LabStaffAdmin, lab_scoped
from scans.models import Annotation, Study

from .models import Agreement, AnnotationTransition, Consensus, ConsensusRater, ReviewQueue
from .services import ReviewError, approve_annotation, reject_annotation


class ReviewNoteForm(forms.Form):
    note = forms.CharField(widget=forms.Textarea(attrs={"rows": 4, "cols": 60}), required=False)


class StudyFilter(admin.SimpleListFilter):
    title = "study"
    parameter_name = "study"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        studies = lab_scoped(Study.objects.all(), request).select_related("lab")
        return [(str(s.pk), f"{s.lab.name} / {s.name}") for s in studies]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        return queryset.filter(scan__time_point__mouse__study_id=self.value()) if self.value() else queryset


class StructureFilter(admin.SimpleListFilter):
    title = "structure"
    parameter_name = "structure"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [(s.name, s.display_name) for s in STRUCTURES if s.kind != "background"]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        return queryset.filter(structures__has_key=self.value()) if self.value() else queryset


@admin.register(ReviewQueue)
class ReviewQueueAdmin(LabStaffAdmin):
    list_display = [
        "annotator_name",
        "scan_label",
        "study",
        "structure_list",
        "status",
        "reviewer",
        "review_link",
    ]
    list_filter = ["status", "annotator_name", StudyFilter, StructureFilter]
    search_fields = ["annotator_name", "scan__time_point__mouse__identifier", "review_note"]
    list_select_related = ["scan__time_point__mouse__study", "reviewer"]
    actions = ["approve_selected", "approve_with_note", "reject_with_note"]
    readonly_fields = [
        "scan",
        "annotator_name",
        "status",
        "reviewer",
        "review_note",
        "reviewed_at",
        "structures",
    ]

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # Needed for the bulk action; the services decide who may actually approve.
        return self._is_lab_staff(request)

    @admin.display(description="scan")
    def scan_label(self, obj: Annotation) -> str:
        return str(obj.scan)

    @admin.display(description="study")
    def study(self, obj: Annotation) -> str:
        return obj.scan.time_point.mouse.study.name

    @admin.display(description="structures")
    def structure_list(self, obj: Annotation) -> str:
        return ", ".join(sorted(obj.structures))

    @admin.display(description="review")
    def review_link(self, obj: Annotation) -> str:
        return format_html('<a href="{}">review page</a>', reverse("review:scan", args=[obj.scan_id]))

    @admin.action(description="Approve the selected annotations")
    def approve_selected(self, request: HttpRequest, queryset: QuerySet) -> None:
        approved, refused = 0, []
        for annotation in queryset.select_related("scan__lab"):
            try:
                approve_annotation(annotation=annotation, reviewer=request.user, note="approved in bulk")
                approved += 1
            except ReviewError as error:
                refused.append(f"{annotation.annotator_name} on {annotation.scan}: {error.message}")
        if approved:
            self.message_user(request, f"{approved} annotation(s) approved.", messages.SUCCESS)
        for line in refused:
            self.message_user(request, f"Not approved: {line}", messages.ERROR)

    @admin.action(description="Approve the selected annotations (with a note)")
    def approve_with_note(self, request: HttpRequest, queryset: QuerySet) -> HttpResponse | None:
        return self._review_with_note(request, queryset, approve=True)

    @admin.action(description="Reject the selected annotations (with a note)")
    def reject_with_note(self, request: HttpRequest, queryset: QuerySet) -> HttpResponse | None:
        return self._review_with_note(request, queryset, approve=False)

    def _review_with_note(
        self, request: HttpRequest, queryset: QuerySet, *, approve: bool
    ) -> HttpResponse | None:
        """First call shows a form for the note; the submitted form applies the review."""
        form = ReviewNoteForm(request.POST if "apply" in request.POST else None)
        title = "Approve annotations" if approve else "Reject annotations"
        if not form.is_valid():
            context = {
                **self.admin_site.each_context(request),
                "title": title,
                "annotations": queryset,
                "form": form,
                "action": request.POST.get("action"),
                "opts": self.model._meta,
                "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
            }
            return TemplateResponse(request, "admin/review/reviewqueue/review.html", context)
        note, done, refused = form.cleaned_data["note"], 0, []
        for annotation in queryset.select_related("scan__lab"):
            try:
                if approve:
                    approve_annotation(annotation=annotation, reviewer=request.user, note=note)
                else:
                    reject_annotation(annotation=annotation, reviewer=request.user, note=note)
                done += 1
            except ReviewError as error:
                refused.append(f"{annotation.annotator_name} on {annotation.scan}: {error.message}")
        verb = "approved" if approve else "rejected"
        self.message_user(request, f"{done} annotation(s) {verb}.", messages.SUCCESS)
        for line in refused:
            self.message_user(request, f"Not {verb}: {line}", messages.ERROR)
        return None


class TransitionInline(admin.TabularInline):
    model = AnnotationTransition
    fields = readonly_fields = ("from_status", "to_status", "by", "at", "note")
    extra = 0
    can_delete = False

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


ReviewQueueAdmin.inlines = [TransitionInline]


class RaterInline(admin.TabularInline):
    model = ConsensusRater
    fields = readonly_fields = ("annotation", "sensitivity", "specificity", "volume_mm3")
    extra = 0
    can_delete = False

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Consensus)
class ConsensusAdmin(LabStaffAdmin):
    list_display = ["scan", "structure_name", "majority_volume_mm3", "staple_volume_mm3", "computed_at"]
    inlines = [RaterInline]


@admin.register(Agreement)
class AgreementAdmin(LabStaffAdmin):
    list_display = ["scan", "structure_name", "n_annotators", "mean_pairwise_dice", "ci_gen", "fleiss_kappa"]


@admin.register(AnnotationTransition)
class AnnotationTransitionAdmin(LabStaffAdmin):
    list_display = ["annotation", "from_status", "to_status", "by", "at", "note"]
    list_filter = ["to_status"]
