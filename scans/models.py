"""Studies, mice, time points, scans and annotations of a lab (``labs.models.Lab``).

Every query that serves a user goes through ``visible_to(user)`` (``labs.querysets``), which
scopes it to the labs the user belongs to. Files live in Django storage; rows point at them and are
written last (see ``services.py``).
"""

from __future__ import annotations

import re
import uuid

from django.conf import settings
from django.db import models

from labs.models import Lab
from labs.querysets import LabScopedQuerySet


class Study(models.Model):
    lab = models.ForeignKey(Lab, on_delete=models.CASCADE, related_name="studies")
    name = models.CharField(max_length=200)
    description = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    deleted_at = models.DateTimeField(
        null=True, blank=True, help_text="In the bin since (with its mice and scans): ``scans.deletion``."
    )
    deleted_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )

    lab_path = "lab"  # to labs.Lab, for visible_to
    deleted_path = "deleted_at"  # a study in the bin is hidden by visible_to

    objects = LabScopedQuerySet.as_manager()

    class Meta:
        ordering = ["lab__name", "name"]
        verbose_name_plural = "studies"
        constraints = [models.UniqueConstraint(fields=["lab", "name"], name="unique_study_name_in_lab")]

    def __str__(self) -> str:
        return self.name


class Cohort(models.Model):
    """A treatment arm or group of mice within a study."""

    study = models.ForeignKey(Study, on_delete=models.CASCADE, related_name="cohorts")
    name = models.CharField(max_length=120)
    treatment = models.CharField(max_length=200, blank=True)
    description = models.TextField(blank=True)

    lab_path = "study__lab"  # to labs.Lab, for visible_to
    deleted_path = "study__deleted_at"

    objects = LabScopedQuerySet.as_manager()

    class Meta:
        ordering = ["study", "name"]
        constraints = [models.UniqueConstraint(fields=["study", "name"], name="unique_cohort_in_study")]

    def __str__(self) -> str:
        return self.name


class Mouse(models.Model):
    class Sex(models.TextChoices):
        FEMALE = "F", "Female"
        MALE = "M", "Male"
        UNKNOWN = "U", "Unknown"

    lab = models.ForeignKey(Lab, on_delete=models.CASCADE, related_name="mice")
    study = models.ForeignKey(Study, on_delete=models.CASCADE, related_name="mice")
    identifier = models.CharField(max_length=64, help_text="Lab-unique identifier such as M02.")
    strain = models.CharField(max_length=120, blank=True)
    sex = models.CharField(max_length=1, choices=Sex.choices, default=Sex.UNKNOWN)
    date_of_birth = models.DateField(null=True, blank=True)
    cohort = models.ForeignKey(Cohort, on_delete=models.SET_NULL, null=True, blank=True, related_name="mice")
    notes = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    deleted_at = models.DateTimeField(
        null=True, blank=True, help_text="In the bin since (with its scans): ``scans.deletion``."
    )
    deleted_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )

    lab_path = "lab"  # to labs.Lab, for visible_to
    deleted_path = "deleted_at"  # a mouse in the bin (or of a study in the bin) is hidden

    objects = LabScopedQuerySet.as_manager()

    class Meta:
        ordering = ["study", "identifier"]
        verbose_name_plural = "mice"
        constraints = [models.UniqueConstraint(fields=["lab", "identifier"], name="unique_mouse_in_lab")]

    def __str__(self) -> str:
        return self.identifier


class BodyWeight(models.Model):
    mouse = models.ForeignKey(Mouse, on_delete=models.CASCADE, related_name="body_weights")
    measured_on = models.DateField()
    weight_g = models.FloatField()

    class Meta:
        ordering = ["mouse", "measured_on"]


class CaliperMeasurement(models.Model):
    mouse = models.ForeignKey(Mouse, on_delete=models.CASCADE, related_name="caliper_measurements")
    measured_on = models.DateField()
    length_mm = models.FloatField()
    width_mm = models.FloatField()

    class Meta:
        ordering = ["mouse", "measured_on"]

    @property
    def volume_mm3(self) -> float:
        """The usual ellipsoid approximation, length x width^2 / 2."""
        return self.length_mm * self.width_mm**2 / 2.0


_OFFSET_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(min|m|h|d|w)\s*$", re.IGNORECASE)
_UNIT_HOURS = {"min": 1 / 60, "m": 1 / 60, "h": 1.0, "d": 24.0, "w": 168.0}


def parse_offset_hours(label: str) -> float:
    """Hours since the mouse's first scan from a label such as ``0h``, ``3h``, ``8d`` or ``2w``.

    Raises ``ValueError`` with a message a researcher understands.
    """
    match = _OFFSET_RE.match(label)
    if not match:
        raise ValueError(
            f"time point {label!r} is not understood: use a number and a unit, such as 0h, 24h, 8d or 2w"
        )
    return float(match.group(1)) * _UNIT_HOURS[match.group(2).lower()]


