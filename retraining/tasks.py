"""Celery wrappers of retraining: the ``train`` task runs on workers that have torch (the
``train`` queue, ``CELERY_TASK_ROUTES``); torch is imported only inside the work, never here."""

from __future__ import annotations

import socket

from celery import shared_task

from labseg import jobs

from .models import TrainingJob


@shared_task(name=TrainingJob.task_name, bind=True, **jobs.task_options())
def train_task(self, job_id: int) -> str:  # type: ignore[no-untyped-def]
    """Fine-tune, export, register and compare one ``TrainingJob``; returns its final state."""
    from .training import run_training

    job = run_training(job_id, worker_host=self.request.hostname or socket.gethostname())
    return job.state if job is not None else "not claimed"


@shared_task(name="retraining.tasks.reconcile_trainings_task", acks_late=True)
def reconcile_trainings_task() -> dict[str, list[int]]:
    """Take back trainings of lost workers and resend lost messages (beat); a re-claimed training
    resumes from its last epoch's checkpoint."""
    return jobs.reconcile(TrainingJob).as_dict()
