"""Celery tasks of the frontend app: the viewer's previews, made when their volume is stored."""

from __future__ import annotations

import logging

from celery import shared_task

logger = logging.getLogger(__name__)


@shared_task(name="frontend.tasks.make_previews_task", acks_late=True)
def make_previews_task(scan_id: int, keys: list[str]) -> int:
    """Store every preview level of the layers ``keys`` of scan ``scan_id`` (``frontend.layers``);
    returns how many files are stored. A scan or layer gone meanwhile, or an unreadable file, is
    logged and skipped: the viewer makes what it needs on request and says what is wrong there."""
    from frontend import layers
    from labseg.refusals import Refused
    from scans.models import Scan

    scan = Scan.objects.filter(pk=scan_id).first()
    if scan is None:
        return 0
    made = 0
    for key in keys:
        try:
            made += len(layers.make_previews(scan, [key]))
        except (Refused, OSError, ValueError) as error:
            logger.warning("no preview of %s for scan %s: %s", key, scan_id, error)
    return made
