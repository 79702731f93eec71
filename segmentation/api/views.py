"""Thin REST views: validate, call one service, answer. Everything is scoped to the user's labs
(``visible_to``): a row of another lab answers 404, exactly like one that does not exist."""

from __future__ import annotations

import re
from typing import Any

from django.db.models import QuerySet
from django.http import StreamingHttpResponse
from django.http.response import HttpResponseBase
from django.shortcuts import get_object_or_404
from rest_framework import generics, status
from rest_framework.exceptions import ValidationError
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from labseg.downloads import csv_response, stored_file_response
from labseg.ids import is_id, parse_id
from labseg.refusals import Refused
from scans.models import Scan, Study
from segmentation import decisions, exports, services
from segmentation.models import InferenceJob, Lesion, ModelVersion, Prediction

from .serializers import InferenceJobSerializer, ModelVersionSerializer, PredictionSerializer


def _jobs() -> QuerySet[InferenceJob]:
    return InferenceJob.objects.select_related("model_version", "requested_by", "prediction")


def _predictions() -> QuerySet[Prediction]:
    return Prediction.objects.select_related("model_version").prefetch_related("volumes", "lesions")


class SegmentScanView(APIView):
    """``POST /api/scans/{id}/segment``: queue the default models (or ``{"models": ["name@version"]}``)."""

    def post(self, request: Request, pk: int) -> Response:
        scan = get_object_or_404(Scan.objects.visible_to(request.user), pk=pk)
        versions = _requested_versions(
            request.data.get("models") if hasattr(request.data, "get") else None, lab=scan.lab
        )
        jobs = services.request_segmentation(scan=scan, user=request.user, model_versions=versions)
        by_pk = {job.pk: job for job in _jobs().filter(pk__in=[j.pk for j in jobs])}
        jobs_data = InferenceJobSerializer([by_pk[j.pk] for j in jobs], many=True).data
        return Response({"jobs": jobs_data}, status=status.HTTP_202_ACCEPTED)


def _requested_versions(models: Any, *, lab: Any) -> list[ModelVersion] | None:
    if not models:
        return None
    if isinstance(models, str):
        models = [models]
    versions = []
    for label in models:
        name, _, version = str(label).partition("@")
        usable = ModelVersion.objects.usable_by(lab)  # another lab's fine-tuned models do not exist here
        found = usable.filter(name=name, version=version).first() if version else None
        if found is None:
            known = ", ".join(mv.label for mv in usable) or "none"
            raise ValidationError({"models": f"unknown model {label!r}; use name@version, one of: {known}"})
        versions.append(found)
    return versions


def _visible_jobs(request: Request) -> QuerySet[InferenceJob]:
    return _jobs().filter(pk__in=InferenceJob.objects.visible_to(request.user).values("pk"))


#: Most jobs one ``?ids=`` request may ask for (a page polls all of its jobs at once).
MAX_JOB_IDS = 200


class JobList(generics.ListAPIView):
    """``GET /api/jobs/`` (``?scan=``, ``?state=``, ``?ids=1,2,3``: the jobs a page shows, in one
    request)."""

    serializer_class = InferenceJobSerializer

    def get_queryset(self) -> QuerySet[InferenceJob]:
        jobs = _visible_jobs(self.request)
        scan = self.request.query_params.get("scan")
        if scan:
            jobs = jobs.filter(scan_id=parse_id(scan, "scan", of="a scan"))
        ids = self.request.query_params.get("ids")
        if ids:
            wanted = ids.split(",")
            if len(wanted) > MAX_JOB_IDS or not all(is_id(part) for part in wanted):
                raise ValidationError({"ids": f"ids must be up to {MAX_JOB_IDS} job ids, comma-separated"})
            jobs = jobs.filter(pk__in=[int(part) for part in wanted])
        state = self.request.query_params.get("state")
        if state:
            if state not in InferenceJob.State.values:
                raise ValidationError(
                    {"state": f"state must be one of {', '.join(InferenceJob.State.values)}"}
                )
            jobs = jobs.filter(state=state)
        return jobs


class JobDetail(generics.RetrieveAPIView):
    """``GET /api/jobs/{id}/``."""

    serializer_class = InferenceJobSerializer

    def get_queryset(self) -> QuerySet[InferenceJob]:
        return _visible_jobs(self.request)


class JobCancel(APIView):
    """``POST /api/jobs/{id}/cancel``: 409 once the job has finished."""

    def post(self, request: Request, pk: int) -> Response:
        job = get_object_or_404(_visible_jobs(request), pk=pk)
        if not services.cancel_job(job=job, user=request.user):
            raise Refused(f"job {job.pk} is {job.state} and can no longer be cancelled", status=409)
        return Response(InferenceJobSerializer(job).data)


