"""Celery tasks of the scans app."""

from __future__ import annotations

from celery import shared_task

from .uploads import sweep_abandoned_uploads


@shared_task(name="scans.tasks.sweep_uploads_task", acks_late=True)
def sweep_uploads_task() -> dict[str, int]:
    """Remove abandoned resumable uploads and stale temp files (beat, every hour)."""
    report = sweep_abandoned_uploads()
    return {"sessions": report.sessions, "files": len(report.files)}
