"""Thin serializers: rows out as JSON, request bodies in."""

from __future__ import annotations

from typing import Any

from django.urls import reverse
from rest_framework import serializers

from scans.models import Annotation

from ..models import (
    Agreement,
    AnnotationTransition,
    Consensus,
    ConsensusRater,
    PairwiseAgreement,
    PredictionComparison,
)


class NoteSerializer(serializers.Serializer):
    note = serializers.CharField(required=False, allow_blank=True, default="", max_length=4000)


class ReplaceSerializer(serializers.Serializer):
    file = serializers.FileField()
    # binary=True: in a multipart form the table arrives as a JSON string.
    structures = serializers.JSONField(
        required=False, binary=True, help_text="Structure name -> label value in the file."
    )

    def validate_structures(self, value: object) -> object:
        if not isinstance(value, dict):
            raise serializers.ValidationError('give the structures as a JSON object such as {"tumor": 1}')
        return value


class TransitionSerializer(serializers.ModelSerializer):
    by = serializers.SerializerMethodField()

    class Meta:
        model = AnnotationTransition
        fields = ["id", "from_status", "to_status", "by", "at", "note"]

    def get_by(self, obj: AnnotationTransition) -> str | None:
        return obj.by.get_username() if obj.by else None


class ReviewedAnnotationSerializer(serializers.ModelSerializer):
    reviewer = serializers.SerializerMethodField()
    version = serializers.SerializerMethodField()
    replaces = serializers.SerializerMethodField()
    prediction = serializers.SerializerMethodField()

    class Meta:
        model = Annotation
        fields = [
            "id",
            "scan",
            "annotator_name",
            "status",
            "reviewer",
            "review_note",
            "reviewed_at",
            "structures",
            "version",
            "replaces",
            "prediction",
        ]

    def get_reviewer(self, obj: Annotation) -> str | None:
        return obj.reviewer.get_username() if obj.reviewer else None

    def _revision(self, obj: Annotation):  # type: ignore[no-untyped-def]
        return getattr(obj, "revision", None)

    def get_version(self, obj: Annotation) -> int:
        revision = self._revision(obj)
        return revision.version if revision else 1

    def get_replaces(self, obj: Annotation) -> int | None:
        revision = self._revision(obj)
        return revision.replaces_id if revision else None

    def get_prediction(self, obj: Annotation) -> int | None:
        revision = self._revision(obj)
        return revision.prediction_id if revision else None


class RaterSerializer(serializers.ModelSerializer):
    annotator_name = serializers.CharField(source="annotation.annotator_name")

    class Meta:
        model = ConsensusRater
        fields = ["annotation", "annotator_name", "sensitivity", "specificity", "volume_mm3"]


class ConsensusSerializer(serializers.ModelSerializer):
    structure = serializers.CharField(source="structure_name")
    raters = RaterSerializer(many=True)
    files = serializers.SerializerMethodField()

    class Meta:
        model = Consensus
        fields = [
            "id",
            "scan",
            "structure_id",
            "structure",
            "majority_volume_mm3",
            "staple_volume_mm3",
            "disagreeing_voxels",
            "raters",
            "files",
            "computed_at",
        ]

    def get_files(self, obj: Consensus) -> dict[str, str]:
        return {
            kind: f"/api/consensus/{obj.pk}/{kind}.nii.gz" for kind in ("majority", "staple", "disagreement")
        }


class PairSerializer(serializers.ModelSerializer):
    first = serializers.CharField(source="first.annotator_name")
    second = serializers.CharField(source="second.annotator_name")

    class Meta:
        model = PairwiseAgreement
        fields = ["first", "second", "dice", "jaccard", "volume_difference_mm3"]


class AgreementSerializer(serializers.ModelSerializer):
    structure = serializers.CharField(source="structure_name")
    pairs = PairSerializer(many=True)

    class Meta:
        model = Agreement
        fields = [
            "structure_id",
            "structure",
            "n_annotators",
            "mean_pairwise_dice",
            "mean_pairwise_jaccard",
            "ci_gen",
            "fleiss_kappa",
            "mean_volume_mm3",
            "max_volume_difference_mm3",
            "volume_rmse_mm3",
            "volume_rmse_percent",
            "pairs",
        ]


class ComparisonSerializer(serializers.ModelSerializer):
    structure = serializers.CharField(source="structure_name")
    model = serializers.CharField(source="prediction.model_version.label")
    reference_label = serializers.CharField()

    class Meta:
        model = PredictionComparison
        fields = [
            "prediction",
            "model",
            "structure_id",
            "structure",
            "reference",
            "reference_label",
            "annotation",
            "dice",
            "jaccard",
            "hd95_mm",
            "msd_mm",
            "com_displacement_mm",
            "volume_mm3",
            "reference_volume_mm3",
            "volume_error_mm3",
            "dice_matching_any",
            "human_dice",
        ]


class AnnotationSerializer(serializers.ModelSerializer):
    reviewer = serializers.CharField(source="reviewer.username", read_only=True, default=None)
    file_url = serializers.SerializerMethodField()

    class Meta:
        model = Annotation
        fields = [
            "id",
            "scan",
            "annotator",
            "annotator_name",
            "original_filename",
            "sha256",
            "structures",
            "status",
            "reviewer",
            "review_note",
            "reviewed_at",
            "created_at",
            "updated_at",
            "file_url",
        ]

    def get_file_url(self, annotation: Annotation) -> str:
        return reverse("review-api:annotation-file", args=[annotation.pk])


class AnnotationFieldsSerializer(serializers.Serializer):
    annotator = serializers.CharField(max_length=120, required=False, allow_blank=True)
    structures = serializers.JSONField(required=False)

    def validate_structures(self, value: Any) -> dict[str, int] | None:
        if value in (None, "", {}):
            return None
        if not isinstance(value, dict):
            raise serializers.ValidationError("give a JSON object: structure name -> label value")
        return value
