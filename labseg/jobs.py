"""One way to run background work: a row per job, claimed, heartbeated, time-limited, reconciled.

Every kind of background work (segmentation jobs, review analyses, training jobs) is a Django model
that inherits ``BackgroundJob`` and a Celery task that takes the row's id and calls ``run``. The
database, not the broker, is the truth about a job; a message only carries the id. The rules:

* **Claim.** ``claim`` is a compare-and-set on ``state``: a queued row, or a running row whose
  heartbeat is older than ``lost_after_s()`` (``LABSEG_JOB_LOST_AFTER_BEATS`` missed beats, 20 s
  by default: its worker is presumed lost). Each claim adds one to ``attempts`` and writes a fresh
  ``claim_token``; a worker writes to its row only while the token is still its own (``finish``,
  ``Heartbeat.beat``), so a worker that was presumed lost and comes back cannot overwrite the run
  that replaced it. A duplicate message is therefore harmless.
* **Take-over of a redelivered job.** A message that finds its row running under another claim
  (Celery redelivers the message of a worker whose pool process was SIGKILLed, ``acks_late`` +
  ``reject_on_worker_lost``) does not give up at once: ``run`` watches the row for up to
  ``lost_after_s()``. If its heartbeat moves, the other worker is alive and this message is
  dropped; if it falls silent, the same compare-and-set claim takes the job over there and then.
  Two workers can never both run it: the claim is one ``UPDATE ... WHERE`` that only one of them
  wins (a fresh ``claim_token``), and from then on the old worker's heartbeat, progress and
  ``finish`` (which writes the prediction in the same transaction) match no row, so its writes
  are refused and its run stops at its next progress report (``JobLostError``).
* **Heartbeat that stops when the work hangs.** The work reports progress through
  ``Heartbeat.progress(percent, stage)``; a thread touches ``heartbeat_at`` every
  ``heartbeat_interval_s()`` (``LABSEG_JOB_HEARTBEAT_S``, 5 s), but only while the last progress
  report is less than ``LABSEG_JOB_STALL_S`` old. Work that hangs (a stalled file read, a deadlocked library)
  stops reporting, so its heartbeat stops too and the reconciler takes the job back. A stage must
  therefore report progress at least every ``LABSEG_JOB_STALL_S`` seconds.
* **Time limits.** ``task_options`` gives every job task Celery's ``soft_time_limit``
  (``LABSEG_JOB_SOFT_TIME_LIMIT_S``) and ``time_limit`` (``LABSEG_JOB_TIME_LIMIT_S``, the hard one:
  the pool kills the process). The soft limit raises inside the work; ``run`` turns it into a
  failed row that says "took longer than N minutes" (not retried). Because library code may catch
  or wrap that exception, ``Heartbeat.progress`` also raises it once the run is past the limit, and
  ``run`` records any failure past the limit as the limit. A process killed by the hard limit
  cannot write anything; the reconciler recognises its row (silent, and its attempt ran past the
  soft limit) and fails it with the same message instead of running it again.
* **Reconciler.** ``reconcile`` (beat, every ``LABSEG_RECONCILE_EVERY_S``, 10 s) re-queues running
  rows whose heartbeat is older than ``lost_after_s()`` and sends them again, or fails them after
  ``LABSEG_JOB_MAX_ATTEMPTS`` claims; it resends queued rows whose message was never sent (broker
  down at enqueue) or was lost (a broker restart), i.e. rows last sent more than
  ``LABSEG_JOB_TIMEOUT_S`` ago. This, not redelivery, is what recovers a job whose whole worker
  was SIGKILLed: with Redis the dead worker's unacknowledged message comes back only after the
  broker's ``visibility_timeout`` (an hour), so beat sends the job again within
  ``lost_after_s() + LABSEG_RECONCILE_EVERY_S`` (30 s by default) of its last heartbeat. The old
  message, when it does come back, finds the row finished and is dropped.
* **Retries for transient errors only.** A failure that ``is_transient`` (database, broker or
  network connection errors; a kind may widen the rule, e.g. storage errors) puts the row back to
  queued and raises ``TransientJobError``, which the task retries with backoff while attempts are
  left. Anything else (bad input, a refusal) fails the row at once with a message a researcher can
  act on; it is not retried.

A kind of work declares ``task_name`` (the Celery task that runs one row), ``noun`` (what the
messages call it) and, if it has several queues, ``celery_queue()``; its task lives in the
``tasks`` module of the model's app, is declared with
``@shared_task(name=Model.task_name, bind=True, **jobs.task_options())`` and calls ``run`` with a
``work`` function that receives the claimed row and its ``Heartbeat`` and ends with ``finish``.
Its app's beat entry runs ``reconcile(Model)``.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from functools import partial
from importlib import import_module
from typing import Any, ClassVar, TypeVar

from celery.exceptions import SoftTimeLimitExceeded
from django.apps import apps
from django.conf import settings
from django.db import InterfaceError, OperationalError, models, transaction
from django.db.models import F, Q
from django.utils import timezone

logger = logging.getLogger(__name__)


class BackgroundJob(models.Model):
    """The fields every background job shares (an abstract model: each kind has its own table)."""

    class State(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"
        CANCELLED = "cancelled", "Cancelled"

    state = models.CharField(max_length=16, choices=State.choices, default=State.QUEUED, db_index=True)
    progress = models.PositiveSmallIntegerField(default=0, help_text="0-100, within the current attempt.")
    stage = models.CharField(max_length=64, blank=True, help_text="The stage now running.")
    attempts = models.PositiveSmallIntegerField(default=0, help_text="How many times a worker claimed it.")
    worker_host = models.CharField(max_length=255, blank=True)
    celery_task_id = models.CharField(max_length=64, blank=True)
    # A fresh token per claim: a worker only writes to the row while the token is still its own,
    # so a worker that was presumed lost (and whose job was re-claimed) cannot overwrite the new run.
    claim_token = models.CharField(max_length=32, blank=True)
    queued_at = models.DateTimeField(default=timezone.now)
    enqueued_at = models.DateTimeField(null=True, blank=True, help_text="Last time a message was sent.")
    started_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    error = models.TextField(blank=True, help_text="What went wrong, in words a researcher can act on.")

    #: The Celery task that runs one row; it takes the row's id.
    task_name: ClassVar[str] = ""
    #: What messages to researchers call this work ("segmentation", "analysis").
    noun: ClassVar[str] = "job"

    class Meta:
        abstract = True

    def celery_queue(self) -> str:
        """The queue this row's message goes to."""
        return str(settings.CELERY_TASK_DEFAULT_QUEUE)


