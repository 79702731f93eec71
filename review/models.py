"""Review of human annotations: transitions, lineage, consensus and agreement figures.

An annotation (``scans.Annotation``) moves draft -> submitted -> approved | rejected; every move is
an ``AnnotationTransition`` row. Where an annotation came from (the rejected one it replaces, or
the prediction it was promoted from) is an ``AnnotationRevision`` row: the lineage is review
workflow data, so it lives here rather than as extra columns on the upload row that the scans app
owns, and an annotation with no lineage simply has no revision row.

Consensus label maps and disagreement maps are NIfTI files in storage, on the scan's own grid;
the rows that point at them are written after the files. Structures are canonical ids from
``inference.structures`` (never hard-coded numbers).
"""

from __future__ import annotations

from django.conf import settings
from django.db import models

from inference.structures import by_id
from labs.querysets import LabScopedQuerySet
from labseg.jobs import BackgroundJob
from scans.models import Annotation


class AnnotationTransition(models.Model):
    """One move of an annotation between review states: who, when, and why."""

    annotation = models.ForeignKey(Annotation, on_delete=models.CASCADE, related_name="transitions")
    from_status = models.CharField(
        max_length=16, blank=True, help_text="Empty when the annotation was created."
    )
    to_status = models.CharField(max_length=16, choices=Annotation.Status.choices)
    by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+")
    at = models.DateTimeField(auto_now_add=True)
    note = models.TextField(blank=True)

    lab_path = "annotation__scan__lab"  # to labs.Lab, for visible_to

    objects = LabScopedQuerySet.as_manager()

    class Meta:
        ordering = ["annotation", "at", "id"]

    def __str__(self) -> str:
        return f"{self.annotation}: {self.from_status or 'new'} -> {self.to_status}"


class AnnotationRevision(models.Model):
    """The lineage of one annotation: the rejected one it replaces, or the prediction it came from
    (promoted for a desktop tool, or corrected in the viewer: ``correction``)."""

    annotation = models.OneToOneField(Annotation, on_delete=models.CASCADE, related_name="revision")
    replaces = models.OneToOneField(
        Annotation,
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="replaced_by",
        help_text="The rejected annotation this one replaces (one replacement per annotation).",
    )
    prediction = models.ForeignKey(
        "inference.Prediction",
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="promoted_annotations",
        help_text="The prediction this annotation was promoted from, for a person to correct.",
    )
    version = models.PositiveIntegerField(
        default=1, help_text="1 for a first annotation, +1 per replacement or per saved correction."
    )
    correction = models.BooleanField(
        default=False,
        help_text="Drawn over ``prediction`` with the viewer's drawing tools: volumes, CSVs and charts "
        "use the newest correction of a prediction that no reviewer rejected (``review.corrections``).",
    )
    volumes = models.JSONField(
        default=dict,
        blank=True,
        help_text="A correction's structures measured when it was saved: canonical id -> [voxels, mm3].",
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    lab_path = "annotation__scan__lab"  # to labs.Lab, for visible_to

    objects = LabScopedQuerySet.as_manager()

    def __str__(self) -> str:
        return f"{self.annotation} v{self.version}"


class Consensus(models.Model):
    """Consensus of the approved annotations of one scan for one structure.

    ``majority`` and ``staple`` are uint8 label maps (the structure's canonical id inside, 0
    outside); ``disagreement`` is float32, per voxel the fraction of annotators who disagree with
    the majority (0-0.5). All three are NIfTI files on the scan's grid.
    """

    scan = models.ForeignKey("scans.Scan", on_delete=models.CASCADE, related_name="consensuses")
    structure_id = models.PositiveSmallIntegerField()
    annotations: models.ManyToManyField[Annotation, ConsensusRater] = models.ManyToManyField(
        Annotation, through="ConsensusRater", related_name="consensuses"
    )
    majority = models.FileField(max_length=500)
    staple = models.FileField(max_length=500)
    disagreement = models.FileField(max_length=500)
    majority_volume_mm3 = models.FloatField()
    staple_volume_mm3 = models.FloatField()
    disagreeing_voxels = models.BigIntegerField(help_text="Voxels where not every annotator agrees.")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+"
    )
    computed_at = models.DateTimeField(auto_now=True)

    lab_path = "scan__lab"  # to labs.Lab, for visible_to
    deleted_path = "scan__deleted_at"

    objects = LabScopedQuerySet.as_manager()

    class Meta:
        ordering = ["scan", "structure_id"]
        verbose_name_plural = "consensuses"
        constraints = [
            models.UniqueConstraint(fields=["scan", "structure_id"], name="unique_consensus_per_structure")
        ]

    def __str__(self) -> str:
        return f"{self.structure_name} consensus on {self.scan}"

    @property
    def structure_name(self) -> str:
        return by_id(self.structure_id).name