class TimePoint(models.Model):
    mouse = models.ForeignKey(Mouse, on_delete=models.CASCADE, related_name="time_points")
    label = models.CharField(max_length=32, help_text="Such as 0h, 3h, 24h or 8d.")
    offset_hours = models.FloatField()
    acquired_on = models.DateField(null=True, blank=True)

    lab_path = "mouse__lab"  # to labs.Lab, for visible_to
    deleted_path = "mouse__deleted_at"

    objects = LabScopedQuerySet.as_manager()

    class Meta:
        ordering = ["mouse", "offset_hours"]
        constraints = [models.UniqueConstraint(fields=["mouse", "label"], name="unique_time_point")]

    def __str__(self) -> str:
        return f"{self.mouse} {self.label}"


class Scan(models.Model):
    class Modality(models.TextChoices):
        NATIVE_CT = "native_ct", "Native CT"
        CONTRAST_CT = "contrast_ct", "Contrast-enhanced CT"
        LIGHT_SHEET = "light_sheet", "Light-sheet microscopy"
        OTHER = "other", "Other"

    lab = models.ForeignKey(Lab, on_delete=models.CASCADE, related_name="scans")
    time_point = models.ForeignKey(TimePoint, on_delete=models.CASCADE, related_name="scans")
    modality = models.CharField(max_length=16, choices=Modality.choices, default=Modality.NATIVE_CT)
    file = models.FileField(max_length=500)
    original_filename = models.CharField(max_length=255)
    sha256 = models.CharField(max_length=64)
    size_bytes = models.BigIntegerField()
    shape = models.JSONField(help_text="Voxels per axis, in the file's own axis order.")
    spacing_mm = models.JSONField(help_text="Voxel size per axis in mm, from the header zooms.")
    affine = models.JSONField(help_text="4x4 voxel-to-world (RAS+ mm) matrix, as nibabel reads it.")
    dtype = models.CharField(max_length=32)
    orientation = models.CharField(max_length=3, help_text="Axis codes such as RAS or LPS.")
    intensity_min = models.FloatField()
    intensity_max = models.FloatField()
    intensity_mean = models.FloatField()
    intensity_std = models.FloatField()
    thumbnail = models.FileField(max_length=500, blank=True)
    uploaded_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    uploaded_at = models.DateTimeField(auto_now_add=True)
    #: Soft delete (``scans.deletion``): hidden everywhere at once, restorable until the purge.
    deleted_at = models.DateTimeField(null=True, blank=True)
    deleted_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )

    lab_path = "lab"  # to labs.Lab, for visible_to
    deleted_path = "deleted_at"  # rows of a scan in the bin are hidden by visible_to

    objects = LabScopedQuerySet.as_manager()

    class Meta:
        ordering = ["-uploaded_at"]
        constraints = [models.UniqueConstraint(fields=["lab", "sha256"], name="unique_scan_per_lab")]

    def __str__(self) -> str:
        return f"{self.time_point} ({self.get_modality_display()})"

    @property
    def mouse(self) -> Mouse:
        return self.time_point.mouse

    @property
    def study(self) -> Study:
        return self.time_point.mouse.study


class Annotation(models.Model):
    class Status(models.TextChoices):
        DRAFT = "draft", "Draft"
        SUBMITTED = "submitted", "Submitted"
        APPROVED = "approved", "Approved"
        REJECTED = "rejected", "Rejected"

    scan = models.ForeignKey(Scan, on_delete=models.CASCADE, related_name="annotations")
    annotator = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="annotations"
    )
    annotator_name = models.CharField(
        max_length=120, help_text="The annotator's name; for imported files the name in the file (A, B, C)."
    )
    file = models.FileField(max_length=500)
    original_filename = models.CharField(max_length=255)
    sha256 = models.CharField(max_length=64)
    structures = models.JSONField(
        default=dict, help_text="Canonical structure name -> label value used in this file."
    )
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.SUBMITTED)
    reviewer = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    review_note = models.TextField(blank=True)
    reviewed_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    lab_path = "scan__lab"  # to labs.Lab, for visible_to
    deleted_path = "scan__deleted_at"

    objects = LabScopedQuerySet.as_manager()

    class Meta:
        ordering = ["scan", "annotator_name", "created_at"]

    def __str__(self) -> str:
        return f"{self.annotator_name} on {self.scan}"


class UploadSession(models.Model):
    """A resumable chunked upload in progress: bytes land in ``MEDIA_ROOT/tmp/chunks/<id>.part``.

    ``offset`` is the number of bytes received so far; a chunk is accepted only when it starts
    exactly there (compare-and-set on this column), so a client resumes by asking for the offset.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    #: The lab whose quota the declared size is reserved against (``scans.quota``); empty when the
    #: user named no lab and belongs to several (the quota is then checked at completion).
    lab = models.ForeignKey(Lab, on_delete=models.CASCADE, null=True, blank=True, related_name="+")
    filename = models.CharField(max_length=255)
    size_bytes = models.BigIntegerField()
    offset = models.BigIntegerField(default=0)
    #: On S3, the multipart upload the file's parts go to while the rest arrives
    #: (``scans/upload_parts.py``): the name the scan will be stored under and the upload's id.
    #: Empty on disk storage, and where none could be opened (the file is then stored whole).
    stored_name = models.CharField(max_length=1024, blank=True, default="")
    storage_upload_id = models.CharField(max_length=1024, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.filename} ({self.offset} of {self.size_bytes} bytes)"

    @property
    def complete(self) -> bool:
        return self.offset == self.size_bytes
