"""``python -m inference.training.calibrate --model DIR [--model DIR] --data VAL_DIR``.

Tunes a model's post-processing on validation phantoms (never the test ones) and writes it into
its ``model.json`` under ``"postprocess"``:

- ``uncertainty_threshold``: the disagreement-head probability that, sent to the map's 50 % mark,
  best matches the voxels where the simulated annotators really disagree (Dice of the map at 50 %,
  the way AIMOS thresholds its heatmap), so that 50 % means "annotators would disagree here";
- ``refine`` (organ model): bones redrawn at full resolution as the voxels at or above ``min_hu``
  inside the network's bone mask grown by ``margin_mm``, with the pair that gives the best bone
  Dice against ground truth;
- ``detect`` (lesion model, run with an organ model): lung metastases as bright nodules inside the
  organ model's lungs (``pipeline.postprocess.detect_bright_lesions``), with the threshold, rim
  erosion and smallest volume that give the best metastasis Dice.

The other models passed with ``--model`` run beside the one being tuned (their uncertainty maps
join the combined map as they are), exactly as the pipeline runs them.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np

from inference.jsonsafe import finite_or_null
from inference.pipeline import predict_volume
from inference.pipeline.postprocess import detect_bright_lesions
from inference.registry import ModelCard, load_card
from inference.structures import BY_NAME
from inference.training.data import find_cases

log = logging.getLogger(__name__)

THRESHOLDS = (0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5)
BONE_MIN_HU = (300.0, 400.0, 500.0, 600.0)
BONE_MARGIN_MM = (0.63, 1.26)
BONES = BY_NAME["bones"].id
METASTASIS = BY_NAME["metastasis"].id
LUNGS = (BY_NAME["lung_left"].id, BY_NAME["lung_right"].id)
NODULE_MIN_HU = (-250.0, -200.0, -150.0, -100.0)
NODULE_ERODE_MM = (0.21, 0.42)
NODULE_MIN_VOLUME_MM3 = (0.01, 0.02, 0.04)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 2.0 * float(np.logical_and(a, b).sum()) / total if total else 1.0


def _load(path: Path) -> tuple[np.ndarray, np.ndarray]:
    image = nib.load(str(path))
    return np.asanyarray(image.dataobj), image.affine


def _real_disagreement(folder: Path) -> np.ndarray | None:
    maps = [_load(p)[0] for p in sorted(folder.glob("annotator_*.nii.gz"))]
    if len(maps) < 2:
        return None
    real = np.zeros(maps[0].shape, bool)
    for other in maps[1:]:
        real |= other != maps[0]
    return real


def _bare(card: ModelCard) -> ModelCard:
    return dataclasses.replace(card, postprocess={})


def calibrate(
    target: ModelCard, others: Sequence[ModelCard], cases: Sequence[Path], *, threads: int = 2
) -> dict:
    """The tuned ``postprocess`` section for ``target`` (nothing is written here)."""
    bare = _bare(target)
    unc_scores: dict[float, list[float]] = {t: [] for t in THRESHOLDS}
    bone_scores: dict[tuple[float, float], list[float]] = {}
    unrefined: list[float] = []
    nodule_scores: dict[tuple[float, float, float], list[float]] = {}
    finds_nodules = METASTASIS in target.structures and any(c.task == "organs" for c in others)
    for folder in cases:
        ct, affine = _load(folder / "ct.nii.gz")
        truth, _ = _load(folder / "labels.nii.gz")
        ct = ct.astype(np.float32)
        real = _real_disagreement(folder)
        own = predict_volume(ct, affine, [bare], threads=threads)
        if real is not None:
            # Run as the pipeline runs: calibrated on the model grid, then upsampled and thresholded.
            for t in THRESHOLDS:
                card = dataclasses.replace(target, postprocess={"uncertainty_threshold": t})
                shown = predict_volume(ct, affine, [card, *others], threads=threads).uncertainty
                unc_scores[t].append(_dice(shown >= 128, real))
        if BONES in target.structures and (truth == BONES).any():
            for min_hu in BONE_MIN_HU:
                for margin in BONE_MARGIN_MM:
                    rule = {"structure": BONES, "min_hu": min_hu, "margin_mm": margin}
                    card = dataclasses.replace(target, postprocess={"refine": [rule]})
                    labels = predict_volume(ct, affine, [card], threads=threads).labels
                    score = _dice(labels == BONES, truth == BONES)
                    bone_scores.setdefault((min_hu, margin), []).append(score)
            unrefined.append(_dice(own.labels == BONES, truth == BONES))
        if finds_nodules and (truth == METASTASIS).any():
            _score_nodules(nodule_scores, ct, truth, affine, target, others, threads)
        log.info("calibrated on %s", folder.name)
    post: dict = {}
    report: dict = {"cases": [c.name for c in cases]}
    if any(unc_scores.values()):
        medians = {t: float(np.median(v)) for t, v in unc_scores.items()}
        best = max(medians, key=lambda t: medians[t])
        post["uncertainty_threshold"] = best
        report["uncertainty_dice_by_threshold"] = {str(t): round(m, 4) for t, m in medians.items()}
    if bone_scores:
        medians_b = {k: float(np.median(v)) for k, v in bone_scores.items()}
        without = float(np.median(unrefined))
        (min_hu, margin), best_b = max(medians_b.items(), key=lambda kv: kv[1])
        report["bones_dice_unrefined"] = round(without, 4)
        report["bones_dice_by_rule"] = {f"{h:g} HU, {m:g} mm": round(v, 4) for (h, m), v in medians_b.items()}
        if best_b > without:
            post["refine"] = [{"structure": BONES, "min_hu": min_hu, "margin_mm": margin}]
    if nodule_scores:
        medians_n = {k: float(np.median(v)) for k, v in nodule_scores.items()}
        (min_hu, erode, volume), best_n = max(medians_n.items(), key=lambda kv: kv[1])
        report["metastasis_dice_by_rule"] = {
            f"{h:g} HU, erode {e:g} mm, >= {v:g} mm3": round(d, 4) for (h, e, v), d in medians_n.items()
        }
        if best_n > 0:
            post["detect"] = [
                {
                    "structure": METASTASIS,
                    "hosts": list(LUNGS),
                    "min_hu": min_hu,
                    "erode_mm": erode,
                    "min_volume_mm3": volume,
                }
            ]
    post["calibration"] = report
    return post


def _score_nodules(
    scores: dict[tuple[float, float, float], list[float]],
    ct: np.ndarray,
    truth: np.ndarray,
    affine: np.ndarray,
    target: ModelCard,
    others: Sequence[ModelCard],
    threads: int,
) -> None:
    """Metastasis Dice of each lung-nodule rule, on the organ map of one pipeline run."""
    out = predict_volume(ct, affine, [_bare(target), *others], threads=threads)
    assert out.organ_labels is not None and out.lesion_labels is not None
    spacing = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    model_found = out.lesion_labels == METASTASIS
    for min_hu in NODULE_MIN_HU:
        for erode in NODULE_ERODE_MM:
            for volume in NODULE_MIN_VOLUME_MM3:
                found = detect_bright_lesions(
                    out.organ_labels,
                    ct,
                    hosts=LUNGS,
                    min_hu=min_hu,
                    erode_voxels=round(erode / float(spacing.mean())),
                    min_voxels=max(1, round(volume / float(np.prod(spacing)))),
                )
                scores.setdefault((min_hu, erode, volume), []).append(
                    _dice(found | model_found, truth == METASTASIS)
                )


def write_postprocess(folder: Path, post: dict) -> None:
    path = folder / "model.json"
    card = json.loads(path.read_text())
    card["postprocess"] = post
    path.write_text(json.dumps(finite_or_null(card), indent=1, allow_nan=False) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m inference.training.calibrate", description=__doc__)
    parser.add_argument(
        "--model", type=Path, action="append", required=True, help="model folder (repeatable)"
    )
    parser.add_argument("--tune", type=Path, help="the model folder to tune (default: the first --model)")
    parser.add_argument("--data", type=Path, required=True, help="validation phantoms (flat layout)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    tune = (args.tune or args.model[0]).resolve()
    cards = [load_card(m) for m in args.model]
    target = next((c for c in cards if c.folder == tune), None) or load_card(tune)
    others = [c for c in cards if c.folder != tune]
    post = calibrate(target, others, find_cases(args.data), threads=args.threads)
    write_postprocess(tune, post)
    print(json.dumps(post, indent=1))


if __name__ == "__main__":
    main()
