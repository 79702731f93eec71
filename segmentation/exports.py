"""CSV exports of volumes, lesions and metastasis counts, one row per (scan, source, item).

A *source* is whatever produced the numbers: a model version (``name@version``). Each generator
in ``EXPORTS`` takes an iterable of scans (already scoped to the user's labs) and yields dicts
keyed by ``VOLUME_COLUMNS`` (or ``LESION_COLUMNS`` / ``METASTASIS_COLUMNS``); ``scan_columns(scan)``
gives the columns every row starts with. Rows are streamed: nothing holds a whole study in memory.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from django.db.models import Prefetch, QuerySet

from inference import structures
from scans.models import Scan

from .corrections import corrections, measured
from .decisions import exclusions
from .models import Prediction

Row = dict[str, Any]
RowSource = Callable[[Iterable[Scan]], Iterator[Row]]

#: The columns that say which scan a row is about (every CSV starts with them).
SCAN_ID_COLUMNS: tuple[str, ...] = (
    "lab",
    "study",
    "mouse",
    "cohort",
    "time_point",
    "offset_hours",
    "modality",
    "scan_id",
)
#: ... then what made the numbers and the QC verdict on it (``ok``, ``needs_review``, ``accepted``,
#: ``rejected``, ``not_checked``: ``segmentation.models.Prediction.qc``; ``corrected`` for volumes
#: a person redrew, ``segmentation.corrections``).
SCAN_COLUMNS: tuple[str, ...] = (*SCAN_ID_COLUMNS, "source", "qc_status")
VOLUME_COLUMNS: tuple[str, ...] = (
    *SCAN_COLUMNS,
    "structure",
    "volume_mm3",
    "voxels",
    "volume_low_mm3",
    "volume_high_mm3",
    "assessment",
)
LESION_COLUMNS: tuple[str, ...] = (
    *SCAN_COLUMNS,
    "lesion",
    "structure",
    "organ",
    "allocation",
    "centroid_x_mm",
    "centroid_y_mm",
    "centroid_z_mm",
    "voxels",
    "volume_mm3",
    "max_diameter_mm",
    "review",
    "review_reason",
)
METASTASIS_COLUMNS: tuple[str, ...] = (*SCAN_COLUMNS, "organ", "metastases", "assessment", "found_from_mm")

#: How many scans are read per database round trip while streaming.
CHUNK_SCANS = 200


def scan_columns(scan: Scan, *, source: str, qc_status: str = "") -> Row:
    """The columns that identify a scan; ``scan`` needs its time point, mouse, cohort, study, lab."""
    mouse = scan.time_point.mouse
    return {
        "lab": scan.lab.name,
        "study": mouse.study.name,
        "mouse": mouse.identifier,
        "cohort": mouse.cohort.name if mouse.cohort else "",
        "time_point": scan.time_point.label,
        "offset_hours": scan.time_point.offset_hours,
        "modality": scan.modality,
        "scan_id": scan.pk,
        "source": source,
        "qc_status": qc_status,
    }


def export_scans(scans: QuerySet[Scan]) -> QuerySet[Scan]:
    """The scans in export order with their identifying rows joined in."""
    return scans.select_related("lab", "time_point__mouse__study", "time_point__mouse__cohort").order_by(
        "time_point__mouse__study__name", "time_point__mouse__identifier", "time_point__offset_hours", "pk"
    )


def _chunks(scans: Iterable[Scan]) -> Iterator[list[Scan]]:
    chunk: list[Scan] = []
    for scan in scans:
        chunk.append(scan)
        if len(chunk) >= CHUNK_SCANS:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _predictions(scans: Iterable[Scan]) -> Iterator[tuple[Scan, Prediction]]:
    """(scan, prediction) pairs, predictions in model order, fetched a chunk of scans at a time."""
    for chunk in _chunks(scans):
        yield from _predictions_of_chunk(chunk)


def _predictions_of_chunk(chunk: Sequence[Scan]) -> Iterator[tuple[Scan, Prediction]]:
    # Lesions and their reviews always: an excluded lesion leaves volumes and counts too.
    related: list[Prefetch[str, Any, str]] = [
        Prefetch("volumes"),
        Prefetch("qc_reviews"),
        Prefetch("lesions"),
        Prefetch("lesions__reviews"),
    ]
    predictions = (
        Prediction.objects.filter(scan__in=chunk)
        .select_related("model_version")
        .prefetch_related(*related)
        .order_by("model_version__task", "model_version__name", "model_version__version")
    )
    by_scan: dict[int, list[Prediction]] = {}
    for prediction in predictions:
        by_scan.setdefault(prediction.scan_id, []).append(prediction)
    for scan in chunk:
        for prediction in by_scan.get(scan.pk, []):
            yield scan, prediction


def prediction_volume_rows(scans: Iterable[Scan]) -> Iterator[Row]:
    """One row per structure volume of every prediction (background left out), from the source
    that stands for it (``segmentation.corrections``): a person's newest correction where there
    is one (``source`` "corrected by ... from ...", ``qc_status`` "corrected"), else the model.

    A lesion of 0 mm^3 is data (no tumor). An organ the model did not find is not "0 mm^3": the
    scan may not show it (field of view) or the model missed it, so its volume cells are empty and
    ``assessment`` says "not found". Lesions a person excluded (``segmentation.decisions``) are
    taken out of the tumor and metastasis volumes, and ``assessment`` says how many.
    """
    for chunk in _chunks(scans):
        pairs = list(_predictions_of_chunk(chunk))
        found = corrections([prediction for _, prediction in pairs])
        for scan, prediction in pairs:
            numbers = measured(prediction, found.get(prediction.pk))
            base = scan_columns(scan, source=numbers.source, qc_status=numbers.qc_status)
            for volume in numbers.volumes:
                yield {
                    **base,
                    "structure": volume.name,
                    "volume_mm3": volume.volume_mm3,
                    "voxels": volume.voxels,
                    "volume_low_mm3": volume.low_mm3,
                    "volume_high_mm3": volume.high_mm3,
                    "assessment": volume.assessment,
                }


def prediction_lesion_rows(scans: Iterable[Scan]) -> Iterator[Row]:
    """One row per lesion (tumor or metastasis component) of every prediction."""
    for scan, prediction in _predictions(scans):
        base = scan_columns(scan, source=prediction.model_version.label, qc_status=prediction.qc["status"])
        for lesion in prediction.lesions.all():
            yield {
                **base,
                "lesion": lesion.index,
                "structure": structures.by_id(lesion.structure_id).name,
                "organ": lesion.organ_name,
                "allocation": lesion.allocation,
                "centroid_x_mm": lesion.centroid_x_mm,
                "centroid_y_mm": lesion.centroid_y_mm,
                "centroid_z_mm": lesion.centroid_z_mm,
                "voxels": lesion.voxels,
                "volume_mm3": lesion.volume_mm3,
                "max_diameter_mm": lesion.max_diameter_mm,
                "review": lesion.review,
                "review_reason": next((r.reason for r in lesion.reviews.all()), ""),
            }


def prediction_metastasis_rows(scans: Iterable[Scan]) -> Iterator[Row]:
    """Metastases per organ for every prediction of a model that finds metastases.

    Every organ of the canonical table gets a row, followed by any other allocation target the
    pipeline reported (such as subcutaneous tissue). A zero is data (a clean lung is a result);
    an organ the model did not look in, or that the scan does not show, has an empty count and
    ``assessment`` "not assessed": never 0. ``found_from_mm``: the smallest metastasis (diameter)
    the model was measured to find in that organ, where its card says (a 0 there means none that
    size or larger); empty otherwise.
    """
    metastasis_id = structures.by_name("metastasis").id
    for scan, prediction in _predictions(scans):
        if metastasis_id not in {int(s) for s in prediction.model_version.structures}:
            continue
        base = scan_columns(scan, source=prediction.model_version.label, qc_status=prediction.qc["status"])
        taken = exclusions(prediction).metastases
        counts = {
            str(k): (None if v is None else max(0, int(v) - taken.get(str(k), 0)))
            for k, v in prediction.metastasis_counts.items()
        }
        found_from = (prediction.manifest or {}).get("metastases_found_from_mm") or {}
        for organ in (*structures.ORGAN_NAMES, *sorted(set(counts) - set(structures.ORGAN_NAMES))):
            count = counts.get(organ)
            yield {
                **base,
                "organ": organ,
                "metastases": count,
                "assessment": "assessed" if count is not None else "not assessed",
                "found_from_mm": found_from.get(organ) if count is not None else None,
            }


def rows(scans: QuerySet[Scan], source: RowSource) -> Iterator[Row]:
    """Rows of ``source`` for these scans, read in export order a chunk at a time."""
    yield from source(export_scans(scans).iterator(chunk_size=CHUNK_SCANS))


#: The columns and the row generator of each export.
EXPORTS: dict[str, tuple[tuple[str, ...], RowSource]] = {
    "volumes": (VOLUME_COLUMNS, prediction_volume_rows),
    "lesions": (LESION_COLUMNS, prediction_lesion_rows),
    "metastases": (METASTASIS_COLUMNS, prediction_metastasis_rows),
}


def export(kind: str, scans: QuerySet[Scan]) -> tuple[tuple[str, ...], Iterator[Row]]:
    """The columns and the streamed rows of export ``kind`` (``volumes``, ``lesions`` or
    ``metastases``) for these scans; ``labseg.downloads.csv_response`` writes them."""
    columns, source = EXPORTS[kind]
    return columns, rows(scans, source)
