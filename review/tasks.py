"""Celery wrappers of the review app: they take an id, call one service, the row records the outcome.

``analyse_scan_task`` gets ``labseg.jobs.task_options()``: a worker killed mid-analysis leaves its
message to be redelivered, and the reconciler takes the row back once its heartbeat is stale; a
duplicate delivery is harmless because ``run_analysis`` claims the row with a compare-and-set;
transient errors (database, broker, network) are retried with backoff; the soft and hard time
limits come from settings.
"""

from __future__ import annotations

import socket

from celery import shared_task

from labseg import jobs

from .analysis import run_analysis
from .models import ReviewAnalysis


@shared_task(name=ReviewAnalysis.task_name, bind=True, **jobs.task_options())
def analyse_scan_task(self, analysis_id: int) -> str:  # type: ignore[no-untyped-def]
    """Consensus, agreement and prediction comparisons of one ``ReviewAnalysis``; returns its state."""
    analysis = run_analysis(
        analysis_id=analysis_id, worker_host=self.request.hostname or socket.gethostname()
    )
    return analysis.state if analysis is not None else "not claimed"


@shared_task(name="review.tasks.reconcile_analyses_task", acks_late=True)
def reconcile_analyses_task() -> dict[str, list[int]]:
    """Take back analyses of lost or hung workers and resend lost messages (beat, like the jobs')."""
    return jobs.reconcile(ReviewAnalysis).as_dict()
