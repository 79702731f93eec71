"""The annotation lifecycle: create, submit, review, replace, promote, and which annotations a
consensus is made of. Every other app calls these functions; none changes an annotation's status
itself.

"" -> draft | submitted -> approved | rejected. Any member of the scan's lab may create and submit;
only the lab's reviewers and admins approve or reject, and only within their own lab (the
``labs.rules``). A rejected annotation can be replaced by a new version; a prediction can be
promoted to a draft annotation for a person to correct. Every move, creation included (upload,
dataset import, replacement, promotion), is recorded as an ``AnnotationTransition``; state
changes are made with a compare-and-set on the current status so two reviewers acting at once
cannot both win.
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from typing import Any

import numpy as np
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import IntegrityError, transaction
from django.utils import timezone

import audit
from audit.models import AuditEvent
from inference import structures as canonical
from inference.structures import STRUCTURES
from labs.models import Lab
from labs.rules import is_lab_member, is_lab_reviewer
from labseg.refusals import Refused
from scans.files import IncomingFile, receive, safe_filename
from scans.models import Annotation, Scan
from scans.services import check_identifier, save_incoming, stored_files
from scans.validation import ScanRejected, check_same_grid, read_header, read_volume

from .models import AnnotationRevision, AnnotationTransition

logger = logging.getLogger(__name__)

Status = Annotation.Status


class ReviewError(Refused):
    """A review move refused, in words a researcher can read."""


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
            f"this annotation is {annotation.get_status_display().lower()}; only one that is {names} "
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
        action = _AUDITED_MOVES.get((annotation.status in _REVIEWED, to))
        if action is not None:
            audit.record(
                action,
                lab=annotation.scan.lab,
                actor=user,
                target=annotation,
                detail={"from": annotation.status, "to": to, "note": note},
            )
    annotation.refresh_from_db()
    return annotation


_REVIEWED = (Status.APPROVED, Status.REJECTED)
#: Moves that are reviews, for the audit log: (moving from a reviewed state, to) -> action.
_AUDITED_MOVES: dict[tuple[bool, str], str] = {
    (False, Status.APPROVED): AuditEvent.Action.ANNOTATION_APPROVED,
    (False, Status.REJECTED): AuditEvent.Action.ANNOTATION_REJECTED,
    (True, Status.SUBMITTED): AuditEvent.Action.ANNOTATION_REOPENED,
}


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


def reopen_annotation(*, annotation: Annotation, reviewer: Any, note: str = "") -> Annotation:
    """approved or rejected -> submitted (undo a review), by a reviewer or admin of the lab.

    Refused once a newer version replaced it. The trail keeps both moves, the review and its undo.
    """
    require_reviewer(reviewer, annotation.scan.lab)
    if AnnotationRevision.objects.filter(replaces=annotation).exists():
        raise ReviewConflictError("a newer version replaced this annotation: review that one instead")
    moved = _move(
        annotation=annotation,
        allowed_from=(Status.APPROVED, Status.REJECTED),
        to=Status.SUBMITTED,
        user=reviewer,
        note=note.strip() or "review undone",
        reviewed=False,
    )
    Annotation.objects.filter(pk=moved.pk).update(reviewer=None, review_note="", reviewed_at=None)
    moved.refresh_from_db()
    return moved


def structure_table(given: dict[str, int] | None, label_values: set[int]) -> dict[str, int]:
    """The table an annotation stores: canonical structure name -> label value in its file.

    ``given`` is the uploader's mapping (any spelling ``inference.structures.by_name`` knows);
    without one, the file's values must be canonical structure ids. Every value present in the
    file (``label_values``, 0 is background) must be mapped. Raises ScanRejected in plain words.
    """
    present = sorted(v for v in label_values if v != 0)
    if given is None:
        unknown = [v for v in present if v not in canonical.BY_ID or v == canonical.BACKGROUND.id]
        if unknown:
            raise ScanRejected(
                f"label values {', '.join(map(str, unknown))} are not structure ids of the canonical table: "
                "give a structure mapping (structure name -> label value)"
            )
        return {canonical.by_id(v).name: v for v in present}
    mapping: dict[str, int] = {}
    for name, value in given.items():
        try:
            name = canonical.by_name(str(name)).name
        except KeyError as error:
            raise ScanRejected(str(error.args[0])) from None
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ScanRejected(f"the label value of {name!r} must be a positive whole number, not {value!r}")
        mapping[name] = value
    unmapped = [v for v in present if v not in mapping.values()]
    if unmapped:
        raise ScanRejected(
            f"label values {', '.join(map(str, unmapped))} appear in the file but not in the structure "
            "mapping: map every label value to a structure"
        )
    return mapping


def _record_creation(*, annotation: Annotation, user: Any, note: str) -> None:
    """The first entry of an annotation's trail: "" -> its starting status."""
    AnnotationTransition.objects.create(
        annotation=annotation,
        from_status="",
        to_status=annotation.status,
        by=user if user is not None and user.is_authenticated else None,
        note=note,
    )


