"""Background analyses run through the job helper (``labseg.jobs``): a killed worker's analysis is
finished by another, a message never sent is sent by the reconciler, only connection errors are
retried.

The worker tests start real ``celery worker`` processes on a private Redis and the test database
(``tests/workers.py``).
"""

from __future__ import annotations

import shutil
import threading
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.core.files.storage import FileSystemStorage
from django.core.management import call_command
from django.db import connection, transaction
from django.utils import timezone
from rest_framework.test import APIClient

from labseg import jobs
from review.analysis import analyse_scan, request_analysis, run_analysis
from review.models import (
    Agreement,
    AnnotationVolume,
    Consensus,
    ConsensusRater,
    PairwiseAgreement,
    ReviewAnalysis,
)
from review.services import approve_annotation
from review.tasks import analyse_scan_task
from scans.models import Scan
from tests.workers import (
    PrivateRedis,
    Workers,
    free_port,
    point_celery_at,
    private_broker,
    started_workers,
    wait_for,
)


def approved_scan(tumor_scan: Callable[..., Any], reviewer: Any) -> Scan:
    scan, annotations = tumor_scan()
    for annotation in annotations:
        approve_annotation(annotation=annotation, reviewer=reviewer)
    return scan


def assert_one_set_of_results(scan: Scan) -> None:
    """Three approved annotators of one structure: one consensus, three raters, three pairs."""
    consensus = Consensus.objects.get(scan=scan)
    assert ConsensusRater.objects.filter(consensus=consensus).count() == 3
    agreement = Agreement.objects.get(scan=scan)
    assert PairwiseAgreement.objects.filter(agreement=agreement).count() == 3
    assert AnnotationVolume.objects.filter(annotation__scan=scan).count() == 3


# --------------------------------------------------------------------------------------------
# In this process
# --------------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_an_analysis_left_running_by_a_killed_worker_is_queued_again_and_sent(
    tumor_scan: Callable[..., Any], reviewer: Any, django_capture_on_commit_callbacks: Any
) -> None:
    # A row as the old code left it: running, no heartbeat, its worker long gone.
    scan = approved_scan(tumor_scan, reviewer)
    analysis = ReviewAnalysis.objects.create(
        scan=scan,
        requested_by=reviewer,
        state=ReviewAnalysis.State.RUNNING,
        started_at=timezone.now() - timedelta(hours=2),
    )
    sent: list[int] = []

    def send(*, job_id: int) -> bool:
        sent.append(job_id)
        return True

    with django_capture_on_commit_callbacks(execute=True):
        report = jobs.reconcile(ReviewAnalysis, timeout_s=300, send=send)

    assert (report.requeued, sent) == ([analysis.pk], [analysis.pk])
    assert analyse_scan_task(analysis.pk) == "succeeded"
    analysis.refresh_from_db()
    assert (analysis.attempts, analysis.progress, analysis.stage) == (1, 100, "done")
    assert_one_set_of_results(scan)


@pytest.mark.django_db(transaction=True)  # worker-a's heartbeat thread has its own connection
def test_a_redelivered_message_takes_over_an_analysis_whose_worker_went_silent(
    tumor_scan: Callable[..., Any], reviewer: Any
) -> None:
    scan = approved_scan(tumor_scan, reviewer)
    analysis = request_analysis(scan=scan, user=reviewer)
    first = jobs.claim(ReviewAnalysis, analysis.pk, worker_host="worker-a")
    assert first is not None
    alive = jobs.Heartbeat(first, interval_s=0.2)  # worker-a beats: a message for it is dropped
    alive.start()
    try:
        assert run_analysis(analysis_id=analysis.pk, worker_host="worker-b") is None, "worker-a is alive"
    finally:
        alive.stop()

    ReviewAnalysis.objects.filter(pk=analysis.pk).update(heartbeat_at=timezone.now() - timedelta(hours=1))
    done = run_analysis(analysis_id=analysis.pk, worker_host="worker-b")

    assert done is not None and done.state == ReviewAnalysis.State.SUCCEEDED
    assert (done.worker_host, done.attempts) == ("worker-b", 2)
    assert not jobs.finish(first, ReviewAnalysis.State.FAILED, error="late"), "the old claim is void"
    assert_one_set_of_results(scan)


