"""Model registry, segmentation jobs and their immutable outputs.

``ModelVersion`` mirrors one model folder (``inference/models/<name>/<version>/``); every
``Prediction`` points at the exact version that made it. ``InferenceJob`` is the truth about a
piece of background work (the broker only carries its id); it is claimed, heartbeated, time-limited
and reconciled by ``labseg.jobs`` like every other kind of background work. Files are written to
storage first and the rows that point at them last.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db import models
from django.utils.functional import cached_property

from inference.assessment import judge_volume
from labs.querysets import LabScopedQuerySet
from labseg.jobs import ACTIVE, BackgroundJob


class ModelVersionQuerySet(models.QuerySet["ModelVersion"]):
    def usable_by(self, lab: Any) -> ModelVersionQuerySet:
        """The shipped models and the lab's own (another lab's fine-tuned models never)."""
        return self.filter(models.Q(lab__isnull=True) | models.Q(lab=lab))

    def visible_to(self, user: Any) -> ModelVersionQuerySet:
        """The shipped models and those of the user's labs."""
        if user is None or not user.is_authenticated:
            return self.none()
        return self.filter(models.Q(lab__isnull=True) | models.Q(lab__memberships__user=user)).distinct()


class ModelVersion(models.Model):
    """One registered model folder: what it segments, its weights' sha256 and its model card."""

    class Task(models.TextChoices):
        ORGANS = "organs", "Organs"
        TUMOR = "tumor", "Tumor and metastases"

    name = models.CharField(max_length=120)
    version = models.CharField(max_length=40)
    task = models.CharField(max_length=16, choices=Task.choices)
    sha256 = models.CharField(max_length=64, help_text="sha256 of model.onnx, from model.json.")
    structures = models.JSONField(help_text="Canonical structure id per output channel (0 = background).")
    metrics = models.JSONField(default=dict, blank=True)
    card = models.JSONField(help_text="The whole model.json as registered.")
    folder = models.CharField(max_length=500, help_text="The model folder at registration time.")
    is_default = models.BooleanField(default=False, help_text="The model used for its task unless asked.")
    registered_at = models.DateTimeField(auto_now_add=True)
    #: A model a lab fine-tuned (``retraining``) belongs to that lab and is invisible to the others;
    #: null for the shipped models, which every lab uses.
    lab = models.ForeignKey(
        "labs.Lab", on_delete=models.CASCADE, null=True, blank=True, related_name="model_versions"
    )
    stored_prefix = models.CharField(
        max_length=500,
        blank=True,
        help_text="Storage folder of a lab model's files (model.onnx, model.json); empty if shipped.",
    )

    objects = ModelVersionQuerySet.as_manager()

    class Meta:
        ordering = ["task", "name", "-registered_at"]
        constraints = [
            models.UniqueConstraint(fields=["name", "version"], name="unique_model_version"),
            models.UniqueConstraint(
                fields=["task"], condition=models.Q(is_default=True), name="one_default_model_per_task"
            ),
        ]

    def __str__(self) -> str:
        return self.label

    @property
    def label(self) -> str:
        """``name@version``, the source name used in exports."""
        return f"{self.name}@{self.version}"


class LabDefaultModel(models.Model):
    """The model a lab uses for a task instead of the shipped default (set by promoting a
    candidate in ``retraining``; removed again by rolling back to the shipped one)."""

    lab = models.ForeignKey("labs.Lab", on_delete=models.CASCADE, related_name="default_models")
    task = models.CharField(max_length=16, choices=ModelVersion.Task.choices)
    model_version = models.ForeignKey(ModelVersion, on_delete=models.PROTECT, related_name="+")
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["lab", "task"], name="one_lab_default_per_task")]

    def __str__(self) -> str:
        return f"{self.lab_id} {self.task}: {self.model_version}"


class InferenceJobQuerySet(LabScopedQuerySet):
    def active(self) -> InferenceJobQuerySet:
        return self.filter(state__in=ACTIVE)


class InferenceJob(BackgroundJob):
    """One segmentation of one scan by one model version; the database is the truth about it.

    State, claim, heartbeat, attempts and timestamps come from ``labseg.jobs.BackgroundJob``.
    """

    scan = models.ForeignKey("scans.Scan", on_delete=models.CASCADE, related_name="inference_jobs")
    model_version = models.ForeignKey(ModelVersion, on_delete=models.PROTECT, related_name="jobs")
    stage = models.CharField(max_length=64, blank=True, help_text="The pipeline stage now running.")
    queue = models.CharField(max_length=16, default="cpu")
    stage_seconds = models.JSONField(default=dict, blank=True, help_text="Seconds per pipeline stage.")
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )

    task_name = "inference.tasks.segment_scan_task"
    noun = "segmentation"

    lab_path = "scan__lab"  # to labs.Lab, for visible_to
    deleted_path = "scan__deleted_at"

    objects = InferenceJobQuerySet.as_manager()

    class Meta:
        ordering = ["-queued_at", "-id"]
        constraints = [
            models.UniqueConstraint(fields=["scan", "model_version"], name="unique_job_per_scan_and_model")
        ]
        indexes = [models.Index(fields=["state", "heartbeat_at"], name="job_state_heartbeat")]

    def __str__(self) -> str:
        return f"job {self.pk}: scan {self.scan_id} with {self.model_version} ({self.state})"

    def celery_queue(self) -> str:
        return self.queue


