"""The work of one ``TrainingJob`` on a ``train`` worker (through ``labseg.jobs.run``).

1. Each recorded item becomes a scan file and a label map of canonical ids on its grid: the one
   approved annotation, or the STAPLE consensus of several (``inference.metrics.staple``), per
   structure; the recorded sha256s must still hold.
2. ``inference.training.lab_finetune.finetune`` trains from the lab's model of the time (or from
   scratch), reporting epoch, loss and validation Dice as the job's progress; after every epoch
   the checkpoint goes to storage, so a re-claimed job (worker restart) resumes from it.
3. The candidate is exported (ONNX + model.json), stored under the lab's folder and registered as
   a ``ModelVersion`` of that lab (not the default: a lab admin promotes it).
4. Candidate and base model run through the product's pipeline on the frozen validation scans;
   the comparison (per structure: median Dice, HD95, volume error, Wilcoxon signed-rank, the
   annotators' own agreement) is stored on the job for the comparison page.

Torch is imported inside these functions only: the web process imports this module's callers.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import tempfile
from itertools import combinations
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from django.conf import settings
from django.core.files import File
from django.core.files.storage import default_storage
from django.db import transaction

from labseg import jobs
from scans.models import Annotation, Scan
from segmentation import services as segmentation
from segmentation.models import ModelVersion

from .models import TrainingItem, TrainingJob

logger = logging.getLogger(__name__)


class TrainingInputError(Exception):
    """The set changed under the job, or its files cannot be read; the message says what to do."""


def run_training(job_id: int, *, worker_host: str) -> TrainingJob | None:
    return jobs.run(
        TrainingJob,
        job_id,
        worker_host=worker_host,
        work=_execute,
        failure_message=_failure_message,
        related=("training_set", "training_set__lab", "base_model"),
    )


def _failure_message(job: TrainingJob, exc: BaseException) -> str:
    from inference.training.lab_finetune import LimitExceededError

    if isinstance(exc, TrainingInputError | LimitExceededError):
        return str(exc)
    return f"The training failed during '{job.stage or 'starting'}': {type(exc).__name__}: {exc}"


# --------------------------------------------------------------------------------------------
# Items as files
# --------------------------------------------------------------------------------------------


def _label_map(item: dict[str, Any], scan: Scan) -> tuple[np.ndarray, list[np.ndarray]]:
    """The item's label map (canonical ids) and, per structure with several annotators, nothing
    else; also every annotator's own map for the human baseline."""
    from inference import metrics
    from review.files import label_values, load_label_map

    ids = [a["id"] for a in item["annotations"]]
    annotations = {a.pk: a for a in Annotation.objects.filter(pk__in=ids, scan=scan)}
    maps: list[tuple[Any, dict[int, int]]] = []
    for recorded in item["annotations"]:
        annotation = annotations.get(recorded["id"])
        if annotation is None or annotation.sha256 != recorded["sha256"]:
            raise TrainingInputError(
                f"Annotation {recorded['id']} of scan {scan.pk} changed or was deleted after the training "
                "was asked for. Ask for the training again: the set is re-read then."
            )
        if annotation.status != Annotation.Status.APPROVED:
            raise TrainingInputError(
                f"Annotation {annotation.pk} of scan {scan.pk} is no longer approved. "
                "Ask for the training again."
            )
        label_map = load_label_map(annotation.file)
        maps.append((label_map, label_values(annotation.structures, label_map.data)))
    shape = tuple(scan.shape)
    out = np.zeros(shape, np.uint8)
    per_annotator = [np.zeros(shape, np.uint8) for _ in maps]
    for sid in sorted(int(s) for s in item["structures"]):
        masks = []
        for index, (label_map, values) in enumerate(maps):
            if sid in values:
                mask = np.asarray(label_map.data) == values[sid]
                masks.append(mask)
                per_annotator[index][mask] = sid
        if not masks:
            continue
        mask = masks[0] if len(masks) == 1 else metrics.staple(masks).consensus()
        out[mask] = sid
    return out, per_annotator if len(maps) > 1 else []


