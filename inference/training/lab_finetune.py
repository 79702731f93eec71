"""Fine-tune a model on a lab's own approved labels, resumable epoch by epoch (``retraining``).

The lab's scans arrive as NIfTI pairs (the scan, and a label map of canonical ids on its grid)
with the structures the label map covers (a scan that labels only the tumor trains only the tumor:
the partial-label loss of ``losses.py``). Each pair is read as the pipeline reads it (values
mapped to HU by ``pipeline.intensity``, canonical axes from the header) and resampled to the
model's grid, then trained with the augmentation of ``train.sample_batch``.

``finetune`` starts from an exported ``model.onnx`` (``warm_start.load_exported``; the lab's
current default) or from scratch, writes a checkpoint after every epoch (model, optimiser, random
state, history, seconds spent) and resumes from it when given one: a worker that restarts loses
at most the epoch it was in. Time and memory limits are checked at every step.
"""

from __future__ import annotations

import json
import math
import resource
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import nibabel as nib
import numpy as np
import torch
from scipy import ndimage

from inference.jsonsafe import finite_or_null
from inference.pipeline.intensity import intensity_for
from inference.registry import ModelCard
from inference.training.data import Case, block_mean
from inference.training.losses import disagreement_loss, partial_label_loss
from inference.training.network import UNet3D
from inference.training.tasks import TaskSpec
from inference.training.train import TrainConfig, coarse_dice, pick_device, sample_batch
from inference.training.warm_start import load_exported


class LimitExceededError(RuntimeError):
    """The run went past its time or memory limit; the message says which, in plain words."""


@dataclass(frozen=True)
class LabItem:
    """One training scan: its file, its label map (canonical ids, same grid) and what it labels."""

    name: str
    ct_path: Path
    label_path: Path
    labelled_ids: tuple[int, ...]


@dataclass
class FinetuneConfig:
    epochs: int = 10
    steps_per_epoch: int = 8
    batch: int = 2
    lr: float = 1e-4  # fine-tuning a converged model; 3e-3 from scratch
    seed: int = 0
    threads: int = 2
    device: str = "auto"
    max_seconds: float = 3600.0
    max_memory_mb: float = 0.0  # 0: no limit
    crop: tuple[int, int, int] | None = None  # None: the task's own crop


@dataclass
class EpochReport:
    epoch: int
    epochs: int
    loss: float
    val_dice: dict[str, float]
    seconds: float

    @property
    def mean_val_dice(self) -> float | None:
        values = [v for v in self.val_dice.values() if math.isfinite(v)]
        return round(float(np.mean(values)), 4) if values else None

    def as_json(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "epochs": self.epochs,
            "loss": round(self.loss, 4),
            "val_dice": self.val_dice,
            "mean_val_dice": self.mean_val_dice,
            "seconds": round(self.seconds, 1),
        }


def _canonical(path: Path) -> tuple[np.ndarray, float]:
    image = cast(nib.Nifti1Image, nib.as_closest_canonical(cast(nib.Nifti1Image, nib.load(str(path)))))
    spacing = float(np.sqrt((image.affine[:3, :3] ** 2).sum(axis=0)).mean())
    return np.asanyarray(image.dataobj), spacing


def _to_grid(array: np.ndarray, source_mm: float, target_mm: float) -> np.ndarray:
    """Box-average by an integer factor when the spacings allow it (as the pipeline and ``data.py``
    do), else linear interpolation."""
    ratio = target_mm / source_mm
    factor = round(ratio)
    if factor >= 1 and abs(ratio - factor) < 0.05:
        return block_mean(array, factor) if factor > 1 else array.astype(np.float32)
    return ndimage.zoom(array.astype(np.float32), 1.0 / ratio, order=1)


def load_item(item: LabItem, spec: TaskSpec, spacing_mm: float) -> Case:
    """``item`` on the model's grid as a training case (HU as the pipeline reads them)."""
    raw, source_mm = _canonical(item.ct_path)
    labels, label_mm = _canonical(item.label_path)
    if labels.shape != raw.shape:
        raise ValueError(f"{item.name}: the label map's grid {labels.shape} is not the scan's {raw.shape}")
    hu = intensity_for(np.asarray(raw, dtype=np.float32), "auto").apply(np.asarray(raw, dtype=np.float32))
    ct = _to_grid(hu, source_mm, spacing_mm)
    labels = np.asarray(labels).astype(np.int32)
    fractions = np.stack(
        [_to_grid((labels == sid).astype(np.float32), label_mm, spacing_mm) for sid in spec.structures]
    )
    ignore = np.zeros(ct.shape, np.float32)
    for sid in spec.ignore:
        ignore += _to_grid((labels == sid).astype(np.float32), label_mm, spacing_mm)
    fractions[0] = 1.0 - fractions[1:].sum(axis=0) - ignore
    np.clip(fractions, 0.0, 1.0, out=fractions)
    labelled = np.array([sid == 0 or sid in item.labelled_ids for sid in spec.structures])
    return Case(
        name=item.name,
        ct=ct.astype(np.float32),
        fractions=np.rint(fractions * 255).astype(np.uint8),
        ignore=np.rint(np.clip(ignore, 0, 1) * 255).astype(np.uint8),
        disagreement=np.zeros(ct.shape, np.uint8),
        spacing_mm=spacing_mm,
        labelled=labelled,
    )


