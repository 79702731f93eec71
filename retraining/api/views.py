"""REST views of retraining (mounted under /api/). Every row is scoped to the user's labs: another
lab's set, job or model answers 404; refusals are ``Refused`` (plain 4xx)."""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from django.shortcuts import get_object_or_404
from rest_framework import status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from labs.models import Lab
from labseg.refusals import Refused
from scans.models import Study
from segmentation import services as segmentation
from segmentation.models import ModelVersion

from .. import services
from ..changes import volume_changes
from ..models import Promotion, TrainingJob, TrainingSet


def _data(request: Request) -> Any:
    return request.data if hasattr(request.data, "get") else {}


def _number(data: Any, key: str, default: float, kind: type = float) -> Any:
    value = data.get(key, default)
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise Refused(f"{key} must be a number, not {value!r}.") from None


def set_json(training_set: TrainingSet) -> dict[str, Any]:
    items = list(training_set.items.all())
    return {
        "id": training_set.pk,
        "url": f"/api/training-sets/{training_set.pk}/",
        "lab": training_set.lab_id,
        "study": training_set.study_id,
        "name": training_set.name,
        "task": training_set.task,
        "validation_fraction": training_set.validation_fraction,
        "validation_mice": training_set.validation_mice,
        "created_by": training_set.created_by.get_username() if training_set.created_by else None,
        "created_at": training_set.created_at.isoformat(),
        "items": [item.as_json() for item in items],
        "counts": {
            "train": sum(1 for i in items if i.split == "train"),
            "validation": sum(1 for i in items if i.split == "validation"),
        },
    }


def model_json(mv: ModelVersion | None) -> dict[str, Any] | None:
    if mv is None:
        return None
    return {"id": mv.pk, "label": mv.label, "task": mv.task, "lab": mv.lab_id, "sha256": mv.sha256}


def job_json(job: TrainingJob) -> dict[str, Any]:
    last = job.history[-1] if job.history else {}
    return {
        "id": job.pk,
        "url": f"/api/training-jobs/{job.pk}/",
        "page": f"/retraining/jobs/{job.pk}/",
        "training_set": job.training_set_id,
        "state": job.state,
        "progress": job.progress,
        "stage": job.stage,
        "attempts": job.attempts,
        "error": job.error,
        "epochs": job.epochs,
        "steps_per_epoch": job.steps_per_epoch,
        "max_minutes": job.max_minutes,
        "epoch": last.get("epoch", 0),
        "loss": last.get("loss"),
        "validation_dice": last.get("mean_val_dice"),
        "history": job.history,
        "base_model": model_json(job.base_model),
        "candidate": model_json(job.candidate),
        "comparison": job.comparison,
        "items": job.items,
    }


def _sets(request: Request) -> QuerySet[TrainingSet]:
    return TrainingSet.objects.visible_to(request.user).select_related("created_by")


def _jobs(request: Request) -> QuerySet[TrainingJob]:
    return TrainingJob.objects.visible_to(request.user).select_related(
        "base_model", "candidate", "training_set"
    )


class TrainingSets(APIView):
    def get(self, request: Request) -> Response:
        return Response([set_json(s) for s in _sets(request)])

    def post(self, request: Request) -> Response:
        data = _data(request)
        study = None
        if data.get("study") not in (None, ""):
            study = get_object_or_404(
                Study.objects.visible_to(request.user), pk=_number(data, "study", 0, int)
            )
            lab = study.lab
        else:
            labs = Lab.objects.visible_to(request.user)
            if data.get("lab") not in (None, ""):
                lab = get_object_or_404(labs, pk=_number(data, "lab", 0, int))
            elif labs.count() == 1:
                lab = labs.get()
            else:
                raise Refused("Name the lab (lab) or the study (study) the training set is for.")
        training_set = services.create_training_set(
            lab=lab,
            user=request.user,
            name=str(data.get("name", "")),
            task=str(data.get("task", "")),
            study=study,
            validation_fraction=_number(data, "validation_fraction", 0.25),
            seed=_number(data, "seed", 0, int),
        )
        return Response(set_json(training_set), status=status.HTTP_201_CREATED)


class TrainingSetDetail(APIView):
    def get(self, request: Request, pk: int) -> Response:
        return Response(set_json(get_object_or_404(_sets(request), pk=pk)))


class Train(APIView):
    def post(self, request: Request, pk: int) -> Response:
        training_set = get_object_or_404(_sets(request), pk=pk)
        data = _data(request)
        minutes = data.get("minutes")
        from_scratch = str(data.get("from_scratch", "")).lower() in ("1", "true", "yes")
        job = services.request_training(
            training_set=training_set,
            user=request.user,
            epochs=_number(data, "epochs", 10, int),
            steps_per_epoch=_number(data, "steps_per_epoch", 8, int),
            learning_rate=_number(data, "learning_rate", 3e-3 if from_scratch else 1e-4),
            minutes=None if minutes in (None, "") else _number(data, "minutes", 0.0),
            from_scratch=from_scratch,
        )
        return Response(job_json(job), status=status.HTTP_202_ACCEPTED)


