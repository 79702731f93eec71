"""Retraining workflows: training sets, training jobs, promotion and roll back, re-running a study.

Keyword-only functions called by the API, the pages and the ``train`` task. Refusals raise
``labseg.refusals.Refused`` kinds with a message a researcher can act on; nothing is half-stored.
"""

from __future__ import annotations

import random
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from labs.models import Lab
from labs.rules import is_lab_admin, is_lab_reviewer
from labseg import jobs
from labseg.refusals import Refused
from scans.models import Annotation, Scan, Study
from segmentation import services as segmentation
from segmentation.models import InferenceJob, LabDefaultModel, ModelVersion

from .models import Promotion, TrainingItem, TrainingJob, TrainingSet


class Forbidden(Refused):
    status = 403


class Conflict(Refused):
    status = 409


def _require_reviewer(user: Any, lab: Lab) -> None:
    if not is_lab_reviewer(user, lab):
        raise Forbidden("Only the lab's reviewers and admins can define training sets and start training.")


def _require_admin(user: Any, lab: Lab) -> None:
    if not is_lab_admin(user, lab):
        raise Forbidden("Only the lab's admins can change which model the lab uses.")


# --------------------------------------------------------------------------------------------
# Training sets
# --------------------------------------------------------------------------------------------


def _labelled_scans(training_set: TrainingSet) -> list[Scan]:
    scans = Scan.objects.filter(
        lab=training_set.lab, deleted_at__isnull=True, annotations__status=Annotation.Status.APPROVED
    )
    if training_set.study_id is not None:
        scans = scans.filter(time_point__mouse__study_id=training_set.study_id)
    return list(scans.select_related("time_point__mouse").distinct().order_by("pk"))


def _task_structures(task: str) -> set[int]:
    from inference.training.tasks import TASKS

    return {int(s) for s in TASKS[task].structures[1:]}


def create_training_set(
    *,
    lab: Lab,
    user: Any,
    name: str,
    task: str,
    study: Study | None = None,
    validation_fraction: float = 0.25,
    seed: int = 0,
) -> TrainingSet:
    """A set of the approved labels of ``study`` (or of the whole lab) for ``task``, its validation
    mice chosen now (at least one, at least one left for training) and frozen for good."""
    _require_reviewer(user, lab)
    if task not in TrainingSet.Task.values:
        raise Refused(f"task must be one of {', '.join(TrainingSet.Task.values)}, not {task!r}.")
    if not 0.0 < validation_fraction < 1.0:
        raise Refused("validation_fraction must lie between 0 and 1 (e.g. 0.25).")
    if study is not None and study.lab_id != lab.pk:
        raise Refused("The study belongs to another lab.")
    name = (name or "").strip()
    if not name:
        raise Refused("Give the training set a name.")
    draft = TrainingSet(lab=lab, study=study, name=name[:200], task=task, seed=seed)
    scans = _labelled_scans(draft)
    mice = sorted({scan.time_point.mouse_id for scan in scans if _item_structures(scan, task)})
    if len(mice) < 2:
        raise Refused(
            f"A training set needs approved labels of the {task} on at least two mice (one to train on, "
            f"one to validate on); {'this study' if study else 'this lab'} has {len(mice)}. "
            "Approve more annotations first."
        )
    n_val = min(len(mice) - 1, max(1, round(len(mice) * validation_fraction)))
    validation = sorted(random.Random(seed).sample(mice, n_val))
    with transaction.atomic():
        draft.validation_fraction = validation_fraction
        draft.validation_mice = validation
        draft.created_by = user
        draft.save()
        refresh_items(training_set=draft)
    return draft


def _item_structures(scan: Scan, task: str) -> list[int]:
    from review.files import annotation_values

    wanted = _task_structures(task)
    found: set[int] = set()
    for annotation in scan.annotations.all():
        if annotation.status == Annotation.Status.APPROVED:
            found |= set(annotation_values(annotation.structures)) & wanted
    return sorted(found)


def refresh_items(*, training_set: TrainingSet) -> list[TrainingItem]:
    """Record the set's scans as they are now: every scan with approved labels of the task, its
    annotations' sha256s and its side of the (frozen) split. New mice go to training."""
    from review.services import consensus_annotations

    frozen = set(training_set.validation_mice)
    rows = []
    for scan in _labelled_scans(training_set):
        structures = _item_structures(scan, training_set.task)
        if not structures:
            continue
        used = consensus_annotations(scan)
        mouse_id = scan.time_point.mouse_id
        rows.append(
            TrainingItem(
                training_set=training_set,
                scan=scan,
                mouse_id=mouse_id,
                split=TrainingItem.Split.VALIDATION if mouse_id in frozen else TrainingItem.Split.TRAIN,
                source=TrainingItem.Source.CONSENSUS if len(used) > 1 else TrainingItem.Source.ANNOTATION,
                annotations=[{"id": a.pk, "annotator": a.annotator_name, "sha256": a.sha256} for a in used],
                scan_sha256=scan.sha256,
                structures=structures,
            )
        )
    with transaction.atomic():
        training_set.items.all().delete()
        TrainingItem.objects.bulk_create(rows)
        training_set.refreshed_at = timezone.now()
        training_set.save(update_fields=["refreshed_at"])
    return list(training_set.items.all())


# --------------------------------------------------------------------------------------------
# Training jobs
# --------------------------------------------------------------------------------------------


def max_minutes() -> float:
    return float(settings.LABSEG_TRAIN_MAX_MINUTES)


