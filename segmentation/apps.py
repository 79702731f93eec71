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

    This is the one signal handler in labseg: ``migrate`` is where a deployment creates its
    database, and ``make run``, the container entrypoint and every test database go through it, so
    no start-up path can forget the registry. A broken model folder or a sha256 conflict is logged
    loudly but does not fail ``migrate`` (the schema is fine); ``manage.py sync_models`` reports
    the same problem as an error.
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


class SegmentationConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "segmentation"
    # The label the app was created with: tables (inference_*), migrations, content types and
    # permissions keep it, so moving the code needed no data migration.
    label = "inference"

    def ready(self) -> None:
        post_migrate.connect(sync_after_migrate, sender=self, dispatch_uid="inference.sync_models")
