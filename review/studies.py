"""Study-level statistics: agreement tables, Fig. 5f variability, Dice box plots, model vs model.

Everything here reads the rows that ``analysis.analyse_scan`` wrote for the study's scans; no
NIfTI file is opened, so these answer quickly enough for a page or a CSV download.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from itertools import combinations

import numpy as np

from inference import metrics
from inference.structures import by_id, by_name
from scans.models import Annotation, Study

from .models import Agreement, AnnotationVolume, PairwiseAgreement, PredictionComparison


def agreement_rows(study: Study) -> list[dict[str, object]]:
    """One row per scan, structure and pair compared: annotator vs annotator, and model vs human."""
    rows: list[dict[str, object]] = []
    agreements = Agreement.objects.filter(scan__time_point__mouse__study=study).select_related(
        "scan__time_point__mouse"
    )
    for agreement in agreements:
        scan = agreement.scan
        base = {
            "scan_id": scan.pk,
            "mouse": scan.time_point.mouse.identifier,
            "time_point": scan.time_point.label,
            "structure": agreement.structure_name,
        }
        rows.append(
            {
                **base,
                "kind": "annotators",
                "first": f"all {agreement.n_annotators} annotators",
                "second": "",
                "dice": agreement.mean_pairwise_dice,
                "jaccard": agreement.mean_pairwise_jaccard,
                "ci_gen": agreement.ci_gen,
                "fleiss_kappa": agreement.fleiss_kappa,
                "hd95_mm": None,
                "msd_mm": None,
                "com_displacement_mm": None,
                "volume_mm3": agreement.mean_volume_mm3,
                "volume_difference_mm3": agreement.max_volume_difference_mm3,
                "volume_rmse_mm3": agreement.volume_rmse_mm3,
                "volume_rmse_percent": agreement.volume_rmse_percent,
                "dice_matching_any": None,
                "human_dice": agreement.mean_pairwise_dice,
            }
        )
        for pair in agreement.pairs.select_related("first", "second"):
            rows.append(
                {
                    **base,
                    "kind": "annotator_vs_annotator",
                    "first": pair.first.annotator_name,
                    "second": pair.second.annotator_name,
                    "dice": pair.dice,
                    "jaccard": pair.jaccard,
                    "volume_difference_mm3": pair.volume_difference_mm3,
                    "human_dice": agreement.mean_pairwise_dice,
                }
            )
    comparisons = PredictionComparison.objects.filter(scan__time_point__mouse__study=study).select_related(
        "scan__time_point__mouse", "prediction__model_version", "annotation"
    )
    rows.extend(comparison_row(c) for c in comparisons)
    return rows


def comparison_row(c: PredictionComparison) -> dict[str, object]:
    scan = c.scan
    return {
        "scan_id": scan.pk,
        "mouse": scan.time_point.mouse.identifier,
        "time_point": scan.time_point.label,
        "structure": c.structure_name,
        "kind": "model_vs_" + c.reference,
        "first": c.prediction.model_version.label,
        "second": c.reference_label,
        "dice": c.dice,
        "jaccard": c.jaccard,
        "hd95_mm": c.hd95_mm,
        "msd_mm": c.msd_mm,
        "com_displacement_mm": c.com_displacement_mm,
        "volume_mm3": c.volume_mm3,
        "volume_difference_mm3": c.volume_error_mm3,
        "dice_matching_any": c.dice_matching_any,
        "human_dice": c.human_dice,
    }


AGREEMENT_COLUMNS = [
    "scan_id",
    "mouse",
    "time_point",
    "structure",
    "kind",
    "first",
    "second",
    "dice",
    "jaccard",
    "ci_gen",
    "fleiss_kappa",
    "hd95_mm",
    "msd_mm",
    "com_displacement_mm",
    "volume_mm3",
    "volume_difference_mm3",
    "volume_rmse_mm3",
    "volume_rmse_percent",
    "dice_matching_any",
    "human_dice",
]


def volume_records(study: Study) -> list[metrics.VolumeRecord]:
    """Every approved annotation's structure volumes in the study, as Fig. 5f's table."""
    volumes = AnnotationVolume.objects.filter(
        annotation__scan__time_point__mouse__study=study, annotation__status=Annotation.Status.APPROVED
    ).select_related("annotation__scan__time_point__mouse")
    return [
        metrics.VolumeRecord(
            mouse=v.annotation.scan.time_point.mouse.identifier,
            time_point=v.annotation.scan.time_point.label,
            annotator=v.annotation.annotator_name,
            structure=v.structure_name,
            volume_mm3=v.volume_mm3,
        )
        for v in volumes
    ]


def variability(study: Study) -> list[metrics.Variability]:
    """AIMOS Fig. 5f per structure (fractions of the mean volume; see ``inference.metrics.variability``)."""
    return metrics.volumetry_variability(volume_records(study))


VARIABILITY_COLUMNS = [
    "structure",
    "mean_volume_mm3",
    "intersubject_percent",
    "interannotator_percent",
    "intraannotator_percent",
    "n_mice",
    "n_scans",
    "n_annotators",
    "reference_annotator",
]


def variability_rows(study: Study) -> list[dict[str, object]]:
    def percent(value: float) -> float | None:
        return None if math.isnan(value) else 100.0 * value

    return [
        {
            "structure": v.structure,
            "mean_volume_mm3": v.mean_volume_mm3,
            "intersubject_percent": percent(v.intersubject),
            "interannotator_percent": percent(v.interannotator),
            "intraannotator_percent": percent(v.intraannotator),
            "n_mice": v.n_mice,
            "n_scans": v.n_scans,
            "n_annotators": v.n_annotators,
            "reference_annotator": v.reference_annotator,
        }
        for v in variability(study)
    ]


def dice_groups(study: Study) -> dict[str, dict[str, list[float]]]:
    """Structure name -> {"model vs annotator": [...], "annotator vs annotator": [...]} Dice values."""
    groups: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    pairs = PairwiseAgreement.objects.filter(agreement__scan__time_point__mouse__study=study).select_related(
        "agreement"
    )
    for pair in pairs:
        groups[pair.agreement.structure_name]["annotator vs annotator"].append(pair.dice)
    comparisons = PredictionComparison.objects.filter(
        scan__time_point__mouse__study=study, reference=PredictionComparison.Reference.ANNOTATION
    )
    for c in comparisons:
        groups[c.structure_name]["model vs annotator"].append(c.dice)
    return {name: dict(groups[name]) for name in sorted(groups, key=lambda name: by_name(name).id)}


@dataclass(frozen=True)
class ModelComparison:
    """Two model versions' Dice against the same references on the same scans, per structure."""

    structure: str
    first: str
    second: str
    reference: str
    n_pairs: int
    median_dice_first: float
    median_dice_second: float
    p_value: float
    significant: bool


