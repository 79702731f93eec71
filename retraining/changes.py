"""How a study's volumes changed between two model versions (after a re-run with a new default).

Per mouse, time point and structure: the volume by each version with its uncertainty range
(``StructureVolume.volume_low_mm3`` .. ``volume_high_mm3``, from the uncertainty map), the change,
and a flag when the change is larger than the models' uncertainty (the two ranges do not overlap).
The tumor growth curve of each version, per mouse, is drawn from the same rows.
"""

from __future__ import annotations

from typing import Any

from scans.models import Study
from segmentation.models import ModelVersion, StructureVolume


def volume_changes(*, study: Study, before: ModelVersion, after: ModelVersion) -> dict[str, Any]:
    rows = (
        StructureVolume.objects.filter(
            prediction__scan__time_point__mouse__study=study,
            prediction__scan__deleted_at__isnull=True,
            prediction__model_version__in=[before, after],
        )
        .select_related("prediction__scan__time_point__mouse", "prediction")
        .order_by("prediction__scan__time_point__offset_hours", "structure_id")
    )
    cells: dict[tuple[int, int], dict[str, Any]] = {}
    for row in rows:
        scan = row.prediction.scan
        key = (scan.pk, row.structure_id)
        cell = cells.setdefault(
            key,
            {
                "scan": scan.pk,
                "mouse": scan.time_point.mouse.identifier,
                "time_point": scan.time_point.label,
                "offset_hours": scan.time_point.offset_hours,
                "structure_id": row.structure_id,
                "structure": row.name,
            },
        )
        side = "before" if row.prediction.model_version_id == before.pk else "after"
        cell[side] = {
            "volume_mm3": round(row.volume_mm3, 3),
            "low_mm3": round(row.volume_low_mm3, 3),
            "high_mm3": round(row.volume_high_mm3, 3),
        }
    changes = []
    for cell in cells.values():
        a, b = cell.get("before"), cell.get("after")
        if a is None or b is None:
            continue
        cell["change_mm3"] = round(b["volume_mm3"] - a["volume_mm3"], 3)
        cell["change_pct"] = (
            round(100.0 * cell["change_mm3"] / a["volume_mm3"], 1) if a["volume_mm3"] else None
        )
        overlap = b["low_mm3"] <= a["high_mm3"] and a["low_mm3"] <= b["high_mm3"]
        cell["beyond_uncertainty"] = not overlap
        changes.append(cell)
    curves: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for cell in changes:
        if cell["structure"] != "tumor":
            continue
        mouse = curves.setdefault(cell["mouse"], {"before": [], "after": []})
        for side in ("before", "after"):
            mouse[side].append(
                {
                    "x": cell["offset_hours"],
                    "y": cell[side]["volume_mm3"],
                    "low": cell[side]["low_mm3"],
                    "high": cell[side]["high_mm3"],
                    "title": cell["time_point"],
                }
            )
    return {
        "study": study.pk,
        "before": before.label,
        "after": after.label,
        "changes": changes,
        "flagged": sum(1 for c in changes if c["beyond_uncertainty"]),
        "tumor_curves": curves,
    }
