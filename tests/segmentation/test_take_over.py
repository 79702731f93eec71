"""A message that finds its job running under another claim (``labseg.jobs.take_over_when_silent``):
dropped while the other worker heartbeats, taken over once it falls silent, and the old claim's
writes refused from then on. Real PostgreSQL rows and heartbeat threads; timings shortened
through the settings (a beat every 0.5 s, lost after 4 missed beats: 2 s)."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection
from django.utils import timezone

from labseg import jobs
from scans.models import Scan
from segmentation import services
from segmentation.models import InferenceJob, ModelVersion

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def fast_beats(settings: Any) -> float:
    settings.LABSEG_JOB_TIMEOUT_S = 300
    settings.LABSEG_JOB_HEARTBEAT_S = 0.5
    settings.LABSEG_JOB_LOST_AFTER_BEATS = 4
    assert jobs.heartbeat_interval_s() == 0.5
    return jobs.lost_after_s()


@pytest.fixture
def running(models: dict[str, ModelVersion], upload_scan: Callable[..., Scan]) -> InferenceJob:
    # Created directly: a request would also publish to the broker.
    job = InferenceJob.objects.create(scan=upload_scan(), model_version=models["organs"])
    claimed = services.claim_job(job.pk, worker_host="worker-a")
    assert claimed is not None
    return claimed


def test_lost_after_is_a_few_beats_and_never_more_than_the_job_timeout(settings: Any) -> None:
    settings.LABSEG_JOB_TIMEOUT_S, settings.LABSEG_JOB_HEARTBEAT_S = 300, 5.0
    settings.LABSEG_JOB_LOST_AFTER_BEATS = 4
    assert (jobs.heartbeat_interval_s(), jobs.lost_after_s()) == (5.0, 20.0)
    settings.LABSEG_JOB_TIMEOUT_S = 3  # tests/workers.py: beats every 0.75 s, lost after 3 s
    assert (jobs.heartbeat_interval_s(), jobs.lost_after_s()) == (0.75, 3.0)


def test_a_message_for_a_job_whose_worker_heartbeats_is_dropped(
    fast_beats: float, running: InferenceJob
) -> None:
    heartbeat = jobs.Heartbeat(running)
    heartbeat.start()
    try:
        started = time.monotonic()
        taken = jobs.take_over_when_silent(InferenceJob, running.pk, worker_host="worker-b", poll_s=0.1)
        waited = time.monotonic() - started
    finally:
        heartbeat.stop()
        connection.close()
    assert taken is None
    assert waited < fast_beats, "it should give up at the first beat it sees"
    running.refresh_from_db()
    assert (running.worker_host, running.attempts) == ("worker-a", 1)


def test_a_message_for_a_silent_job_takes_it_over_and_the_old_claim_writes_nothing(
    fast_beats: float, running: InferenceJob
) -> None:
    # The worker died half a "lost" period ago: the message waits out the rest, then claims.
    InferenceJob.objects.filter(pk=running.pk).update(
        heartbeat_at=timezone.now() - timedelta(seconds=fast_beats / 2)
    )
    started = time.monotonic()
    taken = jobs.take_over_when_silent(InferenceJob, running.pk, worker_host="worker-b", poll_s=0.1)
    waited = time.monotonic() - started

    assert taken is not None
    assert fast_beats / 2 - 0.5 < waited < fast_beats + 1
    assert (taken.worker_host, taken.attempts) == ("worker-b", 2)
    assert taken.claim_token != running.claim_token
    # The old claim (a worker presumed dead that comes back) can neither beat nor finish.
    assert not jobs.Heartbeat(running).beat()
    assert not jobs.finish(running, InferenceJob.State.SUCCEEDED)
    taken.refresh_from_db()
    assert (taken.state, taken.worker_host) == (InferenceJob.State.RUNNING, "worker-b")


def test_a_second_message_leaves_the_job_to_the_worker_that_took_it_over(
    fast_beats: float, running: InferenceJob
) -> None:
    InferenceJob.objects.filter(pk=running.pk).update(heartbeat_at=timezone.now() - timedelta(seconds=60))
    first = jobs.take_over_when_silent(InferenceJob, running.pk, worker_host="worker-b", poll_s=0.1)
    assert first is not None
    heartbeat = jobs.Heartbeat(first)
    heartbeat.start()
    try:
        second = jobs.take_over_when_silent(InferenceJob, running.pk, worker_host="worker-c", poll_s=0.1)
    finally:
        heartbeat.stop()
        connection.close()
    assert second is None
    assert InferenceJob.objects.values_list("worker_host", "attempts").get(pk=running.pk) == ("worker-b", 2)


def test_the_reconciler_takes_back_a_job_silent_for_a_few_beats_not_the_job_timeout(
    fast_beats: float, running: InferenceJob, django_capture_on_commit_callbacks: Any
) -> None:
    sent: list[int] = []

    def send(*, job_id: int) -> bool:
        sent.append(job_id)
        return True

    InferenceJob.objects.filter(pk=running.pk).update(
        heartbeat_at=timezone.now() - timedelta(seconds=fast_beats + 1)
    )
    with django_capture_on_commit_callbacks(execute=True):
        report = jobs.reconcile(InferenceJob, send=send)
    assert report.requeued == [running.pk] and sent == [running.pk]


def test_a_queued_job_is_not_resent_before_the_job_timeout(
    fast_beats: float, models: dict[str, ModelVersion], upload_scan: Callable[..., Scan]
) -> None:
    job = InferenceJob.objects.create(scan=upload_scan(), model_version=models["organs"])
    InferenceJob.objects.filter(pk=job.pk).update(enqueued_at=timezone.now() - timedelta(seconds=60))
    report = jobs.reconcile(InferenceJob, send=lambda *, job_id: True)
    assert report.resent == [] and report.requeued == []


def test_a_message_does_not_take_over_a_run_the_hard_time_limit_killed(
    fast_beats: float, running: InferenceJob
) -> None:
    # Silent after running past the soft limit: the reconciler fails it with "took longer than".
    now = timezone.now()
    InferenceJob.objects.filter(pk=running.pk).update(
        started_at=now - timedelta(seconds=jobs.soft_time_limit_s() + 100),
        heartbeat_at=now - timedelta(seconds=60),
    )
    assert jobs.take_over_when_silent(InferenceJob, running.pk, worker_host="worker-b", poll_s=0.1) is None
    assert InferenceJob.objects.values_list("worker_host", "attempts").get(pk=running.pk) == ("worker-a", 1)