MODEL_COMPARISON_COLUMNS = [
    "structure",
    "first",
    "second",
    "reference",
    "n_pairs",
    "median_dice_first",
    "median_dice_second",
    "p_value",
    "significant",
]


def compare_models(study: Study, *, alpha: float = 0.05) -> list[ModelComparison]:
    """Two-sided Wilcoxon signed-rank tests of every pair of model versions that were compared with
    the same references (same scan, structure and reference) in this study."""
    scores: dict[tuple[int, str], dict[str, dict[tuple[int, str, int | None], float]]] = defaultdict(
        lambda: defaultdict(dict)
    )
    comparisons = PredictionComparison.objects.filter(scan__time_point__mouse__study=study).select_related(
        "prediction__model_version"
    )
    for c in comparisons:
        key = (c.scan_id, c.reference, c.annotation_id)
        scores[(c.structure_id, c.reference)][c.prediction.model_version.label][key] = c.dice
    results = []
    for (structure_id, reference), by_model in sorted(scores.items()):
        for first, second in combinations(sorted(by_model), 2):
            shared = sorted(set(by_model[first]) & set(by_model[second]), key=str)
            if not shared:
                continue
            a = [by_model[first][k] for k in shared]
            b = [by_model[second][k] for k in shared]
            test = metrics.wilcoxon_signed_rank(a, b, alpha=alpha)
            results.append(
                ModelComparison(
                    structure=by_id(structure_id).name,
                    first=first,
                    second=second,
                    reference=reference,
                    n_pairs=len(shared),
                    median_dice_first=float(np.median(a)),
                    median_dice_second=float(np.median(b)),
                    p_value=test.p_value,
                    significant=test.significant,
                )
            )
    return results