J = TypeVar("J", bound=BackgroundJob)

ACTIVE = (BackgroundJob.State.QUEUED, BackgroundJob.State.RUNNING)


class TransientJobError(Exception):
    """A failure that a later attempt may not meet (storage, database or broker unreachable).

    The job has already been put back in the queued state when this is raised.
    """

    def __init__(self, message: str, *, attempt: int) -> None:
        super().__init__(message)
        self.attempt = attempt


class JobLostError(Exception):
    """The job is no longer this worker's: it was cancelled or re-claimed after a presumed loss."""


# --------------------------------------------------------------------------------------------
# Settings
# --------------------------------------------------------------------------------------------


def job_timeout_s() -> float:
    """Seconds after its last send before a queued job's message is sent again; also the longest
    heartbeat silence a running job is ever allowed (``lost_after_s`` is usually much shorter)."""
    return float(settings.LABSEG_JOB_TIMEOUT_S)


def lost_after_s() -> float:
    """Seconds of heartbeat silence after which a running job's worker is presumed lost and the job
    may be taken over: ``LABSEG_JOB_LOST_AFTER_BEATS`` heartbeat intervals, at most
    ``LABSEG_JOB_TIMEOUT_S``. Several intervals, so that one slow beat (a busy database, a long
    pause of the process) is not mistaken for a dead worker."""
    return min(job_timeout_s(), float(settings.LABSEG_JOB_LOST_AFTER_BEATS) * heartbeat_interval_s())


def max_attempts() -> int:
    """Claims per job before it fails for good (transient errors and lost workers both count)."""
    return int(settings.LABSEG_JOB_MAX_ATTEMPTS)


