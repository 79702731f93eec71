"""Prometheus metrics read from the database: job counters by kind and state, queue depth, stage
times; guarded by a bearer token when one is set, else open to this machine only."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from django.test import Client
from django.utils import timezone

from scans.models import Scan
from segmentation import services
from segmentation.models import InferenceJob, ModelVersion

pytestmark = pytest.mark.django_db


def _value(text: str, sample: str) -> float:
    line = next(line for line in text.splitlines() if line.startswith(sample + " "))
    return float(line.split()[-1])


def test_metrics_expose_the_job_counters_queue_depth_and_stage_times(
    models: dict[str, ModelVersion], upload_scan: Callable[..., Scan], settings: Any
) -> None:
    settings.LABSEG_METRICS_TOKEN = ""
    scan = upload_scan()
    organs, lesions = services.request_segmentation(scan=scan)
    services.run_job(organs.pk, worker_host="test-worker")
    InferenceJob.objects.filter(pk=organs.pk).update(started_at=timezone.now() - timedelta(seconds=5))

    text = Client(REMOTE_ADDR="127.0.0.1").get("/metrics").content.decode()

    assert _value(text, 'labseg_jobs{kind="segmentation",state="succeeded"}') == 1
    assert _value(text, 'labseg_jobs{kind="segmentation",state="queued"}') == 1
    assert _value(text, 'labseg_queue_depth{queue="cpu"}') == 1
    assert _value(text, 'labseg_job_seconds{kind="segmentation",quantile="0.5"}') > 0
    assert _value(text, 'labseg_stage_seconds{stage="inference"}') >= 0
    assert _value(text, "labseg_scans") == 1 and _value(text, "labseg_uploaded_bytes") == scan.size_bytes
    assert 'labseg_jobs{kind="analysis",state="failed"}' in text


def test_metrics_need_the_token_when_one_is_set_and_stay_local_otherwise(db: Any, settings: Any) -> None:
    settings.LABSEG_METRICS_TOKEN = ""
    assert Client(REMOTE_ADDR="10.1.2.3").get("/metrics").status_code == 403
    settings.LABSEG_METRICS_TOKEN = "s3cret-scrape"
    assert Client(REMOTE_ADDR="127.0.0.1").get("/metrics").status_code == 403
    ok = Client(REMOTE_ADDR="10.1.2.3").get("/metrics", HTTP_AUTHORIZATION="Bearer s3cret-scrape")
    assert ok.status_code == 200 and "labseg_jobs" in ok.content.decode()
