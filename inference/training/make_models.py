"""``python -m inference.training.make_models``: remake every committed model from nothing.

Phantoms (fixed seeds) -> train the organ and tumor models -> fine-tune them on domain-randomised
volumes (``finetune_synth.py``, ``inference/phantom/synth.py``; ``--no-synth`` skips it, ``--init``
starts it from a committed model instead of a fresh phantom model) -> export to
``inference/models/<name>/<version>/`` -> tune their post-processing on the validation phantoms
(``calibrate.py``) -> train the organ model's outline refiners (``refiner.py``) on its outlines
and tune again -> evaluate on held-out phantoms (native and
contrast-enhanced; seeds never used in training) -> write the metrics into each ``model.json``,
the evaluation summaries and the model card pictures. Phantoms and caches live under ``data/``
(git-ignored) and are reused when present.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import cast

import nibabel as nib
import numpy as np

from inference.jsonsafe import finite_or_null
from inference.phantom.synth import phantom_pool
from inference.phantom.writer import write_dataset
from inference.pipeline import predict_volume
from inference.pipeline.pictures import coronal_slice_png, projection_png
from inference.registry import DEFAULT_MODELS_DIR, load_card
from inference.training.calibrate import calibrate, write_postprocess
from inference.training.data import find_cases, load_cases
from inference.training.evaluate import evaluate
from inference.training.export import export_model
from inference.training.finetune_synth import POOL_SEEDS, finetune
from inference.training.model_card import update_card
from inference.training.refiner import make_refiner
from inference.training.share_weights import share_weights
from inference.training.tasks import TASKS
from inference.training.train import TrainConfig, train

log = logging.getLogger(__name__)

#: Version of each task's committed model (bump when its weights change: the registry refuses a
#: changed sha256 under a version it already knows).
VERSIONS = {"organs": "2.0.0", "tumor": "2.0.0"}
#: (first seed, count, modality) of each phantom set. Test seeds never overlap training ones.
SETS = {
    "train": (1000, 120, "native"),
    "val": (8000, 8, "native"),
    "test_native": (9000, 8, "native"),
    "test_contrast": (9500, 4, "contrast"),
}
#: Training seed and wall-clock budget (minutes on 2 CPU threads) per task.
TRAINING = {"organs": (13, 85.0), "tumor": (12, 30.0)}
#: Domain-randomised fine-tune (``finetune_synth.py``, issue 19) after the phantom training, per
#: task: (seed, minutes on 2 CPU threads, share of synthetic volumes drawn from the Digimouse atlas).
SYNTH = {"organs": (19, 70.0, 0.3), "tumor": (20, 68.0, 0.4)}
#: Outline refiner networks of the organ model (``refiner.py``): structure -> (seed, minutes).
#: Retrained whenever the organ model is (its outlines are their input), or with ``--refine``.
REFINERS = {"intestine": (0, 35.0), "heart": (0, 30.0)}


def ensure_phantoms(root: Path, name: str) -> Path:
    seed, n, modality = SETS[name]
    folder = root / name
    if len(find_cases(folder)) < n:
        log.info("writing %d %s phantoms (seeds %d-%d) to %s", n, modality, seed, seed + n - 1, folder)
        write_dataset(folder, n=n, seed=seed, modality=modality, skip_existing=True)
    return folder


def make_model(
    task: str,
    data: Path,
    out: Path,
    *,
    threads: int,
    device: str,
    epochs: int,
    init: Path | None = None,
    lr: float | None = None,
    minutes: float | None = None,
    noise_hu: float | None = None,
    seed: int | None = None,
) -> Path:
    spec = TASKS[task]
    default_seed, budget = TRAINING[task]
    seed = default_seed if seed is None else seed
    cases = load_cases(data / "train", spec)
    val = load_cases(data / "val", spec)
    cfg = TrainConfig(epochs=epochs, max_minutes=minutes or budget, seed=seed, threads=threads, device=device)
    if lr is not None:
        cfg.lr = lr
    if noise_hu is not None:
        cfg.noise_hu = noise_hu
    first, count, _ = SETS["train"]
    t0 = time.monotonic()
    # The checkpoint (git-ignored, beside the phantoms) lets `train --init` continue a run.
    model = train(spec, cases, cfg, val=val, checkpoint=data / f"checkpoint-{task}.pt", init=init)
    command = "python -m inference.training.make_models --train " + task
    if init is not None:
        command += f" --init {init} --lr {cfg.lr:g} --minutes {cfg.max_minutes:g} --epochs {cfg.epochs}"
    command += f" --noise-hu {cfg.noise_hu:g}"
    if seed != default_seed:
        command += f" --seed {seed}"
    folder = out / spec.name / VERSIONS[task]
    export_model(
        model,
        spec,
        folder,
        version=VERSIONS[task],
        training={
            "data": f"{len(cases)} native phantoms, seeds {first}-{first + count - 1}",
            "seeds": {
                "training": seed,
                "phantoms": list(range(SETS["train"][0], SETS["train"][0] + SETS["train"][1])),
            },
            "epochs": len(cfg.history),
            "seconds": round(time.monotonic() - t0, 1),
            "device": device,
            "command": command,
            "init": str(init) if init is not None else None,
            "lr": cfg.lr,
            "noise_hu": cfg.noise_hu,
            "history": cfg.history,
        },
    )
    return folder


def synth_pool(data: Path) -> None:
    """The phantom label maps that ``finetune_synth`` draws from (training seeds) and checks on
    (two validation seeds), cached under ``data/.cache/synth-sources``."""
    folder = data.parent / ".cache" / "synth-sources"
    phantom_pool(folder, POOL_SEEDS)
    phantom_pool(folder, range(SETS["val"][0], SETS["val"][0] + 2))


def recalibrate(folder: Path, folders: list[Path], data: Path, *, threads: int) -> None:
    """Tune ``folder``'s post-processing on the validation phantoms beside the other models."""
    target = load_card(folder)
    others = [load_card(f) for f in folders if f != folder]
    write_postprocess(folder, calibrate(target, others, find_cases(data / "val"), threads=threads))