@pytest.mark.django_db
def test_the_api_shows_how_far_a_background_analysis_got(
    tumor_scan: Callable[..., Any], reviewer: Any
) -> None:
    scan = approved_scan(tumor_scan, reviewer)
    client = APIClient()
    client.force_authenticate(reviewer)
    queued = client.post(f"/api/scans/{scan.pk}/consensus", {"background": True}, format="json")
    assert queued.status_code == 202
    assert {k: queued.json()["analysis"][k] for k in ("state", "progress", "attempts")} == {
        "state": "queued",
        "progress": 0,
        "attempts": 0,
    }

    run_analysis(analysis_id=queued.json()["analysis"]["id"], worker_host="worker-a")

    shown = client.get(f"/api/scans/{scan.pk}/consensus").json()["analysis"]
    assert (shown["state"], shown["progress"], shown["stage"]) == ("succeeded", 100, "done")
    assert (shown["attempts"], shown["worker_host"]) == (1, "worker-a")
    assert shown["started_at"] <= shown["heartbeat_at"] and shown["finished_at"] is not None


class FlakyStorage(FileSystemStorage):
    """Local storage whose ``path`` fails while ``failures_left`` > 0, like an unreachable share."""

    failures_left = 0

    def path(self, name: str) -> str:
        if FlakyStorage.failures_left > 0:
            FlakyStorage.failures_left -= 1
            raise ConnectionResetError("connection reset by the storage server")
        return super().path(name)


@pytest.fixture
def flaky_storage(settings: Any, media_root: Path) -> Iterator[type[FlakyStorage]]:
    settings.STORAGES = {
        **settings.STORAGES,
        "default": {
            "BACKEND": f"{__name__}.FlakyStorage",
            "OPTIONS": {"location": str(media_root), "base_url": "/media/"},
        },
    }
    yield FlakyStorage
    FlakyStorage.failures_left = 0


@pytest.mark.django_db
def test_a_connection_error_is_retried_and_the_analysis_succeeds(
    tumor_scan: Callable[..., Any], reviewer: Any, flaky_storage: type[FlakyStorage]
) -> None:
    scan = approved_scan(tumor_scan, reviewer)
    analysis = request_analysis(scan=scan, user=reviewer)
    flaky_storage.failures_left = 1

    result = analyse_scan_task.apply(args=[analysis.pk]).get()

    analysis.refresh_from_db()
    assert result == "succeeded" and analysis.state == ReviewAnalysis.State.SUCCEEDED
    assert analysis.attempts == 2 and analysis.error == ""
    assert_one_set_of_results(scan)


@pytest.mark.django_db
def test_bad_input_fails_at_once_without_a_retry(tumor_scan: Callable[..., Any], reviewer: Any) -> None:
    scan, annotations = tumor_scan()
    for annotation in annotations:
        approve_annotation(annotation=annotation, reviewer=reviewer)
    Path(annotations[1].file.path).write_bytes(b"not a NIfTI file" * 64)
    analysis = request_analysis(scan=scan, user=reviewer)

    result = analyse_scan_task.apply(args=[analysis.pk]).get()

    analysis.refresh_from_db()
    assert result == "failed" and analysis.attempts == 1
    assert analysis.error.startswith("the analysis stopped unexpectedly during 'reading annotations'")
    assert not Consensus.objects.filter(scan=scan).exists()


@pytest.mark.django_db
def test_the_reconcile_command_covers_every_kind_of_job(
    tumor_scan: Callable[..., Any], reviewer: Any, capsys: Any, django_capture_on_commit_callbacks: Any
) -> None:
    analysis = request_analysis(scan=approved_scan(tumor_scan, reviewer), user=reviewer)
    ReviewAnalysis.objects.filter(pk=analysis.pk).update(queued_at=timezone.now() - timedelta(seconds=900))

    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        call_command("reconcile_jobs", timeout_s=60)

    out = capsys.readouterr().out
    assert "analysis: requeued 0 job(s) of lost workers, resent 1 queued job(s), gave up on 0" in out
    assert "segmentation: requeued 0 job(s) of lost workers, resent 0 queued job(s)" in out
    assert len(callbacks) == 1


# --------------------------------------------------------------------------------------------
# With real workers
# --------------------------------------------------------------------------------------------


