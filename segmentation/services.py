"""Segmentation workflows: model registry sync, job requests, running a job, reconciling jobs.

Keyword-only functions called by the API, the Celery tasks, the admin and management commands.
The rules they keep:

* the database, not the broker, is the truth about a job; a message only carries its id, and a
  lost or duplicated message is harmless because a worker claims a job with a compare-and-set
  (claim, heartbeat, time limits, retries and the reconciler are ``labseg.jobs``'s, shared with
  every other kind of background work);
* no NIfTI reading or model run inside ``transaction.atomic()``; output files go to storage first
  and the rows that point at them are written last, in one transaction;
* failures are either transient (retry with backoff, a bounded number of attempts; for a
  segmentation, storage errors count too) or permanent (the job fails with a message a researcher
  can act on).
"""

from __future__ import annotations

import gzip
import json
import logging
import shutil
import socket
import tempfile
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.files import File
from django.core.files.storage import default_storage
from django.db import IntegrityError, InterfaceError, OperationalError, transaction
from django.utils import timezone

import audit
from audit.models import AuditEvent
from inference.jsonsafe import finite_or_null
from labseg import fleet, jobs, storage
from labseg.jobs import JobLostError, ReconcileReport
from labseg.jobs import TransientJobError as TransientJobError  # raised by run_job, for its callers
from labseg.refusals import Refused, is_disk_full
from scans.models import Scan
from scans.services import delete_partial

from .models import InferenceJob, LabDefaultModel, Lesion, ModelVersion, Prediction, StructureVolume

logger = logging.getLogger(__name__)

#: Claims per job before it fails for good (transient errors and lost workers both count).
MAX_ATTEMPTS = jobs.max_attempts()


class ModelSyncError(Exception):
    """The model folders disagree with the registry (e.g. new weights under an old version)."""


class NoModelAvailableError(Refused):
    """No model is registered for what was asked."""

    status = 503


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
            if ModelVersion.objects.filter(pk=chosen.pk, is_default=False).update(is_default=True):
                audit.record(
                    AuditEvent.Action.MODEL_MADE_DEFAULT,
                    target=chosen,
                    detail={"task": task, "via": "sync_models"},
                )
        report.defaults[task] = chosen.label
    if conflicts:
        raise ModelSyncError("; ".join(conflicts))
    return report


def default_model_versions(lab: Any = None) -> list[ModelVersion]:
    """The default model of every task (organs first, so their labels are there for lesions):
    the lab's own where it promoted one (``LabDefaultModel``), else the shipped default."""
    chosen = {mv.task: mv for mv in ModelVersion.objects.filter(is_default=True, lab__isnull=True)}
    if lab is not None:
        for row in LabDefaultModel.objects.filter(lab=lab).select_related("model_version"):
            chosen[row.task] = row.model_version
    return sorted(chosen.values(), key=lambda mv: mv.task != "organs")


def lab_default(lab: Any, task: str) -> ModelVersion | None:
    """The model ``lab`` uses for ``task`` now."""
    return next((mv for mv in default_model_versions(lab) if mv.task == task), None)


def model_folder(model_version: ModelVersion) -> Path:
    """Where this version's files are on this machine: the registered folder, else under the root;
    a lab's model (stored, not shipped) is copied once from storage into ``VAR_DIR/models``."""
    folder = Path(model_version.folder)
    if folder.is_dir():
        return folder
    if model_version.stored_prefix:
        return _fetch_stored_model(model_version)
    return models_root() / model_version.name / model_version.version


def _fetch_stored_model(model_version: ModelVersion) -> Path:
    from inference.registry import file_sha256

    local = Path(settings.VAR_DIR) / "models" / model_version.name / model_version.version
    onnx_path = local / "model.onnx"
    if onnx_path.exists() and file_sha256(onnx_path) == model_version.sha256:
        return local
    local.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{model_version.version}-", dir=local.parent))
    prefix = model_version.stored_prefix.rstrip("/")
    _, names = default_storage.listdir(prefix)
    for name in names:
        with default_storage.open(f"{prefix}/{name}", "rb") as source, (tmp / name).open("wb") as target:
            shutil.copyfileobj(source, target)
    if local.exists():
        shutil.rmtree(local, ignore_errors=True)
    tmp.rename(local)
    return local


def queue_for(model_version: ModelVersion) -> str:
    """``gpu`` when this server runs models on CUDA, the model card asks for a GPU, or a live worker
    consumes the ``gpu`` queue (``labseg.fleet.gpu_workers_up``, cached a few seconds); else ``cpu``."""
    device = str(settings.LABSEG_DEVICE).lower()
    wants_gpu = str(model_version.card.get("device", "")).lower() in ("cuda", "gpu")
    if device in ("cuda", "gpu") or wants_gpu:
        return "gpu"
    return "gpu" if fleet.gpu_workers_up() else "cpu"


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
    versions = list(model_versions) if model_versions is not None else default_model_versions(scan.lab)
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
            transaction.on_commit(partial(enqueue_job, job_id=job.pk))
        jobs.append(job)
    return jobs


def enqueue_job(*, job_id: int) -> bool:
    """Send the job's id to its queue. A broker that is down is logged, not raised: the job stays
    queued in the database and the reconciler sends it again."""
    return jobs.enqueue(InferenceJob, job_id)