class TrainingJobDetail(APIView):
    def get(self, request: Request, pk: int) -> Response:
        return Response(job_json(get_object_or_404(_jobs(request), pk=pk)))


class CancelTraining(APIView):
    def post(self, request: Request, pk: int) -> Response:
        job = services.cancel_training(job=get_object_or_404(_jobs(request), pk=pk), user=request.user)
        return Response(job_json(job))


def promotion_json(p: Promotion) -> dict[str, Any]:
    return {
        "id": p.pk,
        "lab": p.lab_id,
        "task": p.task,
        "action": p.action,
        "model": model_json(p.model_version),
        "previous": model_json(p.previous),
        "by": p.by.get_username() if p.by else None,
        "at": p.at.isoformat(),
        "reason": p.reason,
    }


class Promote(APIView):
    """``POST /api/models/{id}/promote`` {reason[, lab]}: the lab's own model (or a shipped one,
    with ``lab``) becomes the lab's default for its task."""

    def post(self, request: Request, pk: int) -> Response:
        data = _data(request)
        model = get_object_or_404(ModelVersion.objects.visible_to(request.user), pk=pk)
        if model.lab_id is not None:
            lab = model.lab
        else:
            labs = Lab.objects.visible_to(request.user)
            if data.get("lab") not in (None, ""):
                lab = get_object_or_404(labs, pk=_number(data, "lab", 0, int))
            elif labs.count() == 1:
                lab = labs.get()
            else:
                raise Refused("Name the lab (lab) whose default this shipped model becomes.")
        assert lab is not None
        promotion = services.promote(
            model_version=model, lab=lab, user=request.user, reason=str(data.get("reason", ""))
        )
        return Response(promotion_json(promotion), status=status.HTTP_201_CREATED)


class RollBack(APIView):
    """``POST /api/labs/{id}/models/{task}/roll-back`` {reason}: back to the model before."""

    def post(self, request: Request, pk: int, task: str) -> Response:
        lab = get_object_or_404(Lab.objects.visible_to(request.user), pk=pk)
        promotion = services.roll_back(
            lab=lab, task=task, user=request.user, reason=str(_data(request).get("reason", ""))
        )
        return Response(promotion_json(promotion), status=status.HTTP_201_CREATED)


class LabModels(APIView):
    """``GET /api/labs/{id}/models/``: the lab's defaults now, its own models and the promotions."""

    def get(self, request: Request, pk: int) -> Response:
        lab = get_object_or_404(Lab.objects.visible_to(request.user), pk=pk)
        return Response(
            {
                "defaults": {mv.task: model_json(mv) for mv in segmentation.default_model_versions(lab)},
                "own": [model_json(mv) for mv in ModelVersion.objects.filter(lab=lab)],
                "promotions": [
                    promotion_json(p)
                    for p in Promotion.objects.filter(lab=lab).select_related(
                        "model_version", "previous", "by"
                    )
                ],
            }
        )


class Rerun(APIView):
    def post(self, request: Request, pk: int) -> Response:
        study = get_object_or_404(Study.objects.visible_to(request.user), pk=pk)
        task = _data(request).get("task") or None
        jobs = services.rerun_study(study=study, user=request.user, task=task)
        return Response(
            {
                "jobs": [
                    {
                        "id": j.pk,
                        "url": f"/api/jobs/{j.pk}/",
                        "scan": j.scan_id,
                        "model": j.model_version.label,
                        "state": j.state,
                    }
                    for j in jobs
                ]
            },
            status=status.HTTP_202_ACCEPTED,
        )


def _model_param(request: Request, key: str) -> ModelVersion:
    value = request.query_params.get(key)
    if not value or not value.isdigit():
        raise Refused(f"Give ?{key}= the id of a model version (GET /api/models/).")
    return get_object_or_404(ModelVersion.objects.visible_to(request.user), pk=int(value))


class ModelChanges(APIView):
    """``GET /api/studies/{id}/model-changes?before=ID&after=ID``."""

    def get(self, request: Request, pk: int) -> Response:
        study = get_object_or_404(Study.objects.visible_to(request.user), pk=pk)
        before, after = _model_param(request, "before"), _model_param(request, "after")
        for mv in (before, after):
            if mv.lab_id not in (None, study.lab_id):
                raise Refused("That model belongs to another lab.", status=404)
        return Response(volume_changes(study=study, before=before, after=after))
