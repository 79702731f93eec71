"""Pages of the review app: the per-scan review page and the study QC page, plus the live
disagreement map the review page's viewer loads (its CT and annotations are the viewer's previews,
``frontend/layers.py``). Every lookup is scoped to the signed-in user's labs."""

from __future__ import annotations

import math
from hashlib import sha256
from typing import Any

import numpy as np
from django.contrib.auth.decorators import login_required
from django.core.files.storage import default_storage
from django.http import FileResponse, Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, render
from django.urls import reverse
from django.views.decorators.http import require_GET

from inference import metrics
from inference.structures import by_id, by_name
from labs.current import show_lab
from labseg.downloads import stored_file_response
from scans.levels import LEVELS, level_factor
from scans.models import Annotation, Scan, Study

from . import studies
from .files import label_values, load_label_map, save_nifti
from .models import Agreement, Consensus, PredictionComparison

#: Annotations shown on the review page: everything a reviewer may still act on or has accepted.
SHOWN = (Annotation.Status.SUBMITTED, Annotation.Status.APPROVED, Annotation.Status.REJECTED)
#: Distinct outline colours per annotator (the structure colours come from the canonical table).
ANNOTATOR_COLOURS = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#46f0f0"]


@require_GET
@login_required
def scan_review(request: HttpRequest, pk: int) -> HttpResponse:
    scan = get_object_or_404(
        Scan.objects.visible_to(request.user).select_related("lab", "time_point__mouse"), pk=pk
    )
    annotations = list(
        scan.annotations.filter(status__in=SHOWN).select_related("reviewer").order_by("annotator_name", "pk")
    )
    structure_ids = sorted({sid for a in annotations for sid in label_values(a.structures, np.zeros(1))})
    rows: list[dict[str, Any]] = [
        {
            "annotation": a,
            "colour": ANNOTATOR_COLOURS[i % len(ANNOTATOR_COLOURS)],
            "values": {by_id(sid).name: v for sid, v in label_values(a.structures, np.zeros(1)).items()},
        }
        for i, a in enumerate(annotations)
    ]
    # One viewer, one CT: the scan and every annotator come from the viewer's previews (the same
    # grid, made when they were stored: frontend/layers.py), coarsest level first.
    layer_url = "/".join(reverse("frontend:scan-layer", args=[scan.pk, "ct"]).split("/")[:-1])
    viewer_config = {
        "scan": scan.pk,
        "ct_url": f"{layer_url}/ct.nii.gz",
        # The levels, coarsest first: the first frame's, then those to refine through once idle.
        "levels": [{"level": level, "factor": level_factor(scan, level)} for level in LEVELS],
        "disagreement_url": reverse("review:live-disagreement", args=[scan.pk, "__structure__"]),
        "annotations": [
            {
                "id": row["annotation"].pk,
                "name": row["annotation"].annotator_name,
                "colour": row["colour"],
                "url": f"{layer_url}/ann-{row['annotation'].pk}.nii.gz",
                # The layer is relabelled to canonical ids (frontend.layers.resolve_layer).
                "ids": sorted(by_name(name).id for name in row["values"]),
            }
            for row in rows
        ],
    }
    show_lab(request, scan.lab)  # the header shows the scan's lab and the user's role there
    context = {
        "viewer_config": viewer_config,
        "scan": scan,
        "rows": rows,
        "structures": [by_id(s) for s in structure_ids],
        "consensuses": Consensus.objects.filter(scan=scan).prefetch_related("raters__annotation"),
        "agreements": Agreement.objects.filter(scan=scan),
        "comparisons": PredictionComparison.objects.filter(scan=scan).select_related(
            "prediction__model_version", "annotation"
        ),
    }
    return render(request, "review/scan_review.html", context)


@require_GET
@login_required
def live_disagreement(request: HttpRequest, pk: int, structure: str) -> FileResponse:
    """Disagreement map (float32, fraction of annotators disagreeing with the majority) of the
    annotations now shown on the review page for one structure, before any of them is approved.
    Cached in storage under the annotations' sha256, so a reload does not recompute it."""
    scan = get_object_or_404(Scan.objects.visible_to(request.user), pk=pk)
    try:
        structure_id = by_name(structure).id
    except KeyError as error:
        raise Http404(str(error.args[0])) from None
    annotations = [
        a
        for a in scan.annotations.filter(status__in=(Annotation.Status.SUBMITTED, Annotation.Status.APPROVED))
        if structure_id in label_values(a.structures, np.zeros(1)) or not a.structures
    ]
    if len(annotations) < 2:
        raise Http404("a disagreement map needs at least two annotations of this structure")
    key = sha256("".join(sorted(a.sha256 for a in annotations)).encode()).hexdigest()[:16]
    name = f"labs/{scan.lab_id}/review/scan_{scan.pk}/live_{by_id(structure_id).name}_{key}.nii.gz"
    if not default_storage.exists(name):
        maps = [load_label_map(a.file) for a in annotations]
        masks = [
            m.data == label_values(a.structures, m.data).get(structure_id, -1)
            for a, m in zip(annotations, maps, strict=True)
        ]
        save_nifti(name, metrics.disagreement_map(masks), maps[0].affine)
    return stored_file_response(name, f"disagreement_{structure_id}.nii.gz", inline=True)


def _percent(value: Any) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.1f} %"


@require_GET
@login_required
def study_qc(request: HttpRequest, pk: int) -> HttpResponse:
    study = get_object_or_404(Study.objects.visible_to(request.user).select_related("lab"), pk=pk)
    variability = studies.variability_rows(study)
    for row in variability:
        for key in ("intersubject_percent", "interannotator_percent", "intraannotator_percent"):
            row[key + "_text"] = _percent(row[key])
    show_lab(request, study.lab)
    groups = studies.dice_groups(study)
    context = {
        "study": study,
        # Drawn as box plots in the browser (review/static/review/study_qc.js -> charts.js).
        "dice": {"groups": groups, "labels": {name: by_name(name).display_name for name in groups}},
        "variability": variability,
        "model_comparisons": studies.compare_models(study),
    }
    return render(request, "review/study_qc.html", context)
