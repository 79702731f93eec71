"""Pages of retraining (server-rendered; the charts are drawn by ``frontend/js/charts.js`` from the
JSON embedded with ``json_script``). Another lab's job or study answers 404."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, render

from labs.rules import is_lab_admin
from scans.models import Study
from segmentation import services as segmentation
from segmentation.models import ModelVersion

from .api.views import job_json
from .changes import volume_changes
from .models import TrainingJob


@login_required
def comparison_page(request: HttpRequest, pk: int) -> HttpResponse:
    job = get_object_or_404(
        TrainingJob.objects.visible_to(request.user).select_related(
            "training_set__lab", "candidate", "base_model"
        ),
        pk=pk,
    )
    lab = job.training_set.lab
    current = segmentation.lab_default(lab, job.training_set.task)
    return render(
        request,
        "retraining/comparison.html",
        {
            "job": job,
            "data": job_json(job),
            "current": current,
            "can_promote": is_lab_admin(request.user, lab),
        },
    )


@login_required
def changes_page(request: HttpRequest, pk: int) -> HttpResponse:
    study = get_object_or_404(Study.objects.visible_to(request.user), pk=pk)
    visible = ModelVersion.objects.visible_to(request.user)
    before = get_object_or_404(
        visible, pk=request.GET.get("before", "0") if request.GET.get("before", "").isdigit() else 0
    )
    after = get_object_or_404(
        visible, pk=request.GET.get("after", "0") if request.GET.get("after", "").isdigit() else 0
    )
    return render(
        request,
        "retraining/changes.html",
        {"study": study, "data": volume_changes(study=study, before=before, after=after)},
    )