def cancel_job(*, job: InferenceJob, user: Any = None) -> bool:
    """Cancel a queued or running job; a running worker stops at its next heartbeat or stage."""
    who = getattr(user, "username", "") or "an administrator"
    with transaction.atomic():
        updated = InferenceJob.objects.filter(pk=job.pk, state__in=jobs.ACTIVE).update(
            state=InferenceJob.State.CANCELLED,
            stage="cancelled",
            finished_at=timezone.now(),
            error=f"Cancelled by {who}.",
        )
        if updated == 1:
            audit.record(
                AuditEvent.Action.JOB_CANCELLED,
                lab=job.scan.lab,
                actor=user,
                target=job,
                detail={"scan": job.scan_id, "model": job.model_version.label},
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


# --------------------------------------------------------------------------------------------
# Running a job (called by the worker)
# --------------------------------------------------------------------------------------------


def claim_job(job_id: int, *, worker_host: str, stale_after_s: float | None = None) -> InferenceJob | None:
    """Compare-and-set claim (``labseg.jobs.claim``): a queued job, or a running one whose worker
    stopped heartbeating. None when another worker got there first, the job is finished or
    cancelled, or its worker is still alive."""
    return jobs.claim(
        InferenceJob,
        job_id,
        worker_host=worker_host,
        stale_after_s=stale_after_s,
        related=("scan", "model_version"),
    )


def run_job(job_id: int, *, worker_host: str | None = None) -> InferenceJob | None:
    """Claim the job, segment its scan and record the prediction (through ``labseg.jobs.run``).

    Returns the job as it ended, or None when this worker did not get the claim. Raises
    ``TransientJobError`` (after putting the job back to queued) when a retry may help.
    """
    return jobs.run(
        InferenceJob,
        job_id,
        worker_host=worker_host or socket.gethostname(),
        work=_execute,
        failure_message=_failure_message,
        transient=_is_transient,
        related=("scan", "model_version"),
    )


# The heartbeat of a job run; kept under its old name for callers that check a stale claim.
_Heartbeat = jobs.Heartbeat


def _execute(job: InferenceJob, heartbeat: jobs.Heartbeat) -> None:
    from inference.pipeline import segment_file

    seconds: dict[str, float] = {}
    progress = heartbeat.progress

    cards = _cards_for(job.model_version, job.scan.lab)
    tasks = tuple(card.task for card in cards)
    with tempfile.TemporaryDirectory(prefix=f"labseg-job{job.pk}-") as tmp:
        tmp_dir = Path(tmp)
        started = time.perf_counter()
        progress(1, "download")
        # The worker's own copy, read through storage (S3: one streamed GET): no shared disk needed.
        scan_path = storage.copy_to(job.scan.file.name, tmp_dir / Path(job.scan.file.name).name)
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


def _cards_for(model_version: ModelVersion, lab: Any = None) -> list[Any]:
    """The model cards to run: the job's model, plus the lab's default organ model for a lesion model
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
    organs = lab_default(lab, ModelVersion.Task.ORGANS)
    if organs is None:
        raise _PermanentError(
            f"Model {model_version.label} allocates lesions to organs, but no organ model is installed. "
            "An administrator should run `manage.py sync_models`."
        )
    return [load_card(model_folder(organs)), card]


def _store(local: Path, name: str, stored: list[str]) -> str:
    """Store ``local`` as the new file ``name``; a copy that fails half-way (a full disk) is deleted
    at once, not left holding the space (the attempt's folder is new, so the name was free)."""
    try:
        with local.open("rb") as handle:
            saved = default_storage.save(name, File(handle, name=local.name))
    except BaseException:
        delete_partial(name)
        raise
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
        if not jobs.finish(job, InferenceJob.State.SUCCEEDED, stage_seconds=seconds):
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
                anchor_x_mm=row.anchor_mm[0] if row.anchor_mm else None,
                anchor_y_mm=row.anchor_mm[1] if row.anchor_mm else None,
                anchor_z_mm=row.anchor_mm[2] if row.anchor_mm else None,
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
    """Connection errors (``labseg.jobs.is_transient``), and storage errors other than a missing or
    unreadable file: an S3 bucket or a network share that is briefly unreachable."""
    if jobs.is_transient(exc) or isinstance(exc, OperationalError | InterfaceError):
        return True
    permanent_os = (FileNotFoundError, IsADirectoryError, NotADirectoryError, gzip.BadGzipFile)
    return isinstance(exc, OSError) and not isinstance(exc, permanent_os)


def _failure_message(job: InferenceJob, exc: BaseException) -> str:
    from inference.pipeline.intensity import IntensityCalibrationError
    from inference.registry import ModelCardError

    # The pipeline's refusal of a scan it cannot read as HU, or of one that holds only air, is
    # already written for the researcher.
    if isinstance(exc, _PermanentError | IntensityCalibrationError):
        return str(exc)
    if isinstance(exc, ModelCardError):
        return (
            f"Model {job.model_version.label} could not be loaded: {exc}. "
            "An administrator should re-install the model folder and run `manage.py sync_models`."
        )
    if is_disk_full(exc):
        return (
            "The server's disk is full, so this segmentation could not be stored (nothing of it was "
            "kept). Ask your administrator to free space, then queue it again."
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


# --------------------------------------------------------------------------------------------
# Reconciling (periodic, through beat)
# --------------------------------------------------------------------------------------------


def reconcile_jobs(*, timeout_s: float, enqueue: Callable[..., bool] | None = None) -> ReconcileReport:
    """Re-queue jobs whose worker stopped heartbeating and resend jobs queued past ``timeout_s``
    (``labseg.jobs.reconcile`` for segmentation jobs; ``enqueue(job_id=...)`` sends one)."""
    return jobs.reconcile(InferenceJob, timeout_s=timeout_s, send=enqueue or enqueue_job)