def stall_s() -> float:
    """Seconds without a progress report after which the heartbeat stops (the work is hung)."""
    return float(settings.LABSEG_JOB_STALL_S)


def soft_time_limit_s() -> int:
    return int(settings.LABSEG_JOB_SOFT_TIME_LIMIT_S)


def time_limit_s() -> int:
    return int(settings.LABSEG_JOB_TIME_LIMIT_S)


def heartbeat_interval_s() -> float:
    """Every ``LABSEG_JOB_HEARTBEAT_S``, at least four beats per ``LABSEG_JOB_TIMEOUT_S``, and at
    most every 0.5 s."""
    return max(0.5, min(float(settings.LABSEG_JOB_HEARTBEAT_S), job_timeout_s() / 4))


def task_options() -> dict[str, Any]:
    """Celery options of every job task: late acknowledgement (a worker killed mid-job leaves its
    message to be redelivered), retries with backoff for transient errors only, and the soft and
    hard time limits. Read when the task module is imported, i.e. from the worker's settings."""
    return {
        "acks_late": True,
        "reject_on_worker_lost": True,
        "autoretry_for": (TransientJobError, OperationalError, InterfaceError),
        "retry_backoff": 2,
        "retry_backoff_max": 120,
        "retry_jitter": True,
        "max_retries": max_attempts(),
        "soft_time_limit": soft_time_limit_s(),
        "time_limit": time_limit_s(),
    }


def duration_words(seconds: float) -> str:
    """``3600`` -> "60 minutes", ``90`` -> "90 seconds": how a limit is named to researchers."""
    whole = round(seconds)
    if whole >= 120 and whole % 60 == 0:
        return f"{whole // 60} minutes"
    return f"{whole} second" if whole == 1 else f"{whole} seconds"


def took_too_long_message(noun: str, limit_s: float) -> str:
    return (
        f"The {noun} took longer than {duration_words(limit_s)} and was stopped. "
        "Try again when the workers are less busy; if it keeps happening, an administrator can "
        "raise LABSEG_JOB_SOFT_TIME_LIMIT_S."
    )


# --------------------------------------------------------------------------------------------
# Sending, claiming, finishing
# --------------------------------------------------------------------------------------------


def enqueue(model: type[BackgroundJob], job_id: int) -> bool:
    """Send a queued row's id to its task's queue and record when.

    A broker that is down is logged, not raised: the row stays queued with its old (or no)
    ``enqueued_at`` and the reconciler sends it again once the broker is back.
    """
    job = model._default_manager.filter(pk=job_id, state=BackgroundJob.State.QUEUED).first()
    if job is None:
        return False
    try:
        # No limits in the message: the worker's own settings (task_options) decide them.
        result = job_task(model).apply_async(
            args=[job.pk], queue=job.celery_queue(), time_limit=None, soft_time_limit=None
        )
    except Exception as exc:  # kombu raises its own OperationalError and plain OSErrors here
        logger.warning(
            "could not send %s %s to the broker (%s); the reconciler will send it again",
            model.noun,
            job.pk,
            exc,
        )
        return False
    model._default_manager.filter(pk=job.pk).update(
        celery_task_id=result.id or "", enqueued_at=timezone.now()
    )
    return True


def job_task(model: type[BackgroundJob]) -> Any:
    """The Celery task that runs rows of ``model``: ``task_name``, declared in the ``tasks`` module of
    the model's app (Celery imports those modules only in a worker, so a web process does here)."""
    from .celery import app

    import_module(f"{model._meta.app_config.name}.tasks")
    return app.tasks[model.task_name]


def enqueue_on_commit(job: BackgroundJob) -> None:
    """Send the row once the surrounding transaction commits, so the worker always finds it."""
    model, job_id = type(job), job.pk
    transaction.on_commit(lambda: enqueue(model, job_id))


def _silent_since(cutoff: Any) -> Q:
    # A running row from before heartbeats existed (null) counts from when it started.
    return Q(heartbeat_at__lt=cutoff) | Q(heartbeat_at__isnull=True, started_at__lt=cutoff)


