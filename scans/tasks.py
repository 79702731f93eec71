"""Celery tasks of the scans app."""

from __future__ import annotations

from celery import shared_task

from .deletion import purge_expired
from .uploads import sweep_abandoned_uploads


@shared_task(name="scans.tasks.sweep_uploads_task", acks_late=True)
def sweep_uploads_task() -> dict[str, int]:
    """Remove abandoned resumable uploads and stale temp files (beat, every hour)."""
    report = sweep_abandoned_uploads()
    return {"sessions": report.sessions, "files": len(report.files)}


@shared_task(name="scans.tasks.purge_bin_task", acks_late=True)
def purge_bin_task() -> dict[str, int]:
    """Purge scans, mice and studies in the bin for longer than ``LABSEG_BIN_RETENTION_DAYS``
    (beat, daily)."""
    report = purge_expired()
    counts = {"scans": len(report.scans), "files": len(report.files)}
    if report.mice or report.studies:
        counts.update(mice=len(report.mice), studies=len(report.studies))
    return counts
