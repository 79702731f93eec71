"""REST views of the review app: validate, call one service, answer. Lab-scoped everywhere:
rows outside the user's labs answer 404, actions the user's role does not allow answer 403."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from django.db.models import QuerySet
from django.http import Http404, HttpResponse, StreamingHttpResponse
from django.http.response import HttpResponseBase
from django.shortcuts import get_object_or_404
from rest_framework import generics, status
from rest_framework.parsers import FormParser, JSONParser, MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from labseg.downloads import csv_response, stored_file_response
from scans.models import Annotation, Scan, Study
from segmentation.models import Prediction

from .. import analysis, exchange, services, studies
from ..models import Agreement, Consensus, PredictionComparison, ReviewAnalysis
from .serializers import (
    AgreementSerializer,
    AnnotationFieldsSerializer,
    AnnotationSerializer,
    ComparisonSerializer,
    ConsensusSerializer,
    NoteSerializer,
    ReplaceSerializer,
    ReviewedAnnotationSerializer,
    TransitionSerializer,
)


def _annotation(request: Request, pk: int) -> Annotation:
    queryset = Annotation.objects.visible_to(request.user).select_related("scan__lab")
    return get_object_or_404(queryset, pk=pk)


def _annotation_answer(annotation: Annotation, code: int = status.HTTP_200_OK) -> Response:
    annotation = Annotation.objects.select_related("revision", "reviewer").get(pk=annotation.pk)
    return Response(ReviewedAnnotationSerializer(annotation).data, status=code)


def _transition(request: Request, pk: int, move: Callable[..., Annotation], actor: str) -> Response:
    annotation = _annotation(request, pk)
    body = NoteSerializer(data=request.data)
    body.is_valid(raise_exception=True)
    annotation = move(annotation=annotation, note=body.validated_data["note"], **{actor: request.user})
    return _annotation_answer(annotation)


class SubmitView(APIView):
    def post(self, request: Request, pk: int) -> Response:
        return _transition(request, pk, services.submit_annotation, "user")


class ApproveView(APIView):
    def post(self, request: Request, pk: int) -> Response:
        return _transition(request, pk, services.approve_annotation, "reviewer")


class RejectView(APIView):
    def post(self, request: Request, pk: int) -> Response:
        return _transition(request, pk, services.reject_annotation, "reviewer")


class ReopenView(APIView):
    """``POST /api/annotations/{id}/reopen``: undo an approval or rejection (reviewers)."""

    def post(self, request: Request, pk: int) -> Response:
        return _transition(request, pk, services.reopen_annotation, "reviewer")


class ReplaceView(APIView):
    parser_classes = [MultiPartParser, FormParser]

    def post(self, request: Request, pk: int) -> Response:
        annotation = _annotation(request, pk)
        body = ReplaceSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        upload = body.validated_data["file"]
        filename, structures = upload.name or "", body.validated_data.get("structures")
        if exchange.is_seg_nrrd(filename):
            upload, filename = exchange.nifti_upload_from_seg_nrrd(upload, filename)
            structures = None
        replacement = services.replace_annotation(
            annotation=annotation,
            file=upload,
            original_filename=filename,
            user=request.user,
            structures=structures,
        )
        return _annotation_answer(replacement, status.HTTP_201_CREATED)


class HistoryView(APIView):
    def get(self, request: Request, pk: int) -> Response:
        annotation = _annotation(request, pk)
        data = ReviewedAnnotationSerializer(annotation).data
        data["transitions"] = TransitionSerializer(
            annotation.transitions.select_related("by"), many=True
        ).data
        return Response(data)


class PromoteView(APIView):
    parser_classes = [JSONParser]

    def post(self, request: Request, pk: int) -> Response:
        queryset = Prediction.objects.visible_to(request.user).select_related("scan__lab", "model_version")
        prediction = get_object_or_404(queryset, pk=pk)
        annotation = services.promote_prediction(prediction=prediction, user=request.user)
        return _annotation_answer(annotation, status.HTTP_201_CREATED)


def _scan(request: Request, pk: int) -> Scan:
    return get_object_or_404(Scan.objects.visible_to(request.user).select_related("lab"), pk=pk)


def _consensus_list(scan: Scan) -> list[dict[str, Any]]:
    rows = Consensus.objects.filter(scan=scan).prefetch_related("raters__annotation")
    return list(ConsensusSerializer(rows, many=True).data)


def _analysis_json(scan: Scan) -> dict[str, Any] | None:
    latest = ReviewAnalysis.objects.filter(scan=scan).first()
    if latest is None:
        return None
    # The same job fields as a segmentation job's (segmentation/api/serializers.py).
    return {
        "id": latest.pk,
        "state": latest.state,
        "progress": latest.progress,
        "stage": latest.stage,
        "attempts": latest.attempts,
        "worker_host": latest.worker_host,
        "error": latest.error,
        "queued_at": latest.queued_at,
        "started_at": latest.started_at,
        "heartbeat_at": latest.heartbeat_at,
        "finished_at": latest.finished_at,
    }


class ConsensusView(APIView):
    """GET: the stored consensus per structure and the latest background analysis.
    POST ``{"structures": [names], "background": bool}``: compute now (201), or queue it (202) when
    asked to or when the scan is larger than ``LABSEG_REVIEW_INLINE_MAX_VOXELS``."""

    def get(self, request: Request, pk: int) -> Response:
        scan = _scan(request, pk)
        return Response(
            {"scan": scan.pk, "consensus": _consensus_list(scan), "analysis": _analysis_json(scan)}
        )

    def post(self, request: Request, pk: int) -> Response:
        scan = _scan(request, pk)
        data = request.data if hasattr(request.data, "get") else {}
        structure_ids = _structure_ids(data.get("structures"))
        if bool(data.get("background")) or analysis.scan_voxels(scan) > analysis.inline_max_voxels():
            analysis.request_analysis(scan=scan, user=request.user, structure_ids=structure_ids)
            return Response(
                {"scan": scan.pk, "consensus": _consensus_list(scan), "analysis": _analysis_json(scan)},
                status=status.HTTP_202_ACCEPTED,
            )
        result = analysis.analyse_scan(scan=scan, user=request.user, structure_ids=structure_ids)
        if not result.consensuses:
            raise services.ReviewError(
                "a consensus needs at least two approved annotations of the same structure; "
                f"this scan has {result.approved} approved annotation(s)"
            )
        body = {"scan": scan.pk, "consensus": _consensus_list(scan), "analysis": None}
        return Response(body, status=status.HTTP_201_CREATED)


def _structure_ids(wanted: Any) -> list[int] | None:
    from inference.structures import by_name

    if not wanted:
        return None
    if not isinstance(wanted, list):
        raise services.ReviewError("structures must be a list of structure names")
    try:
        return [by_name(str(name)).id for name in wanted]
    except KeyError as error:
        raise services.ReviewError(str(error.args[0])) from None


class ConsensusFileView(APIView):
    def get(self, request: Request, pk: int, kind: str) -> HttpResponseBase:
        consensus = get_object_or_404(Consensus.objects.visible_to(request.user), pk=pk)
        if kind not in ("majority", "staple", "disagreement"):
            raise Http404("unknown consensus map")
        field = getattr(consensus, kind)
        filename = f"scan_{consensus.scan_id}_{consensus.structure_name}_{kind}.nii.gz"
        return stored_file_response(field.name, filename)


def _agreement_payload(scan: Scan) -> dict[str, Any]:
    agreements = Agreement.objects.filter(scan=scan).prefetch_related("pairs__first", "pairs__second")
    comparisons = PredictionComparison.objects.filter(scan=scan).select_related(
        "prediction__model_version", "annotation"
    )
    return {
        "scan": scan.pk,
        "annotators": AgreementSerializer(agreements, many=True).data,
        "predictions": ComparisonSerializer(comparisons, many=True).data,
        "hd95": "symmetric 95th-percentile Hausdorff distance, mm",
        "msd": "symmetric mean surface distance, mm",
    }


class AgreementView(APIView):
    def get(self, request: Request, pk: int) -> Response:
        return Response(_agreement_payload(_scan(request, pk)))


class ScanAgreementCsvView(APIView):
    def get(self, request: Request, pk: int) -> StreamingHttpResponse:
        scan = _scan(request, pk)
        rows = [r for r in studies.agreement_rows(scan.study) if r["scan_id"] == scan.pk]
        return csv_response(rows, studies.AGREEMENT_COLUMNS, f"scan_{scan.pk}_agreement.csv")


def _study(request: Request, pk: int) -> Study:
    return get_object_or_404(Study.objects.visible_to(request.user), pk=pk)


class StudyAgreementCsvView(APIView):
    def get(self, request: Request, pk: int) -> StreamingHttpResponse:
        study = _study(request, pk)
        return csv_response(
            studies.agreement_rows(study), studies.AGREEMENT_COLUMNS, f"study_{study.pk}_agreement.csv"
        )


class StudyVariabilityCsvView(APIView):
    def get(self, request: Request, pk: int) -> StreamingHttpResponse:
        study = _study(request, pk)
        return csv_response(
            studies.variability_rows(study), studies.VARIABILITY_COLUMNS, f"study_{study.pk}_variability.csv"
        )


class StudyModelsCsvView(APIView):
    def get(self, request: Request, pk: int) -> StreamingHttpResponse:
        study = _study(request, pk)
        rows = [vars(c) for c in studies.compare_models(study)]
        return csv_response(rows, studies.MODEL_COMPARISON_COLUMNS, f"study_{study.pk}_model_comparison.csv")


class StudyDiceView(APIView):
    """Dice values per structure and group ("annotator vs annotator", "model vs annotator"): what
    the study QC page draws as box plots in the browser (``charts.js``, the one charting path)."""

    def get(self, request: Request, pk: int) -> Response:
        return Response(studies.dice_groups(_study(request, pk)))


class ScanAnnotations(generics.ListAPIView):
    """``GET /api/scans/{id}/annotations/``; ``POST`` multipart ``file``, ``annotator``, ``structures``."""

    serializer_class = AnnotationSerializer

    def _scan(self) -> Scan:
        return get_object_or_404(Scan.objects.visible_to(self.request.user), pk=self.kwargs["pk"])

    def get_queryset(self) -> QuerySet[Annotation]:
        return self._scan().annotations.select_related("reviewer")

    def post(self, request: Request, pk: int) -> Response:
        scan = self._scan()
        data: dict[str, Any] = {"annotator": request.data.get("annotator", "")}
        raw_structures = request.data.get("structures")
        if raw_structures not in (None, ""):
            data["structures"] = raw_structures
        if isinstance(raw_structures, str) and raw_structures.strip():
            try:
                data["structures"] = json.loads(raw_structures)
            except json.JSONDecodeError:
                return Response({"detail": 'structures must be JSON, such as {"tumor": 1}'}, status=400)
        fields = AnnotationFieldsSerializer(data=data)
        fields.is_valid(raise_exception=True)
        upload = request.FILES.get("file")
        if upload is None:
            return Response({"detail": "attach the label map as the multipart field 'file'"}, status=400)
        filename, structures = upload.name or "", fields.validated_data.get("structures")
        if exchange.is_seg_nrrd(filename):  # a Slicer segmentation: canonical names, so canonical ids
            upload, filename = exchange.nifti_upload_from_seg_nrrd(upload, filename)
            structures = None
        annotation = services.create_annotation(
            scan=scan,
            file=upload,
            original_filename=filename,
            annotator_name=fields.validated_data.get("annotator", ""),
            user=request.user,
            structures=structures,
        )
        return Response(AnnotationSerializer(annotation).data, status=status.HTTP_201_CREATED)


class AnnotationDetail(generics.RetrieveAPIView):
    serializer_class = AnnotationSerializer

    def get_queryset(self) -> QuerySet[Annotation]:
        return Annotation.objects.visible_to(self.request.user).select_related("reviewer")


class AnnotationFile(APIView):
    def get(self, request: Request, pk: int) -> HttpResponseBase:
        annotation = get_object_or_404(Annotation.objects.visible_to(request.user), pk=pk)
        return stored_file_response(annotation.file.name, annotation.original_filename)


class AnnotationSegNrrd(APIView):
    """``GET /api/annotations/{id}/file.seg.nrrd``: the annotation for 3D Slicer (canonical ids)."""

    def get(self, request: Request, pk: int) -> HttpResponse:
        annotation = get_object_or_404(Annotation.objects.visible_to(request.user), pk=pk)
        name = f"scan{annotation.scan_id}_annotation{annotation.pk}_{annotation.annotator_name}.seg.nrrd"
        return exchange.seg_nrrd_response(annotation.file, annotation.structures, name)


class PredictionSegNrrd(APIView):
    """``GET /api/predictions/{id}/labels.seg.nrrd``: the prediction's labels for 3D Slicer."""

    def get(self, request: Request, pk: int) -> HttpResponse:
        prediction = get_object_or_404(Prediction.objects.visible_to(request.user), pk=pk)
        name = f"scan{prediction.scan_id}_{prediction.model_version.name}_{prediction.model_version.version}"
        return exchange.seg_nrrd_response(prediction.labels, None, f"{name}.seg.nrrd")


class ItksnapLabels(APIView):
    """``GET /api/structures/itksnap.txt``: the canonical table as an ITK-SNAP label file."""

    def get(self, request: Request) -> HttpResponse:
        return exchange.itksnap_response()