class ConsensusRater(models.Model):
    """One annotator's place in a consensus, with STAPLE's estimate of their reliability."""

    consensus = models.ForeignKey(Consensus, on_delete=models.CASCADE, related_name="raters")
    annotation = models.ForeignKey(Annotation, on_delete=models.CASCADE, related_name="+")
    sensitivity = models.FloatField()
    specificity = models.FloatField()
    volume_mm3 = models.FloatField()

    class Meta:
        ordering = ["consensus", "annotation__annotator_name"]
        constraints = [
            models.UniqueConstraint(fields=["consensus", "annotation"], name="unique_rater_per_consensus")
        ]


class Agreement(models.Model):
    """Agreement among the approved annotators of one scan for one structure.

    Volume figures follow the tumor database's Table 3: the mean volume over annotators, the
    largest difference between two annotators, and the RMSE of each annotator's volume against
    that mean (absolute and as a percentage of the mean).
    """

    scan = models.ForeignKey("scans.Scan", on_delete=models.CASCADE, related_name="agreements")
    structure_id = models.PositiveSmallIntegerField()
    n_annotators = models.PositiveSmallIntegerField()
    mean_pairwise_dice = models.FloatField()
    mean_pairwise_jaccard = models.FloatField()
    ci_gen = models.FloatField()
    fleiss_kappa = models.FloatField()
    mean_volume_mm3 = models.FloatField()
    max_volume_difference_mm3 = models.FloatField()
    volume_rmse_mm3 = models.FloatField()
    volume_rmse_percent = models.FloatField(null=True)
    computed_at = models.DateTimeField(auto_now=True)

    lab_path = "scan__lab"  # to labs.Lab, for visible_to
    deleted_path = "scan__deleted_at"

    objects = LabScopedQuerySet.as_manager()

    class Meta:
        ordering = ["scan", "structure_id"]
        constraints = [
            models.UniqueConstraint(fields=["scan", "structure_id"], name="unique_agreement_per_structure")
        ]

    @property
    def structure_name(self) -> str:
        return by_id(self.structure_id).name


class PairwiseAgreement(models.Model):
    """Two annotators of one scan and structure compared with each other."""

    agreement = models.ForeignKey(Agreement, on_delete=models.CASCADE, related_name="pairs")
    first = models.ForeignKey(Annotation, on_delete=models.CASCADE, related_name="+")
    second = models.ForeignKey(Annotation, on_delete=models.CASCADE, related_name="+")
    dice = models.FloatField()
    jaccard = models.FloatField()
    volume_difference_mm3 = models.FloatField(help_text="first minus second")

    class Meta:
        ordering = ["agreement", "first__annotator_name", "second__annotator_name"]


