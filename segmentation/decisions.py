"""People's decisions on model output: QC verdicts accepted or rejected, lesions excluded or
confirmed. Predictions stay as the model made them; decisions are rows beside them.

QC: a reviewer accepts or rejects what the QC gate flagged.

The verdict itself is the pipeline's (``inference.pipeline.qc``, stored in the run manifest). A
prediction that needs review stays out of charts, cohort means and humane-endpoint alerts until a
reviewer or admin of its lab accepts it; a rejection keeps it out for good. Each decision is a new
``QCReview`` row (who, when, why), so the trail is complete and nothing is edited.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.db import transaction

import audit
from audit.models import AuditEvent
from inference.structures import by_name
from labs.rules import is_lab_member, is_lab_reviewer
from labseg.refusals import Refused

from .models import QC_OK, Lesion, LesionReview, Prediction, QCReview

MAX_NOTE = 500


def decide_qc(*, prediction: Prediction, user: Any, decision: str, note: str = "") -> QCReview:
    """Record ``decision`` (``accepted`` or ``rejected``) on ``prediction`` by ``user``."""
    if decision not in QCReview.Decision.values:
        raise Refused(f"decision must be one of {', '.join(QCReview.Decision.values)}, not {decision!r}")
    if not is_lab_reviewer(user, prediction):
        raise Refused("only a reviewer or admin of this lab can accept or reject a prediction", status=403)
    if prediction.qc["pipeline_status"] == QC_OK:
        raise Refused(
            "this prediction passed the QC checks: there is nothing to accept or reject", status=409
        )
    note = (note or "").strip()
    if decision == QCReview.Decision.REJECTED and not note:
        raise Refused("say why the prediction is rejected (a note), so the lab's record is complete")
    if len(note) > MAX_NOTE:
        raise Refused(f"the note is {len(note)} characters long; keep it under {MAX_NOTE}")
    with transaction.atomic():
        review = QCReview.objects.create(prediction=prediction, decision=decision, note=note, decided_by=user)
        audit.record(
            AuditEvent.Action.PREDICTION_QC,
            lab=prediction.scan.lab,
            actor=user,
            target=prediction,
            detail={"decision": decision, "note": note},
        )
    return review


@dataclass(frozen=True)
class Exclusions:
    """What a prediction's excluded lesions take away: mm^3 per structure id, metastases per
    organ, and how many lesions (for the CSV's ``assessment``)."""

    volume_mm3: dict[int, float]
    metastases: dict[str, int]
    count: int

    def volume(self, structure_id: int, measured: float) -> float:
        return max(0.0, measured - self.volume_mm3.get(structure_id, 0.0))


def exclusions(prediction: Prediction) -> Exclusions:
    """The prediction's excluded lesions, read from ``lesions`` and their ``reviews`` (prefetch
    both when reading many predictions)."""
    volume: dict[int, float] = {}
    metastases: dict[str, int] = {}
    count = 0
    metastasis = by_name("metastasis").id
    for lesion in prediction.lesions.all():
        if lesion.review != LesionReview.Decision.EXCLUDED:
            continue
        count += 1
        volume[lesion.structure_id] = volume.get(lesion.structure_id, 0.0) + lesion.volume_mm3
        if lesion.structure_id == metastasis:
            metastases[lesion.organ_name] = metastases.get(lesion.organ_name, 0) + 1
    return Exclusions(volume, metastases, count)


def review_lesion(*, lesion: Lesion, user: Any, decision: str, reason: str) -> LesionReview:
    """Record ``decision`` (``excluded`` or ``confirmed``) on ``lesion`` by a member of its lab."""
    if decision not in LesionReview.Decision.values:
        raise Refused(f"decision must be one of {', '.join(LesionReview.Decision.values)}, not {decision!r}")
    if not is_lab_member(user, lesion.prediction):
        raise Refused("only a member of this lab can exclude or confirm its lesions", status=403)
    reason = (reason or "").strip()
    if not reason:
        raise Refused("give the reason (for example: on the animal bed), so the lab's record is complete")
    if len(reason) > MAX_NOTE:
        raise Refused(f"the reason is {len(reason)} characters long; keep it under {MAX_NOTE}")
    with transaction.atomic():
        review = LesionReview.objects.create(lesion=lesion, decision=decision, reason=reason, decided_by=user)
        audit.record(
            AuditEvent.Action.LESION_REVIEWED,
            lab=lesion.prediction.scan.lab,
            actor=user,
            target=lesion,
            detail={"decision": decision, "reason": reason, "prediction": lesion.prediction_id},
        )
    return review