def claim(
    model: type[J],
    job_id: int,
    *,
    worker_host: str,
    stale_after_s: float | None = None,
    related: Sequence[str] = (),
) -> J | None:
    """Compare-and-set claim: a queued row, or a running one whose worker stopped heartbeating.

    Returns the claimed row (fresh ``claim_token``, ``attempts`` + 1, ``select_related(*related)``),
    or None when another worker got there first, the row is finished or cancelled, or its worker
    is still alive.
    """
    stale = float(stale_after_s if stale_after_s is not None else lost_after_s())
    now = timezone.now()
    claimable = Q(state=BackgroundJob.State.QUEUED) | (
        Q(state=BackgroundJob.State.RUNNING) & _silent_since(now - timedelta(seconds=stale))
    )
    updated = model._default_manager.filter(claimable, pk=job_id).update(
        state=BackgroundJob.State.RUNNING,
        claim_token=uuid.uuid4().hex,
        worker_host=worker_host[:255],
        attempts=F("attempts") + 1,
        started_at=now,
        heartbeat_at=now,
        finished_at=None,
        progress=0,
        stage="starting",
    )
    if updated != 1:
        return None
    return model._default_manager.select_related(*related).get(pk=job_id)


def take_over_when_silent(
    model: type[J],
    job_id: int,
    *,
    worker_host: str,
    related: Sequence[str] = (),
    poll_s: float | None = None,
) -> J | None:
    """For a message that found its row running under another claim: watch the row, and claim it
    as soon as its heartbeat is older than ``lost_after_s()``.

    A redelivered message (the pool process of the worker that ran it was SIGKILLed) arrives while
    the dead run's last heartbeat is still fresh; dropping it would leave the job to the reconciler.
    Returns None as soon as the row's heartbeat moves or its claim changes (its worker is alive,
    or another worker took it), when it is no longer running, or after ``lost_after_s()`` plus a
    beat; else the row, claimed by the same compare-and-set as ``claim`` (only one of several
    watchers wins it, and the dead run's writes are refused from then on: see ``finish``).
    """
    manager = model._default_manager
    fields = ("state", "claim_token", "heartbeat_at", "started_at")
    seen = manager.filter(pk=job_id).values(*fields).first()
    if seen is None or seen["state"] != BackgroundJob.State.RUNNING or seen["heartbeat_at"] is None:
        return None
    if (
        seen["started_at"]
        and (seen["heartbeat_at"] - seen["started_at"]).total_seconds() >= soft_time_limit_s()
    ):
        return None  # the hard time limit killed it: the reconciler fails it with that message
    interval, lost = heartbeat_interval_s(), lost_after_s()
    poll = float(poll_s if poll_s is not None else min(1.0, interval / 2))
    silent_for = (timezone.now() - seen["heartbeat_at"]).total_seconds()
    deadline = time.monotonic() + max(0.0, lost - silent_for) + interval
    logger.info(
        "%s %s is running under another claim (silent for %.1f s); taking it over if it stays "
        "silent for %.0f s",
        model.noun,
        job_id,
        silent_for,
        lost,
    )
    while time.monotonic() < deadline:
        time.sleep(poll)
        now = manager.filter(pk=job_id).values(*fields).first()
        if now != seen:
            return None  # it beat, finished, or was claimed by someone else: not ours to take
        job = claim(model, job_id, worker_host=worker_host, related=related)
        if job is not None:
            logger.warning(
                "%s %s: its worker stopped heartbeating; taken over by %s (attempt %s)",
                model.noun,
                job_id,
                worker_host,
                job.attempts,
            )
            return job
    return None


def _mine(job: BackgroundJob) -> models.QuerySet[Any]:
    """The row, as long as it is still running under this claim."""
    return type(job)._default_manager.filter(
        pk=job.pk, claim_token=job.claim_token, state=BackgroundJob.State.RUNNING
    )


def finish(job: BackgroundJob, state: str, *, error: str = "", **fields: Any) -> bool:
    """End this claim's run in ``state``; False when the row is no longer this claim's."""
    now = timezone.now()
    if state == BackgroundJob.State.SUCCEEDED:
        fields = {"progress": 100, "stage": "done", **fields}
    return _mine(job).update(state=state, error=error, finished_at=now, heartbeat_at=now, **fields) == 1