def record_metrics(folders: list[Path], data: Path, out: Path, *, threads: int) -> dict[str, dict]:
    """Evaluate organs + tumor together on each test set; metrics go into every model.json."""
    results = {}
    for name in ("test_native", "test_contrast"):
        report = evaluate(folders, data / name, threads=threads)
        results[name] = report["summary"]
        (out / f"evaluation_{name}.json").write_text(
            json.dumps(finite_or_null(report["summary"]), indent=1) + "\n"
        )
    for folder in folders:
        card_path = folder / "model.json"
        card = json.loads(card_path.read_text())
        task_ids = set(card["structures"])
        card["metrics"] = {
            "held_out": {
                k: {"seeds": [SETS[k][0], SETS[k][0] + SETS[k][1] - 1], **_task_part(v, task_ids)}
                for k, v in results.items()
            },
        }
        card_path.write_text(json.dumps(finite_or_null(card), indent=1, allow_nan=False) + "\n")
    return results


def _task_part(summary: dict, ids: set[int]) -> dict:
    from inference.structures import BY_NAME

    part = {"structures": {n: s for n, s in summary["structures"].items() if BY_NAME[n].id in ids}}
    for key in ("tumors", "metastases", "uncertainty_dice", "left_right_swaps", "seconds_median"):
        if key in summary:
            part[key] = summary[key]
    return part


