"""Segmentation workflows: model registry sync, job requests, running a job, reconciling jobs.

Keyword-only functions called by the API, the Celery tasks, the admin and management commands.
The rules they keep:

* the database, not the broker, is the truth about a job; a message only carries its id, and a
  lost or duplicated message is harmless because a worker claims a job with a compare-and-set;
* no NIfTI reading or model run inside ``transaction.atomic()``; output files go to storage first
  and the rows that point at them are written last, in one transaction;
* failures are either transient (retry with backoff, a bounded number of attempts) or permanent
  (the job fails with a message a researcher can act on).
"""

from __future__ import annotations

import gzip
import json
import logging
import shutil
import socket
import tempfile
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.files import File
from django.core.files.storage import default_storage
from django.db import IntegrityError, InterfaceError, OperationalError, transaction
from django.db.models import F, Q
from django.utils import timezone

from inference.jsonsafe import finite_or_null
from scans.models import Scan

from .models import InferenceJob, Lesion, ModelVersion, Prediction, StructureVolume

logger = logging.getLogger(__name__)

#: Claims per job before it fails for good (transient errors and lost workers both count).
MAX_ATTEMPTS = settings.LABSEG_JOB_MAX_ATTEMPTS


class ModelSyncError(Exception):
    """The model folders disagree with the registry (e.g. new weights under an old version)."""


class NoModelAvailableError(Exception):
    """No model is registered for what was asked."""


class TransientJobError(Exception):
    """A failure that a later attempt may not meet (storage or database unreachable).

    The job has already been put back in the queue state when this is raised.
    """

    def __init__(self, message: str, *, attempt: int) -> None:
        super().__init__(message)
        self.attempt = attempt


class JobLostError(Exception):
    """The job is no longer this worker's: it was cancelled or re-claimed after a presumed loss."""


# --------------------------------------------------------------------------------------------
# Model registry
# --------------------------------------------------------------------------------------------


def models_root() -> Path:
    """The folder of model folders (``inference/models/`` unless settings say otherwise)."""

    return Path(settings.LABSEG_MODELS_DIR)


@dataclass
class SyncReport:
    created: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    defaults: dict[str, str] = field(default_factory=dict)


def sync_models(*, root: Path | None = None) -> SyncReport:
    """Register every model folder under ``root`` (``<name>/<version>/model.json``).

    A new name+version is created; an existing one with the same sha256 is left as it is; one
    whose sha256 changed raises ``ModelSyncError`` (new weights need a new version, or every old
    prediction would point at weights that no longer exist). The default model of each task found
    under ``root`` becomes the one ``registry.default_model`` names (a card flagged ``default``,
    else the newest version).
    """
    from inference.registry import default_model, discover_models

    root = root or models_root()
    cards = discover_models(root)
    report = SyncReport()
    conflicts: list[str] = []
    by_task: dict[str, list[ModelVersion]] = {}
    for card in cards:
        folder = Path(card.folder).resolve()
        card_json = finite_or_null(json.loads((folder / "model.json").read_text()))
        existing = ModelVersion.objects.filter(name=card.name, version=card.version).first()
        if existing is not None:
            if existing.sha256 != card.sha256:
                conflicts.append(
                    f"{card.name}@{card.version} in {folder} has weights with sha256 {card.sha256[:12]}..., "
                    f"but the registry holds {existing.sha256[:12]}... for that version; "
                    "give the new weights a new version instead of replacing the old ones"
                )
                continue
            if existing.folder != str(folder):
                # The same weights moved (another checkout or container path): follow them.
                ModelVersion.objects.filter(pk=existing.pk).update(folder=str(folder))
            report.unchanged.append(existing.label)
            by_task.setdefault(existing.task, []).append(existing)
            continue
        created = ModelVersion.objects.create(
            name=card.name,
            version=card.version,
            task=card.task,
            sha256=card.sha256,
            structures=list(card.structures),
            metrics=card_json.get("metrics") or {},
            card=card_json,
            folder=str(folder),
        )
        report.created.append(created.label)
        by_task.setdefault(created.task, []).append(created)
    for task, versions in by_task.items():
        card = default_model(task, root)
        chosen = next((mv for mv in versions if (mv.name, mv.version) == (card.name, card.version)), None)
        if chosen is None:  # the registry's choice is the conflicting one: keep the old default
            continue
        with transaction.atomic():
            ModelVersion.objects.filter(task=task, is_default=True).exclude(pk=chosen.pk).update(
                is_default=False
            )
            ModelVersion.objects.filter(pk=chosen.pk).update(is_default=True)
        report.defaults[task] = chosen.label
    if conflicts:
        raise ModelSyncError("; ".join(conflicts))
    return report


