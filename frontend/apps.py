"""The researcher's pages. On ready, previews are queued whenever a scan, prediction or
annotation is stored, so that a viewer opens on previews made already (``frontend/tasks.py``)."""

from __future__ import annotations

import logging
from typing import Any

from django.apps import AppConfig
from django.db import transaction
from django.db.models.signals import post_save

logger = logging.getLogger(__name__)


def queue_previews(scan_id: int, keys: list[str]) -> None:
    """Send ``make_previews_task`` once the surrounding transaction commits. A broker that is down
    is logged, not raised: the viewer then makes the previews on its first request."""

    def send() -> None:
        from frontend.tasks import make_previews_task

        try:
            make_previews_task.apply_async(args=[scan_id, keys], retry=False)
        except Exception as exc:  # kombu raises its own OperationalError and plain OSErrors here
            logger.warning("previews of scan %s not queued (%s); made on first view", scan_id, exc)

    transaction.on_commit(send)


def _scan_registered(*, scan: Any, **kwargs: Any) -> None:
    queue_previews(scan.pk, ["ct"])


def _prediction_saved(*, instance: Any, created: bool, **kwargs: Any) -> None:
    if created and instance.labels:
        keys = [f"pred-{instance.pk}"] + ([f"unc-{instance.pk}"] if instance.uncertainty else [])
        queue_previews(instance.scan_id, keys)


def _annotation_saved(*, instance: Any, created: bool, **kwargs: Any) -> None:
    if created:
        queue_previews(instance.scan_id, [f"ann-{instance.pk}"])


class FrontendConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "frontend"

    def ready(self) -> None:
        from scans.models import Annotation
        from scans.signals import scan_registered
        from segmentation.models import Prediction

        scan_registered.connect(_scan_registered, dispatch_uid="frontend.scan_previews")
        post_save.connect(_prediction_saved, sender=Prediction, dispatch_uid="frontend.prediction_previews")
        post_save.connect(_annotation_saved, sender=Annotation, dispatch_uid="frontend.annotation_previews")
