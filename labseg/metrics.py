"""Prometheus metrics of the fleet, read from the database at scrape time (``GET /metrics``).

The database is the truth about jobs (``labseg/jobs.py``), so every web process answers the same
figures and no worker needs an exporter of its own:

- ``labseg_jobs{kind, state}``: background jobs by kind (segmentation, analysis) and state;
- ``labseg_queue_depth{queue}``: segmentation jobs waiting per queue (cpu, gpu);
- ``labseg_job_seconds{kind, quantile}``: run time of the jobs that finished in the last hour;
- ``labseg_stage_seconds{stage}``: mean seconds per pipeline stage over those segmentations;
- ``labseg_jobs_failed_24h{kind}`` and ``labseg_uploaded_bytes`` / ``labseg_scans``.

No lab's data is in them, only counts; still, ``LABSEG_METRICS_TOKEN`` (a bearer token) guards
the endpoint when set, and without it only loopback clients may read it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from datetime import timedelta

import numpy as np
from django.conf import settings
from django.db.models import Count, Sum
from django.http import HttpRequest, HttpResponse
from django.utils import timezone
from django.views.decorators.http import require_GET
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric

from review.models import ReviewAnalysis
from scans.models import Scan
from segmentation.models import InferenceJob

KINDS: dict[str, type[InferenceJob] | type[ReviewAnalysis]] = {
    "segmentation": InferenceJob,
    "analysis": ReviewAnalysis,
}


class FleetCollector:
    """A prometheus_client collector that queries the database on each scrape."""

    def collect(self) -> Iterator[Metric]:
        now = timezone.now()
        jobs = GaugeMetricFamily("labseg_jobs", "Background jobs by kind and state", labels=["kind", "state"])
        failed = GaugeMetricFamily(
            "labseg_jobs_failed_24h", "Jobs that failed in the last 24 hours", labels=["kind"]
        )
        seconds = GaugeMetricFamily(
            "labseg_job_seconds", "Run time of jobs finished in the last hour", labels=["kind", "quantile"]
        )
        for kind, model in KINDS.items():
            counts = dict(model.objects.values_list("state").annotate(n=Count("pk")))
            for state in model.State.values:
                jobs.add_metric([kind, state], counts.get(state, 0))
            failed.add_metric(
                [kind],
                model.objects.filter(
                    state=model.State.FAILED, finished_at__gte=now - timedelta(days=1)
                ).count(),
            )
            recent = model.objects.filter(
                finished_at__gte=now - timedelta(hours=1), started_at__isnull=False
            ).values_list("started_at", "finished_at")
            # The filter leaves no empty time; the check tells the type checker so.
            durations = [(end - start).total_seconds() for start, end in recent if start and end]
            if durations:
                for q in (0.5, 0.9, 0.99):
                    seconds.add_metric([kind, str(q)], float(np.quantile(durations, q)))
        yield jobs
        yield failed
        yield seconds
        depth = GaugeMetricFamily(
            "labseg_queue_depth", "Segmentation jobs waiting per queue", labels=["queue"]
        )
        waiting = dict(
            InferenceJob.objects.filter(state=InferenceJob.State.QUEUED)
            .values_list("queue")
            .annotate(n=Count("pk"))
        )
        for queue in sorted({"cpu", "gpu", *waiting}):
            depth.add_metric([queue], waiting.get(queue, 0))
        yield depth
        stages = GaugeMetricFamily(
            "labseg_stage_seconds", "Mean seconds per stage, segmentations of the last hour", labels=["stage"]
        )
        per_stage: dict[str, list[float]] = {}
        for record in InferenceJob.objects.filter(
            state=InferenceJob.State.SUCCEEDED, finished_at__gte=now - timedelta(hours=1)
        ).values_list("stage_seconds", flat=True):
            for stage, value in (record or {}).items():
                if isinstance(value, int | float):
                    per_stage.setdefault(str(stage), []).append(float(value))
        for stage, values in sorted(per_stage.items()):
            stages.add_metric([stage], float(np.mean(values)))
        yield stages
        totals = Scan.objects.aggregate(n=Count("pk"), size=Sum("size_bytes"))
        yield GaugeMetricFamily("labseg_scans", "Scans stored", value=totals["n"] or 0)
        yield GaugeMetricFamily("labseg_uploaded_bytes", "Bytes of scans stored", value=totals["size"] or 0)


def _allowed(request: HttpRequest) -> bool:
    token = str(getattr(settings, "LABSEG_METRICS_TOKEN", "") or "")
    if token:
        return request.META.get("HTTP_AUTHORIZATION", "") == f"Bearer {token}"
    try:
        return ipaddress.ip_address(request.META.get("REMOTE_ADDR", "")).is_loopback
    except ValueError:
        return False


@require_GET
def metrics_view(request: HttpRequest) -> HttpResponse:
    if not _allowed(request):
        return HttpResponse(
            "metrics need the bearer token of LABSEG_METRICS_TOKEN (or a request from this machine)\n",
            status=403,
            content_type="text/plain",
        )
    registry = CollectorRegistry()
    registry.register(FleetCollector())  # type: ignore[arg-type]
    return HttpResponse(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)