def _materialise(job: TrainingJob, folder: Path) -> tuple[list[Any], list[Any], dict[str, list[float]]]:
    """Training and validation ``LabItem``s in ``folder``, and the annotators' pairwise Dice per
    structure on the validation scans (the human baseline)."""
    from inference.metrics import dice
    from inference.training.lab_finetune import LabItem

    train, val = [], []
    baseline: dict[str, list[float]] = {}
    scans = {s.pk: s for s in Scan.objects.filter(pk__in=[i["scan"] for i in job.items])}
    for item in job.items:
        scan = scans.get(item["scan"])
        if scan is None or scan.deleted_at is not None or scan.sha256 != item["scan_sha256"]:
            raise TrainingInputError(
                f"Scan {item['scan']} was deleted or replaced after the training was asked for. "
                "Ask for the training again."
            )
        labels, annotators = _label_map(item, scan)
        ct_path = folder / f"scan{scan.pk}{''.join(Path(scan.file.name).suffixes[-2:]) or '.nii.gz'}"
        with scan.file.open("rb") as source, ct_path.open("wb") as target:
            shutil.copyfileobj(source, target, length=8 * 1024 * 1024)
        affine = np.asarray(scan.affine, dtype=np.float64)
        label_path = folder / f"labels{scan.pk}.nii.gz"
        nib.save(nib.Nifti1Image(labels, affine), str(label_path))
        lab_item = LabItem(f"scan{scan.pk}", ct_path, label_path, tuple(int(s) for s in item["structures"]))
        if item["split"] == TrainingItem.Split.VALIDATION:
            val.append(lab_item)
            for sid in item["structures"]:
                for a, b in combinations(annotators, 2):
                    if (a == sid).any() or (b == sid).any():
                        baseline.setdefault(str(sid), []).append(float(dice(a == sid, b == sid)))
        else:
            train.append(lab_item)
    return train, val, baseline


# --------------------------------------------------------------------------------------------
# The work
# --------------------------------------------------------------------------------------------


def _store_folder(local: Path, prefix: str) -> None:
    for path in sorted(local.iterdir()):
        if path.is_file():
            name = f"{prefix}/{path.name}"
            if default_storage.exists(name):
                default_storage.delete(name)
            with path.open("rb") as handle:
                default_storage.save(name, File(handle, name=path.name))


def _execute(job: TrainingJob, heartbeat: jobs.Heartbeat) -> None:
    from inference.registry import default_model, load_card
    from inference.training.lab_finetune import FinetuneConfig, export_candidate, finetune, load_item
    from inference.training.tasks import TASKS

    training_set = job.training_set
    lab = training_set.lab
    spec = TASKS[training_set.task]
    base = job.base_model
    parent_mv = base or segmentation.lab_default(None, training_set.task)
    parent = load_card(segmentation.model_folder(parent_mv)) if parent_mv else default_model(spec.task)
    spacing = float(parent.input_spacing_mm[0])
    storage_dir = f"labs/{lab.pk}/training/job{job.pk}"
    with tempfile.TemporaryDirectory(prefix=f"labseg-train{job.pk}-") as tmp:
        folder = Path(tmp)
        heartbeat.progress(1, "reading the training set")
        train_items, val_items, baseline = _materialise(job, folder)
        train_cases = [load_item(i, spec, spacing) for i in train_items]
        val_cases = [load_item(i, spec, spacing) for i in val_items]
        checkpoint = folder / "checkpoint.pt"
        if job.checkpoint and default_storage.exists(job.checkpoint):
            with default_storage.open(job.checkpoint, "rb") as source, checkpoint.open("wb") as target:
                shutil.copyfileobj(source, target)
            heartbeat.progress(3, "resuming from the last checkpoint")
        cfg = FinetuneConfig(
            epochs=job.epochs,
            steps_per_epoch=job.steps_per_epoch,
            lr=job.learning_rate,
            seed=job.pk,
            threads=int(settings.LABSEG_TRAIN_THREADS),
            device=str(settings.LABSEG_TRAIN_DEVICE),
            max_seconds=job.max_minutes * 60.0,
            max_memory_mb=job.max_memory_mb,
        )
        history: list[dict[str, Any]] = list(job.history)

        def on_step(step: int, total: int) -> None:
            epoch = (step - 1) // cfg.steps_per_epoch + 1
            heartbeat.progress(5 + 70 * step / total, f"epoch {epoch} of {cfg.epochs}")

        def on_epoch(report: Any, path: Path) -> None:
            name = f"{storage_dir}/checkpoint.pt"
            if default_storage.exists(name):
                default_storage.delete(name)
            with path.open("rb") as handle:
                saved = default_storage.save(name, File(handle, name="checkpoint.pt"))
            history[:] = [h for h in history if h["epoch"] < report.epoch] + [report.as_json()]
            if not heartbeat.beat(history=history, checkpoint=saved):
                raise jobs.JobLostError(job.pk)

        init = load_card(segmentation.model_folder(base)).onnx_path if base is not None else None
        model, history_out = finetune(
            spec, train_cases, val_cases, cfg, init_onnx=init, checkpoint=checkpoint,
            on_step=on_step, on_epoch=on_epoch,
        )  # fmt: skip
        heartbeat.progress(76, "exporting ONNX")
        version = f"lab{lab.pk}.t{job.pk}"
        local = Path(settings.VAR_DIR) / "models" / spec.name / version
        if local.exists():
            shutil.rmtree(local)
        export_candidate(
            model, spec, local, name=spec.name, version=version, spacing_mm=spacing, parent=parent,
            training={
                "lab": lab.pk,
                "training_set": training_set.pk,
                "job": job.pk,
                "items": job.items,
                "history": history_out,
                "from_scratch": base is None,
            },
        )  # fmt: skip
        prefix = f"labs/{lab.pk}/models/{spec.name}/{version}"
        _store_folder(local, prefix)
        card = load_card(local)
        heartbeat.progress(80, "comparing on the frozen validation split")
        comparison = compare(
            base_card=load_card(segmentation.model_folder(parent_mv)) if parent_mv else parent,
            base_label=parent_mv.label if parent_mv else parent.key,
            candidate_card=card,
            items=val_items,
            baseline=baseline,
            progress=lambda p: heartbeat.progress(80 + 18 * p, "comparing on the frozen validation split"),
        )
        with transaction.atomic():
            candidate, _ = ModelVersion.objects.get_or_create(
                name=spec.name,
                version=version,
                defaults={
                    "task": spec.task,
                    "sha256": card.sha256,
                    "structures": list(card.structures),
                    "metrics": {"frozen_validation": comparison["summary"]},
                    "card": json.loads((local / "model.json").read_text()),
                    "folder": str(local),
                    "lab": lab,
                    "stored_prefix": prefix,
                },
            )
            if not jobs.finish(
                job,
                TrainingJob.State.SUCCEEDED,
                candidate=candidate,
                comparison=comparison,
                history=history_out,
            ):
                raise jobs.JobLostError(job.pk)


