"""Review workflow: moving annotations between states, replacing them, promoting predictions.

draft -> submitted -> approved | rejected. Any member of the scan's lab may submit; only the lab's
reviewers and admins approve or reject, and only within their own lab. A rejected annotation can
be replaced by a new version; a prediction can be promoted to a draft annotation for a person to
correct. Every move is recorded as an ``AnnotationTransition``; state changes are made with a
compare-and-set on the current status so two reviewers acting at once cannot both win.
"""

from __future__ import annotations

import hashlib
from typing import Any

from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import IntegrityError, transaction
from django.utils import timezone

from inference.structures import STRUCTURES
from labs.models import Lab
from labs.rules import is_lab_member, is_lab_reviewer
from scans.models import Annotation

from .models import AnnotationRevision, AnnotationTransition

Status = Annotation.Status


class ReviewError(Exception):
    """A refusal a researcher can read; ``status`` is the HTTP status the API answers with."""

    status = 400

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status


class ReviewPermissionError(ReviewError):
    status = 403


class ReviewConflictError(ReviewError):
    status = 409


def require_member(user: Any, lab: Lab) -> None:
    """Refuse a user who is not a member of ``lab`` (the ``labs.member`` rule)."""
    if not is_lab_member(user, lab):
        raise ReviewPermissionError(f"you are not a member of {lab.name}")


def require_reviewer(user: Any, lab: Lab) -> None:
    """Refuse a user who is not a reviewer or admin of ``lab`` (the ``labs.reviewer`` rule)."""
    if not is_lab_reviewer(user, lab):
        raise ReviewPermissionError(
            f"only reviewers and admins of {lab.name} can approve or reject its annotations"
        )


def _move(
    *, annotation: Annotation, allowed_from: tuple[str, ...], to: str, user: Any, note: str, reviewed: bool
) -> Annotation:
    if annotation.status not in allowed_from:
        names = " or ".join(Status(s).label.lower() for s in allowed_from)
        raise ReviewConflictError(
            f"this annotation is {annotation.get_status_display().lower()}; only a {names} annotation "
            f"can become {Status(to).label.lower()}"
        )
    now = timezone.now()
    changes: dict[str, Any] = {"status": to, "updated_at": now}
    if reviewed:
        changes.update(reviewer=user, review_note=note, reviewed_at=now)
    with transaction.atomic():
        # Compare-and-set: a count other than 1 means someone else moved it first.
        moved = Annotation.objects.filter(pk=annotation.pk, status=annotation.status).update(**changes)
        if moved != 1:
            raise ReviewConflictError(
                "someone else changed this annotation's status just now; reload and try again"
            )
        AnnotationTransition.objects.create(
            annotation=annotation, from_status=annotation.status, to_status=to, by=user, note=note
        )
    annotation.refresh_from_db()
    return annotation


def submit_annotation(*, annotation: Annotation, user: Any, note: str = "") -> Annotation:
    """draft -> submitted, by any member of the scan's lab."""
    require_member(user, annotation.scan.lab)
    return _move(
        annotation=annotation,
        allowed_from=(Status.DRAFT,),
        to=Status.SUBMITTED,
        user=user,
        note=note,
        reviewed=False,
    )


def approve_annotation(*, annotation: Annotation, reviewer: Any, note: str = "") -> Annotation:
    """submitted -> approved, by a reviewer or admin of the scan's lab."""
    require_reviewer(reviewer, annotation.scan.lab)
    return _move(
        annotation=annotation,
        allowed_from=(Status.SUBMITTED,),
        to=Status.APPROVED,
        user=reviewer,
        note=note.strip(),
        reviewed=True,
    )


def reject_annotation(*, annotation: Annotation, reviewer: Any, note: str) -> Annotation:
    """submitted -> rejected, by a reviewer or admin of the scan's lab; the note says why."""
    require_reviewer(reviewer, annotation.scan.lab)
    if not note or not note.strip():
        raise ReviewError("a rejection needs a note that tells the annotator what to change")
    return _move(
        annotation=annotation,
        allowed_from=(Status.SUBMITTED,),
        to=Status.REJECTED,
        user=reviewer,
        note=note.strip(),
        reviewed=True,
    )