class Prediction(models.Model):
    """The immutable output of one job: label map, uncertainty map and run manifest."""

    job = models.OneToOneField(InferenceJob, on_delete=models.CASCADE, related_name="prediction")
    scan = models.ForeignKey("scans.Scan", on_delete=models.CASCADE, related_name="predictions")
    model_version = models.ForeignKey(ModelVersion, on_delete=models.PROTECT, related_name="predictions")
    # Paths are chosen by services.run_job (one folder per attempt), so no upload_to here.
    labels = models.FileField(max_length=500, help_text="uint8 NIfTI label map on the scan's grid.")
    uncertainty = models.FileField(max_length=500, help_text="uint8 NIfTI, 0-255 = probability x 255.")
    manifest = models.JSONField(help_text="Versions, model sha256, provider, seconds per stage.")
    metastasis_counts = models.JSONField(default=dict, help_text="Organ name -> metastases in it.")
    created_at = models.DateTimeField(auto_now_add=True)

    lab_path = "scan__lab"  # to labs.Lab, for visible_to
    deleted_path = "scan__deleted_at"

    objects = LabScopedQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["scan", "model_version"], name="unique_prediction_per_scan_and_model"
            )
        ]

    def __str__(self) -> str:
        return f"prediction {self.pk}: scan {self.scan_id} by {self.model_version}"

    def save(self, *args: Any, **kwargs: Any) -> None:
        # Predictions are model output: written once, never edited (corrections are annotations).
        if self.pk is not None and not self._state.adding:
            raise ValueError("a prediction is immutable; run a new model version instead of editing it")
        super().save(*args, **kwargs)

    @property
    def pipeline_qc(self) -> dict[str, Any]:
        """The pipeline's own QC verdict as its manifest stores it (no reviewer's decision)."""
        return (self.manifest or {}).get("qc") or {}

    @property
    def qc(self) -> dict[str, Any]:
        """The pipeline's QC verdict (``inference.pipeline.qc``) and any reviewer's decision.

        ``status``: ``ok``; ``needs_review`` (kept out of charts, cohort means and alerts);
        ``accepted`` or ``rejected`` by a reviewer; ``not_checked`` for runs made before the gate.
        """
        verdict = self.pipeline_qc
        # Newest decision first (the model's ordering); .all() uses a prefetch when there is one.
        decision = next(iter(self.qc_reviews.all()), None)
        status = verdict.get("status", QC_NOT_CHECKED)
        if decision is not None and status != QC_OK:
            status = decision.decision
        return {
            "status": status,
            "pipeline_status": verdict.get("status", QC_NOT_CHECKED),
            "reasons": list(verdict.get("reasons", [])),
            "regions_in_view": list(verdict.get("regions_in_view", [])),
            "not_in_view": list(verdict.get("not_in_view", [])),
            "cut_by_field": list(verdict.get("cut_by_field", [])),
            "decision": None
            if decision is None
            else {
                "decision": decision.decision,
                "by": decision.decided_by.get_username() if decision.decided_by else None,
                "at": decision.decided_at.isoformat(),
                "note": decision.note,
            },
        }

    @property
    def charted(self) -> bool:
        """Whether charts, cohort means and humane-endpoint alerts may use this prediction."""
        return self.qc["status"] in CHARTED_QC


QC_OK = "ok"
QC_NOT_CHECKED = "not_checked"
#: QC states whose numbers are charted; ``needs_review`` and ``rejected`` are not.
CHARTED_QC = (QC_OK, "accepted", QC_NOT_CHECKED)


class QCReview(models.Model):
    """A reviewer's decision on a prediction the QC gate flagged: accept it (its numbers are
    charted) or reject it (kept out for good). Decisions are appended, never edited: the newest
    counts, and the trail says who decided what, when and why."""

    class Decision(models.TextChoices):
        ACCEPTED = "accepted", "Accepted: chart it"
        REJECTED = "rejected", "Rejected: keep it out"

    prediction = models.ForeignKey(Prediction, on_delete=models.CASCADE, related_name="qc_reviews")
    decision = models.CharField(max_length=16, choices=Decision.choices)
    note = models.CharField(max_length=500, blank=True)
    decided_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    decided_at = models.DateTimeField(auto_now_add=True)

    lab_path = "prediction__scan__lab"  # to labs.Lab, for visible_to
    deleted_path = "prediction__scan__deleted_at"

    objects = LabScopedQuerySet.as_manager()

    class Meta:
        ordering = ["-decided_at", "-pk"]

    def __str__(self) -> str:
        return f"{self.decision} prediction {self.prediction_id}"


