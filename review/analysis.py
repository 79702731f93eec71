"""Consensus, agreement and prediction-against-human figures for one scan.

Reads every approved annotation (and every prediction) of the scan once, outside any
transaction, computes with ``inference.metrics``, writes the consensus and disagreement NIfTI
files, and only then writes the rows that point at them (replacing the previous figures).

Large scans are analysed in the background: a ``ReviewAnalysis`` row run by ``labseg.jobs`` (claim,
heartbeat fed by the analysis's progress reports, time limits, retries, reconciler).
"""

from __future__ import annotations

import math
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from itertools import combinations
from typing import Any

import numpy as np
import numpy.typing as npt
from django.conf import settings
from django.core.files.storage import default_storage
from django.db import IntegrityError, transaction

from inference import metrics
from inference.structures import by_id
from labseg import jobs
from scans.models import Annotation, Scan
from segmentation.models import Prediction

from .files import LabelMap, label_values, load_label_map, save_nifti
from .models import (
    Agreement,
    AnnotationVolume,
    Consensus,
    ConsensusRater,
    PairwiseAgreement,
    PredictionComparison,
    ReviewAnalysis,
)
from .services import ReviewError, require_member


@dataclass
class _Rated:
    """One approved annotation read from storage, with its structure id -> voxel value table."""

    annotation: Annotation
    label_map: LabelMap
    values: dict[int, int]

    def mask(self, structure_id: int) -> npt.NDArray[np.bool_]:
        return np.asarray(self.label_map.data == self.values[structure_id])


@dataclass
class ScanAnalysis:
    scan: Scan
    approved: int = 0
    volumes: list[AnnotationVolume] = field(default_factory=list)
    consensuses: list[Consensus] = field(default_factory=list)
    agreements: list[Agreement] = field(default_factory=list)
    comparisons: list[PredictionComparison] = field(default_factory=list)


def _finite(value: float) -> float | None:
    """Postgres and JSON both dislike infinities: an undefined distance is stored as null."""
    return value if math.isfinite(value) else None


def _check_grid(rated: list[_Rated]) -> None:
    shapes = {r.label_map.data.shape for r in rated}
    if len(shapes) > 1:
        names = ", ".join(f"{r.annotation.annotator_name} {r.label_map.data.shape}" for r in rated)
        raise ReviewError(f"the approved annotations of this scan are not on one voxel grid: {names}")


def _read_approved(scan: Scan) -> list[_Rated]:
    rated = []
    for annotation in scan.annotations.filter(status=Annotation.Status.APPROVED).order_by(
        "annotator_name", "pk"
    ):
        label_map = load_label_map(annotation.file)
        rated.append(_Rated(annotation, label_map, label_values(annotation.structures, label_map.data)))
    _check_grid(rated)
    return rated


def _consensus_names(scan: Scan, structure_name: str) -> dict[str, str]:
    base = f"labs/{scan.lab_id}/review/scan_{scan.pk}/{structure_name}"
    return {kind: f"{base}_{kind}.nii.gz" for kind in ("majority", "staple", "disagreement")}


def _build_consensus(
    *, scan: Scan, structure_id: int, rated: list[_Rated], user: Any
) -> tuple[Consensus, dict[str, npt.NDArray[np.bool_]]]:
    structure = by_id(structure_id)
    masks = [r.mask(structure_id) for r in rated]
    spacing = rated[0].label_map.spacing_mm
    affine = rated[0].label_map.affine
    majority = metrics.majority_vote(masks)
    staple = metrics.staple(masks)
    staple_mask = staple.consensus()
    disagreement = metrics.disagreement_map(masks)
    names = _consensus_names(scan, structure.name)
    stored = {
        "majority": save_nifti(names["majority"], majority.astype(np.uint8) * structure.id, affine),
        "staple": save_nifti(names["staple"], staple_mask.astype(np.uint8) * structure.id, affine),
        "disagreement": save_nifti(names["disagreement"], disagreement, affine),
    }
    old = Consensus.objects.filter(scan=scan, structure_id=structure_id).first()
    old_files = [getattr(old, kind).name for kind in stored] if old else []
    with transaction.atomic():
        consensus, _ = Consensus.objects.update_or_create(
            scan=scan,
            structure_id=structure_id,
            defaults={
                **stored,
                "majority_volume_mm3": metrics.volume_mm3(majority, spacing),
                "staple_volume_mm3": metrics.volume_mm3(staple_mask, spacing),
                "disagreeing_voxels": int(np.count_nonzero(disagreement)),
                "created_by": user if user is not None and user.is_authenticated else None,
            },
        )
        consensus.raters.all().delete()
        ConsensusRater.objects.bulk_create(
            ConsensusRater(
                consensus=consensus,
                annotation=r.annotation,
                sensitivity=sensitivity,
                specificity=specificity,
                volume_mm3=metrics.volume_mm3(mask, spacing),
            )
            for r, mask, sensitivity, specificity in zip(
                rated, masks, staple.sensitivities, staple.specificities, strict=True
            )
        )
    for name in old_files:
        if name and name not in stored.values():
            default_storage.delete(name)
    return consensus, {"majority": majority, "staple": staple_mask}