# --------------------------------------------------------------------------------------------
# Heartbeat
# --------------------------------------------------------------------------------------------


class Heartbeat:
    """Touches ``heartbeat_at`` while the work makes progress, so the reconciler can tell a slow job
    from a lost or hung one. Sets ``lost`` when the row stops being this claim's (cancel, re-claim).

    The work calls ``progress(percent, stage)``; each call writes the row at once (and raises
    ``JobLostError`` when the row is no longer this claim's). Between calls, a daemon thread
    beats every ``interval_s`` as long as the last call is less than ``stall_s`` old.
    """

    def __init__(
        self, job: BackgroundJob, *, interval_s: float | None = None, stall_after_s: float | None = None
    ) -> None:
        self.model = type(job)
        self.job_id = job.pk
        self.token = job.claim_token
        self.interval_s = float(interval_s if interval_s is not None else heartbeat_interval_s())
        self.stall_after_s = float(stall_after_s if stall_after_s is not None else stall_s())
        self.soft_limit_s = float(soft_time_limit_s())
        self.lost = threading.Event()
        self._stop_event = threading.Event()
        self._started = self._last_progress = time.monotonic()
        self._thread: threading.Thread | None = None

    @property
    def past_soft_limit(self) -> bool:
        """This run has lasted longer than the soft time limit."""
        return time.monotonic() - self._started > self.soft_limit_s

    @property
    def stalled(self) -> bool:
        """No progress report for ``stall_after_s`` seconds: the thread no longer beats."""
        return time.monotonic() - self._last_progress > self.stall_after_s

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._run, name=f"heartbeat-{self.model.__name__}-{self.job_id}", daemon=True
        )
        self._thread.start()

    def _run(self) -> None:
        warned = False
        try:
            while not self._stop_event.wait(self.interval_s):
                if self.stalled:
                    if not warned:
                        logger.warning(
                            "%s %s reported no progress for %.0f s; its heartbeat stops until it does",
                            self.model.noun,
                            self.job_id,
                            self.stall_after_s,
                        )
                        warned = True
                    continue
                warned = False
                if not self.beat():
                    self.lost.set()
                    return
        finally:
            # This thread has its own database connection; close it rather than leak it.
            from django.db import connection

            connection.close()

    def beat(self, **fields: Any) -> bool:
        """Touch ``heartbeat_at`` (and write ``fields``) if the row is still this claim's."""
        try:
            return (
                self.model._default_manager.filter(
                    pk=self.job_id, claim_token=self.token, state=BackgroundJob.State.RUNNING
                ).update(heartbeat_at=timezone.now(), **fields)
                == 1
            )
        except (OperationalError, InterfaceError) as exc:
            # A database blip is not a lost claim; the next beat tries again.
            logger.warning("heartbeat of %s %s failed: %s", self.model.noun, self.job_id, exc)
            return True

    def progress(self, percent: float | None = None, stage: str | None = None) -> None:
        """The work moved on: record it (0-100 and the stage's name) and keep the heartbeat going.

        Raises ``JobLostError`` when the row is no longer this claim's, and ``SoftTimeLimitExceeded``
        once the run is past the soft limit: Celery's own signal may land inside library code that
        catches every exception (a fallback file reader, say), so the limit is checked here too.
        """
        self._last_progress = time.monotonic()
        if self.past_soft_limit:
            raise SoftTimeLimitExceeded(self.soft_limit_s)
        fields: dict[str, Any] = {}
        if percent is not None:
            fields["progress"] = max(0, min(100, int(percent)))
        if stage is not None:
            fields["stage"] = stage[:64]
        if self.lost.is_set() or not self.beat(**fields):
            raise JobLostError(self.job_id)

    def stop(self) -> None:
        self._stop_event.set()
        thread = self._thread
        if thread is not None and thread.is_alive() and threading.current_thread() is not thread:
            thread.join(timeout=5)


# --------------------------------------------------------------------------------------------
# Running a job (called by the worker's task)
# --------------------------------------------------------------------------------------------


def is_transient(exc: BaseException) -> bool:
    """Database, broker and network connection errors: a later attempt may not meet them."""
    from kombu.exceptions import OperationalError as BrokerError

    return isinstance(exc, OperationalError | InterfaceError | BrokerError | ConnectionError | TimeoutError)