def default_model_versions() -> list[ModelVersion]:
    """The default model of every task (organs first, so their labels are there for lesions)."""
    return sorted(ModelVersion.objects.filter(is_default=True), key=lambda mv: mv.task != "organs")


def model_folder(model_version: ModelVersion) -> Path:
    """Where this version's files are on this machine: the registered folder, else under the root."""
    folder = Path(model_version.folder)
    if folder.is_dir():
        return folder
    return models_root() / model_version.name / model_version.version


def queue_for(model_version: ModelVersion) -> str:
    """``gpu`` when this server runs models on CUDA or the model card asks for a GPU, else ``cpu``."""
    device = str(settings.LABSEG_DEVICE).lower()
    wants_gpu = str(model_version.card.get("device", "")).lower() in ("cuda", "gpu")
    return "gpu" if device in ("cuda", "gpu") or wants_gpu else "cpu"


# --------------------------------------------------------------------------------------------
# Requesting, enqueueing and cancelling jobs
# --------------------------------------------------------------------------------------------


def request_segmentation(
    *, scan: Scan, user: Any = None, model_versions: Sequence[ModelVersion] | None = None
) -> list[InferenceJob]:
    """One job per (scan, model version), enqueued once the surrounding transaction commits.

    Idempotent: an existing queued, running or succeeded job is returned as it is (never a second
    prediction); a failed or cancelled one is queued again. ``model_versions`` defaults to the
    default model of every task.
    """
    versions = list(model_versions) if model_versions is not None else default_model_versions()
    if not versions:
        raise NoModelAvailableError(
            "No segmentation model is installed. An administrator should run `manage.py sync_models`."
        )
    requester = user if user is not None and getattr(user, "is_authenticated", False) else None
    jobs: list[InferenceJob] = []
    for model_version in versions:
        job, created = InferenceJob.objects.get_or_create(
            scan=scan,
            model_version=model_version,
            defaults={"requested_by": requester, "queue": queue_for(model_version)},
        )
        send = created
        if not created and job.state in (InferenceJob.State.FAILED, InferenceJob.State.CANCELLED):
            send = (
                InferenceJob.objects.filter(
                    pk=job.pk, state__in=(InferenceJob.State.FAILED, InferenceJob.State.CANCELLED)
                ).update(
                    state=InferenceJob.State.QUEUED,
                    progress=0,
                    stage="",
                    attempts=0,
                    error="",
                    claim_token="",
                    worker_host="",
                    queue=queue_for(model_version),
                    queued_at=timezone.now(),
                    started_at=None,
                    finished_at=None,
                    heartbeat_at=None,
                    requested_by=requester or job.requested_by,
                )
                == 1
            )
            job.refresh_from_db()
        if send:
            transaction.on_commit(lambda job_id=job.pk: enqueue_job(job_id=job_id))
        jobs.append(job)
    return jobs


def enqueue_job(*, job_id: int) -> bool:
    """Send the job's id to its queue. A broker that is down is logged, not raised: the job stays
    queued in the database and the reconciler sends it again."""
    from .tasks import segment_scan_task

    job = InferenceJob.objects.filter(pk=job_id, state=InferenceJob.State.QUEUED).first()
    if job is None:
        return False
    try:
        result = segment_scan_task.apply_async(args=[job.pk], queue=job.queue)
    except Exception as exc:  # kombu raises its own OperationalError and plain OSErrors here
        logger.warning(
            "could not send job %s to the broker (%s); the reconciler will send it again", job.pk, exc
        )
        return False
    InferenceJob.objects.filter(pk=job.pk).update(celery_task_id=result.id or "", enqueued_at=timezone.now())
    return True


