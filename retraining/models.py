"""A lab's training sets, training jobs, candidate models and the promotions that make them default.

* ``TrainingSet``: the approved labels of a study (or of the whole lab) for one task, split by
  mouse. The validation mice are chosen once, when the set is created, and stored
  (``validation_mice``): they are never recomputed, so every candidate trained on the set is
  compared on the same scans. New mice that get approved labels later go to training.
* ``TrainingItem``: one scan of the set as it was when the set was last refreshed: the annotations
  its label comes from, their sha256s, the structures it labels, its side of the split.
* ``TrainingJob``: one fine-tune (a ``labseg.jobs.BackgroundJob`` on the ``train`` queue), with
  its epoch history, checkpoint, the candidate it produced and the comparison against the lab's
  model of the time.
* ``Promotion``: who made which model the lab's default for a task, when and why (rolling back is a
  promotion too, of the model before).
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db import models

from labs.querysets import LabScopedQuerySet
from labseg.jobs import BackgroundJob


class TrainingSet(models.Model):
    class Task(models.TextChoices):
        ORGANS = "organs", "Organs"
        TUMOR = "tumor", "Tumor and metastases"

    lab = models.ForeignKey("labs.Lab", on_delete=models.CASCADE, related_name="training_sets")
    study = models.ForeignKey(
        "scans.Study", on_delete=models.CASCADE, null=True, blank=True, related_name="training_sets"
    )
    name = models.CharField(max_length=200)
    task = models.CharField(max_length=16, choices=Task.choices)
    validation_fraction = models.FloatField(default=0.25)
    seed = models.PositiveIntegerField(default=0)
    #: Frozen when the set is created: ids of the mice whose scans are validation, for good.
    validation_mice = models.JSONField(default=list)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    refreshed_at = models.DateTimeField(null=True, blank=True)

    objects = LabScopedQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-pk"]

    def __str__(self) -> str:
        return f"{self.name} ({self.task})"


class TrainingItem(models.Model):
    class Split(models.TextChoices):
        TRAIN = "train", "Training"
        VALIDATION = "validation", "Validation (frozen)"

    class Source(models.TextChoices):
        ANNOTATION = "annotation", "One approved annotation"
        CONSENSUS = "consensus", "STAPLE consensus of several approved annotations"

    training_set = models.ForeignKey(TrainingSet, on_delete=models.CASCADE, related_name="items")
    scan = models.ForeignKey("scans.Scan", on_delete=models.CASCADE, related_name="+")
    mouse = models.ForeignKey("scans.Mouse", on_delete=models.CASCADE, related_name="+")
    split = models.CharField(max_length=16, choices=Split.choices)
    source = models.CharField(max_length=16, choices=Source.choices)
    annotations = models.JSONField(help_text="[{id, annotator, sha256}] of the approved annotations used.")
    scan_sha256 = models.CharField(max_length=64)
    structures = models.JSONField(
        help_text="Canonical ids the label covers (partial labels train only those)."
    )

    lab_path = "training_set__lab"
    objects = LabScopedQuerySet.as_manager()

    class Meta:
        ordering = ["training_set", "split", "scan"]
        constraints = [models.UniqueConstraint(fields=["training_set", "scan"], name="one_item_per_scan")]

    def as_json(self) -> dict[str, Any]:
        return {
            "scan": self.scan_id,
            "mouse": self.mouse_id,
            "split": self.split,
            "source": self.source,
            "annotations": self.annotations,
            "scan_sha256": self.scan_sha256,
            "structures": self.structures,
        }


class TrainingJob(BackgroundJob):
    """One fine-tune of the lab's current model on a training set, on the ``train`` queue."""

    training_set = models.ForeignKey(TrainingSet, on_delete=models.CASCADE, related_name="jobs")
    base_model = models.ForeignKey(
        "inference.ModelVersion", on_delete=models.PROTECT, null=True, blank=True, related_name="+",
        help_text="The lab's default when the job was asked for (null: trained from scratch).",
    )  # fmt: skip
    candidate = models.ForeignKey(
        "inference.ModelVersion", on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    epochs = models.PositiveSmallIntegerField(default=10)
    steps_per_epoch = models.PositiveSmallIntegerField(default=8)
    learning_rate = models.FloatField(default=1e-4)
    max_minutes = models.FloatField(help_text="Time limit of this job (LABSEG_TRAIN_MAX_MINUTES at most).")
    max_memory_mb = models.FloatField(default=0, help_text="Memory limit (0: none).")
    items = models.JSONField(default=list, help_text="The set's items with their sha256s, as trained.")
    history = models.JSONField(default=list, help_text="Per epoch: loss, validation Dice, seconds.")
    checkpoint = models.CharField(
        max_length=500, blank=True, help_text="Storage name of the last checkpoint."
    )
    comparison = models.JSONField(default=dict, blank=True)
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+"
    )

    task_name = "retraining.tasks.train_task"
    noun = "training"
    lab_path = "training_set__lab"

    objects = LabScopedQuerySet.as_manager()

    class Meta:
        ordering = ["-queued_at", "-pk"]

    def __str__(self) -> str:
        return f"training {self.pk} on {self.training_set} ({self.state})"

    def celery_queue(self) -> str:
        return "train"


class Promotion(models.Model):
    """A model made the lab's default for a task (a roll back is a promotion of an older one)."""

    class Action(models.TextChoices):
        PROMOTE = "promote", "Promoted"
        ROLL_BACK = "roll_back", "Rolled back"

    lab = models.ForeignKey("labs.Lab", on_delete=models.CASCADE, related_name="promotions")
    task = models.CharField(max_length=16, choices=TrainingSet.Task.choices)
    action = models.CharField(max_length=16, choices=Action.choices)
    model_version = models.ForeignKey("inference.ModelVersion", on_delete=models.PROTECT, related_name="+")
    previous = models.ForeignKey(
        "inference.ModelVersion", on_delete=models.PROTECT, null=True, related_name="+"
    )
    by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+")
    at = models.DateTimeField(auto_now_add=True)
    reason = models.TextField()

    objects = LabScopedQuerySet.as_manager()

    class Meta:
        ordering = ["-at", "-pk"]

    def __str__(self) -> str:
        return f"{self.action} {self.model_version} for lab {self.lab_id}"
