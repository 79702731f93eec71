"""The audit log: one row per thing that changed a lab's data or people, with who, when and what.

Rows are written by :func:`audit.record` and never edited. They outlive what they describe: the
lab and the actor are kept as ids without a database constraint, plus their names, so deleting a
user, a lab or a purged scan leaves its events readable.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models

from labs.models import Lab


class AuditEvent(models.Model):
    class Action(models.TextChoices):
        SCAN_UPLOADED = "scan.uploaded", "Scan uploaded"
        SCAN_DELETED = "scan.deleted", "Scan moved to the bin"
        SCAN_RESTORED = "scan.restored", "Scan restored from the bin"
        SCAN_PURGED = "scan.purged", "Scan purged from the bin"
        MEMBER_ADDED = "membership.added", "Member added"
        ROLE_CHANGED = "membership.role_changed", "Role changed"
        MEMBER_REMOVED = "membership.removed", "Member removed"
        ANNOTATION_APPROVED = "annotation.approved", "Annotation approved"
        ANNOTATION_REJECTED = "annotation.rejected", "Annotation rejected"
        ANNOTATION_REOPENED = "annotation.reopened", "Annotation review undone"
        PREDICTION_QC = "prediction.qc_decided", "Prediction QC decided"
        LESION_REVIEWED = "lesion.reviewed", "Lesion excluded or confirmed"
        PREDICTION_PROMOTED = "prediction.promoted", "Prediction promoted to an annotation"
        MODEL_MADE_DEFAULT = "model.made_default", "Model made the default"
        MODEL_DEFAULT_REMOVED = "model.default_removed", "Lab's own default model removed"
        JOB_CANCELLED = "job.cancelled", "Job cancelled"

    at = models.DateTimeField(auto_now_add=True, db_index=True)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.DO_NOTHING,
        db_constraint=False,
        null=True,
        blank=True,
        related_name="+",
    )
    actor_name = models.CharField(
        max_length=150, blank=True, help_text="Empty: the system (beat, a command)."
    )
    lab = models.ForeignKey(
        Lab, on_delete=models.DO_NOTHING, db_constraint=False, null=True, blank=True, related_name="+"
    )
    lab_name = models.CharField(max_length=120, blank=True)
    action = models.CharField(max_length=40, choices=Action.choices, db_index=True)
    target_type = models.CharField(max_length=60, blank=True)
    target_id = models.CharField(max_length=64, blank=True)
    target_label = models.CharField(max_length=255, blank=True)
    detail = models.JSONField(default=dict, blank=True)
    ip = models.GenericIPAddressField(null=True, blank=True)

    class Meta:
        ordering = ["-at", "-id"]
        indexes = [models.Index(fields=["lab", "-at"], name="audit_lab_at")]

    def __str__(self) -> str:
        return f"{self.at:%Y-%m-%d %H:%M} {self.actor_name or 'system'} {self.action} {self.target_label}"
