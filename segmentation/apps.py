"""The segmentation app (label ``inference``).

After ``migrate`` it registers the model folders (see ``sync_after_migrate``).
"""

from __future__ import annotations

import logging
from typing import Any

from django.apps import AppConfig
from django.db.models.signals import post_migrate

logger = logging.getLogger(__name__)


def sync_after_migrate(*, using: str = "default", **kwargs: Any) -> None:
    """Register the shipped models after ``migrate`` so that a fresh server can segment at once.

    ``migrate`` is where a deployment creates its database, and ``make run``, the container
    entrypoint and every test database go through it, so no start-up path can forget the registry.
    A broken model folder or a sha256 conflict is logged loudly but does not fail ``migrate`` (the
    schema is fine); ``manage.py sync_models`` reports the same problem as an error.
    """
    from segmentation import services

    if using != "default":
        return
    try:
        report = services.sync_models()
    except Exception as exc:
        logger.error("model registry not synced after migrate: %s", exc)
        return
    if report.created:
        logger.info("registered models: %s", ", ".join(report.created))


def segment_new_scan(*, scan: Any, user: Any = None, **kwargs: Any) -> None:
    """Queue the default models for a scan just stored (``scans.signals.scan_registered``) when
    ``LABSEG_SEGMENT_ON_UPLOAD`` is set. The scan is safely stored whatever happens here: a failure
    to queue is logged, and the scan can be segmented again from its page or the API."""
    from django.conf import settings

    from segmentation import services

    if not settings.LABSEG_SEGMENT_ON_UPLOAD:
        return
    try:
        services.request_segmentation(scan=scan, user=user)
    except services.NoModelAvailableError as error:
        logger.warning("scan %s is not queued for segmentation: %s", scan.pk, error)
    except Exception:
        logger.exception("could not queue segmentation for scan %s", scan.pk)


class SegmentationConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "segmentation"
    # The label the app was created with: tables (inference_*), migrations, content types and
    # permissions keep it, so moving the code needed no data migration.
    label = "inference"

    def ready(self) -> None:
        from scans.signals import scan_registered

        post_migrate.connect(sync_after_migrate, sender=self, dispatch_uid="inference.sync_models")
        scan_registered.connect(segment_new_scan, dispatch_uid="inference.segment_new_scan")
