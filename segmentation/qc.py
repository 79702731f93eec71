"""QC decisions on predictions: a reviewer accepts or rejects what the QC gate flagged.

The verdict itself is the pipeline's (``inference.pipeline.qc``, stored in the run manifest). A
prediction that needs review stays out of charts, cohort means and humane-endpoint alerts until a
reviewer or admin of its lab accepts it; a rejection keeps it out for good. Each decision is a new
``QCReview`` row (who, when, why), so the trail is complete and nothing is edited.
"""

from __future__ import annotations

from typing import Any

from labs.rules import is_lab_reviewer
from labseg.refusals import Refused

from .models import QC_OK, Prediction, QCReview

MAX_NOTE = 500


def decide(*, prediction: Prediction, user: Any, decision: str, note: str = "") -> QCReview:
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
    return QCReview.objects.create(prediction=prediction, decision=decision, note=note, decided_by=user)
