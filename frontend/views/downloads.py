"""CSV downloads per study, mouse or scan: tumor volumes over time (here), and organ volumetry,
lesions and metastasis counts per organ (rows from the service's ``segmentation.exports``).

Every CSV is streamed row by row, so a large study never sits in memory. Columns carry units.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from django.db.models import QuerySet
from django.http import Http404, HttpRequest, StreamingHttpResponse
from django.shortcuts import get_object_or_404
from django.views.decorators.http import require_GET

from frontend import results
from frontend.views.base import lab_page
from inference.structures import BY_NAME
from labseg.downloads import csv_response
from scans.models import Lab, Mouse, Scan, Study
from segmentation import exports
from segmentation.corrections import Measured, measured_all

TUMOR_ID = BY_NAME["tumor"].id


def _scope(request: HttpRequest, lab: Lab, scope: str, pk: int) -> tuple[QuerySet[Scan], str]:
    """The scans of a study, mouse or scan visible to the user in the current lab, and a file stem."""
    # Scoped to the user's labs (not only the session's): a file link keeps working after a switch.
    scans = Scan.objects.visible_to(request.user)
    if scope == "study":
        study = get_object_or_404(Study.objects.visible_to(request.user), pk=pk)
        return scans.filter(time_point__mouse__study=study), f"study{study.pk}"
    if scope == "mouse":
        mouse = get_object_or_404(Mouse.objects.visible_to(request.user), pk=pk)
        return scans.filter(time_point__mouse=mouse), f"mouse_{mouse.identifier}"
    if scope == "scan":
        scan = get_object_or_404(scans, pk=pk)
        return scans.filter(pk=scan.pk), f"scan{scan.pk}"
    raise Http404("unknown download scope")


def _scan_cells(scan: Scan) -> list[Any]:
    mouse = scan.time_point.mouse
    return [
        scan.lab.name,
        mouse.study.name,
        mouse.identifier,
        mouse.cohort.name if mouse.cohort is not None else "",
        scan.time_point.label,
        scan.time_point.offset_hours,
        scan.modality,
        scan.pk,
    ]


def _ordered(scans: QuerySet[Scan]) -> QuerySet[Scan]:
    return scans.select_related("lab", "time_point__mouse__study", "time_point__mouse__cohort").order_by(
        "time_point__mouse__identifier", "time_point__offset_hours", "pk"
    )


def _newest_measured(scans: QuerySet[Scan]) -> Iterator[tuple[Scan, Measured]]:
    """Each scan's newest prediction per task with the volumes that stand for it (a person's
    correction where there is one: ``segmentation.corrections``), streamed in scan order."""
    for scan in _ordered(scans).iterator(chunk_size=200):
        for numbers in measured_all(results.latest_predictions(scan)):
            yield scan, numbers


@require_GET
@lab_page
def tumor_csv(request: HttpRequest, lab: Lab, scope: str, pk: int) -> StreamingHttpResponse:
    scans, stem = _scope(request, lab, scope, pk)
    header = [
        *exports.SCAN_ID_COLUMNS,
        "days",
        "source",
        "tumor_volume_mm3",
        "volume_low_mm3",
        "volume_high_mm3",
        "qc_status",
    ]

    def rows() -> Iterator[list[Any]]:
        first: dict[int, float] = {}
        for scan in _ordered(scans).order_by("time_point__mouse_id", "time_point__offset_hours"):
            mouse_id = scan.time_point.mouse_id
            first.setdefault(mouse_id, scan.time_point.offset_hours)
        for scan, numbers in _newest_measured(scans):
            volume = numbers.volume(TUMOR_ID)
            if volume is None:
                continue
            days = round((scan.time_point.offset_hours - first[scan.time_point.mouse_id]) / 24.0, 3)
            yield [
                *_scan_cells(scan),
                days,
                numbers.source,
                volume.volume_mm3,
                volume.low_mm3,
                volume.high_mm3,
                numbers.qc_status,
            ]

    return csv_response(rows(), header, f"{stem}_tumor_volumes.csv")


def _export(request: HttpRequest, lab: Lab, scope: str, pk: int, kind: str) -> StreamingHttpResponse:
    """The service's export ``kind`` (one generator for every scope, so every CSV agrees)."""
    scans, stem = _scope(request, lab, scope, pk)
    columns, records = exports.export(kind, scans)
    return csv_response(records, columns, f"{stem}_{kind}.csv")


@require_GET
@lab_page
def metastases_csv(request: HttpRequest, lab: Lab, scope: str, pk: int) -> StreamingHttpResponse:
    """Metastasis counts per organ, one row per scan, source and organ."""
    return _export(request, lab, scope, pk, "metastases")


@require_GET
@lab_page
def lesions_csv(request: HttpRequest, lab: Lab, scope: str, pk: int) -> StreamingHttpResponse:
    """Every tumor and metastasis component with its centroid, size and organ."""
    return _export(request, lab, scope, pk, "lesions")


@require_GET
@lab_page
def volumes_csv(request: HttpRequest, lab: Lab, scope: str, pk: int) -> StreamingHttpResponse:
    """Organ volumetry: one row per scan, source (model, annotator or consensus) and structure."""
    return _export(request, lab, scope, pk, "volumes")
