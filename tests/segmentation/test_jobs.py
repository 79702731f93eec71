"""Jobs: requested idempotently, claimed by exactly one worker, reconciled when lost."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from django.core.management import call_command
from django.db import connection
from django.utils import timezone

from scans.models import Scan
from segmentation import services
from segmentation.models import InferenceJob, ModelVersion, Prediction

pytestmark = pytest.mark.django_db


def test_a_request_makes_one_queued_job_per_default_model_and_sends_them_after_commit(
    models: dict[str, ModelVersion],
    upload_scan: Callable[..., Scan],
    member: Any,
    django_capture_on_commit_callbacks: Any,
) -> None:
    scan = upload_scan()

    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        jobs = services.request_segmentation(scan=scan, user=member)

    assert [job.model_version.task for job in jobs] == ["organs", "tumor"]
    assert {job.state for job in jobs} == {InferenceJob.State.QUEUED}
    assert {job.requested_by for job in jobs} == {member}
    assert {job.queue for job in jobs} == {"cpu"}
    assert len(callbacks) == 2


def test_asking_twice_returns_the_same_jobs_and_sends_nothing_new(
    models: dict[str, ModelVersion], upload_scan: Callable[..., Scan], django_capture_on_commit_callbacks: Any
) -> None:
    scan = upload_scan()
    first = services.request_segmentation(scan=scan)

    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        second = services.request_segmentation(scan=scan)

    assert [job.pk for job in second] == [job.pk for job in first]
    assert InferenceJob.objects.count() == 2
    assert callbacks == []


def test_a_failed_job_is_queued_again_when_asked_again(
    models: dict[str, ModelVersion], upload_scan: Callable[..., Scan], django_capture_on_commit_callbacks: Any
) -> None:
    scan = upload_scan()
    [job] = services.request_segmentation(scan=scan, model_versions=[models["organs"]])
    InferenceJob.objects.filter(pk=job.pk).update(state=InferenceJob.State.FAILED, error="boom", attempts=3)

    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        [again] = services.request_segmentation(scan=scan, model_versions=[models["organs"]])

    assert again.pk == job.pk
    assert (again.state, again.error, again.attempts) == (InferenceJob.State.QUEUED, "", 0)
    assert len(callbacks) == 1


def test_without_any_model_the_request_says_what_to_do(upload_scan: Callable[..., Scan]) -> None:
    scan = upload_scan()
    ModelVersion.objects.all().delete()

    with pytest.raises(services.NoModelAvailableError, match="sync_models"):
        services.request_segmentation(scan=scan)


def test_the_gpu_queue_is_used_when_the_server_runs_models_on_cuda(
    models: dict[str, ModelVersion], settings: Any
) -> None:
    assert services.queue_for(models["organs"]) == "cpu"
    settings.LABSEG_DEVICE = "cuda"
    assert services.queue_for(models["organs"]) == "gpu"


def test_a_queued_job_is_claimed_once(
    models: dict[str, ModelVersion], upload_scan: Callable[..., Scan]
) -> None:
    [job] = services.request_segmentation(scan=upload_scan(), model_versions=[models["organs"]])

    first = services.claim_job(job.pk, worker_host="worker-a")
    second = services.claim_job(job.pk, worker_host="worker-b")

    assert first is not None and second is None
    job.refresh_from_db()
    assert (job.state, job.worker_host, job.attempts) == (InferenceJob.State.RUNNING, "worker-a", 1)


def test_a_running_job_is_reclaimed_only_when_its_worker_stopped_heartbeating(
    models: dict[str, ModelVersion], upload_scan: Callable[..., Scan]
) -> None:
    [job] = services.request_segmentation(scan=upload_scan(), model_versions=[models["organs"]])
    claimed = services.claim_job(job.pk, worker_host="worker-a")
    assert claimed is not None

    assert services.claim_job(job.pk, worker_host="worker-b", stale_after_s=60) is None
    InferenceJob.objects.filter(pk=job.pk).update(heartbeat_at=timezone.now() - timedelta(seconds=120))
    reclaimed = services.claim_job(job.pk, worker_host="worker-b", stale_after_s=60)

    assert reclaimed is not None
    assert (reclaimed.worker_host, reclaimed.attempts) == ("worker-b", 2)
    assert reclaimed.claim_token != claimed.claim_token


@pytest.mark.django_db(transaction=True)
def test_two_workers_racing_for_a_job_one_wins(
    models: dict[str, ModelVersion], upload_scan: Callable[..., Scan]
) -> None:
    # Created directly: outside a test transaction, a request would also publish to the broker.
    job = InferenceJob.objects.create(scan=upload_scan(), model_version=models["organs"])
    start = threading.Barrier(4)
    won: list[str] = []

    def worker(host: str) -> None:
        try:
            start.wait()
            if services.claim_job(job.pk, worker_host=host) is not None:
                won.append(host)
        finally:
            connection.close()

    threads = [threading.Thread(target=worker, args=(f"worker-{n}",)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(won) == 1
    job.refresh_from_db()
    assert (job.worker_host, job.attempts) == (won[0], 1)


def test_the_reconciler_requeues_a_job_whose_worker_was_lost(
    models: dict[str, ModelVersion], upload_scan: Callable[..., Scan], django_capture_on_commit_callbacks: Any
) -> None:
    [job] = services.request_segmentation(scan=upload_scan(), model_versions=[models["organs"]])
    services.claim_job(job.pk, worker_host="worker-a")
    InferenceJob.objects.filter(pk=job.pk).update(heartbeat_at=timezone.now() - timedelta(seconds=600))
    sent: list[int] = []

    def enqueue(*, job_id: int) -> bool:
        sent.append(job_id)
        return True

    with django_capture_on_commit_callbacks(execute=True):
        report = services.reconcile_jobs(timeout_s=300, enqueue=enqueue)

    assert report.requeued == [job.pk] and sent == [job.pk]
    job.refresh_from_db()
    assert (job.state, job.worker_host) == (InferenceJob.State.QUEUED, "")


def test_the_reconciler_resends_jobs_whose_message_was_lost_and_leaves_fresh_ones(
    models: dict[str, ModelVersion], upload_scan: Callable[..., Scan], django_capture_on_commit_callbacks: Any
) -> None:
    old, fresh = (
        services.request_segmentation(scan=upload_scan(mouse=m), model_versions=[models["organs"]])[0]
        for m in ("M01", "M02")
    )
    long_ago = timezone.now() - timedelta(seconds=900)
    InferenceJob.objects.filter(pk=old.pk).update(queued_at=long_ago, enqueued_at=long_ago)
    InferenceJob.objects.filter(pk=fresh.pk).update(enqueued_at=timezone.now())
    sent: list[int] = []

    def enqueue(*, job_id: int) -> bool:
        sent.append(job_id)
        return True

    with django_capture_on_commit_callbacks(execute=True):
        report = services.reconcile_jobs(timeout_s=300, enqueue=enqueue)

    assert report.resent == [old.pk] and sent == [old.pk]
    assert report.requeued == []


def test_the_reconciler_gives_up_on_a_job_that_lost_its_worker_too_often(
    models: dict[str, ModelVersion], upload_scan: Callable[..., Scan]
) -> None:
    [job] = services.request_segmentation(scan=upload_scan(), model_versions=[models["organs"]])
    services.claim_job(job.pk, worker_host="worker-a")
    InferenceJob.objects.filter(pk=job.pk).update(
        attempts=services.MAX_ATTEMPTS, heartbeat_at=timezone.now() - timedelta(seconds=600)
    )

    report = services.reconcile_jobs(timeout_s=300, enqueue=lambda *, job_id: True)

    assert report.failed == [job.pk]
    job.refresh_from_db()
    assert job.state == InferenceJob.State.FAILED
    assert "stopped responding" in job.error


def test_cancelling_a_queued_job_keeps_any_worker_from_running_it(
    models: dict[str, ModelVersion], upload_scan: Callable[..., Scan], member: Any
) -> None:
    [job] = services.request_segmentation(scan=upload_scan(), model_versions=[models["organs"]])

    assert services.cancel_job(job=job, user=member)

    assert services.run_job(job.pk, worker_host="worker-a") is None
    job.refresh_from_db()
    assert (job.state, job.error) == (InferenceJob.State.CANCELLED, "Cancelled by alice.")
    assert not Prediction.objects.exists()
    assert not services.cancel_job(job=job, user=member)


def test_the_reconcile_command_reports_what_it_did(
    models: dict[str, ModelVersion],
    upload_scan: Callable[..., Scan],
    capsys: Any,
    django_capture_on_commit_callbacks: Any,
) -> None:
    [job] = services.request_segmentation(scan=upload_scan(), model_versions=[models["organs"]])
    InferenceJob.objects.filter(pk=job.pk).update(queued_at=timezone.now() - timedelta(seconds=900))

    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        call_command("reconcile_jobs", timeout_s=60)

    assert "resent 1 queued job(s)" in capsys.readouterr().out
    assert len(callbacks) == 1