def _default_failure_message(job: BackgroundJob, exc: BaseException) -> str:
    return f"The {job.noun} failed during '{job.stage or 'starting'}': {type(exc).__name__}: {exc}"


def run(
    model: type[J],
    job_id: int,
    *,
    worker_host: str,
    work: Callable[[J, Heartbeat], None],
    failure_message: Callable[[J, BaseException], str] | None = None,
    transient: Callable[[BaseException], bool] = is_transient,
    related: Sequence[str] = (),
) -> J | None:
    """Claim the row, run ``work(job, heartbeat)`` under a heartbeat and record how it ended.

    ``work`` reports progress through ``heartbeat.progress`` (which also enforces the soft time
    limit) and ends the run with ``finish``.
    Returns the row as it ended, or None when this worker did not get the claim. A soft time limit
    fails the row with "took longer than ..."; a transient error (``transient``) puts it back to
    queued and raises ``TransientJobError`` while attempts are left; any other error fails it
    with ``failure_message(job, exc)``.
    """
    job = claim(model, job_id, worker_host=worker_host, related=related)
    if job is None:
        job = take_over_when_silent(model, job_id, worker_host=worker_host, related=related)
    if job is None:
        return None
    if job.attempts > max_attempts():
        finish(
            job,
            BackgroundJob.State.FAILED,
            error=f"The {model.noun} was interrupted {job.attempts - 1} times (a worker stopped or "
            "lost its connection) and was given up. Check the workers' logs, then request the "
            f"{model.noun} again.",
        )
        job.refresh_from_db()
        return job
    heartbeat = Heartbeat(job)
    heartbeat.start()
    try:
        work(job, heartbeat)
    except JobLostError:
        logger.info(
            "%s %s is no longer ours (cancelled or re-claimed); its outputs were discarded",
            model.noun,
            job.pk,
        )
    except Exception as exc:
        heartbeat.stop()
        # Library code may wrap Celery's SoftTimeLimitExceeded in its own error (a reader that
        # turns every exception into "could not be read"): past the limit, the limit is the cause.
        if isinstance(exc, SoftTimeLimitExceeded) or heartbeat.past_soft_limit:
            logger.error(
                "%s %s hit the soft time limit of %s s (%r)", model.noun, job.pk, soft_time_limit_s(), exc
            )
            finish(
                job, BackgroundJob.State.FAILED, error=took_too_long_message(model.noun, soft_time_limit_s())
            )
        else:
            _record_failure(job, exc, failure_message or _default_failure_message, transient)
    finally:
        heartbeat.stop()
    job.refresh_from_db()
    return job


def _record_failure(
    job: J,
    exc: BaseException,
    failure_message: Callable[[J, BaseException], str],
    transient: Callable[[BaseException], bool],
) -> None:
    job.refresh_from_db(fields=["stage", "attempts"])
    limit = max_attempts()
    if transient(exc) and job.attempts < limit:
        requeued = _mine(job).update(
            state=BackgroundJob.State.QUEUED,
            stage="waiting to retry",
            progress=0,
            worker_host="",
            # The task's own retry sends the next message; the reconciler need not send another.
            enqueued_at=timezone.now(),
            error=f"A temporary problem interrupted attempt {job.attempts} of {limit} "
            f"({type(exc).__name__}: {exc}); it will be retried.",
        )
        logger.warning("%s %s: transient failure on attempt %s: %s", job.noun, job.pk, job.attempts, exc)
        if requeued == 1:
            raise TransientJobError(str(exc), attempt=job.attempts) from exc
        return
    if transient(exc):
        message = (
            f"A temporary problem ({type(exc).__name__}: {exc}) persisted over {job.attempts} attempts. "
            f"Check that storage and the database are reachable, then request the {job.noun} again."
        )
    else:
        message = failure_message(job, exc)
    logger.error("%s %s failed: %s", job.noun, job.pk, message, exc_info=exc)
    finish(job, BackgroundJob.State.FAILED, error=message)