def version_of(annotation: Annotation) -> int:
    revision = AnnotationRevision.objects.filter(annotation=annotation).first()
    return revision.version if revision else 1


def check_replaceable(*, annotation: Annotation, user: Any) -> None:
    """Refuse, before any file is read, a replacement that could not be recorded."""
    require_member(user, annotation.scan.lab)
    if annotation.status != Status.REJECTED:
        raise ReviewConflictError("only a rejected annotation can be replaced by a new version")
    if AnnotationRevision.objects.filter(replaces=annotation).exists():
        raise ReviewConflictError("this annotation has already been replaced by a newer version")


def replace_annotation(
    *,
    annotation: Annotation,
    file: Any,
    original_filename: str,
    user: Any,
    structures: dict[str, int] | None = None,
) -> Annotation:
    """Upload a new version of the rejected ``annotation``; it remembers the one it replaces.

    The file is validated and stored by ``scans.services.register_annotation`` (same scan grid,
    integer labels) under the same annotator name; ``structures`` defaults to the rejected
    version's table. The new version starts as submitted; the rejected one stays as it was.
    Raises ``ReviewError`` or ``scans.validation.ScanRejected`` in plain words.
    """
    from scans.services import register_annotation  # the scans app owns uploads

    check_replaceable(annotation=annotation, user=user)
    replacement = register_annotation(
        scan=annotation.scan,
        file=file,
        original_filename=original_filename,
        annotator_name=annotation.annotator_name,
        user=user,
        structures=structures if structures is not None else (annotation.structures or None),
        status=Status.SUBMITTED,
    )
    version = version_of(annotation) + 1
    try:
        with transaction.atomic():
            AnnotationRevision.objects.create(
                annotation=replacement, replaces=annotation, version=version, created_by=user
            )
            AnnotationTransition.objects.create(
                annotation=replacement,
                from_status="",
                to_status=replacement.status,
                by=user,
                note=f"version {version}, replaces annotation {annotation.pk}",
            )
    except IntegrityError:
        # Someone replaced it between the check and now: keep theirs, drop ours.
        replacement.file.delete(save=False)
        replacement.delete()
        raise ReviewConflictError("this annotation has just been replaced by someone else") from None
    return replacement


def promote_prediction(*, prediction: Any, user: Any) -> Annotation:
    """A draft annotation holding a copy of the prediction's label map, for a person to correct.

    ``prediction`` is an ``segmentation.models.Prediction``. Its labels use canonical structure ids,
    so the annotation's structure table lists the model's structures at their own ids. The file
    is copied (a prediction is immutable; the annotation will be edited and re-uploaded).
    """
    scan = prediction.scan
    require_member(user, scan.lab)
    with prediction.labels.open("rb") as source:
        content = source.read()
    model_version = prediction.model_version
    structures = {
        s.name: s.id for s in STRUCTURES if s.id in set(model_version.structures) and s.kind != "background"
    }
    filename = f"labs/{scan.lab_id}/annotations/promoted_prediction_{prediction.pk}.nii.gz"
    stored_name = default_storage.save(filename, ContentFile(content))  # file first, rows last
    name = user.get_full_name() or user.get_username()
    with transaction.atomic():
        annotation = Annotation.objects.create(
            scan=scan,
            annotator=user,
            annotator_name=f"{name} (from {model_version.label})",
            file=stored_name,
            original_filename=f"prediction_{prediction.pk}_labels.nii.gz",
            sha256=hashlib.sha256(content).hexdigest(),
            structures=structures,
            status=Status.DRAFT,
        )
        AnnotationRevision.objects.create(
            annotation=annotation, prediction=prediction, version=1, created_by=user
        )
        AnnotationTransition.objects.create(
            annotation=annotation,
            from_status="",
            to_status=Status.DRAFT,
            by=user,
            note=f"promoted from prediction {prediction.pk} ({model_version.label})",
        )
    return annotation
