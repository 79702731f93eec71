"""How many corrected scans a lab needs before a fine-tune recovers on its own scanner.

``python bench/retrain.py [--task tumor] [--counts 2,5,10] [--val 4] [--epochs 4] [--steps 6]``

"New scanner" phantoms (``inference/phantom/new_scanner.py``) at 0.63 mm, one scan per mouse; the
last ``--val`` mice are the frozen validation split. For each count N of corrected scans (their
ground truth standing for approved corrections) it prints the frozen-split median Dice of the
shipped model, of the shipped model fine-tuned on the N scans (``inference.training.lab_finetune``,
what a lab's training job runs) and of the same network trained from scratch on them with the same
steps. CPU; the figures depend on the steps given (the defaults take minutes, not hours).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from inference.phantom.generator import generate_phantom
from inference.phantom.new_scanner import new_scanner
from inference.registry import default_model, load_card
from inference.training.lab_finetune import (
    FinetuneConfig,
    LabItem,
    evaluate_card,
    export_candidate,
    finetune,
    load_item,
)
from inference.training.tasks import TASKS


def _phantoms(folder: Path, seeds: list[int]) -> list[LabItem]:
    items = []
    for seed in seeds:
        phantom = generate_phantom(seed, spacing_mm=0.63, n_annotators=1)
        ct, labels = folder / f"ct{seed}.nii.gz", folder / f"labels{seed}.nii.gz"
        nib.save(nib.Nifti1Image(np.rint(new_scanner(phantom.ct)).astype(np.int16), phantom.affine), str(ct))
        nib.save(nib.Nifti1Image(phantom.labels.astype(np.uint8), phantom.affine), str(labels))
        items.append(LabItem(f"seed{seed}", ct, labels, tuple(range(1, 16))))
    return items


def _median_dice(card: object, items: list[LabItem], sid: int, threads: int) -> float:
    rows = [r for r in evaluate_card(card, items, threads=threads) if r.structure_id == sid]  # type: ignore[arg-type]
    return round(float(np.median([r.dice for r in rows])), 3) if rows else float("nan")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--task", choices=sorted(TASKS), default="tumor")
    parser.add_argument("--counts", default="2,5,10")
    parser.add_argument("--val", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=100, help="seed of the first phantom mouse")
    args = parser.parse_args(argv)
    counts = [int(c) for c in args.counts.split(",")]
    spec = TASKS[args.task]
    shipped = default_model(args.task)
    spacing = float(shipped.input_spacing_mm[0])
    structure = spec.structures[1]
    results: dict[str, object] = {"task": args.task, "shipped": shipped.key, "structure": structure}
    with tempfile.TemporaryDirectory(prefix="bench-retrain-") as tmp:
        folder = Path(tmp)
        # Phantoms without the structure would score nothing: keep drawing seeds until enough have it.
        items: list[LabItem] = []
        seed = args.seed
        while len(items) < max(counts) + args.val:
            candidate = _phantoms(folder, [seed])[0]
            labels = np.asanyarray(nib.load(str(candidate.label_path)).dataobj)  # type: ignore[attr-defined]
            if (labels == structure).any():
                items.append(candidate)
            seed += 1
        val, pool = items[-args.val :], items[: -args.val]
        val_cases = [load_item(i, spec, spacing) for i in val]
        started = time.monotonic()
        results["shipped_dice"] = _median_dice(shipped, val, structure, args.threads)
        rows = []
        for n in counts:
            train_cases = [load_item(i, spec, spacing) for i in pool[:n]]
            row: dict[str, object] = {"scans": n}
            for label, init in (("fine_tuned", shipped.onnx_path), ("from_scratch", None)):
                cfg = FinetuneConfig(
                    epochs=args.epochs, steps_per_epoch=args.steps, threads=args.threads, device="cpu"
                )
                if init is None:
                    cfg.lr = 3e-3
                t0 = time.monotonic()
                model, _ = finetune(
                    spec, train_cases, val_cases, cfg, init_onnx=init, checkpoint=folder / f"{label}{n}.pt"
                )
                out = folder / f"{label}{n}"
                export_candidate(
                    model, spec, out, name=spec.name, version=f"bench.{label}.{n}", spacing_mm=spacing,
                    parent=shipped, training={},
                )  # fmt: skip
                row[f"{label}_dice"] = _median_dice(load_card(out), val, structure, args.threads)
                row[f"{label}_seconds"] = round(time.monotonic() - t0, 1)
            rows.append(row)
            print(json.dumps(row), flush=True)
        results["rows"] = rows
        results["seconds"] = round(time.monotonic() - started, 1)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