class ScanPredictionsView(generics.ListAPIView):
    """``GET /api/scans/{id}/predictions/``: every prediction of the scan, with volumes and lesions."""

    serializer_class = PredictionSerializer
    pagination_class = None

    def get_queryset(self) -> QuerySet[Prediction]:
        scan = get_object_or_404(Scan.objects.visible_to(self.request.user), pk=self.kwargs["pk"])
        return _predictions().filter(scan=scan).order_by("model_version__task", "model_version__name")


class PredictionDetailView(generics.RetrieveAPIView):
    """``GET /api/predictions/{id}/``: the prediction with volumes, lesions, metastasis counts."""

    serializer_class = PredictionSerializer

    def get_queryset(self) -> QuerySet[Prediction]:
        return _predictions().filter(pk__in=Prediction.objects.visible_to(self.request.user).values("pk"))


class PredictionFileView(APIView):
    """``GET /api/predictions/{id}/labels`` or ``/uncertainty``: the NIfTI file (gzip)."""

    def get(self, request: Request, pk: int, kind: str) -> HttpResponseBase:
        prediction = get_object_or_404(Prediction.objects.visible_to(request.user), pk=pk)
        stored = prediction.labels if kind == "labels" else prediction.uncertainty
        filename = f"scan{prediction.scan_id}_{_safe(prediction.model_version.label)}_{kind}.nii.gz"
        return stored_file_response(stored.name, filename)


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "export"


def _csv_response(kind: str, scans: QuerySet[Scan], filename: str) -> StreamingHttpResponse:
    columns, records = exports.export(kind, scans)
    return csv_response(records, columns, filename)


class ScanExportView(APIView):
    """``GET /api/scans/{id}/volumes.csv`` (also ``lesions.csv``, ``metastases.csv``)."""

    def get(self, request: Request, pk: int, kind: str) -> StreamingHttpResponse:
        scan = get_object_or_404(Scan.objects.visible_to(request.user), pk=pk)
        return _csv_response(kind, Scan.objects.filter(pk=scan.pk), f"scan{scan.pk}-{kind}.csv")


class StudyExportView(APIView):
    """``GET /api/studies/{id}/volumes.csv`` (also ``lesions.csv``, ``metastases.csv``): every scan."""

    def get(self, request: Request, pk: int, kind: str) -> StreamingHttpResponse:
        study = get_object_or_404(Study.objects.visible_to(request.user), pk=pk)
        scans = Scan.objects.filter(time_point__mouse__study=study)
        return _csv_response(kind, scans, f"{_safe(study.name)}-{kind}.csv")


def _decision(request: Request, words: str) -> tuple[str, str]:
    """The body's ``decision`` and its ``words`` (a note or a reason), as text."""
    data = request.data if hasattr(request.data, "get") else {}
    return str(data.get("decision", "")), str(data.get(words, ""))


class PredictionQCView(APIView):
    """``POST /api/predictions/{id}/qc`` ``{"decision": "accepted"|"rejected", "note": "..."}``: a
    reviewer's decision on a prediction the QC gate flagged (403 for other roles)."""

    def post(self, request: Request, pk: int) -> Response:
        prediction = get_object_or_404(Prediction.objects.visible_to(request.user), pk=pk)
        decision, note = _decision(request, "note")
        decisions.decide_qc(prediction=prediction, user=request.user, decision=decision, note=note)
        return Response(PredictionSerializer(Prediction.objects.get(pk=prediction.pk)).data)


class LesionReviewView(APIView):
    """``POST /api/lesions/{id}/review`` ``{"decision": "excluded"|"confirmed", "reason": "..."}``:
    a lab member excludes a false positive (or confirms a lesion); volumes, counts, CSVs and charts
    follow. Answers the prediction with its lesions."""

    def post(self, request: Request, pk: int) -> Response:
        lesion = get_object_or_404(Lesion.objects.visible_to(request.user), pk=pk)
        decision, reason = _decision(request, "reason")
        decisions.review_lesion(lesion=lesion, user=request.user, decision=decision, reason=reason)
        return Response(PredictionSerializer(Prediction.objects.get(pk=lesion.prediction_id)).data)


class ModelVersionListView(generics.ListAPIView):
    """``GET /api/models/``: the shipped model versions and those fine-tuned by the user's labs."""

    serializer_class = ModelVersionSerializer
    pagination_class = None

    def get_queryset(self) -> QuerySet[ModelVersion]:
        return ModelVersion.objects.visible_to(self.request.user).order_by("task", "name", "version")