class PredictionComparison(models.Model):
    """A prediction against one human reference (an approved annotation or a consensus).

    HD95 is the symmetric 95th-percentile Hausdorff distance and MSD the symmetric mean surface
    distance, both in mm (see ``inference.metrics.surface``); null when one side is empty.
    ``human_dice`` is the mean pairwise Dice of the annotators themselves on the same scan and
    structure: the baseline the model's Dice must be read against.
    """

    class Reference(models.TextChoices):
        ANNOTATION = "annotation", "Approved annotation"
        MAJORITY = "majority", "Majority-vote consensus"
        STAPLE = "staple", "STAPLE consensus"

    prediction = models.ForeignKey(
        "inference.Prediction", on_delete=models.CASCADE, related_name="comparisons"
    )
    scan = models.ForeignKey("scans.Scan", on_delete=models.CASCADE, related_name="prediction_comparisons")
    structure_id = models.PositiveSmallIntegerField()
    reference = models.CharField(max_length=16, choices=Reference.choices)
    annotation = models.ForeignKey(
        Annotation, on_delete=models.CASCADE, null=True, blank=True, related_name="+"
    )
    dice = models.FloatField()
    jaccard = models.FloatField()
    hd95_mm = models.FloatField(null=True)
    msd_mm = models.FloatField(null=True)
    com_displacement_mm = models.FloatField(null=True)
    volume_mm3 = models.FloatField()
    reference_volume_mm3 = models.FloatField()
    volume_error_mm3 = models.FloatField(help_text="prediction minus reference")
    dice_matching_any = models.FloatField(
        null=True, help_text="AIMOS: a voxel is correct if it matches at least one annotator."
    )
    human_dice = models.FloatField(null=True)
    computed_at = models.DateTimeField(auto_now=True)

    lab_path = "scan__lab"  # to labs.Lab, for visible_to
    deleted_path = "scan__deleted_at"

    objects = LabScopedQuerySet.as_manager()

    class Meta:
        ordering = ["scan", "prediction", "structure_id", "reference", "annotation__annotator_name"]

    @property
    def structure_name(self) -> str:
        return by_id(self.structure_id).name

    @property
    def reference_label(self) -> str:
        if self.reference == self.Reference.ANNOTATION and self.annotation is not None:
            return self.annotation.annotator_name
        return self.get_reference_display()


class AnnotationVolume(models.Model):
    """The volume of one structure in one approved annotation (the input to Fig. 5f variability)."""

    annotation = models.ForeignKey(Annotation, on_delete=models.CASCADE, related_name="volumes")
    structure_id = models.PositiveSmallIntegerField()
    voxels = models.BigIntegerField()
    volume_mm3 = models.FloatField()
    computed_at = models.DateTimeField(auto_now=True)

    lab_path = "annotation__scan__lab"  # to labs.Lab, for visible_to

    objects = LabScopedQuerySet.as_manager()

    class Meta:
        ordering = ["annotation", "structure_id"]
        constraints = [
            models.UniqueConstraint(
                fields=["annotation", "structure_id"], name="unique_volume_per_annotation"
            )
        ]

    @property
    def structure_name(self) -> str:
        return by_id(self.structure_id).name


class ReviewAnalysis(BackgroundJob):
    """One computation of a scan's consensus, agreement and prediction comparisons in the background.

    Small scans are analysed within the request; large ones (STAPLE takes seconds per million
    voxels and structure) get a row here and a Celery task. The row, not the broker, is the truth:
    claim, heartbeat, time limits, retries and the reconciler come from ``labseg.jobs``.
    """

    scan = models.ForeignKey("scans.Scan", on_delete=models.CASCADE, related_name="review_analyses")
    structure_ids = models.JSONField(null=True, blank=True, help_text="Only these structures; null = all.")
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+"
    )

    task_name = "review.tasks.analyse_scan_task"
    noun = "analysis"

    lab_path = "scan__lab"  # to labs.Lab, for visible_to
    deleted_path = "scan__deleted_at"

    objects = LabScopedQuerySet.as_manager()

    class Meta:
        ordering = ["-queued_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["scan"],
                condition=models.Q(state__in=["queued", "running"]),
                name="one_active_review_analysis_per_scan",
            )
        ]
        indexes = [models.Index(fields=["state", "heartbeat_at"], name="analysis_state_heartbeat")]

    def __str__(self) -> str:
        return f"analysis {self.pk} of scan {self.scan_id} ({self.state})"


class ReviewQueue(Annotation):
    """Annotations as reviewers see them in the admin (a proxy: same rows, review actions)."""

    class Meta:
        proxy = True
        verbose_name = "annotation to review"
        verbose_name_plural = "annotations to review"