def _fit_crop(spec: TaskSpec, cases: Sequence[Case], crop: tuple[int, int, int] | None) -> TaskSpec:
    """The task with a crop no larger than the smallest case (multiples of 8), or ``crop``."""
    from dataclasses import replace

    if crop is not None:
        return replace(spec, crop=(int(crop[0]), int(crop[1]), int(crop[2])))
    smallest = np.min([c.ct.shape for c in cases], axis=0)
    x, y, z = (max(16, min(s, int(m) // 8 * 8)) for s, m in zip(spec.crop, smallest, strict=True))
    return replace(spec, crop=(x, y, z))


def _train_mode(model: UNet3D, *, freeze_batchnorm: bool) -> None:
    """Training mode; a warm-started model keeps its BatchNorm statistics (a few small batches of
    crops would otherwise drag them away from whole scans, and the model with them)."""
    model.train()
    if freeze_batchnorm:
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm3d):
                module.eval()


def _peak_memory_mb() -> float:
    # ru_maxrss is in KiB on Linux.
    return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) / 1024.0


def finetune(
    spec: TaskSpec,
    train_cases: Sequence[Case],
    val_cases: Sequence[Case],
    cfg: FinetuneConfig,
    *,
    init_onnx: Path | None,
    checkpoint: Path,
    on_step: Callable[[int, int], None] | None = None,
    on_epoch: Callable[[EpochReport, Path], None] | None = None,
) -> tuple[UNet3D, list[dict[str, Any]]]:
    """Train for ``cfg.epochs`` epochs (resuming from ``checkpoint`` when it exists); returns the
    model (eval mode, CPU) and the history, one entry per epoch.

    ``on_step(step, total)`` after each step, ``on_epoch(report, checkpoint)`` after each epoch
    once the checkpoint is written (the caller copies it to storage). Raises ``LimitExceededError``.
    """
    if not train_cases:
        raise ValueError("fine-tuning needs at least one training scan")
    torch.set_num_threads(max(1, cfg.threads))
    device = pick_device(cfg.device)
    run_spec = _fit_crop(spec, train_cases, cfg.crop)
    tcfg = TrainConfig(batch=cfg.batch, lr=cfg.lr, seed=cfg.seed, partial_label_rate=0.0, noise_hu=8.0)
    model = UNet3D(len(spec.structures), base=spec.base_channels)
    rng = np.random.default_rng(cfg.seed)
    torch.manual_seed(cfg.seed)
    start_epoch, spent, history = 0, 0.0, []
    state: dict[str, Any] | None = None
    if checkpoint.exists():
        state = torch.load(checkpoint, map_location="cpu", weights_only=False)
        model.load_state_dict(state["model"])
        rng.bit_generator.state = state["rng"]
        start_epoch, spent, history = int(state["epoch"]), float(state["seconds"]), list(state["history"])
    elif init_onnx is not None:
        batches = [sample_batch(list(train_cases), run_spec, tcfg, rng)[0] for _ in range(4)]
        load_exported(model, init_onnx, batches)
    model = model.to(device)
    warm = state is not None or init_onnx is not None
    _train_mode(model, freeze_batchnorm=warm)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=1e-4)
    if state is not None:
        opt.load_state_dict(state["optimizer"])
    total = cfg.epochs * cfg.steps_per_epoch
    started = time.monotonic() - spent
    for epoch in range(start_epoch, cfg.epochs):
        losses = []
        for i in range(cfg.steps_per_epoch):
            step = epoch * cfg.steps_per_epoch + i
            for group in opt.param_groups:  # cosine decay over the run
                group["lr"] = cfg.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * step / max(total, 1))))
            image, target, labelled, weight, disagree = (
                t.to(device) for t in sample_batch(list(train_cases), run_spec, tcfg, rng)
            )
            logits, dis_logit = model(image)
            loss = partial_label_loss(logits, target, labelled, weight) + 0.1 * disagreement_loss(
                dis_logit, disagree
            )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.item()))
            elapsed = time.monotonic() - started
            if elapsed > cfg.max_seconds:
                raise LimitExceededError(
                    f"The training ran past its time limit of {cfg.max_seconds / 60:.0f} minutes "
                    f"(epoch {epoch + 1} of {cfg.epochs}). Ask for fewer epochs, or an administrator "
                    "can raise LABSEG_TRAIN_MAX_MINUTES."
                )
            if cfg.max_memory_mb and _peak_memory_mb() > cfg.max_memory_mb:
                raise LimitExceededError(
                    f"The training used {_peak_memory_mb():.0f} MB of memory, over its limit of "
                    f"{cfg.max_memory_mb:.0f} MB. Use smaller scans, or an administrator can raise "
                    "LABSEG_TRAIN_MAX_MEMORY_MB."
                )
            if on_step is not None:
                on_step(step + 1, total)
        val = coarse_dice(model, list(val_cases), spec, device) if val_cases else {}
        _train_mode(model, freeze_batchnorm=warm)
        report = EpochReport(epoch + 1, cfg.epochs, float(np.mean(losses)), val, time.monotonic() - started)
        history.append(report.as_json())
        tmp = checkpoint.with_suffix(".tmp")
        torch.save(
            {
                "model": model.state_dict(),
                "optimizer": opt.state_dict(),
                "rng": rng.bit_generator.state,
                "epoch": epoch + 1,
                "seconds": report.seconds,
                "history": history,
            },
            tmp,
        )
        tmp.replace(checkpoint)
        if on_epoch is not None:
            on_epoch(report, checkpoint)
    model.eval()
    return model.cpu(), history


