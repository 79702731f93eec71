"""The "Workers and queues" page for a lab's admins: the workers that answer now, the messages
waiting in the broker, and this lab's background jobs running, queued and failed in the last day.

Workers and queues are shared by every lab (names and counts only); job rows are the lab's own.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.utils import timezone

from frontend.views.base import lab_page, page
from labs.rules import is_lab_admin
from labseg import fleet
from labseg.jobs import BackgroundJob
from review.models import ReviewAnalysis
from scans.models import Lab
from segmentation.models import InferenceJob

#: Rows listed per kind and state (the counts are always whole).
SHOWN = 50


def _jobs(lab: Lab) -> dict[str, Any]:
    since = timezone.now() - timedelta(days=1)
    state = BackgroundJob.State
    rows: dict[str, list[dict[str, Any]]] = {"running": [], "queued": [], "failed": []}
    counts = dict.fromkeys(rows, 0)
    kinds: list[tuple[str, Any]] = [
        ("segmentation", InferenceJob.objects.in_lab(lab).select_related("model_version")),
        ("analysis", ReviewAnalysis.objects.in_lab(lab)),
    ]
    for noun, jobs in kinds:
        for key, chosen in (
            ("running", jobs.filter(state=state.RUNNING).order_by("started_at")),
            ("queued", jobs.filter(state=state.QUEUED).order_by("queued_at")),
            ("failed", jobs.filter(state=state.FAILED, finished_at__gte=since).order_by("-finished_at")),
        ):
            counts[key] += chosen.count()
            for job in chosen.select_related("scan")[:SHOWN]:
                model = getattr(job, "model_version", None)
                rows[key].append(
                    {
                        "job": job,
                        "noun": noun,
                        "what": str(model) if model is not None else "consensus and agreement",
                        "queue": getattr(job, "queue", "") or job.celery_queue(),
                    }
                )
    return {"rows": rows, "counts": counts}


@lab_page
def workers(request: HttpRequest, lab: Lab) -> HttpResponse:
    if not is_lab_admin(request.user, lab):
        raise PermissionDenied("Only the lab's admins see the workers and queues.")
    seen = fleet.workers_seen(timeout_s=1.0, with_active=True)
    return page(
        request,
        lab,
        "frontend/workers.html",
        nav="workers",
        workers=seen,
        depths=fleet.queue_depths(),
        gpu_up=any(fleet.GPU_QUEUE in w.queues for w in seen),
        **_jobs(lab),
    )