def _build_agreement(*, scan: Scan, structure_id: int, rated: list[_Rated]) -> Agreement:
    masks = [r.mask(structure_id) for r in rated]
    spacing = rated[0].label_map.spacing_mm
    volumes = np.array([metrics.volume_mm3(m, spacing) for m in masks])
    mean_volume = float(volumes.mean())
    rmse = float(np.sqrt(np.mean((volumes - mean_volume) ** 2)))
    pairs = list(combinations(range(len(rated)), 2))
    dices = {p: metrics.dice(masks[p[0]], masks[p[1]]) for p in pairs}
    jaccards = {p: metrics.jaccard(masks[p[0]], masks[p[1]]) for p in pairs}
    with transaction.atomic():
        agreement, _ = Agreement.objects.update_or_create(
            scan=scan,
            structure_id=structure_id,
            defaults={
                "n_annotators": len(rated),
                "mean_pairwise_dice": float(np.mean(list(dices.values()))),
                "mean_pairwise_jaccard": float(np.mean(list(jaccards.values()))),
                "ci_gen": metrics.ci_gen(masks),
                "fleiss_kappa": metrics.fleiss_kappa(masks),
                "mean_volume_mm3": mean_volume,
                "max_volume_difference_mm3": float(volumes.max() - volumes.min()),
                "volume_rmse_mm3": rmse,
                "volume_rmse_percent": 100.0 * rmse / mean_volume if mean_volume > 0 else None,
            },
        )
        agreement.pairs.all().delete()
        PairwiseAgreement.objects.bulk_create(
            PairwiseAgreement(
                agreement=agreement,
                first=rated[i].annotation,
                second=rated[j].annotation,
                dice=dices[(i, j)],
                jaccard=jaccards[(i, j)],
                volume_difference_mm3=float(volumes[i] - volumes[j]),
            )
            for i, j in pairs
        )
    return agreement


def _comparison(
    *,
    prediction: Prediction,
    structure_id: int,
    predicted: npt.NDArray[np.bool_],
    reference: npt.NDArray[np.bool_],
    spacing_mm: tuple[float, float, float],
    kind: str,
    annotation: Annotation | None,
    human_masks: list[npt.NDArray[np.bool_]],
    human_dice: float | None,
) -> PredictionComparison:
    volume = metrics.volume_mm3(predicted, spacing_mm)
    reference_volume = metrics.volume_mm3(reference, spacing_mm)
    com = metrics.com_displacement_mm(predicted, reference, spacing_mm)
    return PredictionComparison(
        prediction=prediction,
        scan_id=prediction.scan_id,
        structure_id=structure_id,
        reference=kind,
        annotation=annotation,
        dice=metrics.dice(predicted, reference),
        jaccard=metrics.jaccard(predicted, reference),
        hd95_mm=_finite(metrics.hd95_mm(reference, predicted, spacing_mm, symmetric=True)),
        msd_mm=_finite(metrics.msd_mm(reference, predicted, spacing_mm)),
        com_displacement_mm=None if math.isnan(com) else com,
        volume_mm3=volume,
        reference_volume_mm3=reference_volume,
        volume_error_mm3=volume - reference_volume,
        dice_matching_any=metrics.dice_matching_any(predicted, human_masks) if human_masks else None,
        human_dice=human_dice,
    )