def export_candidate(
    model: UNet3D,
    spec: TaskSpec,
    out: Path,
    *,
    name: str,
    version: str,
    spacing_mm: float,
    parent: ModelCard | None,
    training: dict[str, Any],
) -> Path:
    """Export ``model`` as a model folder named ``name@version``; the parent's post-processing
    (and the files it names, such as an outline refiner) is kept, since the lab's scans go through
    the same pipeline. Returns the folder."""
    from inference.training.export import export_model, sha256_of

    export_model(model, spec, out, version=version, training=training, input_spacing_mm=spacing_mm)
    card_path = out / "model.json"
    card = json.loads(card_path.read_text())
    card["name"] = name
    if parent is not None:
        parent_json = json.loads((parent.folder / "model.json").read_text())
        if parent_json.get("normalisation") != card["normalisation"]:
            card["normalisation"] = parent_json["normalisation"]
        for key in ("postprocess", "refiners"):
            if key in parent_json:
                card[key] = parent_json[key]
        for extra in parent.folder.iterdir():
            if extra.is_file() and extra.name not in ("model.onnx", "model.json"):
                shutil.copy2(extra, out / extra.name)
        card["training"] = {**training, "fine_tuned_from": parent.key, "parent_sha256": parent.sha256}
    card["sha256"] = sha256_of(out / "model.onnx")
    card_path.write_text(json.dumps(finite_or_null(card), indent=1, allow_nan=False) + "\n")
    return out


@dataclass
class ScoreRow:
    """One model on one validation scan and structure."""

    scan: str
    structure_id: int
    dice: float
    hd95_mm: float
    volume_error_pct: float


@dataclass
class Evaluation:
    rows: list[ScoreRow] = field(default_factory=list)


def evaluate_card(card: ModelCard, items: Sequence[LabItem], *, threads: int = 2) -> list[ScoreRow]:
    """Run ``card`` through the product's pipeline on each item and score it against its labels
    (structures the item labels and the model segments)."""
    from inference.pipeline import predict_volume
    from inference.training.evaluate import structure_scores

    rows: list[ScoreRow] = []
    for item in items:
        image = cast(nib.Nifti1Image, nib.load(str(item.ct_path)))
        truth_img = cast(nib.Nifti1Image, nib.load(str(item.label_path)))
        volume = np.asanyarray(image.dataobj).astype(np.float32)
        truth = np.asanyarray(truth_img.dataobj).astype(np.int32)
        spacing = [float(s) for s in image.header.get_zooms()[:3]]
        out = predict_volume(volume, image.affine, [card], threads=threads, device="cpu")
        for sid in card.structures[1:]:
            if sid not in item.labelled_ids or not (truth == sid).any():
                continue
            s = structure_scores(out.labels == sid, truth == sid, spacing)
            rows.append(ScoreRow(item.name, int(sid), s["dice"], s["hd95_mm"], s["volume_error_pct"]))
    return rows