def cancel_job(*, job: InferenceJob, user: Any = None) -> bool:
    """Cancel a queued or running job; a running worker stops at its next heartbeat or stage."""
    who = getattr(user, "username", "") or "an administrator"
    updated = InferenceJob.objects.filter(pk=job.pk, state__in=_ACTIVE).update(
        state=InferenceJob.State.CANCELLED,
        stage="cancelled",
        finished_at=timezone.now(),
        error=f"Cancelled by {who}.",
    )
    job.refresh_from_db()
    return updated == 1


def requeue_job(*, job: InferenceJob, user: Any = None) -> bool:
    """Queue a failed or cancelled job again (admin action); other states are left alone."""
    if job.state not in (InferenceJob.State.FAILED, InferenceJob.State.CANCELLED):
        return False
    request_segmentation(scan=job.scan, user=user, model_versions=[job.model_version])
    job.refresh_from_db()
    return job.state == InferenceJob.State.QUEUED


_ACTIVE = (InferenceJob.State.QUEUED, InferenceJob.State.RUNNING)


# --------------------------------------------------------------------------------------------
# Running a job (called by the worker)
# --------------------------------------------------------------------------------------------


def claim_job(job_id: int, *, worker_host: str, stale_after_s: float | None = None) -> InferenceJob | None:
    """Compare-and-set claim: a queued job, or a running one whose worker stopped heartbeating.

    Returns the claimed job (with a fresh ``claim_token``), or None when another worker got there
    first, the job is finished or cancelled, or its worker is still alive.
    """
    stale_after_s = float(stale_after_s if stale_after_s is not None else settings.LABSEG_JOB_TIMEOUT_S)
    now = timezone.now()
    token = uuid.uuid4().hex
    claimable = Q(state=InferenceJob.State.QUEUED) | Q(
        state=InferenceJob.State.RUNNING, heartbeat_at__lt=now - timedelta(seconds=stale_after_s)
    )
    updated = InferenceJob.objects.filter(claimable, pk=job_id).update(
        state=InferenceJob.State.RUNNING,
        claim_token=token,
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
    return InferenceJob.objects.select_related("scan", "model_version").get(pk=job_id)


def run_job(job_id: int, *, worker_host: str | None = None) -> InferenceJob | None:
    """Claim the job, segment its scan and record the prediction.

    Returns the job as it ended, or None when this worker did not get the claim. Raises
    ``TransientJobError`` (after putting the job back to queued) when a retry may help.
    """
    job = claim_job(job_id, worker_host=worker_host or socket.gethostname())
    if job is None:
        return None
    if job.attempts > MAX_ATTEMPTS:
        _finish_failed(
            job,
            f"The job was interrupted {job.attempts - 1} times (a worker stopped or lost its connection) "
            "and was given up. Check the workers' logs, then request the segmentation again.",
        )
        return job
    heartbeat = _Heartbeat(job)
    heartbeat.start()
    try:
        _execute(job, heartbeat)
    except JobLostError:
        logger.info("job %s is no longer ours (cancelled or re-claimed); its outputs were discarded", job.pk)
    except Exception as exc:
        heartbeat.stop()
        _record_failure(job, exc)
    finally:
        heartbeat.stop()
    job.refresh_from_db()
    return job


class _Heartbeat(threading.Thread):
    """Touches ``heartbeat_at`` while the pipeline runs, so the reconciler can tell a slow job
    from a lost worker. Sets ``lost`` when the row stops being this claim's (cancel, re-claim)."""

    def __init__(self, job: InferenceJob) -> None:
        super().__init__(name=f"heartbeat-job-{job.pk}", daemon=True)
        self.job_id = job.pk
        self.token = job.claim_token
        self.interval_s = max(0.5, min(30.0, float(settings.LABSEG_JOB_TIMEOUT_S) / 4))
        self.lost = threading.Event()
        self._stop_event = threading.Event()

    def run(self) -> None:
        try:
            while not self._stop_event.wait(self.interval_s):
                if not self.beat():
                    self.lost.set()
                    return
        finally:
            # This thread has its own database connection; close it rather than leak it.
            from django.db import connection

            connection.close()

    def beat(self, **fields: Any) -> bool:
        try:
            return (
                InferenceJob.objects.filter(
                    pk=self.job_id, claim_token=self.token, state=InferenceJob.State.RUNNING
                ).update(heartbeat_at=timezone.now(), **fields)
                == 1
            )
        except (OperationalError, InterfaceError) as exc:
            # A database blip is not a lost claim; the next beat tries again.
            logger.warning("heartbeat of job %s failed: %s", self.job_id, exc)
            return True

    def stop(self) -> None:
        self._stop_event.set()
        if self.is_alive() and threading.current_thread() is not self:
            self.join(timeout=5)


def _execute(job: InferenceJob, heartbeat: _Heartbeat) -> None:
    from inference.pipeline import segment_file

    seconds: dict[str, float] = {}

    def progress(percent: int, stage: str) -> None:
        if heartbeat.lost.is_set() or not heartbeat.beat(
            progress=max(0, min(100, int(percent))), stage=stage[:64]
        ):
            raise JobLostError(job.pk)

    cards = _cards_for(job.model_version)
    tasks = tuple(card.task for card in cards)
    with tempfile.TemporaryDirectory(prefix=f"labseg-job{job.pk}-") as tmp:
        tmp_dir = Path(tmp)
        started = time.perf_counter()
        progress(1, "download")
        scan_path = tmp_dir / Path(job.scan.file.name).name
        with job.scan.file.open("rb") as source, scan_path.open("wb") as target:
            shutil.copyfileobj(source, target, length=8 * 1024 * 1024)
        seconds["download"] = time.perf_counter() - started
        out_dir = tmp_dir / "out"
        out_dir.mkdir()
        result = segment_file(
            scan_path,
            out_dir,
            cards=cards,
            tasks=tasks,
            device=str(settings.LABSEG_DEVICE),
            threads=int(settings.LABSEG_INFERENCE_THREADS),
            # The pipeline's 0-100 becomes 2-95: downloading comes before it, storing after it.
            progress=lambda percent, stage: progress(2 + round(percent * 0.93), stage),
        )
        progress(96, "storing")
        started = time.perf_counter()
        # One folder per attempt: a re-claimed job never overwrites files of the attempt before it.
        model = job.model_version
        folder = (
            f"labs/{job.scan.lab_id}/predictions/scan{job.scan_id}/"
            f"{model.name}-{model.version}/attempt{job.attempts}"
        )
        stored: list[str] = []
        try:
            labels_name = _store(Path(result.labels_path), f"{folder}/labels.nii.gz", stored)
            uncertainty_name = _store(Path(result.uncertainty_path), f"{folder}/uncertainty.nii.gz", stored)
            seconds["upload"] = time.perf_counter() - started
            seconds.update(_pipeline_seconds(result.manifest))
            _record_success(job, result, labels_name, uncertainty_name, cards, seconds)
        except BaseException:
            for name in stored:
                default_storage.delete(name)
            raise


def _cards_for(model_version: ModelVersion) -> list[Any]:
    """The model cards to run: the job's model, plus the default organ model for a lesion model
    (lesions are allocated to the organs predicted in the same pipeline call)."""
    from inference.registry import load_card

    card = load_card(model_folder(model_version))
    if card.sha256 != model_version.sha256:
        raise _PermanentError(
            f"The files of model {model_version.label} changed since it was registered "
            f"(sha256 {card.sha256[:12]}... instead of {model_version.sha256[:12]}...). "
            "An administrator should restore them or register the new weights as a new version."
        )
    if model_version.task == ModelVersion.Task.ORGANS:
        return [card]
    organs = ModelVersion.objects.filter(task=ModelVersion.Task.ORGANS, is_default=True).first()
    if organs is None:
        raise _PermanentError(
            f"Model {model_version.label} allocates lesions to organs, but no organ model is installed. "
            "An administrator should run `manage.py sync_models`."
        )
    return [load_card(model_folder(organs)), card]


def _store(local: Path, name: str, stored: list[str]) -> str:
    with local.open("rb") as handle:
        saved = default_storage.save(name, File(handle, name=local.name))
    stored.append(saved)
    return saved


def _pipeline_seconds(manifest: dict[str, Any]) -> dict[str, float]:
    for key in ("seconds_per_stage", "stage_seconds", "seconds", "timings"):
        value = manifest.get(key)
        if isinstance(value, dict):
            return {str(k): float(v) for k, v in value.items() if isinstance(v, int | float)}
    return {}


def _record_success(
    job: InferenceJob,
    result: Any,
    labels_name: str,
    uncertainty_name: str,
    cards: Sequence[Any],
    seconds: dict[str, float],
) -> None:
    model_version = job.model_version
    own_structures = {int(s) for s in model_version.structures if int(s) != 0}
    manifest = dict(result.manifest)
    manifest["server"] = {
        "job": job.pk,
        "attempt": job.attempts,
        "worker_host": job.worker_host,
        "model": model_version.label,
        "models_run": [f"{card.name}@{card.version}" for card in cards],
        "note": (
            "lesions were allocated to the organs of the organ model run in the same call"
            if len(cards) > 1
            else ""
        ),
    }
    with transaction.atomic():
        finished = InferenceJob.objects.filter(
            pk=job.pk, claim_token=job.claim_token, state=InferenceJob.State.RUNNING
        ).update(
            state=InferenceJob.State.SUCCEEDED,
            progress=100,
            stage="done",
            finished_at=timezone.now(),
            heartbeat_at=timezone.now(),
            stage_seconds=seconds,
            error="",
        )
        if finished != 1:
            raise JobLostError(job.pk)
        try:
            with transaction.atomic():
                prediction = Prediction.objects.create(
                    job=job,
                    scan=job.scan,
                    model_version=model_version,
                    labels=labels_name,
                    uncertainty=uncertainty_name,
                    manifest=manifest,
                    metastasis_counts=dict(result.metastasis_counts),
                )
        except IntegrityError as exc:
            raise JobLostError(job.pk) from exc
        StructureVolume.objects.bulk_create(
            StructureVolume(
                prediction=prediction,
                structure_id=row.structure_id,
                name=row.name,
                voxels=row.voxels,
                volume_mm3=row.volume_mm3,
                volume_low_mm3=row.volume_low_mm3,
                volume_high_mm3=row.volume_high_mm3,
            )
            # A lesion model's job also ran the organ model; its organ volumes belong to that model.
            for row in result.volumes
            if int(row.structure_id) in own_structures
        )
        Lesion.objects.bulk_create(
            Lesion(
                prediction=prediction,
                index=row.index,
                structure_id=row.structure_id,
                centroid_x_mm=row.centroid_mm[0],
                centroid_y_mm=row.centroid_mm[1],
                centroid_z_mm=row.centroid_mm[2],
                voxels=row.voxels,
                volume_mm3=row.volume_mm3,
                max_diameter_mm=row.max_diameter_mm,
                organ_id=row.organ_id,
                organ_name=row.organ_name,
                allocation=row.allocation,
            )
            for row in result.lesions
        )


class _PermanentError(Exception):
    """A failure with a ready-made message for the researcher."""


def _is_transient(exc: BaseException) -> bool:
    if isinstance(exc, OperationalError | InterfaceError):
        return True
    permanent_os = (FileNotFoundError, IsADirectoryError, NotADirectoryError, gzip.BadGzipFile)
    return isinstance(exc, OSError) and not isinstance(exc, permanent_os)


def _failure_message(job: InferenceJob, exc: BaseException) -> str:
    from inference.registry import ModelCardError

    if isinstance(exc, _PermanentError):
        return str(exc)
    if isinstance(exc, ModelCardError):
        return (
            f"Model {job.model_version.label} could not be loaded: {exc}. "
            "An administrator should re-install the model folder and run `manage.py sync_models`."
        )
    if isinstance(exc, FileNotFoundError) and job.stage in ("starting", "download"):
        return "The scan's file is missing from storage. Upload the scan again."
    if _is_unreadable_scan(exc):
        return (
            f"The scan file could not be read as a NIfTI volume ({exc}). "
            "Check that it opens in another viewer, then upload it again."
        )
    stage = job.stage or "starting"
    return f"Segmentation failed during '{stage}': {type(exc).__name__}: {exc}"


def _is_unreadable_scan(exc: BaseException) -> bool:
    try:
        from nibabel.filebasedimages import ImageFileError
    except ImportError:  # pragma: no cover - nibabel is a server requirement
        return False
    return isinstance(exc, ImageFileError | EOFError | zlib.error | gzip.BadGzipFile)


def _record_failure(job: InferenceJob, exc: BaseException) -> None:
    job.refresh_from_db(fields=["stage", "attempts"])
    if _is_transient(exc) and job.attempts < MAX_ATTEMPTS:
        requeued = InferenceJob.objects.filter(
            pk=job.pk, claim_token=job.claim_token, state=InferenceJob.State.RUNNING
        ).update(
            state=InferenceJob.State.QUEUED,
            stage="waiting to retry",
            progress=0,
            worker_host="",
            error=f"A temporary problem interrupted attempt {job.attempts} of {MAX_ATTEMPTS} "
            f"({type(exc).__name__}: {exc}); it will be retried.",
        )
        logger.warning("job %s: transient failure on attempt %s: %s", job.pk, job.attempts, exc)
        if requeued == 1:
            raise TransientJobError(str(exc), attempt=job.attempts) from exc
        return
    if _is_transient(exc):
        message = (
            f"A temporary problem ({type(exc).__name__}: {exc}) persisted over {job.attempts} attempts. "
            "Check that storage and the database are reachable, then request the segmentation again."
        )
    else:
        message = _failure_message(job, exc)
    logger.error("job %s failed: %s", job.pk, message, exc_info=exc)
    _finish_failed(job, message)


def _finish_failed(job: InferenceJob, message: str) -> None:
    InferenceJob.objects.filter(
        pk=job.pk, claim_token=job.claim_token, state=InferenceJob.State.RUNNING
    ).update(state=InferenceJob.State.FAILED, finished_at=timezone.now(), error=message)


# --------------------------------------------------------------------------------------------
# Reconciling (periodic, through beat)
# --------------------------------------------------------------------------------------------


@dataclass
class ReconcileReport:
    requeued: list[int] = field(default_factory=list)
    resent: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)