@pytest.fixture
def broker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[PrivateRedis]:
    if shutil.which("redis-server") is None:
        pytest.fail("the end-to-end tests need redis-server on PATH")
    yield from private_broker(tmp_path, monkeypatch)


@pytest.fixture
def workers(tmp_path: Path, media_root: Path, broker: PrivateRedis) -> Iterator[Workers]:
    yield from started_workers(tmp_path, media_root, broker)


def _finished(analysis: ReviewAnalysis) -> bool:
    return ReviewAnalysis.objects.filter(pk=analysis.pk, state__in=("succeeded", "failed")).exists()


def _waiting_on_a_lock() -> int:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND wait_event_type = 'Lock'"
        )
        return int(cursor.fetchone()[0])


class RowLock:
    """Holds the scan's ``AnnotationVolume`` rows locked from another connection until released, as
    a long transaction elsewhere would: an analysis that replaces them waits in the database."""

    def __init__(self, scan: Scan) -> None:
        self.scan = scan
        self.locked = threading.Event()
        self.release = threading.Event()
        self.thread = threading.Thread(target=self._hold)

    def _hold(self) -> None:
        try:
            with transaction.atomic():
                rows = AnnotationVolume.objects.filter(annotation__scan=self.scan)
                list(rows.select_for_update(of=("self",)))  # not the scan: new analyses refer to it
                self.locked.set()
                self.release.wait(timeout=300)
        finally:
            connection.close()

    def __enter__(self) -> RowLock:
        self.thread.start()
        assert self.locked.wait(timeout=10)
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        self.thread.join(timeout=30)


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_an_analysis_whose_worker_is_killed_is_finished_once_by_a_new_worker(
    tumor_scan: Callable[..., Any], reviewer: Any, workers: Workers
) -> None:
    scan = approved_scan(tumor_scan, reviewer)
    analyse_scan(scan=scan, user=reviewer)  # the figures of an earlier analysis, to be replaced
    workers.start("doomed")
    with RowLock(scan):
        analysis = request_analysis(scan=scan, user=reviewer)
        # Mid-analysis: annotations read and measured, the worker waits to replace the old volumes.
        wait_for(
            lambda: _waiting_on_a_lock() > 0
            and ReviewAnalysis.objects.filter(pk=analysis.pk, state="running", stage="volumes").exists(),
            timeout_s=120,
            what="the worker to be inside the analysis",
            workers=workers,
        )
        workers.kill("doomed")
    analysis.refresh_from_db()
    assert analysis.state == "running" and analysis.worker_host.startswith("doomed@")

    workers.start("rescuer", with_beat=True)
    wait_for(lambda: _finished(analysis), timeout_s=180, what="the analysis to finish", workers=workers)

    analysis.refresh_from_db()
    assert analysis.state == "succeeded", f"{analysis.error}\n{workers.logs()}"
    assert analysis.worker_host.startswith("rescuer@") and analysis.attempts == 2
    assert ReviewAnalysis.objects.filter(scan=scan).count() == 1
    assert_one_set_of_results(scan)


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_an_analysis_queued_while_the_broker_is_down_is_sent_by_the_reconciler(
    tumor_scan: Callable[..., Any],
    reviewer: Any,
    workers: Workers,
    broker: PrivateRedis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    scan = approved_scan(tumor_scan, reviewer)
    closed_port = free_port()  # nothing listens there

    with point_celery_at(monkeypatch, f"redis://127.0.0.1:{closed_port}/0"):
        analysis = request_analysis(scan=scan, user=reviewer)  # committed, then the send fails

    analysis.refresh_from_db()
    assert (analysis.state, analysis.enqueued_at, analysis.celery_task_id) == ("queued", None, "")
    assert ReviewAnalysis.task_name not in broker.queued_tasks(), "nothing reached the broker"

    workers.start("after-outage", with_beat=True)
    wait_for(
        lambda: _finished(analysis), timeout_s=180, what="the analysis to be sent and run", workers=workers
    )

    analysis.refresh_from_db()
    assert analysis.state == "succeeded", f"{analysis.error}\n{workers.logs()}"
    assert analysis.enqueued_at is not None and analysis.attempts == 1
    assert ReviewAnalysis.objects.filter(scan=scan).count() == 1
    assert_one_set_of_results(scan)
