"""Read-only JSON shapes of models, jobs and predictions (the API never edits a prediction)."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import User
from django.urls import reverse
from rest_framework import serializers

from segmentation.models import InferenceJob, Lesion, ModelVersion, Prediction, StructureVolume


class ModelVersionSerializer(serializers.ModelSerializer):
    # DRF's serializer metaclass moves declared fields off the class, so this does not replace
    # Field.label (the stubs cannot express that).
    label = serializers.CharField(read_only=True)  # type: ignore[assignment]

    class Meta:
        model = ModelVersion
        fields = [
            "id",
            "name",
            "version",
            "label",
            "task",
            "sha256",
            "structures",
            "metrics",
            "is_default",
            "lab",
        ]


class ModelVersionBriefSerializer(serializers.ModelSerializer):
    label = serializers.CharField(read_only=True)  # type: ignore[assignment]  # as above

    class Meta:
        model = ModelVersion
        fields = ["id", "name", "version", "label", "task", "sha256"]


class InferenceJobSerializer(serializers.ModelSerializer):
    model = ModelVersionBriefSerializer(source="model_version", read_only=True)
    requested_by: serializers.SlugRelatedField[User] = serializers.SlugRelatedField(
        slug_field="username", read_only=True
    )
    prediction = serializers.SerializerMethodField()
    url = serializers.SerializerMethodField()

    class Meta:
        model = InferenceJob
        fields = [
            "id",
            "url",
            "scan",
            "model",
            "state",
            "progress",
            "stage",
            "attempts",
            "queue",
            "worker_host",
            "queued_at",
            "started_at",
            "heartbeat_at",
            "finished_at",
            "stage_seconds",
            "error",
            "requested_by",
            "prediction",
        ]

    def get_prediction(self, job: InferenceJob) -> int | None:
        prediction = getattr(job, "prediction", None)
        return prediction.pk if prediction is not None else None

    def get_url(self, job: InferenceJob) -> str:
        return reverse("inference-job-detail", args=[job.pk])


class StructureVolumeSerializer(serializers.ModelSerializer):
    """A model's volume of one structure. An organ it did not find, or one the scanned field cuts
    through (the QC's ``cut_by_field``), has no volume (null), never 0 mm3, and its ``assessment``
    says why (``StructureVolume.judgement``, as in the CSV exports)."""

    volume_mm3 = serializers.FloatField(read_only=True, allow_null=True)
    volume_low_mm3 = serializers.FloatField(read_only=True, allow_null=True)
    volume_high_mm3 = serializers.FloatField(read_only=True, allow_null=True)
    assessment = serializers.SerializerMethodField()

    class Meta:
        model = StructureVolume
        fields = [
            "structure_id",
            "name",
            "voxels",
            "volume_mm3",
            "volume_low_mm3",
            "volume_high_mm3",
            "assessment",
        ]

    def get_assessment(self, volume: StructureVolume) -> str:
        return volume.judgement[1]

    def to_representation(self, instance: Any) -> Any:
        data = super().to_representation(instance)
        if not instance.judgement[0]:
            data["volume_mm3"] = data["volume_low_mm3"] = data["volume_high_mm3"] = None
        return data


class LesionSerializer(serializers.ModelSerializer):
    centroid_mm = serializers.ListField(child=serializers.FloatField(), read_only=True)
    anchor_mm = serializers.ListField(child=serializers.FloatField(), read_only=True)

    class Meta:
        model = Lesion
        fields = [
            "id",
            "index",
            "review",
            "structure_id",
            "centroid_mm",
            "anchor_mm",
            "voxels",
            "volume_mm3",
            "max_diameter_mm",
            "organ_id",
            "organ_name",
            "allocation",
        ]


class PredictionSerializer(serializers.ModelSerializer):
    model = ModelVersionBriefSerializer(source="model_version", read_only=True)
    volumes = StructureVolumeSerializer(many=True, read_only=True)
    lesions = LesionSerializer(many=True, read_only=True)
    labels_url = serializers.SerializerMethodField()
    uncertainty_url = serializers.SerializerMethodField()
    qc = serializers.SerializerMethodField()

    class Meta:
        model = Prediction
        fields = [
            "id",
            "scan",
            "job",
            "model",
            "created_at",
            "labels_url",
            "uncertainty_url",
            "volumes",
            "lesions",
            "metastasis_counts",
            "qc",
            "manifest",
        ]

    def get_qc(self, prediction: Prediction) -> dict[str, Any]:
        return prediction.qc

    def get_labels_url(self, prediction: Prediction) -> str:
        return reverse("inference-prediction-file", args=[prediction.pk, "labels"])

    def get_uncertainty_url(self, prediction: Prediction) -> str:
        return reverse("inference-prediction-file", args=[prediction.pk, "uncertainty"])

    def to_representation(self, instance: Any) -> Any:
        data = super().to_representation(instance)
        data["volumes"] = [v for v in data["volumes"] if v["structure_id"] != 0]
        return data