def reconcile_jobs(*, timeout_s: float, enqueue: Callable[..., bool] | None = None) -> ReconcileReport:
    """Re-queue jobs whose worker stopped heartbeating and resend jobs queued past ``timeout_s``.

    Covers a worker killed mid-job (running, heartbeat older than ``timeout_s``) and a broker that
    lost its messages (queued, last sent more than ``timeout_s`` ago). Sending twice is harmless:
    only one worker wins the claim. Messages go out after the transaction commits.
    """
    send = enqueue or enqueue_job
    report = ReconcileReport()
    cutoff = timezone.now() - timedelta(seconds=timeout_s)
    for job in InferenceJob.objects.filter(state=InferenceJob.State.RUNNING, heartbeat_at__lt=cutoff):
        lost = InferenceJob.objects.filter(
            pk=job.pk, state=InferenceJob.State.RUNNING, claim_token=job.claim_token, heartbeat_at__lt=cutoff
        )
        if job.attempts >= MAX_ATTEMPTS:
            if lost.update(
                state=InferenceJob.State.FAILED,
                finished_at=timezone.now(),
                error=f"The worker running this job stopped responding on {job.attempts} attempts; it was "
                "given up. Check the workers (memory, crashes), then request the segmentation again.",
            ):
                report.failed.append(job.pk)
            continue
        if lost.update(
            state=InferenceJob.State.QUEUED,
            stage="worker lost, queued again",
            progress=0,
            worker_host="",
            error="",
        ):
            report.requeued.append(job.pk)
    stale_queued = InferenceJob.objects.filter(state=InferenceJob.State.QUEUED).filter(
        Q(enqueued_at__lt=cutoff) | Q(enqueued_at__isnull=True, queued_at__lt=cutoff)
    )
    report.resent.extend(stale_queued.exclude(pk__in=report.requeued).values_list("pk", flat=True))
    for job_id in [*report.requeued, *report.resent]:
        transaction.on_commit(lambda job_id=job_id: send(job_id=job_id))
    if report.requeued or report.resent or report.failed:
        logger.info(
            "reconciler: requeued %s, resent %s, failed %s", report.requeued, report.resent, report.failed
        )
    return report