def make_pictures(folders: list[Path], data: Path, out: Path) -> None:
    """Mid-coronal slice (prediction filled, truth outlined) and projection, native and contrast."""
    cards = [load_card(f) for f in folders]
    target = out / "figures"
    target.mkdir(parents=True, exist_ok=True)
    for name in ("test_native", "test_contrast"):
        case = find_cases(data / name)[0]
        image = cast(nib.Nifti1Image, nib.load(str(case / "ct.nii.gz")))  # written by write_dataset
        ct = np.asanyarray(image.dataobj).astype(np.float32)
        truth = np.asanyarray(cast(nib.Nifti1Image, nib.load(str(case / "labels.nii.gz"))).dataobj)
        spacing = image.header.get_zooms()[:3]
        pred = predict_volume(ct, image.affine, cards, threads=2).labels
        kind = name.removeprefix("test_")
        (target / f"{kind}_projection.png").write_bytes(projection_png(ct, spacing, pred, max_size_px=360))
        (target / f"{kind}_coronal.png").write_bytes(
            coronal_slice_png(ct, spacing, pred, truth, y_index=ct.shape[1] // 2, max_size_px=360)
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m inference.training.make_models", description=__doc__)
    parser.add_argument("--data", type=Path, default=Path("data/phantoms"))
    parser.add_argument("--out", type=Path, default=DEFAULT_MODELS_DIR)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--epochs", type=int, default=400, help="upper bound; the time budget usually ends it"
    )
    parser.add_argument("--skip-training", action="store_true", help="re-evaluate the committed models only")
    parser.add_argument(
        "--train",
        nargs="+",
        choices=sorted(TASKS),
        default=["organs", "tumor"],
        help="tasks to retrain (the others' committed models are evaluated as they are)",
    )
    parser.add_argument(
        "--calibrate",
        nargs="*",
        choices=sorted(TASKS),
        default=[],
        help="tasks whose committed model is re-tuned on the validation phantoms (retrained ones always are)",
    )
    parser.add_argument(
        "--init",
        type=Path,
        help="continue from this model.onnx or checkpoint.pt (only with a single --train task)",
    )
    parser.add_argument("--lr", type=float, help="peak learning rate (default 3e-3; 1e-3 to continue)")
    parser.add_argument("--minutes", type=float, help="training budget (default: TRAINING's)")
    parser.add_argument(
        "--noise-hu",
        type=float,
        help=f"extra noise augmentation, max sd in HU (default {TrainConfig.noise_hu:g})",
    )
    parser.add_argument(
        "--seed",
        type=int,
        help="training seed (crops, augmentation); default TRAINING's; a continued run takes a new one",
    )
    parser.add_argument(
        "--refine",
        nargs="*",
        choices=sorted(REFINERS),
        help="organ structures whose outline refiner is retrained (default: all when the organ "
        "model is retrained, none otherwise); the organ model is then recalibrated",
    )
    parser.add_argument(
        "--no-synth",
        action="store_true",
        help="skip the domain-randomised fine-tune (finetune_synth.py) after the phantom training",
    )
    parser.add_argument(
        "--no-digimouse", action="store_true", help="hold the Digimouse atlas out of the synthetic data"
    )
    parser.add_argument(
        "--keep-postprocess",
        action="store_true",
        help="carry the --init model's tuned post-processing over instead of recalibrating",
    )
    args = parser.parse_args(argv)
    if args.init is not None and len(args.train) != 1:
        parser.error("--init continues one model: name its task alone with --train")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    for name in SETS:
        ensure_phantoms(args.data, name)
    retrain = set() if args.skip_training else set(args.train)
    if retrain and not args.no_synth:
        synth_pool(args.data)
    folders = []
    for t in ("organs", "tumor"):
        final = args.out / TASKS[t].name / VERSIONS[t]
        if t not in retrain:
            folders.append(final)
            continue
        if args.no_synth:
            folders.append(
                make_model(
                    t,
                    args.data,
                    args.out,
                    threads=args.threads,
                    device=args.device,
                    epochs=args.epochs,
                    init=args.init,
                    lr=args.lr,
                    minutes=args.minutes,
                    noise_hu=args.noise_hu,
                    seed=args.seed,
                )
            )
            continue
        init = args.init
        if init is None:
            # From nothing: the phantom model first (into data/, not committed), then the synth stage.
            init = (
                make_model(
                    t,
                    args.data,
                    args.data / "models",
                    threads=args.threads,
                    device=args.device,
                    epochs=args.epochs,
                    noise_hu=args.noise_hu,
                    seed=args.seed,
                )
                / "model.onnx"
            )
        seed, minutes, weight = SYNTH[t]
        folders.append(
            finetune(
                t,
                init,
                final,
                pool=args.data.parent / ".cache" / "synth-sources",
                version=VERSIONS[t],
                minutes=args.minutes or minutes,
                lr=args.lr or 1e-3,
                seed=args.seed or seed,
                threads=args.threads,
                digimouse=not args.no_digimouse,
                digimouse_weight=weight,
                synth_rate=0.65,
                device=args.device,
                command="python -m inference.training.make_models "
                + " ".join(argv if argv is not None else sys.argv[1:]),
            )
        )
    refine = list(REFINERS) if "organs" in retrain and args.refine is None else args.refine or []
    for task, folder in zip(("organs", "tumor"), folders, strict=True):
        if task in retrain and args.keep_postprocess:
            continue
        if task in retrain or task in args.calibrate or (task == "organs" and refine):
            recalibrate(folder, folders, args.data, threads=args.threads)
        if task == "organs" and refine:
            for structure in refine:
                seed, minutes = REFINERS[structure]
                make_refiner(folder, structure, args.data, minutes=minutes, seed=seed, threads=args.threads)
            # The edge rules and outline bands are tuned again on the refined outlines.
            recalibrate(folder, folders, args.data, threads=args.threads)
    results = record_metrics(folders, args.data, args.out, threads=args.threads)
    update_card(args.out / "README.md", results)
    make_pictures(folders, args.data, args.out)
    # Each distinct network once under <out>/weights, the version folders linking to it.
    share_weights(args.out)


if __name__ == "__main__":
    main()
