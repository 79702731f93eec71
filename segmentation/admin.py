"""Admin for the model registry, jobs and predictions (predictions are read-only model output).

Jobs and predictions are scoped to the user's labs (``labs.admin_scoping.LabScopedAdmin``); the
registry is global, so only superusers change it (promotions included)."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db.models import Q, QuerySet
from django.http import HttpRequest

from labs.admin_scoping import LabScopedAdmin, is_global, labs_where

from . import services
from .models import InferenceJob, Lesion, ModelVersion, Prediction, StructureVolume


@admin.register(ModelVersion)
class ModelVersionAdmin(admin.ModelAdmin):
    list_display = ["name", "version", "task", "is_default", "short_sha256", "registered_at"]
    list_filter = ["task", "is_default"]
    search_fields = ["name", "version", "sha256"]
    readonly_fields = ["name", "version", "task", "sha256", "structures", "metrics", "card", "folder"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[ModelVersion]:
        rows = super().get_queryset(request)
        if is_global(request.user) or not any(f.name == "lab" for f in ModelVersion._meta.fields):
            return rows
        # The shipped models (no lab) and the models of the user's labs.
        return rows.filter(Q(lab__isnull=True) | Q(lab__in=labs_where(request.user)))

    def has_add_permission(self, request: HttpRequest) -> bool:
        return is_global(request.user) and super().has_add_permission(request)

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return is_global(request.user) and super().has_change_permission(request, obj)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return is_global(request.user) and super().has_delete_permission(request, obj)

    @admin.display(description="sha256")
    def short_sha256(self, obj: ModelVersion) -> str:
        return obj.sha256[:12]


@admin.register(InferenceJob)
class InferenceJobAdmin(LabScopedAdmin):
    list_display = [
        "id",
        "scan",
        "model_version",
        "state",
        "progress",
        "stage",
        "attempts",
        "queue",
        "worker_host",
        "queued_at",
        "finished_at",
    ]
    list_filter = ["state", "queue", "model_version"]
    search_fields = ["scan__original_filename", "worker_host", "error"]
    list_select_related = ["scan__time_point__mouse", "model_version"]
    readonly_fields = [f.name for f in InferenceJob._meta.fields]
    actions = ["requeue", "cancel"]
    change_rule = "labs.member"  # a member may request, requeue and cancel segmentations

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # jobs are requested through the API or the requeue action, never typed in

    @admin.action(description="Queue selected failed or cancelled jobs again", permissions=["change"])
    def requeue(self, request: HttpRequest, queryset: QuerySet[InferenceJob]) -> None:
        requeued = sum(services.requeue_job(job=job, user=request.user) for job in queryset)
        skipped = queryset.count() - requeued
        self.message_user(request, f"{requeued} job(s) queued again; {skipped} left as they were.")

    @admin.action(description="Cancel selected queued or running jobs", permissions=["change"])
    def cancel(self, request: HttpRequest, queryset: QuerySet[InferenceJob]) -> None:
        cancelled = sum(services.cancel_job(job=job, user=request.user) for job in queryset)
        level = messages.SUCCESS if cancelled else messages.WARNING
        self.message_user(request, f"{cancelled} job(s) cancelled.", level=level)


class StructureVolumeInline(admin.TabularInline):
    model = StructureVolume
    extra = 0
    can_delete = False
    readonly_fields = ["structure_id", "name", "voxels", "volume_mm3", "volume_low_mm3", "volume_high_mm3"]

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class LesionInline(admin.TabularInline):
    model = Lesion
    extra = 0
    can_delete = False
    fields = ("index", "structure_id", "organ_name", "allocation", "volume_mm3", "max_diameter_mm")
    readonly_fields = fields

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Prediction)
class PredictionAdmin(LabScopedAdmin):
    list_display = ["id", "scan", "model_version", "created_at"]
    list_filter = ["model_version"]
    list_select_related = ["scan__time_point__mouse", "model_version"]
    readonly_fields = [f.name for f in Prediction._meta.fields]
    inlines = [StructureVolumeInline, LesionInline]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
