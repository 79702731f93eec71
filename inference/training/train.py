"""``python -m inference.training.train --task organs|tumor --data DIR --out DIR``.

Trains the lean 3D U-Net of ``network.py`` on cached coarse phantoms (``data.py``), with the
partial-label loss (``losses.py``), augmentation (scale, intensity, noise, clipping as in the
tumor database) and the annotator-disagreement head, then exports ``model.onnx`` + ``model.json``
into ``--out``. CPU by default (``--device auto`` takes CUDA when present).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 (the idiom every PyTorch reader knows)

from inference.training.crop_stream import crop_batches
from inference.training.data import Case, load_cases
from inference.training.losses import disagreement_loss, partial_label_loss
from inference.training.network import UNet3D
from inference.training.synth_pool import SynthPool
from inference.training.tasks import TASKS, TaskSpec
from inference.training.warm_start import load_exported

log = logging.getLogger(__name__)

#: A volume as numpy reads it or as torch trains on it; helpers give back what they are given.
_Volume = TypeVar("_Volume", np.ndarray, torch.Tensor)


@dataclass
class TrainConfig:
    epochs: int = 40
    batch: int = 2
    lr: float = 3e-3
    max_minutes: float = 30.0
    seed: int = 0
    threads: int = 2
    device: str = "auto"
    partial_label_rate: float = 0.3
    #: Share of organ crops centred on a structure chosen uniformly (the rest are uniform crops).
    class_balanced_rate: float = 0.5
    #: Extra Gaussian noise, standard deviation drawn uniformly from 0 to this (HU), added to the
    #: block-averaged crops. The pipeline box-averages a scan onto the model grid as the cache
    #: does, so the crops already hold the phantom's own residual noise; this is robustness to
    #: noisier scanners. Models before mouse-organs 1.6.0 were fed point-sampled scans and trained
    #: with 35 HU to match them.
    noise_hu: float = 12.0
    #: Share of crops drawn from domain-randomised volumes when a synth pool is given.
    synth_rate: float = 0.65
    #: Processes that make the batches (``crop_stream.py``; for a GPU); 0 makes them in line.
    loader_workers: int = 0
    #: Steps between progress checks and checkpoints; 0 for one pass over the cases.
    steps_per_epoch: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    #: Synthetic volumes each batch-making worker drew (filled in by ``train``).
    synth_drawn: dict[int, int] = field(default_factory=dict)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def normalise(hu: _Volume, spec: TaskSpec) -> _Volume:
    """Window [low_hu, high_hu] scaled to 0..1 (model.json's ``normalisation``)."""
    scaled = (hu - spec.low_hu) / (spec.high_hu - spec.low_hu)
    return scaled.clip(0.0, 1.0)


def _crop(array: np.ndarray, start: np.ndarray, size: np.ndarray, fill: float) -> np.ndarray:
    """``array[..., start:start+size]`` over the last three axes, padded with ``fill`` outside."""
    lead = array.shape[:-3]
    out = np.full((*lead, *size), fill, dtype=np.float32)
    src_lo = np.maximum(start, 0)
    src_hi = np.minimum(start + size, array.shape[-3:])
    if np.any(src_hi <= src_lo):
        return out
    dst_lo = src_lo - start
    dst_hi = dst_lo + (src_hi - src_lo)
    out[..., dst_lo[0] : dst_hi[0], dst_lo[1] : dst_hi[1], dst_lo[2] : dst_hi[2]] = array[
        ..., src_lo[0] : src_hi[0], src_lo[1] : src_hi[1], src_lo[2] : src_hi[2]
    ]
    return out


def class_voxels(case: Case) -> dict[int, np.ndarray]:
    """Coarse voxel indices of each foreground channel the case holds (>= half a voxel), cached."""
    if case.class_voxels is None:
        case.class_voxels = {
            c: idx
            for c in range(1, case.fractions.shape[0])
            if len(idx := np.argwhere(case.fractions[c] >= 128)) > 0
        }
    return case.class_voxels


def sample_batch(
    cases: list[Case],
    spec: TaskSpec,
    cfg: TrainConfig,
    rng: np.random.Generator,
    synth: list[Case] | None = None,
) -> tuple[torch.Tensor, ...]:
    """A batch of augmented crops: (image, fractions, labelled, weight, disagreement).

    With ``synth`` (domain-randomised volumes, ``inference/phantom/synth.py``) each crop comes
    from it with probability ``cfg.synth_rate``, otherwise from ``cases``.
    """
    size = np.array(spec.crop)
    k = len(spec.structures)
    images, targets, labelled, weights, disagree = [], [], [], [], []
    for _ in range(cfg.batch):
        pool = synth if synth and rng.random() < cfg.synth_rate else cases
        case = pool[int(rng.integers(len(pool)))]
        scale = rng.uniform(0.88, 1.12) * rng.uniform(0.96, 1.04, size=3)
        src = np.maximum(np.rint(size * scale).astype(int), 8)
        shape = np.array(case.ct.shape)
        fg = case.fractions[1:].max(axis=0) if spec.task == "tumor" else None
        where = class_voxels(case) if spec.task == "organs" else {}
        if fg is not None and rng.random() < 0.7 and fg.any():
            idx = np.argwhere(fg > 0)
            centre = idx[int(rng.integers(len(idx)))] + rng.integers(-12, 13, size=3)
            start = centre - src // 2
        elif where and rng.random() < cfg.class_balanced_rate:
            # nnU-Net-style oversampling: centre on a structure picked uniformly among those the
            # case holds, so small organs (bladder, spleen) are seen as often as the liver.
            idx = where[list(where)[int(rng.integers(len(where)))]]
            centre = idx[int(rng.integers(len(idx)))] + rng.integers(-8, 9, size=3)
            start = centre - src // 2
        else:
            start = np.array(
                [
                    int(rng.integers(min(0, shape[i] - src[i]), max(shape[i] - src[i], 0) + 1))
                    for i in range(3)
                ]
            )
        ct = _crop(case.ct, start, src, -1000.0)
        frac = _crop(case.fractions, start, src, 0.0) / 255.0
        outside = frac.sum(axis=0) == 0
        frac[0][outside] = 1.0
        ign = _crop(case.ignore, start, src, 0.0) / 255.0
        dis = _crop(case.disagreement, start, src, 0.0) / 255.0
        stack = torch.from_numpy(np.concatenate([ct[None], frac, ign[None], dis[None]]))[None]
        stack = F.interpolate(stack, size=tuple(int(s) for s in size), mode="trilinear", align_corners=False)[
            0
        ]
        ct_t, frac_t, ign_t, dis_t = stack[0], stack[1 : 1 + k], stack[1 + k], stack[2 + k]
        # Intensity: scanner calibration drift, extra noise (``noise_hu``), tumor-DB clipping.
        ct_t = ct_t * float(rng.uniform(0.95, 1.05)) + float(rng.normal(0, 15))
        gen = torch.Generator().manual_seed(int(rng.integers(2**31)))
        ct_t = ct_t + torch.randn(ct_t.shape, generator=gen) * float(rng.uniform(0, cfg.noise_hu))
        if spec.task == "organs" and rng.random() < 0.2:
            ct_t = ct_t.clamp(-400, 1000)
        lab = (
            torch.ones(k, dtype=torch.bool)
            if case.labelled is None
            else torch.from_numpy(case.labelled.copy())
        )
        if rng.random() < cfg.partial_label_rate:
            drop = rng.choice(np.arange(1, k), size=int(rng.integers(1, min(4, k - 1) + 1)), replace=False)
            lab[torch.from_numpy(drop)] = False
        images.append(normalise(ct_t, spec)[None])
        targets.append(frac_t)
        labelled.append(lab)
        weights.append((1.0 - ign_t).clamp(0, 1)[None])
        disagree.append(dis_t.clamp(0, 1)[None])
    return (
        torch.stack(images),
        torch.stack(targets),
        torch.stack(labelled),
        torch.stack(weights),
        torch.stack(disagree),
    )


def pad_to(x: torch.Tensor, multiple: int, value: float) -> tuple[torch.Tensor, tuple[int, int, int]]:
    shape = x.shape[-3:]
    padded = [math.ceil(s / multiple) * multiple for s in shape]
    pad = []
    for s, p in zip(reversed(shape), reversed(padded), strict=True):
        pad += [0, p - s]
    return F.pad(x, pad, value=value), tuple(shape)  # type: ignore[return-value]


@torch.no_grad()
def coarse_dice(model: UNet3D, cases: list[Case], spec: TaskSpec, device: torch.device) -> dict[str, float]:
    """Median Dice per channel on whole coarse volumes (a quick progress check, not the evaluation)."""
    model.eval()
    scores: dict[int, list[float]] = {}
    for case in cases:
        x = torch.from_numpy(np.asarray(normalise(case.ct, spec), dtype=np.float32))[None, None]
        x, shape = pad_to(x, model.divisible_by, 0.0)
        logits, _ = model(x.to(device))
        pred = logits[0, :, : shape[0], : shape[1], : shape[2]].argmax(0).cpu().numpy()
        truth = case.fractions.argmax(0)
        for c in range(1, len(spec.structures)):
            t, p = truth == c, pred == c
            if t.sum() > 0:
                scores.setdefault(spec.structures[c], []).append(
                    2 * float((t & p).sum()) / (t.sum() + p.sum())
                )
    model.train()
    return {str(k): round(float(np.median(v)), 3) for k, v in scores.items()}


def train(
    spec: TaskSpec,
    cases: list[Case],
    cfg: TrainConfig,
    *,
    val: list[Case] | dict[str, list[Case]] | None = None,
    checkpoint: Path | None = None,
    init: Path | None = None,
    synth: SynthPool | None = None,
    checkpoint_every: int = 0,
) -> UNet3D:
    """Train a model; stops after ``cfg.epochs`` epochs or ``cfg.max_minutes``, whichever first.

    ``synth``: a pool of domain-randomised volumes (``synth_pool.py``) mixed into the crops at
    ``cfg.synth_rate``; ``checkpoint_every``: also keep ``checkpoint-eNNN.pt`` every that many
    epochs beside ``checkpoint`` (to evaluate a run's course afterwards)."""
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    rng = np.random.default_rng(cfg.seed)
    device = pick_device(cfg.device)
    model = UNet3D(len(spec.structures), base=spec.base_channels)
    if init is not None and init.suffix == ".onnx":
        # A committed model: rebuilt from its folded weights, BatchNorm statistics re-measured.
        diff = load_exported(model, init, [sample_batch(cases, spec, cfg, rng)[0] for _ in range(8)])
        log.info("warm start from %s (max difference to ONNX Runtime %.2g)", init, diff)
    elif init is not None:
        model.load_state_dict(torch.load(init, map_location="cpu")["state"])
    # channels-last: oneDNN's 3D convolution backward is 5-10x faster on CPU in this layout.
    # torch's typed overloads of Module.to omit memory_format, which Module.to documents and takes.
    model = model.to(device=device, memory_format=torch.channels_last_3d)  # type: ignore[call-overload]
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=1e-4)
    iters_per_epoch = cfg.steps_per_epoch or max(len(cases) // cfg.batch, 1)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed crop size: let cuDNN pick its fastest kernels
    batches = crop_batches(cases, spec, cfg, synth, pin=device.type == "cuda") if cfg.loader_workers else None
    total = cfg.epochs * iters_per_epoch
    t0 = time.monotonic()
    step = 0
    for epoch in range(cfg.epochs):
        losses = []
        for _ in range(iters_per_epoch):
            # Cosine decay over whichever budget (steps or minutes) runs out first.
            progress = max(step / total, (time.monotonic() - t0) / (60 * cfg.max_minutes))
            for group in opt.param_groups:
                group["lr"] = cfg.lr * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))
            if batches is not None:
                tensors, (worker, drawn) = next(batches)
                cfg.synth_drawn[worker] = drawn
            else:
                if synth is not None:
                    synth.step(step)
                    cfg.synth_drawn[0] = synth.drawn
                tensors = sample_batch(cases, spec, cfg, rng, synth.cases if synth else None)
            image, target, labelled, weight, disagree = (t.to(device, non_blocking=True) for t in tensors)
            image = image.contiguous(memory_format=torch.channels_last_3d)
            logits, dis_logit = model(image)
            loss = partial_label_loss(logits, target, labelled, weight) + disagreement_loss(
                dis_logit, disagree
            )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
            step += 1
            if time.monotonic() - t0 >= 60 * cfg.max_minutes:
                break  # a long epoch (``steps_per_epoch``) must not outrun the time budget
        minutes = (time.monotonic() - t0) / 60
        entry: dict[str, object] = {
            "epoch": epoch + 1,
            "loss": round(float(np.mean(losses)), 4),
            "minutes": round(minutes, 2),
        }
        if val and ((epoch + 1) % 5 == 0 or epoch + 1 == cfg.epochs or minutes >= cfg.max_minutes):
            if isinstance(val, dict):
                entry["val_dice"] = {k: coarse_dice(model, v, spec, device) for k, v in val.items()}
            else:
                entry["val_dice"] = coarse_dice(model, val, spec, device)
        cfg.history.append(entry)  # type: ignore[arg-type]
        log.info("%s", json.dumps(entry))
        if checkpoint is not None:
            torch.save({"state": model.state_dict(), "task": spec.task, "epoch": epoch + 1}, checkpoint)
            if checkpoint_every and (epoch + 1) % checkpoint_every == 0:
                torch.save(
                    {"state": model.state_dict(), "task": spec.task, "epoch": epoch + 1},
                    checkpoint.with_name(f"{checkpoint.stem}-e{epoch + 1:03d}.pt"),
                )
        if minutes >= cfg.max_minutes:
            log.info("time budget of %.0f minutes reached after %d epochs", cfg.max_minutes, epoch + 1)
            break
    if batches is not None:
        batches.close()  # ends the DataLoader's worker processes now, not at garbage collection
    model.eval()
    return model.to(memory_format=torch.contiguous_format)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m inference.training.train", description=__doc__)
    parser.add_argument("--task", choices=sorted(TASKS), required=True)
    parser.add_argument("--data", type=Path, required=True, help="flat-layout phantom folder (training)")
    parser.add_argument("--val", type=Path, help="optional flat-layout folder for progress Dice")
    parser.add_argument("--out", type=Path, required=True, help="model version folder to write")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--max-minutes", type=float, default=30.0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--version", default="1.0.0")
    parser.add_argument(
        "--init", type=Path, help="start from this checkpoint.pt or exported model.onnx (fine-tuning)"
    )
    parser.add_argument("--lr", type=float, default=3e-3, help="peak learning rate (1e-3 to fine-tune)")
    parser.add_argument(
        "--noise-hu", type=float, default=TrainConfig.noise_hu, help="extra noise augmentation, max sd in HU"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    from inference.training.export import export_model

    spec = TASKS[args.task]
    cases = load_cases(args.data, spec)
    val = load_cases(args.val, spec) if args.val else None
    cfg = TrainConfig(
        epochs=args.epochs,
        max_minutes=args.max_minutes,
        device=args.device,
        threads=args.threads,
        seed=args.seed,
        lr=args.lr,
        noise_hu=args.noise_hu,
    )
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    model = train(spec, cases, cfg, val=val, checkpoint=args.out / "checkpoint.pt", init=args.init)
    seconds = time.monotonic() - t0
    training = {
        "data": f"{len(cases)} phantoms in {args.data} ({', '.join(c.name for c in cases[:2])} ...)",
        "seeds": {"training": args.seed, "phantoms": sorted(c.name for c in cases)},
        "epochs": len(cfg.history),
        "seconds": round(seconds, 1),
        "device": str(pick_device(args.device)),
        "noise_hu": cfg.noise_hu,
        "command": "python -m inference.training.train " + " ".join(sys.argv[1:] if argv is None else argv),
        "history": cfg.history,
    }
    export_model(
        model, spec, args.out, version=args.version, input_spacing_mm=cases[0].spacing_mm, training=training
    )


if __name__ == "__main__":
    main()