class StructureVolume(models.Model):
    """Volume of one structure in one prediction, with the range implied by the uncertainty map."""

    prediction = models.ForeignKey(Prediction, on_delete=models.CASCADE, related_name="volumes")
    structure_id = models.PositiveSmallIntegerField()
    name = models.CharField(max_length=64)
    voxels = models.BigIntegerField()
    volume_mm3 = models.FloatField()
    volume_low_mm3 = models.FloatField()
    volume_high_mm3 = models.FloatField()

    lab_path = "prediction__scan__lab"  # to labs.Lab, for visible_to
    deleted_path = "prediction__scan__deleted_at"

    objects = LabScopedQuerySet.as_manager()

    class Meta:
        ordering = ["prediction", "structure_id"]
        constraints = [
            models.UniqueConstraint(fields=["prediction", "structure_id"], name="unique_volume_per_structure")
        ]

    def __str__(self) -> str:
        return f"{self.name}: {self.volume_mm3:.3f} mm3"

    @cached_property
    def judgement(self) -> tuple[bool, str]:
        """Whether this volume is a measurement, and its ``assessment`` (``judge_volume``). The
        prediction comes with its volumes, so its stored verdict costs no query (``Prediction.qc``
        would also read the reviews, once per volume)."""
        cut = self.prediction.pipeline_qc.get("cut_by_field", [])
        return judge_volume(self.structure_id, self.voxels, cut)


class Lesion(models.Model):
    """One connected tumor or metastasis component and the organ it was allocated to."""

    class Allocation(models.TextChoices):
        CENTROID = "centroid", "Organ at the centroid"
        OVERLAP = "overlap", "Organ overlapped most within 1 mm"
        NONE = "none", "Outside every organ"
        COORDINATES = "coordinates", "From coordinates"

    prediction = models.ForeignKey(Prediction, on_delete=models.CASCADE, related_name="lesions")
    index = models.PositiveIntegerField(help_text="1-based component number within the prediction.")
    structure_id = models.PositiveSmallIntegerField()
    centroid_x_mm = models.FloatField()
    centroid_y_mm = models.FloatField()
    centroid_z_mm = models.FloatField()
    #: The lesion's voxel nearest its centroid (world mm): where the viewer's "Go to" lands.
    anchor_x_mm = models.FloatField(null=True, blank=True)
    anchor_y_mm = models.FloatField(null=True, blank=True)
    anchor_z_mm = models.FloatField(null=True, blank=True)
    voxels = models.BigIntegerField()
    volume_mm3 = models.FloatField()
    max_diameter_mm = models.FloatField()
    organ_id = models.PositiveSmallIntegerField(null=True, blank=True)
    organ_name = models.CharField(max_length=64)
    allocation = models.CharField(max_length=16, choices=Allocation.choices)

    lab_path = "prediction__scan__lab"  # to labs.Lab, for visible_to
    deleted_path = "prediction__scan__deleted_at"

    objects = LabScopedQuerySet.as_manager()

    class Meta:
        ordering = ["prediction", "index"]
        constraints = [models.UniqueConstraint(fields=["prediction", "index"], name="unique_lesion_index")]

    def __str__(self) -> str:
        return f"lesion {self.index} in {self.organ_name}"

    @property
    def centroid_mm(self) -> tuple[float, float, float]:
        return (self.centroid_x_mm, self.centroid_y_mm, self.centroid_z_mm)

    @property
    def anchor_mm(self) -> tuple[float, float, float]:
        """A point inside the lesion (the centroid for rows stored before anchors existed)."""
        if self.anchor_x_mm is None or self.anchor_y_mm is None or self.anchor_z_mm is None:
            return self.centroid_mm
        return (self.anchor_x_mm, self.anchor_y_mm, self.anchor_z_mm)

    @property
    def review(self) -> str:
        """``excluded``, ``confirmed`` or "" (nobody decided); .all() uses a prefetch."""
        newest = next(iter(self.reviews.all()), None)
        return newest.decision if newest is not None else ""


class LesionReview(models.Model):
    """A person's decision on one lesion: exclude it (a false positive: the bed, a lymph node, a
    fold of skin) or confirm it, with the reason. Appended, never edited: the newest counts.

    An excluded lesion leaves the tumor volume, the metastasis counts, the CSVs and the charts;
    the prediction itself stays as the model made it."""

    class Decision(models.TextChoices):
        EXCLUDED = "excluded", "Excluded: not a lesion"
        CONFIRMED = "confirmed", "Confirmed"

    lesion = models.ForeignKey(Lesion, on_delete=models.CASCADE, related_name="reviews")
    decision = models.CharField(max_length=16, choices=Decision.choices)
    reason = models.CharField(max_length=500)
    decided_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    decided_at = models.DateTimeField(auto_now_add=True)

    lab_path = "lesion__prediction__scan__lab"
    deleted_path = "lesion__prediction__scan__deleted_at"
    objects = LabScopedQuerySet.as_manager()

    class Meta:
        ordering = ["-decided_at", "-pk"]

    def __str__(self) -> str:
        return f"{self.decision} lesion {self.lesion_id}"
