"""What the pages show about segmentation results, read from the service's rows.

Predictions, structure volumes and lesions are the segmentation app's rows (``segmentation.models``); this
module only reads them and shapes them for templates and charts, so the pages never reach into
those models directly. Volumes are in mm^3 (1 uL = 1 mm^3); time is hours or days since the mouse's
first scan (``TimePoint.offset_hours``).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from django.urls import reverse

from inference.pipeline.qc import MIN_PASS_AGREEMENT
from inference.structures import BY_ID, BY_NAME, LESION_NAMES
from review.models import Consensus
from scans.models import Mouse, Scan, Study
from segmentation.corrections import measured_all
from segmentation.decisions import exclusions
from segmentation.models import InferenceJob, Lesion, Prediction

TUMOR_ID = BY_NAME["tumor"].id
METASTASIS_ID = BY_NAME["metastasis"].id


@dataclass
class TumorPoint:
    """Tumor volume of one scan: ``volume_mm3`` with its ``low``/``high`` range and its source."""

    scan_id: int
    time_point: str
    days: float
    volume_mm3: float
    low_mm3: float
    high_mm3: float
    source: str


@dataclass
class MouseSeries:
    mouse_id: int
    identifier: str
    cohort: str
    tumor: list[TumorPoint] = field(default_factory=list)
    #: organ name -> [(days, volume_mm3, low, high)]
    organs: dict[str, list[tuple[float, float, float, float]]] = field(default_factory=dict)
    #: Tumor volume of the approved annotations' majority consensus; the range spans the annotators.
    tumor_annotated: list[TumorPoint] = field(default_factory=list)
    #: Predictions kept out of the charts by the QC gate: scan, time point, model, status, reasons.
    held_back: list[dict[str, Any]] = field(default_factory=list)


def latest_predictions(scan: Scan) -> list[Prediction]:
    """The newest prediction per task for ``scan`` (organs first, then tumor)."""
    newest: dict[str, Prediction] = {}
    for prediction in Prediction.objects.filter(scan=scan).select_related("model_version", "job"):
        newest.setdefault(prediction.model_version.task, prediction)
    return [newest[t] for t in sorted(newest)]


QC_LABELS = {
    "ok": "QC ok",
    "needs_review": "Needs review",
    "accepted": "Accepted by a reviewer",
    "rejected": "Rejected by a reviewer",
    "not_checked": "Not checked",
}


def qc_of(scans: list[Scan]) -> dict[int, list[dict[str, Any]]]:
    """Per scan, the QC verdict of its newest prediction per task: model, status, label, reasons."""
    predictions = (
        Prediction.objects.filter(scan__in=scans)
        .select_related("model_version")
        .prefetch_related("qc_reviews")
        .order_by("-created_at", "-pk")
    )
    seen: set[tuple[int, str]] = set()
    found: dict[int, list[dict[str, Any]]] = {}
    for prediction in predictions:
        key = (prediction.scan_id, prediction.model_version.task)
        if key in seen:
            continue
        seen.add(key)
        found.setdefault(prediction.scan_id, []).append(qc_row(prediction))
    return found


def reading_notes(manifest: dict[str, Any] | None) -> list[str]:
    """How the pipeline read a scan, in its manifest's own words: the intensity calibration, the
    orientation verdict, a brain grown to its skull and an outline refiner that ran on resampled
    voxels or not at all (``inference.pipeline``)."""
    manifest = manifest or {}
    intensity = manifest.get("intensity") or {}
    orientation = manifest.get("orientation") or {}
    postprocess = manifest.get("postprocess") or {}
    braincase = postprocess.get("braincase") or {}
    notes = [str(n) for n in intensity.get("findings") or []]
    if orientation.get("summary"):
        notes.append(str(orientation["summary"]))
    if braincase.get("finding"):
        notes.append(str(braincase["finding"]))
    # An outline refined on resampled voxels, or left as the model drew it (``RefinerRun.finding``).
    notes.extend(str(run["finding"]) for run in postprocess.get("refiners") or [] if run.get("finding"))
    agreement = (manifest.get("qc") or {}).get("pass_agreement") or {}
    if agreement:
        figures = ", ".join(
            f"{name.replace('_', ' ')} {float(value):.2f}" for name, value in agreement.items()
        )
        notes.append(
            "The organ model read the trunk on shifted grids too; its readings agree at Dice "
            f"{figures} (under {MIN_PASS_AGREEMENT:.2f}: it does not know the anatomy well, and the run "
            "needs review)."
        )
    return notes


def qc_row(prediction: Prediction) -> dict[str, Any]:
    qc = prediction.qc
    return {
        "prediction_id": prediction.pk,
        "model": prediction.model_version.label,
        "task": prediction.model_version.get_task_display(),
        "status": qc["status"],
        "label": QC_LABELS.get(qc["status"], qc["status"]),
        "reasons": [r["message"] for r in qc["reasons"]],
        "not_in_view": qc["not_in_view"],
        "cut_by_field": qc["cut_by_field"],
        "reading": reading_notes(prediction.manifest),
        "decision": qc["decision"],
        # A decision can still be changed through the API; the page offers the first one.
        "reviewable": qc["pipeline_status"] == "needs_review" and qc["decision"] is None,
    }


def jobs_of(scans: list[Scan]) -> dict[int, list[InferenceJob]]:
    """Jobs per scan id, newest first."""
    out: dict[int, list[InferenceJob]] = defaultdict(list)
    for job in InferenceJob.objects.filter(scan__in=scans).select_related("model_version"):
        out[job.scan_id].append(job)
    return out


def scan_volumes(predictions: list[Prediction]) -> list[dict[str, Any]]:
    """One row per structure over the given predictions, by structure id, from the source that
    stands for each (``segmentation.corrections``: a person's correction, else the model with
    excluded lesions taken out). Structures not found are left out."""
    rows: list[dict[str, Any]] = []
    for numbers in measured_all(predictions):
        for v in numbers.volumes:
            if v.volume_mm3 is None:
                continue
            known = v.structure_id in BY_ID
            rows.append(
                {
                    "structure_id": v.structure_id,
                    "name": v.name,
                    "display_name": BY_ID[v.structure_id].display_name if known else v.name,
                    "colour": BY_ID[v.structure_id].colour_hex if known else "#888888",
                    "voxels": v.voxels,
                    "volume_mm3": v.volume_mm3,
                    "low_mm3": v.low_mm3,
                    "high_mm3": v.high_mm3,
                    "source": numbers.source,
                    "corrected": numbers.correction is not None,
                }
            )
    return sorted(rows, key=lambda row: row["structure_id"])


def volume_sources(predictions: list[Prediction]) -> list[dict[str, Any]]:
    """Per prediction, where its volumes come from (the viewer says so above its table)."""
    return [
        {
            "prediction_id": n.prediction.pk,
            "task": n.prediction.model_version.get_task_display(),
            "source": n.source,
            "corrected": n.correction is not None,
        }
        for n in measured_all(predictions)
    ]


def scan_lesions(predictions: list[Prediction]) -> list[dict[str, Any]]:
    rows = (
        Lesion.objects.filter(prediction__in=predictions)
        .prefetch_related("reviews")
        .order_by("prediction_id", "index")
    )
    return [
        {
            "id": lesion.pk,
            "review": lesion.review,
            "review_reason": next((r.reason for r in lesion.reviews.all()), ""),
            "review_url": reverse("inference-lesion-review", args=[lesion.pk]),
            "index": lesion.index,
            "structure_id": lesion.structure_id,
            "centroid_mm": list(lesion.centroid_mm),
            "anchor_mm": list(lesion.anchor_mm),
            "voxels": lesion.voxels,
            "volume_mm3": lesion.volume_mm3,
            "max_diameter_mm": lesion.max_diameter_mm,
            "organ_name": lesion.organ_name,
            "allocation": lesion.allocation,
        }
        for lesion in rows
    ]


def metastasis_counts(predictions: list[Prediction]) -> dict[str, int | None]:
    """Organ name -> number of metastases, summed over the predictions that count them; ``None``
    for an organ that no prediction assessed ("not assessed", never 0)."""
    counts: dict[str, int | None] = {}
    for prediction in predictions:
        taken = exclusions(prediction).metastases
        for organ, count in (prediction.metastasis_counts or {}).items():
            if count is None:
                counts.setdefault(organ, None)
            else:
                counts[organ] = int(counts.get(organ) or 0) + max(0, int(count) - taken.get(organ, 0))
    return dict(sorted(counts.items(), key=lambda item: (item[1] is None, -(item[1] or 0), item[0])))


def metastases_found_from_mm(predictions: list[Prediction]) -> dict[str, float]:
    """Organ name -> the smallest metastasis (diameter, mm) the predictions' models were measured
    to find there (their manifests' ``metastases_found_from_mm``; the largest where several say)."""
    found: dict[str, float] = {}
    for prediction in predictions:
        for organ, mm in ((prediction.manifest or {}).get("metastases_found_from_mm") or {}).items():
            found[organ] = max(float(mm), found.get(organ, 0.0))
    return found


def _days(offset_hours: float) -> float:
    return round(offset_hours / 24.0, 3)


def mouse_series(mice: list[Mouse]) -> list[MouseSeries]:
    """Tumor and organ volume over time per mouse.

    Tumor volume per scan: the tumor structure of the scan's newest prediction, with the range its
    uncertainty map allows; and, where reviewers approved annotations, the volume of their
    majority consensus (review app) with the range from the smallest to the largest annotator.
    Days are counted from the mouse's first time point. A prediction the QC gate flagged (and no
    reviewer accepted) is not charted: it is listed in ``held_back`` with its reasons instead, so
    it reaches neither the charts nor cohort means nor humane-endpoint alerts.
    """
    series = {
        m.pk: MouseSeries(m.pk, m.identifier, m.cohort.name if m.cohort is not None else "No cohort")
        for m in mice
    }
    scans = (
        Scan.objects.filter(time_point__mouse__in=mice, deleted_at__isnull=True)  # not in the bin
        .select_related("time_point", "time_point__mouse")
        .order_by("time_point__offset_hours", "uploaded_at")
    )
    first_offset: dict[int, float] = {}
    for scan in scans:
        mouse_id = scan.time_point.mouse_id
        first_offset.setdefault(mouse_id, scan.time_point.offset_hours)
    predictions = (
        Prediction.objects.filter(scan__in=scans)
        .select_related("scan__time_point", "model_version")
        .prefetch_related("volumes", "qc_reviews", "lesions__reviews")
        .order_by("scan__time_point__offset_hours", "-created_at", "-pk")
    )
    newest: dict[tuple[int, str], Prediction] = {}
    for prediction in predictions:  # the newest prediction per scan and task
        newest.setdefault((prediction.scan_id, prediction.model_version.task), prediction)
    tumor: dict[int, tuple[int, TumorPoint]] = {}
    for numbers in measured_all(list(newest.values())):
        prediction = numbers.prediction
        scan = prediction.scan
        mouse_id = scan.time_point.mouse_id
        days = _days(scan.time_point.offset_hours - first_offset[mouse_id])
        if not numbers.charted:  # a correction is charted; a flagged prediction waits for a reviewer
            _hold_back(series[mouse_id], prediction, days)
            continue
        for v in numbers.volumes:
            if v.volume_mm3 is None:
                continue  # not found: no point, never 0
            if v.name in LESION_NAMES:
                if v.structure_id != TUMOR_ID:
                    continue
                point = TumorPoint(
                    scan.pk,
                    scan.time_point.label,
                    days,
                    v.volume_mm3,
                    v.low_mm3 if v.low_mm3 is not None else v.volume_mm3,
                    v.high_mm3 if v.high_mm3 is not None else v.volume_mm3,
                    numbers.source,
                )
                tumor[scan.pk] = (mouse_id, point)
            else:
                organs = series[mouse_id].organs.setdefault(v.name, [])
                low = v.low_mm3 if v.low_mm3 is not None else v.volume_mm3
                high = v.high_mm3 if v.high_mm3 is not None else v.volume_mm3
                organs.append((days, v.volume_mm3, low, high))
    for mouse_id, point in sorted(tumor.values(), key=lambda item: item[1].days):
        series[mouse_id].tumor.append(point)
    _annotated_tumor(series, scans, first_offset)
    return list(series.values())


def _hold_back(series: MouseSeries, prediction: Prediction, days: float) -> None:
    if any(row["prediction_id"] == prediction.pk for row in series.held_back):
        return
    qc = prediction.qc
    series.held_back.append(
        {
            "prediction_id": prediction.pk,
            "scan_id": prediction.scan_id,
            "time_point": prediction.scan.time_point.label,
            "days": days,
            "model": prediction.model_version.label,
            "qc_status": qc["status"],
            "label": QC_LABELS.get(qc["status"], qc["status"]),
            "reasons": [r["message"] for r in qc["reasons"]],
        }
    )


def _annotated_tumor(series: dict[int, MouseSeries], scans: Any, first_offset: dict[int, float]) -> None:
    """Add the review app's consensus of approved annotations (tumor) to each mouse's series."""
    consensuses = (
        Consensus.objects.filter(scan__in=scans, structure_id=TUMOR_ID)
        .select_related("scan__time_point")
        .prefetch_related("raters")
        .order_by("scan__time_point__offset_hours")
    )
    for consensus in consensuses:
        time_point = consensus.scan.time_point
        raters = [r.volume_mm3 for r in consensus.raters.all()] or [consensus.majority_volume_mm3]
        series[time_point.mouse_id].tumor_annotated.append(
            TumorPoint(
                consensus.scan_id,
                time_point.label,
                _days(time_point.offset_hours - first_offset[time_point.mouse_id]),
                consensus.majority_volume_mm3,
                min(raters),
                max(raters),
                f"consensus of {len(raters)} approved annotations",
            )
        )


def series_json(series: list[MouseSeries]) -> list[dict[str, Any]]:
    return [
        {
            "mouse_id": s.mouse_id,
            "mouse": s.identifier,
            "cohort": s.cohort,
            "tumor": [p.__dict__ for p in s.tumor],
            "tumor_annotated": [p.__dict__ for p in s.tumor_annotated],
            "organs": {name: [list(p) for p in pts] for name, pts in sorted(s.organs.items())},
            "held_back": s.held_back,
        }
        for s in series
    ]


def study_mice(study: Study) -> list[Mouse]:
    mice = study.mice.filter(deleted_at__isnull=True)  # not in the bin
    return list(mice.select_related("cohort").prefetch_related("time_points").order_by("identifier"))
