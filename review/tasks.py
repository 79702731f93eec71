"""Celery wrapper of the review app: takes an id, calls one service, the row records the outcome.

``acks_late`` + ``reject_on_worker_lost``: a worker killed mid-analysis leaves the message to be
redelivered; a duplicate delivery is harmless because ``run_analysis`` claims the row with a
compare-and-set. Database hiccups are retried a bounded number of times.
"""

from __future__ import annotations

from celery import shared_task
from django.db import InterfaceError, OperationalError

from .analysis import run_analysis


@shared_task(
    acks_late=True,
    reject_on_worker_lost=True,
    autoretry_for=(OperationalError, InterfaceError),
    retry_backoff=2,
    max_retries=3,
)
def analyse_scan_task(analysis_id: int) -> str:
    """Consensus, agreement and prediction comparisons of one ``ReviewAnalysis``; returns its state."""
    analysis = run_analysis(analysis_id=analysis_id)
    return analysis.state if analysis is not None else "not claimed"
