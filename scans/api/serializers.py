"""Thin serializers: rows as JSON, and the plain fields of upload forms."""

from __future__ import annotations

from django.urls import reverse
from rest_framework import serializers

from labs.models import Lab
from labs.rules import role_of
from scans.models import Mouse, Scan, Study, TimePoint


class LabSerializer(serializers.ModelSerializer):
    role = serializers.SerializerMethodField()

    class Meta:
        model = Lab
        fields = ["id", "name", "role", "created_at"]

    def get_role(self, lab: Lab) -> str | None:
        request = self.context.get("request")
        return role_of(request.user, lab) if request else None


class StudySerializer(serializers.ModelSerializer):
    lab_name = serializers.CharField(source="lab.name", read_only=True)
    mouse_count = serializers.IntegerField(source="mice.count", read_only=True)

    class Meta:
        model = Study
        fields = ["id", "lab", "lab_name", "name", "description", "mouse_count", "created_at"]


class TimePointSerializer(serializers.ModelSerializer):
    scan_ids: serializers.PrimaryKeyRelatedField[Scan] = serializers.PrimaryKeyRelatedField(
        source="scans", many=True, read_only=True
    )

    class Meta:
        model = TimePoint
        fields = ["id", "label", "offset_hours", "acquired_on", "scan_ids"]


class MouseSerializer(serializers.ModelSerializer):
    study_name = serializers.CharField(source="study.name", read_only=True)
    cohort_name = serializers.CharField(source="cohort.name", read_only=True, default=None)
    time_points = TimePointSerializer(many=True, read_only=True)

    class Meta:
        model = Mouse
        fields = [
            "id",
            "lab",
            "study",
            "study_name",
            "identifier",
            "strain",
            "sex",
            "date_of_birth",
            "cohort",
            "cohort_name",
            "notes",
            "time_points",
        ]


class ScanSerializer(serializers.ModelSerializer):
    study = serializers.IntegerField(source="time_point.mouse.study_id", read_only=True)
    study_name = serializers.CharField(source="time_point.mouse.study.name", read_only=True)
    mouse = serializers.IntegerField(source="time_point.mouse_id", read_only=True)
    mouse_identifier = serializers.CharField(source="time_point.mouse.identifier", read_only=True)
    time_point_label = serializers.CharField(source="time_point.label", read_only=True)
    offset_hours = serializers.FloatField(source="time_point.offset_hours", read_only=True)
    uploaded_by = serializers.CharField(source="uploaded_by.username", read_only=True, default=None)
    file_url = serializers.SerializerMethodField()
    thumbnail_url = serializers.SerializerMethodField()

    class Meta:
        model = Scan
        fields = [
            "id",
            "lab",
            "study",
            "study_name",
            "mouse",
            "mouse_identifier",
            "time_point",
            "time_point_label",
            "offset_hours",
            "modality",
            "original_filename",
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
            "uploaded_by",
            "uploaded_at",
            "deleted_at",
            "file_url",
            "thumbnail_url",
        ]

    def get_file_url(self, scan: Scan) -> str:
        return reverse("scan-file", args=[scan.pk])

    def get_thumbnail_url(self, scan: Scan) -> str | None:
        return reverse("scan-thumbnail", args=[scan.pk]) if scan.thumbnail else None


class ScanFieldsSerializer(serializers.Serializer):
    """The form fields that come with a scan (multipart upload or chunked-upload completion)."""

    study = serializers.CharField(max_length=200)
    lab = serializers.CharField(max_length=120, required=False, allow_blank=True)
    mouse = serializers.CharField(max_length=64)
    time_point = serializers.CharField(max_length=32)
    modality = serializers.CharField(max_length=16, required=False, default=Scan.Modality.NATIVE_CT)


class CompleteUploadSerializer(ScanFieldsSerializer):
    sha256 = serializers.RegexField(
        r"^[0-9a-fA-F]{64}$", error_messages={"invalid": "give the sha256 in hex"}
    )


class CreateUploadSerializer(serializers.Serializer):
    filename = serializers.CharField(max_length=255)
    size_bytes = serializers.IntegerField(min_value=1)
    # The lab whose quota the upload is reserved against (id or name); or the study it goes to.
    lab = serializers.CharField(max_length=120, required=False, allow_blank=True)
    study = serializers.CharField(max_length=200, required=False, allow_blank=True)