def create_annotation(
    *,
    scan: Scan,
    file: Any,
    original_filename: str,
    annotator_name: str = "",
    user: Any = None,
    structures: dict[str, int] | None = None,
    status: str = Status.SUBMITTED,
    note: str = "uploaded",
) -> Annotation:
    """Validate and store a label map drawn on ``scan`` (integer values, on the scan's grid), with
    the first transition of its trail (``note`` says how it came: uploaded, imported, a new
    version).

    ``structures`` maps canonical structure names to the label values used in the file (see
    :func:`structure_table`). The file is received, checked and stored like a scan
    (``scans.services``): a refusal (ScanRejected: 400, 409 for a file already uploaded for this
    scan, 413) leaves no row, no stored file and no temporary file behind. Permission is the
    caller's to check: the API scopes the scan to the user's labs, the dataset import runs as the
    server's operator.
    """
    incoming: IncomingFile | None = None
    authenticated = user is not None and user.is_authenticated
    annotator_name = (annotator_name or (user.get_username() if authenticated else "")).strip()
    try:
        annotator_name = check_identifier(annotator_name, "annotator")
        stored_name = safe_filename(original_filename)
        incoming = receive(file)
        existing = scan.annotations.filter(sha256=incoming.sha256).first()
        if existing is not None:
            raise ScanRejected(
                f"this label file was already uploaded for this scan as annotation {existing.pk} "
                f"(annotator {existing.annotator_name})",
                status=409,
            )
        header = read_header(incoming.path, original_filename)
        check_same_grid(header, tuple(scan.shape), np.asarray(scan.affine))
        stats = read_volume(incoming.path, header, labels=True)
        mapping = structure_table(structures, stats.label_values)
        folder = f"labs/{scan.lab_id}/annotations/{uuid.uuid4().hex}"
        with stored_files() as saved:
            file_name = save_incoming(incoming, f"{folder}/{stored_name}", saved)
            with transaction.atomic():
                annotation = Annotation.objects.create(
                    scan=scan,
                    annotator=user if authenticated else None,
                    annotator_name=annotator_name,
                    file=file_name,
                    original_filename=original_filename[:255],
                    sha256=incoming.sha256,
                    structures=mapping,
                    status=status,
                )
                _record_creation(annotation=annotation, user=user, note=note)
    finally:
        if incoming is not None:
            incoming.discard()
    logger.info("created annotation %s on scan %s (%s)", annotation.pk, scan.pk, note)
    return annotation


def consensus_annotations(scan: Scan) -> list[Annotation]:
    """The annotations a consensus of ``scan`` is made of: the approved ones, by annotator.

    The one meaning of "consensus" in labseg: the review app's majority and STAPLE maps and the
    viewer's consensus layer are both made of these, and need at least two of them.
    """
    return list(scan.annotations.filter(status=Status.APPROVED).order_by("annotator_name", "pk"))


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

    The file is validated and stored by :func:`create_annotation` (same scan grid, integer labels)
    under the same annotator name; ``structures`` defaults to the rejected version's table. The
    new version starts as submitted; the rejected one stays as it was. Raises ``ReviewError`` or
    ``scans.validation.ScanRejected`` in plain words.
    """
    check_replaceable(annotation=annotation, user=user)
    version = version_of(annotation) + 1
    replacement = create_annotation(
        scan=annotation.scan,
        file=file,
        original_filename=original_filename,
        annotator_name=annotation.annotator_name,
        user=user,
        structures=structures if structures is not None else (annotation.structures or None),
        status=Status.SUBMITTED,
        note=f"version {version}, replaces annotation {annotation.pk}",
    )
    try:
        with transaction.atomic():
            AnnotationRevision.objects.create(
                annotation=replacement, replaces=annotation, version=version, created_by=user
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
        _record_creation(
            annotation=annotation,
            user=user,
            note=f"promoted from prediction {prediction.pk} ({model_version.label})",
        )
        audit.record(
            AuditEvent.Action.PREDICTION_PROMOTED,
            lab=scan.lab,
            actor=user,
            target=annotation,
            detail={"prediction": prediction.pk, "model": model_version.label},
        )
    return annotation
