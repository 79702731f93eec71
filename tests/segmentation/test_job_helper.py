"""The job helper (``labseg.jobs``) on segmentation jobs: a heartbeat that stops when the work hangs,
time limits, the reconciler's verdicts and which errors are retried.

The worker tests start real ``celery worker`` processes on a private Redis and the test database
(``tests/workers.py``), as ``test_e2e.py`` does. A hung job is a scan whose file is a named pipe
with no writer: the worker blocks opening it, as it would on a stalled network share.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from django.core.files.storage import default_storage
from django.db import InterfaceError, OperationalError, connection
from django.utils import timezone
from kombu.exceptions import OperationalError as BrokerError

from labseg import jobs
from scans.models import Scan
from segmentation import services
from segmentation.models import InferenceJob, ModelVersion, Prediction
from tests.workers import PrivateRedis, Workers, private_broker, started_workers, wait_for


def _heartbeat_at(job: InferenceJob) -> datetime | None:
    return InferenceJob.objects.values_list("heartbeat_at", flat=True).get(pk=job.pk)


# --------------------------------------------------------------------------------------------
# In this process
# --------------------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_the_heartbeat_stops_while_the_work_reports_no_progress_and_resumes_with_it(
    models: dict[str, ModelVersion], upload_scan: Callable[..., Scan]
) -> None:
    job = InferenceJob.objects.create(scan=upload_scan(), model_version=models["organs"])
    claimed = services.claim_job(job.pk, worker_host="worker-a")
    assert claimed is not None
    heartbeat = jobs.Heartbeat(claimed, interval_s=0.1, stall_after_s=0.6)
    heartbeat.start()
    try:
        heartbeat.progress(10, "inference organs")
        first = _heartbeat_at(job)
        time.sleep(0.4)
        beating = _heartbeat_at(job)
        assert first is not None and beating is not None and beating > first, "beats while progressing"

        time.sleep(0.8)  # past the stall: no progress report for 1.2 s
        assert heartbeat.stalled
        silent = _heartbeat_at(job)
        time.sleep(0.5)
        assert _heartbeat_at(job) == silent, "a hung job must not look alive"

        heartbeat.progress(50, "postprocess organs")
        time.sleep(0.3)
        resumed = _heartbeat_at(job)
        assert silent is not None and resumed is not None and resumed > silent
    finally:
        heartbeat.stop()
        connection.close()
    job.refresh_from_db()
    assert (job.progress, job.stage) == (50, "postprocess organs")


@pytest.mark.django_db
def test_progress_on_a_job_taken_away_stops_the_work(
    models: dict[str, ModelVersion], upload_scan: Callable[..., Scan]
) -> None:
    [job] = services.request_segmentation(scan=upload_scan(), model_versions=[models["organs"]])
    old = services.claim_job(job.pk, worker_host="worker-a")
    assert old is not None
    InferenceJob.objects.filter(pk=job.pk).update(heartbeat_at=timezone.now() - timedelta(seconds=600))
    assert services.claim_job(job.pk, worker_host="worker-b") is not None

    with pytest.raises(jobs.JobLostError):
        jobs.Heartbeat(old).progress(40, "inference organs")
    job.refresh_from_db()
    assert (job.worker_host, job.progress, job.stage) == ("worker-b", 0, "starting")


@pytest.mark.django_db
def test_the_reconciler_fails_a_silent_job_whose_attempt_ran_past_the_soft_limit(
    models: dict[str, ModelVersion], upload_scan: Callable[..., Scan], settings: Any
) -> None:
    settings.LABSEG_JOB_SOFT_TIME_LIMIT_S = 3600
    long_run, lost = (
        services.request_segmentation(scan=upload_scan(mouse=m), model_versions=[models["organs"]])[0]
        for m in ("M01", "M02")
    )
    for job in (long_run, lost):
        services.claim_job(job.pk, worker_host="worker-a")
    now = timezone.now()
    # The hard limit killed the first one after it had beaten for an hour; the second one's
    # worker vanished after a minute.
    InferenceJob.objects.filter(pk=long_run.pk).update(
        started_at=now - timedelta(seconds=3700), heartbeat_at=now - timedelta(seconds=95)
    )
    InferenceJob.objects.filter(pk=lost.pk).update(
        started_at=now - timedelta(seconds=160), heartbeat_at=now - timedelta(seconds=95)
    )

    report = services.reconcile_jobs(timeout_s=60, enqueue=lambda *, job_id: True)

    assert (report.failed, report.requeued) == ([long_run.pk], [lost.pk])
    long_run.refresh_from_db()
    assert long_run.state == InferenceJob.State.FAILED
    assert "took longer than 60 minutes" in long_run.error


def test_only_connection_errors_are_transient_and_a_segmentation_adds_storage_errors() -> None:
    from nibabel.filebasedimages import ImageFileError

    for error in (
        OperationalError("server closed the connection"),
        InterfaceError("connection already closed"),
        BrokerError("Error 111 connecting to 127.0.0.1:6399"),
        ConnectionResetError("reset by peer"),
        TimeoutError("timed out"),
    ):
        assert jobs.is_transient(error), error
    for error in (ValueError("not a 3-D label map"), ImageFileError("not NIfTI"), FileNotFoundError("x")):
        assert not jobs.is_transient(error), error
        assert not services._is_transient(error), error
    # Storage the job reads from (S3, a network share) may be briefly unreachable: worth a retry.
    assert services._is_transient(OSError(5, "Input/output error"))
    assert not jobs.is_transient(OSError(5, "Input/output error"))


def test_limits_are_named_in_plain_words() -> None:
    assert jobs.duration_words(3600) == "60 minutes"
    assert jobs.duration_words(90) == "90 seconds"
    assert jobs.duration_words(1) == "1 second"
    assert "The segmentation took longer than 60 minutes" in jobs.took_too_long_message("segmentation", 3600)


# --------------------------------------------------------------------------------------------
# With real workers
# --------------------------------------------------------------------------------------------


@pytest.fixture
def broker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[PrivateRedis]:
    yield from private_broker(tmp_path, monkeypatch)


@pytest.fixture
def workers(tmp_path: Path, media_root: Path, broker: PrivateRedis) -> Iterator[Workers]:
    yield from started_workers(tmp_path, media_root, broker)


@pytest.fixture
def e2e_models(models: dict[str, ModelVersion]) -> dict[str, ModelVersion]:
    if shutil.which("redis-server") is None:
        pytest.fail("the end-to-end tests need redis-server on PATH")
    return models


def _hang_on_read(scan: Scan) -> tuple[Path, bytes]:
    """Replace the scan's stored file by a named pipe: opening it blocks until someone writes, as
    a read from a stalled network share would. Returns the path and the file's bytes."""
    scan_file = Path(default_storage.path(scan.file.name))
    content = scan_file.read_bytes()
    scan_file.unlink()
    os.mkfifo(scan_file)
    return scan_file, content


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_a_hung_job_stops_heartbeating_and_is_taken_back_by_the_reconciler(
    e2e_models: dict[str, ModelVersion], upload_scan: Callable[..., Scan], workers: Workers
) -> None:
    scan = upload_scan()
    scan_file, content = _hang_on_read(scan)
    stall_s = 2.0
    workers.start("hung", env={"LABSEG_JOB_STALL_S": str(int(stall_s))})
    [job] = services.request_segmentation(scan=scan, model_versions=[e2e_models["organs"]])
    wait_for(
        lambda: InferenceJob.objects.filter(pk=job.pk, state="running", stage="download").exists(),
        timeout_s=120,
        what="the worker to start downloading the scan",
        workers=workers,
    )

    # Beats go on for stall_s after the last progress report, then stop while the job still runs.
    changed_at, last = time.monotonic(), _heartbeat_at(job)
    while time.monotonic() - changed_at < 3.0:
        assert time.monotonic() - changed_at < 20, "the heartbeat never stopped"
        now = _heartbeat_at(job)
        if now != last:
            changed_at, last = time.monotonic(), now
        time.sleep(0.1)
    job.refresh_from_db()
    assert job.state == "running" and job.stage == "download" and job.worker_host.startswith("hung@")
    assert job.heartbeat_at is not None and job.started_at is not None
    assert (job.heartbeat_at - job.started_at).total_seconds() >= 1.0, "it beat before it stalled"
    assert "reported no progress" in workers.logs()

    # The file comes back (the hung worker stays blocked on the pipe); the reconciler of a second
    # worker re-queues the silent job and that worker finishes it.
    scan_file.unlink()
    scan_file.write_bytes(content)
    workers.start("rescuer", with_beat=True)
    wait_for(
        lambda: InferenceJob.objects.filter(pk=job.pk, state__in=("succeeded", "failed")).exists(),
        timeout_s=180,
        what="the job to finish on the second worker",
        workers=workers,
    )
    job.refresh_from_db()
    assert job.state == "succeeded", f"{job.error}\n{workers.logs()}"
    assert job.worker_host.startswith("rescuer@") and job.attempts == 2
    assert Prediction.objects.filter(scan=scan).count() == 1
    workers.kill("hung")


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_the_soft_time_limit_fails_the_job_with_a_plain_message_and_no_retry(
    e2e_models: dict[str, ModelVersion], upload_scan: Callable[..., Scan], workers: Workers
) -> None:
    scan = upload_scan()
    _hang_on_read(scan)  # the download never ends; the heartbeat goes on (no stall limit here)
    workers.start(
        "limited",
        with_beat=True,
        env={"LABSEG_JOB_SOFT_TIME_LIMIT_S": "1", "LABSEG_JOB_TIME_LIMIT_S": "60"},
    )
    [job] = services.request_segmentation(scan=scan, model_versions=[e2e_models["organs"]])

    wait_for(
        lambda: InferenceJob.objects.filter(pk=job.pk, state__in=("succeeded", "failed")).exists(),
        timeout_s=180,
        what="the job to end",
        workers=workers,
    )
    time.sleep(4)  # beat reconciles every second: a failed job must stay failed, not be retried

    job.refresh_from_db()
    assert job.state == "failed", workers.logs()
    assert job.error.startswith("The segmentation took longer than 1 second and was stopped.")
    assert job.attempts == 1 and job.finished_at is not None
    assert not Prediction.objects.filter(scan=scan).exists()