def _compare_prediction(
    *,
    prediction: Prediction,
    rated: list[_Rated],
    consensus_masks: dict[int, dict[str, npt.NDArray[np.bool_]]],
    agreements: dict[int, Agreement],
) -> list[PredictionComparison]:
    label_map = load_label_map(prediction.labels)
    if rated and label_map.data.shape != rated[0].label_map.data.shape:
        raise ReviewError(
            f"prediction {prediction.pk} is not on the grid of the annotations "
            f"({label_map.data.shape} vs {rated[0].label_map.data.shape})"
        )
    spacing = label_map.spacing_mm
    rows: list[PredictionComparison] = []
    for structure_id in sorted(set(prediction.model_version.structures) - {0}):
        humans = [r for r in rated if structure_id in r.values]
        if not humans:
            continue
        predicted = np.asarray(label_map.data == structure_id)
        human_masks = [r.mask(structure_id) for r in humans]
        agreement = agreements.get(structure_id)
        common = {
            "prediction": prediction,
            "structure_id": structure_id,
            "predicted": predicted,
            "spacing_mm": spacing,
            "human_masks": human_masks,
            "human_dice": agreement.mean_pairwise_dice if agreement else None,
        }
        for human, mask in zip(humans, human_masks, strict=True):
            rows.append(
                _comparison(
                    **common,
                    reference=mask,
                    kind=PredictionComparison.Reference.ANNOTATION,
                    annotation=human.annotation,
                )
            )
        for kind, mask in consensus_masks.get(structure_id, {}).items():
            rows.append(_comparison(**common, reference=mask, kind=kind, annotation=None))
    return rows


def structures_with_annotators(rated: Iterable[_Rated], minimum: int) -> list[int]:
    """Structure ids labelled by at least ``minimum`` of the annotations."""
    counts: dict[int, int] = {}
    for r in rated:
        for structure_id in r.values:
            counts[structure_id] = counts.get(structure_id, 0) + 1
    return sorted(s for s, n in counts.items() if n >= minimum and s != 0)


def _record_volumes(rated: list[_Rated]) -> list[AnnotationVolume]:
    rows = []
    for r in rated:
        for structure_id in sorted(r.values):
            mask = r.mask(structure_id)
            rows.append(
                AnnotationVolume(
                    annotation=r.annotation,
                    structure_id=structure_id,
                    voxels=int(np.count_nonzero(mask)),
                    volume_mm3=metrics.volume_mm3(mask, r.label_map.spacing_mm),
                )
            )
    with transaction.atomic():
        AnnotationVolume.objects.filter(annotation__in=[r.annotation for r in rated]).delete()
        return AnnotationVolume.objects.bulk_create(rows)


def analyse_scan(
    *,
    scan: Scan,
    user: Any,
    structure_ids: Iterable[int] | None = None,
    progress: Callable[[float, str], None] | None = None,
) -> ScanAnalysis:
    """Volumes of every approved annotation; consensus and agreement for every structure with two or
    more approved annotators; every prediction of the scan compared with the approved annotations
    and the consensus. A scan with fewer than two approved annotators of any structure gets its
    volumes and prediction comparisons but no consensus (``consensuses`` is empty).

    ``progress(percent, stage)`` is called before each step (reading, each structure, each
    prediction); in the background it keeps the job's heartbeat going and stops a run whose job
    was taken away from it.
    """

    def report(percent: float, stage: str) -> None:
        if progress is not None:
            progress(percent, stage)

    require_member(user, scan.lab)
    report(1, "reading annotations")
    rated = _read_approved(scan)
    wanted = set(structure_ids) if structure_ids is not None else None
    shared = [s for s in structures_with_annotators(rated, 2) if wanted is None or s in wanted]
    result = ScanAnalysis(scan=scan, approved=len(rated))
    report(10, "volumes")
    result.volumes = _record_volumes(rated)
    consensus_masks: dict[int, dict[str, npt.NDArray[np.bool_]]] = {}
    agreements: dict[int, Agreement] = {}
    for n, structure_id in enumerate(shared):
        report(15 + 60 * n / len(shared), f"consensus {by_id(structure_id).name}")
        raters = [r for r in rated if structure_id in r.values]
        if not any(r.mask(structure_id).any() for r in raters):
            continue  # listed by every annotator but drawn by none: nothing to agree on
        consensus, masks = _build_consensus(scan=scan, structure_id=structure_id, rated=raters, user=user)
        result.consensuses.append(consensus)
        consensus_masks[structure_id] = masks
        agreements[structure_id] = _build_agreement(scan=scan, structure_id=structure_id, rated=raters)
        result.agreements.append(agreements[structure_id])
    predictions = list(Prediction.objects.filter(scan=scan).select_related("model_version"))
    rows = []
    for n, prediction in enumerate(predictions):
        report(75 + 20 * n / len(predictions), f"prediction {prediction.pk}")
        rows.extend(
            _compare_prediction(
                prediction=prediction, rated=rated, consensus_masks=consensus_masks, agreements=agreements
            )
        )
    report(96, "saving comparisons")
    with transaction.atomic():
        PredictionComparison.objects.filter(scan=scan).delete()
        result.comparisons = PredictionComparison.objects.bulk_create(rows)
    return result


