"""The admin's job actions, and the registry sync that runs after ``migrate``."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from django.core.management.sql import emit_post_migrate_signal
from django.test import Client

from inference.registry import DEFAULT_MODELS_DIR, discover_models
from scans.models import Scan
from segmentation import services
from segmentation.models import InferenceJob, ModelVersion
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db


def test_migrate_registers_the_model_folders(settings: Any, tiny_models_root: Path) -> None:
    settings.LABSEG_MODELS_DIR = tiny_models_root
    ModelVersion.objects.all().delete()

    emit_post_migrate_signal(verbosity=0, interactive=False, db="default")

    assert {mv.label for mv in ModelVersion.objects.filter(is_default=True)} == {
        "tiny-organs@1.0.0",
        "tiny-lesions@1.0.0",
    }


def test_the_shipped_models_register_and_segment_a_scan(
    settings: Any, upload_scan: Callable[..., Scan]
) -> None:
    shipped = discover_models(DEFAULT_MODELS_DIR)
    assert {card.task for card in shipped} == {"organs", "tumor"}, (
        f"no shipped models in {DEFAULT_MODELS_DIR}"
    )
    settings.LABSEG_MODELS_DIR = DEFAULT_MODELS_DIR

    report = services.sync_models(root=DEFAULT_MODELS_DIR)
    jobs = services.request_segmentation(scan=upload_scan())
    finished = [services.run_job(job.pk, worker_host="test-worker") for job in jobs]

    assert set(report.created + report.unchanged) == {card.key for card in shipped}
    assert set(report.defaults) == {"organs", "tumor"}
    for job in finished:
        assert job is not None and job.state == InferenceJob.State.SUCCEEDED, job and job.error
        card = next(c for c in shipped if c.key == job.model_version.label)
        assert job.prediction.manifest["server"]["model"] == card.key
        assert card.sha256 in json.dumps(job.prediction.manifest)


@pytest.fixture
def admin_client() -> Client:
    client = Client()
    client.force_login(UserFactory.create(username="root", is_staff=True, is_superuser=True))
    return client


def test_the_admin_requeues_failed_jobs_and_leaves_the_others(
    admin_client: Client,
    models: dict[str, ModelVersion],
    upload_scan: Callable[..., Scan],
    django_capture_on_commit_callbacks: Any,
) -> None:
    failed, queued = services.request_segmentation(scan=upload_scan())
    InferenceJob.objects.filter(pk=failed.pk).update(state="failed", error="model crashed", attempts=3)

    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = admin_client.post(
            "/admin/inference/inferencejob/",
            {"action": "requeue", "index": 0, "_selected_action": [failed.pk, queued.pk]},
            follow=True,
        )

    assert response.status_code == 200
    assert "1 job(s) queued again; 1 left as they were." in response.content.decode()
    failed.refresh_from_db()
    assert (failed.state, failed.error, failed.attempts) == ("queued", "", 0)
    assert len(callbacks) == 1
    listing = admin_client.get("/admin/inference/inferencejob/", {"state__exact": "queued"})
    assert listing.status_code == 200
