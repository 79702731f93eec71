"""REST views of the review app: validate, call one service, answer. Lab-scoped everywhere:
rows outside the user's labs answer 404, actions the user's role does not allow answer 403."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from django.http import FileResponse, Http404, HttpResponse
from django.shortcuts import get_object_or_404
from rest_framework import status
from rest_framework.decorators import api_view, parser_classes
from rest_framework.parsers import FormParser, JSONParser, MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response

from scans.models import Annotation, Scan, Study
from scans.validation import ScanRejected
from segmentation.models import Prediction

from .. import analysis, plots, services, studies
from ..models import Agreement, Consensus, PredictionComparison, ReviewAnalysis
from .serializers import (
    AgreementSerializer,
    ComparisonSerializer,
    ConsensusSerializer,
    NoteSerializer,
    ReplaceSerializer,
    ReviewedAnnotationSerializer,
    TransitionSerializer,
)


def _refusal(error: services.ReviewError | ScanRejected) -> Response:
    return Response({"detail": error.message}, status=error.status)


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
    try:
        annotation = move(annotation=annotation, note=body.validated_data["note"], **{actor: request.user})
    except services.ReviewError as error:
        return _refusal(error)
    return _annotation_answer(annotation)


@api_view(["POST"])
def submit_view(request: Request, pk: int) -> Response:
    return _transition(request, pk, services.submit_annotation, "user")


@api_view(["POST"])
def approve_view(request: Request, pk: int) -> Response:
    return _transition(request, pk, services.approve_annotation, "reviewer")


@api_view(["POST"])
def reject_view(request: Request, pk: int) -> Response:
    return _transition(request, pk, services.reject_annotation, "reviewer")


@api_view(["POST"])
@parser_classes([MultiPartParser, FormParser])
def replace_view(request: Request, pk: int) -> Response:
    annotation = _annotation(request, pk)
    body = ReplaceSerializer(data=request.data)
    body.is_valid(raise_exception=True)
    upload = body.validated_data["file"]
    try:
        replacement = services.replace_annotation(
            annotation=annotation,
            file=upload,
            original_filename=upload.name,
            user=request.user,
            structures=body.validated_data.get("structures"),
        )
    except (services.ReviewError, ScanRejected) as error:
        return _refusal(error)
    return _annotation_answer(replacement, status.HTTP_201_CREATED)


@api_view(["GET"])
def history_view(request: Request, pk: int) -> Response:
    annotation = _annotation(request, pk)
    data = ReviewedAnnotationSerializer(annotation).data
    data["transitions"] = TransitionSerializer(annotation.transitions.select_related("by"), many=True).data
    return Response(data)


@api_view(["POST"])
@parser_classes([JSONParser])
def promote_view(request: Request, pk: int) -> Response:
    queryset = Prediction.objects.visible_to(request.user).select_related("scan__lab", "model_version")
    prediction = get_object_or_404(queryset, pk=pk)
    try:
        annotation = services.promote_prediction(prediction=prediction, user=request.user)
    except services.ReviewError as error:
        return _refusal(error)
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
    return {
        "id": latest.pk,
        "state": latest.state,
        "error": latest.error,
        "queued_at": latest.queued_at,
        "finished_at": latest.finished_at,
    }


@api_view(["GET", "POST"])
def consensus_view(request: Request, pk: int) -> Response:
    """GET: the stored consensus per structure and the latest background analysis.
    POST ``{"structures": [names], "background": bool}``: compute now (201), or queue it (202) when
    asked to or when the scan is larger than ``LABSEG_REVIEW_INLINE_MAX_VOXELS``."""
    scan = _scan(request, pk)
    if request.method == "GET":
        return Response(
            {"scan": scan.pk, "consensus": _consensus_list(scan), "analysis": _analysis_json(scan)}
        )
    data = request.data if hasattr(request.data, "get") else {}
    try:
        structure_ids = _structure_ids(data.get("structures"))
        if bool(data.get("background")) or analysis.scan_voxels(scan) > analysis.inline_max_voxels():
            analysis.request_analysis(scan=scan, user=request.user, structure_ids=structure_ids)
            return Response(
                {"scan": scan.pk, "consensus": _consensus_list(scan), "analysis": _analysis_json(scan)},
                status=status.HTTP_202_ACCEPTED,
            )
        result = analysis.analyse_scan(scan=scan, user=request.user, structure_ids=structure_ids)
    except services.ReviewError as error:
        return _refusal(error)
    if not result.consensuses:
        return Response(
            {
                "detail": "a consensus needs at least two approved annotations of the same structure; "
                f"this scan has {result.approved} approved annotation(s)"
            },
            status=status.HTTP_400_BAD_REQUEST,
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


@api_view(["GET"])
def consensus_file_view(request: Request, pk: int, kind: str) -> FileResponse:
    consensus = get_object_or_404(Consensus.objects.visible_to(request.user), pk=pk)
    if kind not in ("majority", "staple", "disagreement"):
        raise Http404("unknown consensus map")
    field = getattr(consensus, kind)
    filename = f"scan_{consensus.scan_id}_{consensus.structure_name}_{kind}.nii.gz"
    return FileResponse(
        field.open("rb"), as_attachment=True, filename=filename, content_type="application/gzip"
    )


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


@api_view(["GET"])
def agreement_view(request: Request, pk: int) -> Response:
    return Response(_agreement_payload(_scan(request, pk)))


def csv_response(rows: Iterable[dict[str, Any]], columns: Sequence[str], filename: str) -> HttpResponse:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({key: _cell(row.get(key)) for key in columns})
    response = HttpResponse(buffer.getvalue(), content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return value


@api_view(["GET"])
def scan_agreement_csv_view(request: Request, pk: int) -> HttpResponse:
    scan = _scan(request, pk)
    rows = [r for r in studies.agreement_rows(scan.study) if r["scan_id"] == scan.pk]
    return csv_response(rows, studies.AGREEMENT_COLUMNS, f"scan_{scan.pk}_agreement.csv")


def _study(request: Request, pk: int) -> Study:
    return get_object_or_404(Study.objects.visible_to(request.user), pk=pk)


@api_view(["GET"])
def study_agreement_csv_view(request: Request, pk: int) -> HttpResponse:
    study = _study(request, pk)
    return csv_response(
        studies.agreement_rows(study), studies.AGREEMENT_COLUMNS, f"study_{study.pk}_agreement.csv"
    )


@api_view(["GET"])
def study_variability_csv_view(request: Request, pk: int) -> HttpResponse:
    study = _study(request, pk)
    return csv_response(
        studies.variability_rows(study), studies.VARIABILITY_COLUMNS, f"study_{study.pk}_variability.csv"
    )


@api_view(["GET"])
def study_models_csv_view(request: Request, pk: int) -> HttpResponse:
    study = _study(request, pk)
    rows = [vars(c) for c in studies.compare_models(study)]
    return csv_response(rows, studies.MODEL_COMPARISON_COLUMNS, f"study_{study.pk}_model_comparison.csv")


@api_view(["GET"])
def study_qc_png_view(request: Request, pk: int) -> HttpResponse:
    study = _study(request, pk)
    png = plots.dice_box_plot_png(studies.dice_groups(study), title=f"Dice per structure: {study.name}")
    return HttpResponse(png, content_type="image/png")