ACTIVE = jobs.ACTIVE

#: Scans with more voxels than this are analysed by a worker instead of within the request.
DEFAULT_INLINE_MAX_VOXELS = 8_000_000


def inline_max_voxels() -> int:
    return int(getattr(settings, "LABSEG_REVIEW_INLINE_MAX_VOXELS", DEFAULT_INLINE_MAX_VOXELS))


def scan_voxels(scan: Scan) -> int:
    return int(np.prod([int(n) for n in scan.shape[:3]]))


def request_analysis(*, scan: Scan, user: Any, structure_ids: Iterable[int] | None = None) -> ReviewAnalysis:
    """Queue a background analysis of the scan (idempotent: an active one is returned as it is).

    The Celery message is sent once the transaction commits, so the worker always finds the row;
    a broker that is down then leaves the row queued for the reconciler to send.
    """
    require_member(user, scan.lab)
    active = ReviewAnalysis.objects.filter(scan=scan, state__in=ACTIVE).first()
    if active is not None:
        return active
    try:
        with transaction.atomic():
            analysis = ReviewAnalysis.objects.create(
                scan=scan,
                requested_by=user,
                structure_ids=sorted(set(structure_ids)) if structure_ids is not None else None,
            )
            jobs.enqueue_on_commit(analysis)
    except IntegrityError:
        # Another request queued one between our check and our insert: theirs stands.
        return ReviewAnalysis.objects.get(scan=scan, state__in=ACTIVE)
    return analysis


def run_analysis(*, analysis_id: int, worker_host: str | None = None) -> ReviewAnalysis | None:
    """Claim a queued analysis (or one whose worker went silent), run it and record the outcome.

    Runs through ``labseg.jobs.run``. Returns None when the row is gone, finished or claimed by a
    live worker. A refusal that a researcher can act on (``ReviewError``) marks the row failed with
    that message; a connection error puts it back to queued and raises ``TransientJobError`` for
    the task to retry; anything else fails it with a plain message (and the traceback in the log).
    """
    return jobs.run(
        ReviewAnalysis,
        analysis_id,
        worker_host=worker_host or socket.gethostname(),
        work=_analyse_in_background,
        failure_message=_failure_message,
        related=("scan__lab", "requested_by"),
    )


def _analyse_in_background(analysis: ReviewAnalysis, heartbeat: jobs.Heartbeat) -> None:
    result = analyse_scan(
        scan=analysis.scan,
        user=analysis.requested_by,
        structure_ids=analysis.structure_ids,
        progress=heartbeat.progress,
    )
    if not result.consensuses:
        message = (
            "no consensus: it needs at least two approved annotations of the same structure; "
            f"this scan has {result.approved} approved annotation(s)"
        )
        jobs.finish(analysis, ReviewAnalysis.State.FAILED, error=message)
    else:
        jobs.finish(analysis, ReviewAnalysis.State.SUCCEEDED)


def _failure_message(analysis: ReviewAnalysis, error: BaseException) -> str:
    if isinstance(error, ReviewError):
        return error.message
    return f"the analysis stopped unexpectedly during '{analysis.stage or 'starting'}': {error}"