# --------------------------------------------------------------------------------------------
# Reconciling (periodic, through beat)
# --------------------------------------------------------------------------------------------


@dataclass
class ReconcileReport:
    requeued: list[int] = field(default_factory=list)
    resent: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)

    def as_dict(self) -> dict[str, list[int]]:
        return {"requeued": self.requeued, "resent": self.resent, "failed": self.failed}


def reconcile(
    model: type[BackgroundJob],
    *,
    timeout_s: float | None = None,
    send: Callable[..., bool] | None = None,
) -> ReconcileReport:
    """Take back running rows whose heartbeat is older than ``lost_after_s()`` and resend queued
    rows last sent (or never sent) more than ``LABSEG_JOB_TIMEOUT_S`` ago (``timeout_s``: both).

    A silent running row is re-queued and sent again; it fails instead when it has had
    ``LABSEG_JOB_MAX_ATTEMPTS`` claims, or when its attempt ran past the soft time limit before
    falling silent (the hard limit killed it: running it again would only hit the limit again).
    ``send(job_id=...)`` defaults to ``enqueue``; messages go out after the transaction commits,
    and sending twice is harmless (only one worker wins the claim).
    """
    # A running row is lost after ``lost_after_s`` of silence; a queued one is resent only after
    # ``LABSEG_JOB_TIMEOUT_S`` (a long queue is not a lost message). ``timeout_s`` sets both.
    running_after = float(timeout_s if timeout_s is not None else lost_after_s())
    queued_after = float(timeout_s if timeout_s is not None else job_timeout_s())
    deliver = send or (lambda *, job_id: enqueue(model, job_id))
    report = ReconcileReport()
    now = timezone.now()
    cutoff = now - timedelta(seconds=running_after)
    limit, soft = max_attempts(), soft_time_limit_s()
    running = BackgroundJob.State.RUNNING
    for job in model._default_manager.filter(_silent_since(cutoff), state=running):
        lost = model._default_manager.filter(
            _silent_since(cutoff), pk=job.pk, state=running, claim_token=job.claim_token
        )
        ran_s = (
            (job.heartbeat_at - job.started_at).total_seconds()
            if job.heartbeat_at and job.started_at
            else 0.0
        )
        if ran_s >= soft:
            if lost.update(
                state=BackgroundJob.State.FAILED,
                finished_at=now,
                error=took_too_long_message(model.noun, soft),
            ):
                report.failed.append(job.pk)
            continue
        if job.attempts >= limit:
            if lost.update(
                state=BackgroundJob.State.FAILED,
                finished_at=now,
                error=f"The worker running this {model.noun} stopped responding on {job.attempts} attempts; "
                f"it was given up. Check the workers (memory, crashes), then request the {model.noun} again.",
            ):
                report.failed.append(job.pk)
            continue
        if lost.update(
            state=BackgroundJob.State.QUEUED,
            stage="worker lost, queued again",
            progress=0,
            worker_host="",
            error="",
        ):
            report.requeued.append(job.pk)
    sent_before = now - timedelta(seconds=queued_after)
    stale_queued = model._default_manager.filter(state=BackgroundJob.State.QUEUED).filter(
        Q(enqueued_at__lt=sent_before) | Q(enqueued_at__isnull=True, queued_at__lt=sent_before)
    )
    report.resent.extend(stale_queued.exclude(pk__in=report.requeued).values_list("pk", flat=True))
    for job_id in [*report.requeued, *report.resent]:
        transaction.on_commit(partial(deliver, job_id=job_id))
    if report.requeued or report.resent or report.failed:
        logger.info(
            "reconciler (%s): requeued %s, resent %s, failed %s",
            model.noun,
            report.requeued,
            report.resent,
            report.failed,
        )
    return report


def job_models() -> list[type[BackgroundJob]]:
    """Every installed kind of background job (the concrete models that inherit ``BackgroundJob``)."""
    return [m for m in apps.get_models() if issubclass(m, BackgroundJob)]


def reconcile_all(*, timeout_s: float | None = None) -> dict[str, ReconcileReport]:
    """``reconcile`` for every kind of job, keyed by its ``noun``."""
    return {model.noun: reconcile(model, timeout_s=timeout_s) for model in job_models()}
