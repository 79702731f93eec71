"""``python -m inference.training.finetune_synth``: fine-tune a committed model on domain-randomised data.

Issue 19: the phantom-trained models learned the phantom's shapes, context and exact intensities.
This run continues a committed model (``--init`` its ``model.onnx``, ``warm_start.py``) on a mix
of synthetic volumes drawn by ``inference.phantom.synth`` (``--synth-rate`` of the crops, the
majority) and the phantoms' own native scans (the rest, so that the in-distribution figures
hold). Sources: the cached procedural phantoms (``--pool``, made by ``python -m
inference.phantom.synth``; each also gives its native scan) and, unless ``--no-digimouse``, the
real Digimouse atlas (weight ``--digimouse-weight`` among the sources), which is the project's
only real-anatomy test source: train without it to measure generalisation to it.

The other direction, ``--no-phantoms``: the procedural phantoms held out, every crop drawn from
synthetic volumes of the atlas alone, to measure how one real mouse's shapes carry over to
anatomy never trained on (the held-out test phantoms). Without ``--init`` the network starts
from random weights, so that neither direction has seen the other's source at all.

The result is exported to ``--out`` with the post-processing rules (and outline refiner files)
of ``--init``'s folder carried over unchanged, ready for ``evaluate`` or ``calibrate``.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from inference.jsonsafe import finite_or_null
from inference.phantom.synth import ID, digimouse_source, load_source
from inference.training.data import Case, block_mean, case_from_arrays
from inference.training.export import export_model
from inference.training.share_weights import share_if_stored, unshare
from inference.training.synth_pool import SynthPool, volume_seed
from inference.training.tasks import TASKS, TaskSpec
from inference.training.train import TrainConfig, train

log = logging.getLogger(__name__)

#: Seeds of the phantom sources (the training phantoms' seeds: validation 8000-8007 and test
#: 9000-9007 never enter training).
POOL_SEEDS = range(1000, 1060)
#: Steps per epoch (progress check and checkpoint) when no phantom scans set an epoch's length.
ATLAS_STEPS_PER_EPOCH = 30


def native_cases(pool: Path, spec: TaskSpec, seeds: range) -> tuple[list, list[Case]]:
    """(sources, native cases) of the cached phantom sources with these seeds."""
    sources, cases = [], []
    for seed in seeds:
        path = pool / f"native_{seed:05d}.npz"
        if not path.exists():
            continue
        source = load_source(path)
        sources.append(source)
        assert source.ct is not None
        cases.append(
            case_from_arrays(
                source.name,
                spec,
                source.ct,
                source.fractions,
                source.labelled,
                disagreement=source.disagreement,
                spacing_mm=source.spacing_mm,
            )
        )
    if not sources:
        raise FileNotFoundError(
            f"no cached phantom sources under {pool}: run python -m inference.phantom.synth"
        )
    return sources, cases


def digimouse_cases(spec: TaskSpec, seed: int = 0) -> dict[str, list[Case]]:
    """Digimouse CT (``digimouse.render_ct``, 0.21 mm, box-averaged to 0.63 mm as the pipeline does),
    whole body and torso, as progress-check cases."""
    from inference.phantom import digimouse
    from inference.phantom.synth import block_fractions

    mouse = digimouse.load()
    out = {}
    for crop in ("whole", "torso"):
        ph = digimouse.render_ct(mouse, seed=seed, spacing_mm=0.21, crop=crop)  # type: ignore[arg-type]
        labelled = np.zeros(16, bool)
        labelled[0] = True
        for name in mouse.labelled:
            labelled[ID[name]] = True
        out[f"digimouse_{crop}"] = [
            case_from_arrays(
                f"digimouse_{crop}",
                spec,
                block_mean(ph.ct, 3),
                block_fractions(ph.labels, 3),
                labelled,
                spacing_mm=0.63,
            )
        ]
    return out


def finetune(
    task: str,
    init: Path | None,
    out: Path,
    *,
    pool: Path,
    version: str,
    minutes: float,
    lr: float,
    seed: int,
    threads: int,
    digimouse: bool,
    digimouse_weight: float,
    synth_rate: float,
    device: str = "cpu",
    command: str = "",
    variety: float = 1.0,
    plain_body: float = 0.0,
    clipped: float = 0.0,
    rolled: float = 0.0,
    sizes: tuple[float, float] = (0.85, 1.15),
    contrast: float = 0.0,
    batch: int = 2,
    workers: int = 0,
    steps_per_epoch: int = 0,
    phantoms: bool = True,
) -> Path:
    """Train ``task`` (from ``init``'s weights, or random ones) and export it to ``out``."""
    if not phantoms and not digimouse:
        raise ValueError("with neither the phantoms nor the Digimouse atlas there is nothing to train on")
    spec = TASKS[task]
    sources, cases = native_cases(pool, spec, POOL_SEEDS) if phantoms else ([], [])
    if not phantoms:
        # Every crop from the atlas' synthetic volumes; an epoch is a fixed number of steps.
        synth_rate, steps_per_epoch = 1.0, steps_per_epoch or ATLAS_STEPS_PER_EPOCH
    weights = [1.0] * len(sources)
    if digimouse:
        # The atlas is one mouse among ~60 phantoms: weighted so that about ``digimouse_weight``
        # of the synthetic volumes come from it (all of them when it is the only source).
        sources.append(digimouse_source())
        weights.append(digimouse_weight / (1 - digimouse_weight) * len(weights) if weights else 1.0)
    focus = (ID["tumor"],) if task == "tumor" else ()
    synth = SynthPool(
        sources,
        spec,
        seed=seed,
        weights=weights,
        focus_ids=focus,
        variety=variety,
        plain_body=plain_body,
        clipped=clipped,
        rolled=rolled,
        sizes=sizes,
        contrast=contrast,
    )
    val: dict[str, list[Case]] = digimouse_cases(spec)
    if (pool / "native_08000.npz").exists():
        val["val_native"] = native_cases(pool, spec, range(8000, 8002))[1]
    cfg = TrainConfig(
        epochs=10_000,
        max_minutes=minutes,
        lr=lr,
        seed=seed,
        threads=threads,
        device=device,
        synth_rate=synth_rate,
        batch=batch,
        loader_workers=workers,
        steps_per_epoch=steps_per_epoch,
    )
    work = Path("data") / "checkpoints" / f"{spec.name}-{version}"
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    model = train(
        spec,
        cases,
        cfg,
        val=val,
        checkpoint=work / "checkpoint.pt",
        init=init,
        synth=synth,
        checkpoint_every=5,
    )
    seconds = time.monotonic() - t0
    drawn = sum(cfg.synth_drawn.values())
    last_seed = max(
        (volume_seed(seed, n - 1, w, max(workers, 1)) for w, n in cfg.synth_drawn.items() if n), default=0
    )
    if phantoms:
        data = (
            f"{synth_rate:.0%} of crops from domain-randomised volumes (inference/phantom/synth.py) "
            "drawn from "
            f"{len(cases)} phantom label maps (seeds {POOL_SEEDS.start}-{POOL_SEEDS.stop - 1})"
            + (
                f" and the Digimouse atlas ({digimouse_weight:.0%} of them)"
                if digimouse
                else " (no Digimouse)"
            )
            + f"; the rest from those phantoms' native scans; {drawn} volumes drawn"
        )
    else:
        data = (
            "every crop from domain-randomised volumes (inference/phantom/synth.py) drawn from the "
            f"Digimouse atlas alone (no phantoms); {drawn} volumes drawn"
        )
    training = {
        "data": data,
        "seeds": {
            "training": seed,
            "phantoms": list(POOL_SEEDS) if phantoms else [],
            "synth_volumes": [seed * 1_000_000, last_seed],
        },
        "digimouse": digimouse,
        "phantoms": phantoms,
        "epochs": len(cfg.history),
        "steps": len(cfg.history) * (cfg.steps_per_epoch or max(len(cases) // cfg.batch, 1)),
        "batch": cfg.batch,
        "batch_workers": workers,
        "seconds": round(seconds, 1),
        "device": device,
        "threads": threads,
        "init": str(init) if init is not None else "random weights",
        "lr": lr,
        "noise_hu": cfg.noise_hu,
        "synth_rate": synth_rate,
        "anatomy_variety": variety,
        "plain_body": plain_body,
        "clipped": clipped,
        "rolled": rolled,
        "mouse_sizes": list(sizes),
        "contrast": contrast,
        "command": command or "python -m inference.training.finetune_synth " + " ".join(sys.argv[1:]),
        "history": cfg.history,
    }
    # Kept beside the checkpoint, so that a run whose export fails can be exported again from it.
    (work / "training.json").write_text(json.dumps(finite_or_null(training), indent=1) + "\n")
    export_model(model, spec, out, version=version, input_spacing_mm=0.63, training=training)
    if init is not None:
        carry_postprocess(init.parent, out)
    share_if_stored(out)
    return out


#: How a card's network is read (``layout``), beyond its grid: the shifted passes and the size
#: pass (``infer.run_model``). A continued network is read as the one it continues.
READ_SETTINGS = ("shifted_passes", "shifted_passes_over", "size_pass")


def carry_postprocess(old: Path, new: Path) -> None:
    """Copy ``old``'s post-processing rules, outline refiner files and read settings
    (``READ_SETTINGS``) into ``new``'s card: a continued network is measured and served as the one
    it continues, not without the passes that card's figures were made with."""
    old_card = json.loads((old / "model.json").read_text())
    card_path = new / "model.json"
    card = json.loads(card_path.read_text())
    for key in READ_SETTINGS:
        if key in old_card.get("layout", {}):
            card.setdefault("layout", {})[key] = old_card["layout"][key]
    if "postprocess" in old_card:
        card["postprocess"] = old_card["postprocess"]
        for rule in card["postprocess"].get("refine", []):
            if "network" in rule:
                shutil.copyfile(old / rule["network"], unshare(new / rule["network"]))
    if "refiners" in old_card:
        card["refiners"] = old_card["refiners"]
    card_path.write_text(json.dumps(finite_or_null(card), indent=1, allow_nan=False) + "\n")


def _size_range(text: str) -> tuple[float, float] | None:
    """``"0.8,1.3"`` as (0.8, 1.3); None unless it is two numbers, 0 < low <= high."""
    try:
        low, high = (float(v) for v in text.split(","))
    except ValueError:
        return None
    return (low, high) if 0.0 < low <= high else None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m inference.training.finetune_synth", description=__doc__)
    parser.add_argument("--task", choices=sorted(TASKS), required=True)
    parser.add_argument(
        "--init", type=Path, help="committed model.onnx to continue (default: random weights)"
    )
    parser.add_argument("--out", type=Path, required=True, help="model version folder to write")
    parser.add_argument("--version", required=True)
    parser.add_argument("--pool", type=Path, default=Path("data/.cache/synth-sources"))
    parser.add_argument("--minutes", type=float, default=60.0)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=19)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-digimouse", action="store_true", help="hold the Digimouse atlas out")
    parser.add_argument(
        "--no-phantoms",
        action="store_true",
        help="hold the procedural phantoms out: every crop from the Digimouse atlas' synthetic volumes",
    )
    parser.add_argument("--digimouse-weight", type=float, default=0.3)
    parser.add_argument("--synth-rate", type=float, default=0.65)
    parser.add_argument(
        "--variety",
        type=float,
        default=1.0,
        help="widen the anatomy drawn from each source (synth.synth_sample): "
        "1 as 2.0.0, 2 for 2.1.0, 2.5 for 2.2.0",
    )
    parser.add_argument(
        "--plain-body",
        type=float,
        default=0.0,
        help="chance that a synthetic volume's unlabelled body is one smooth tissue near the organs' "
        "level, no fat between organs (synth.synth_sample); 0 for 2.2.0 and earlier",
    )
    parser.add_argument(
        "--clipped",
        type=float,
        default=0.0,
        help="chance that a synthetic volume's values are cut off at both ends as some exports do "
        "(synth.synth_sample); 0 for 2.2.0 and earlier",
    )
    parser.add_argument(
        "--rolled",
        type=float,
        default=0.0,
        help="chance that a synthetic volume's mouse lies part-way on its side, turned 10-40 degrees "
        "about its long axis (synth.synth_sample); 0 for 2.4.0 and earlier",
    )
    parser.add_argument(
        "--contrast",
        type=float,
        default=0.0,
        help="chance that a contrast agent fills a synthetic volume's stomach, gut or bladder, as bright "
        "as bone or brighter (synth.synth_sample); 0 for 2.11.0 and earlier",
    )
    parser.add_argument(
        "--mouse-size",
        default="0.85,1.15",
        metavar="LOW,HIGH",
        help="range of a synthetic mouse's overall scale against its source (synth.synth_sample); "
        "0.85,1.15 for every committed model (mouse-organs up to 2.4.0, mouse-tumor up to 2.0.2)",
    )
    parser.add_argument("--batch", type=int, default=2, help="crops per step (2 on the CPU)")
    parser.add_argument(
        "--workers",
        type=int,
        default=0,
        help="processes that make the batches, for a GPU (0: made in line, as on the CPU)",
    )
    parser.add_argument(
        "--steps-per-epoch",
        type=int,
        default=0,
        help="steps between progress checks and checkpoints (0: one pass over the phantoms)",
    )
    args = parser.parse_args(argv)
    for flag, value, least in (
        ("--batch", args.batch, 1),
        ("--workers", args.workers, 0),
        ("--steps-per-epoch", args.steps_per_epoch, 0),
    ):
        if value < least:
            parser.error(f"{flag} is a count: give {least} or more, not {value}")
    for flag, share in (
        ("--plain-body", args.plain_body),
        ("--clipped", args.clipped),
        ("--rolled", args.rolled),
        ("--contrast", args.contrast),
    ):
        if not 0.0 <= share <= 1.0:
            parser.error(f"{flag} is the share of volumes drawn so: give 0 to 1, not {share}")
    sizes = _size_range(args.mouse_size)
    if sizes is None:
        parser.error(
            f"--mouse-size {args.mouse_size}: give two scales, low,high, each above 0, for example 0.8,1.3"
        )
    if args.no_phantoms and args.no_digimouse:
        parser.error("--no-phantoms and --no-digimouse leave nothing to train on: give at most one")
    if args.variety < 1.0:
        parser.error(f"--variety widens the anatomy: give 1 (as 2.0.0) or more, not {args.variety}")
    if args.init is not None and not args.init.is_file():
        parser.error(f"--init {args.init}: no such file (give a committed model.onnx, or leave it out)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    finetune(
        args.task,
        args.init,
        args.out,
        pool=args.pool,
        version=args.version,
        minutes=args.minutes,
        lr=args.lr,
        seed=args.seed,
        threads=args.threads,
        digimouse=not args.no_digimouse,
        digimouse_weight=args.digimouse_weight,
        synth_rate=args.synth_rate,
        device=args.device,
        variety=args.variety,
        plain_body=args.plain_body,
        clipped=args.clipped,
        rolled=args.rolled,
        sizes=sizes,
        contrast=args.contrast,
        batch=args.batch,
        workers=args.workers,
        steps_per_epoch=args.steps_per_epoch,
        phantoms=not args.no_phantoms,
    )


if __name__ == "__main__":
    main()
