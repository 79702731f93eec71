"""Celery wrappers: they take ids, call one service and let the database record the outcome.

``acks_late`` + ``reject_on_worker_lost``: a message is acknowledged only after the job ran, so a
worker killed mid-job leaves it to be redelivered; a duplicate delivery is harmless because
``services.run_job`` claims the job with a compare-and-set. Transient errors (database or storage
unreachable) are retried with exponential backoff a bounded number of times; permanent ones are
recorded on the job by the service and not retried.
"""

from __future__ import annotations

import socket

from celery import shared_task
from django.conf import settings
from django.db import InterfaceError, OperationalError

from . import services


# Task names keep the module path they had before the app moved out of the library package, so
# messages already queued by an older release still find their task.
@shared_task(
    name="inference.tasks.segment_scan_task",
    bind=True,
    acks_late=True,
    reject_on_worker_lost=True,
    autoretry_for=(services.TransientJobError, OperationalError, InterfaceError),
    retry_backoff=2,
    retry_backoff_max=120,
    retry_jitter=True,
    max_retries=services.MAX_ATTEMPTS,
)
def segment_scan_task(self, job_id: int) -> str:  # type: ignore[no-untyped-def]
    """Segment the scan of ``InferenceJob`` ``job_id``; returns the job's final state."""
    job = services.run_job(job_id, worker_host=self.request.hostname or socket.gethostname())
    return job.state if job is not None else "not claimed"


@shared_task(name="inference.tasks.reconcile_jobs_task", acks_late=True)
def reconcile_jobs_task() -> dict[str, list[int]]:
    """Re-queue jobs of lost workers and resend jobs whose message a broker lost (beat, every minute)."""
    report = services.reconcile_jobs(timeout_s=float(settings.LABSEG_JOB_TIMEOUT_S))
    return {"requeued": report.requeued, "resent": report.resent, "failed": report.failed}