def request_training(
    *,
    training_set: TrainingSet,
    user: Any,
    epochs: int = 10,
    steps_per_epoch: int = 8,
    learning_rate: float = 1e-4,
    minutes: float | None = None,
    from_scratch: bool = False,
) -> TrainingJob:
    """Queue a fine-tune of the lab's current default for the set's task (or a model from scratch)."""
    lab = training_set.lab
    _require_reviewer(user, lab)
    if not 1 <= epochs <= 500 or not 1 <= steps_per_epoch <= 1000:
        raise Refused("epochs must lie between 1 and 500, steps_per_epoch between 1 and 1000.")
    if not 0.0 < learning_rate <= 0.1:
        raise Refused("learning_rate must lie in (0, 0.1], e.g. 0.0001 to fine-tune, 0.003 from scratch.")
    limit = max_minutes()
    minutes = limit if minutes is None else float(minutes)
    if not 0 < minutes <= limit:
        raise Refused(f"minutes must lie in (0, {limit:g}] (LABSEG_TRAIN_MAX_MINUTES).")
    if TrainingJob.objects.filter(training_set=training_set, state__in=jobs.ACTIVE).exists():
        raise Conflict("A training of this set is already queued or running; wait for it or cancel it.")
    items = refresh_items(training_set=training_set)
    splits = {item.split for item in items}
    if splits != {TrainingItem.Split.TRAIN, TrainingItem.Split.VALIDATION}:
        raise Refused(
            "The set needs scans on both sides of its split (training and frozen validation); "
            "approve labels of more mice first."
        )
    base = None if from_scratch else segmentation.lab_default(lab, training_set.task)
    if base is None and not from_scratch:
        raise segmentation.NoModelAvailableError(
            f"No {training_set.task} model is installed to fine-tune. An administrator should run "
            "`manage.py sync_models`."
        )
    with transaction.atomic():
        job = TrainingJob.objects.create(
            training_set=training_set,
            base_model=base,
            epochs=epochs,
            steps_per_epoch=steps_per_epoch,
            learning_rate=learning_rate,
            max_minutes=minutes,
            max_memory_mb=float(settings.LABSEG_TRAIN_MAX_MEMORY_MB),
            items=[item.as_json() for item in items],
            requested_by=user,
        )
        jobs.enqueue_on_commit(job)
    return job


def cancel_training(*, job: TrainingJob, user: Any) -> TrainingJob:
    _require_reviewer(user, job.training_set.lab)
    updated = TrainingJob.objects.filter(pk=job.pk, state__in=jobs.ACTIVE).update(
        state=TrainingJob.State.CANCELLED,
        stage="cancelled",
        finished_at=timezone.now(),
        error=f"Cancelled by {user.get_username()}.",
    )
    job.refresh_from_db()
    if not updated:
        raise Conflict(
            f"The training has already {job.state}; only a queued or running one can be cancelled."
        )
    return job


# --------------------------------------------------------------------------------------------
# Promotion and roll back
# --------------------------------------------------------------------------------------------


def _set_default(*, lab: Lab, model_version: ModelVersion, user: Any, reason: str, action: str) -> Promotion:
    previous = segmentation.lab_default(lab, model_version.task)
    with transaction.atomic():
        if model_version.lab_id is None and model_version.is_default:
            LabDefaultModel.objects.filter(lab=lab, task=model_version.task).delete()
        else:
            LabDefaultModel.objects.update_or_create(
                lab=lab, task=model_version.task, defaults={"model_version": model_version}
            )
        return Promotion.objects.create(
            lab=lab,
            task=model_version.task,
            action=action,
            model_version=model_version,
            previous=previous,
            by=user,
            reason=reason,
        )


def promote(*, model_version: ModelVersion, lab: Lab, user: Any, reason: str) -> Promotion:
    """Make ``model_version`` (the lab's own or a shipped one) the lab's default for its task."""
    _require_admin(user, lab)
    reason = (reason or "").strip()
    if not reason:
        raise Refused("Say why this model becomes the lab's default (reason).")
    if model_version.lab_id not in (None, lab.pk):
        raise Refused("That model belongs to another lab.")
    current = segmentation.lab_default(lab, model_version.task)
    if current is not None and current.pk == model_version.pk:
        raise Conflict(f"{model_version.label} is already the lab's {model_version.task} model.")
    return _set_default(lab=lab, model_version=model_version, user=user, reason=reason, action="promote")


def roll_back(*, lab: Lab, task: str, user: Any, reason: str = "") -> Promotion:
    """Go back to the model the lab used before the last promotion for ``task``."""
    _require_admin(user, lab)
    last = Promotion.objects.filter(lab=lab, task=task).first()
    if last is None or last.previous is None:
        raise Conflict(f"Nothing to roll back: the lab has not promoted a {task} model.")
    return _set_default(
        lab=lab,
        model_version=last.previous,
        user=user,
        reason=(reason or "").strip() or f"Rolled back from {last.model_version.label}.",
        action="roll_back",
    )


# --------------------------------------------------------------------------------------------
# Re-running a study
# --------------------------------------------------------------------------------------------


def rerun_study(*, study: Study, user: Any, task: str | None = None) -> list[InferenceJob]:
    """Segment every scan of ``study`` with the lab's current default (of ``task``, or of every
    task): one job per scan and model; a scan already segmented by that version keeps its
    prediction, and every prediction keeps the version that made it."""
    _require_reviewer(user, study.lab)
    versions = segmentation.default_model_versions(study.lab)
    if task is not None:
        versions = [mv for mv in versions if mv.task == task]
        if not versions:
            raise Refused(f"task must be one of {', '.join(TrainingSet.Task.values)}, not {task!r}.")
    created: list[InferenceJob] = []
    scans = Scan.objects.filter(time_point__mouse__study=study, deleted_at__isnull=True).order_by("pk")
    with transaction.atomic():
        for scan in scans:
            created += segmentation.request_segmentation(scan=scan, user=user, model_versions=versions)
    return created