# --------------------------------------------------------------------------------------------
# Comparison
# --------------------------------------------------------------------------------------------


def _median(values: list[float]) -> float | None:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return round(float(np.median(finite)), 4) if finite else None


def compare(
    *,
    base_card: Any,
    base_label: str,
    candidate_card: Any,
    items: list[Any],
    baseline: dict[str, list[float]],
    progress: Any = None,
) -> dict[str, Any]:
    """Both models on the same validation scans: per structure, per scan scores and summaries."""
    from inference.metrics import wilcoxon_signed_rank
    from inference.structures import by_id
    from inference.training.lab_finetune import evaluate_card

    threads = int(settings.LABSEG_TRAIN_THREADS)
    current = evaluate_card(base_card, items, threads=threads)
    if progress:
        progress(0.5)
    candidate = evaluate_card(candidate_card, items, threads=threads)
    structures: dict[str, Any] = {}
    for sid in sorted({r.structure_id for r in current}):
        cur = {r.scan: r for r in current if r.structure_id == sid}
        cand = {r.scan: r for r in candidate if r.structure_id == sid}
        scans = sorted(set(cur) & set(cand))
        a = [cand[s].dice for s in scans]
        b = [cur[s].dice for s in scans]
        test = wilcoxon_signed_rank(a, b) if scans else None
        structures[str(sid)] = {
            "name": by_id(sid).name,
            "scans": scans,
            "candidate": {
                "dice": a,
                "hd95_mm": [cand[s].hd95_mm for s in scans],
                "volume_error_pct": [cand[s].volume_error_pct for s in scans],
            },
            "current": {
                "dice": b,
                "hd95_mm": [cur[s].hd95_mm for s in scans],
                "volume_error_pct": [cur[s].volume_error_pct for s in scans],
            },
            "median": {
                "candidate": {
                    "dice": _median(a),
                    "hd95_mm": _median([cand[s].hd95_mm for s in scans]),
                    "volume_error_pct": _median([abs(cand[s].volume_error_pct) for s in scans]),
                },
                "current": {
                    "dice": _median(b),
                    "hd95_mm": _median([cur[s].hd95_mm for s in scans]),
                    "volume_error_pct": _median([abs(cur[s].volume_error_pct) for s in scans]),
                },
                "annotators_dice": _median(baseline.get(str(sid), [])),
            },
            "annotators_dice": baseline.get(str(sid), []),
            "wilcoxon": None
            if test is None
            else {
                "p_value": None if math.isnan(test.p_value) else round(test.p_value, 5),
                "n_pairs": test.n_pairs,
                "median_difference": round(test.median_difference, 4),
                "significant": test.significant,
            },
        }

    def mean(key: str) -> float | None:
        return _median(
            [v["median"][key]["dice"] for v in structures.values() if v["median"][key]["dice"] is not None]
        )

    summary = {"candidate_median_dice": mean("candidate"), "current_median_dice": mean("current")}
    return {
        "current_model": base_label,
        "candidate_model": candidate_card.key,
        "validation_scans": [i.name for i in items],
        "structures": structures,
        "summary": summary,
    }
