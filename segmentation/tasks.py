"""Celery wrappers: they take ids, call one service and let the database record the outcome.

Every job task gets ``labseg.jobs.task_options()``: ``acks_late`` + ``reject_on_worker_lost`` (a
worker killed mid-job leaves its message to be redelivered; a duplicate delivery is harmless
because ``services.run_job`` claims the job with a compare-and-set), retries with backoff for
transient errors only (database or storage unreachable; permanent ones are recorded on the job by
the service and not retried), and the soft and hard time limits from settings.
"""

from __future__ import annotations

import socket

from celery import shared_task

from labseg import jobs

from . import services
from .models import InferenceJob


# Task names keep the module path they had before the app moved out of the library package, so
# messages already queued by an older release still find their task.
@shared_task(name=InferenceJob.task_name, bind=True, **jobs.task_options())
def segment_scan_task(self, job_id: int) -> str:  # type: ignore[no-untyped-def]
    """Segment the scan of ``InferenceJob`` ``job_id``; returns the job's final state."""
    job = services.run_job(job_id, worker_host=self.request.hostname or socket.gethostname())
    return job.state if job is not None else "not claimed"


@shared_task(name="inference.tasks.reconcile_jobs_task", acks_late=True)
def reconcile_jobs_task() -> dict[str, list[int]]:
    """Re-queue segmentation jobs of lost or hung workers, fail those past their limits and resend
    jobs whose message was never sent or was lost (beat, every ``LABSEG_RECONCILE_EVERY_S``)."""
    return jobs.reconcile(InferenceJob).as_dict()
