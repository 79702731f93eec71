"""``python -m inference.training.evaluate --model DIR [--model DIR] --data DIR [--json OUT]``.

Runs exactly what the product runs (``inference.pipeline.predict_volume``) on flat-layout phantoms
and scores it with ``inference.metrics``: per structure, median Dice, HD95 (symmetric, mm), MSD
(symmetric mean surface distance, mm) and volume error (%) against the ground truth, Dice against
each simulated annotator, beside the annotators' own pairwise Dice (the human baseline). Tumors are
also scored lesion by lesion (Dice per tumor, misses by size), metastases by detection, and the
uncertainty map (>= 50 %) against the voxels where the annotators really disagree.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from itertools import combinations
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from scipy import ndimage

from inference.jsonsafe import finite_or_null
from inference.metrics import dice, hd95_mm, msd_mm
from inference.pipeline import predict_volume
from inference.registry import ModelCard, load_card
from inference.structures import BY_ID, BY_NAME
from inference.training.data import find_cases

TUMOR = BY_NAME["tumor"].id
METASTASIS = BY_NAME["metastasis"].id
PAIRS = (("lung_left", "lung_right"), ("kidney_left", "kidney_right"))


def load_canonical(path: Path) -> tuple[np.ndarray, np.ndarray]:
    image = nib.as_closest_canonical(nib.load(str(path)))
    return np.asanyarray(image.dataobj), image.affine


def real_disagreement(maps: Sequence[np.ndarray]) -> np.ndarray:
    """Voxels where the annotators' label maps (two or more, same grid) do not all agree."""
    real = np.zeros(maps[0].shape, bool)
    for other in maps[1:]:
        real |= other != maps[0]
    return real


def _crop_pair(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both masks cut to their joint bounding box plus a margin: surface distances get cheap."""
    both = a | b
    if not both.any():
        return a[:1, :1, :1], b[:1, :1, :1]
    box = ndimage.find_objects(both.astype(np.uint8))[0]
    box = tuple(slice(max(s.start - 2, 0), s.stop + 2) for s in box)
    return a[box], b[box]


def structure_scores(pred: np.ndarray, truth: np.ndarray, spacing: Sequence[float]) -> dict[str, float]:
    p, t = _crop_pair(pred, truth)
    voxel = float(np.prod(spacing))
    v_pred, v_true = float(pred.sum()) * voxel, float(truth.sum()) * voxel
    return {
        "dice": dice(p, t),
        "hd95_mm": hd95_mm(t, p, spacing),
        "msd_mm": msd_mm(t, p, spacing),
        "volume_mm3": v_pred,
        "true_volume_mm3": v_true,
        "volume_error_pct": 100.0 * (v_pred - v_true) / v_true if v_true else float("nan"),
    }


def tumor_scores(pred: np.ndarray, truth: np.ndarray, voxel_mm3: float) -> list[dict[str, float]]:
    """One row per true tumor: its volume, whether any predicted tumor touches it, and the Dice of
    the predicted components that touch it."""
    true_lab, n_true = ndimage.label(truth)
    pred_lab, _ = ndimage.label(pred)
    rows = []
    for i in range(1, n_true + 1):
        component = true_lab == i
        touching = np.unique(pred_lab[component])
        touching = touching[touching > 0]
        matched = np.isin(pred_lab, touching) if touching.size else np.zeros_like(component)
        rows.append(
            {
                "volume_mm3": float(component.sum()) * voxel_mm3,
                "detected": bool(touching.size),
                "dice": dice(matched, component),
            }
        )
    return rows


def metastasis_scores(pred: np.ndarray, truth: np.ndarray, voxel_mm3: float) -> dict[str, Any]:
    grown = ndimage.binary_dilation(pred, iterations=1)
    true_lab, n_true = ndimage.label(truth)
    found = []
    for i, sl in enumerate(ndimage.find_objects(true_lab), start=1):
        comp = true_lab[sl] == i
        diameter = 2 * (3 * comp.sum() * voxel_mm3 / (4 * np.pi)) ** (1 / 3)
        found.append({"diameter_mm": round(float(diameter), 3), "detected": bool(grown[sl][comp].any())})
    pred_lab, n_pred = ndimage.label(pred)
    near_truth = ndimage.binary_dilation(truth, iterations=1)
    # Predicted components that touch no true lesion (grown by one voxel).
    touching = np.unique(pred_lab[near_truth & (pred_lab > 0)])
    false_pos = n_pred - int(touching.size)
    return {"true": n_true, "predicted": n_pred, "false_positives": false_pos, "lesions": found}


def evaluate_case(folder: Path, cards: Sequence[ModelCard], *, threads: int = 0) -> dict[str, Any]:
    ct, affine = load_canonical(folder / "ct.nii.gz")
    truth, _ = load_canonical(folder / "labels.nii.gz")
    annotators = {
        p.stem.split(".")[0].removeprefix("annotator_"): load_canonical(p)[0]
        for p in sorted(folder.glob("annotator_*.nii.gz"))
    }
    spacing = [float(v) for v in np.sqrt((affine[:3, :3] ** 2).sum(axis=0))]
    voxel = float(np.prod(spacing))
    out = predict_volume(ct.astype(np.float32), affine, cards, threads=threads)
    ids = sorted({s for c in cards for s in c.structures if s})
    per_structure: dict[str, Any] = {}
    for sid in ids:
        name = BY_ID[sid].name
        t, p = truth == sid, out.labels == sid
        if not t.any():
            continue
        row: dict[str, Any] = dict(structure_scores(p, t, spacing))
        row["vs_annotators"] = {k: dice(p, a == sid) for k, a in annotators.items()}
        pair = [dice(a == sid, b == sid) for (_, a), (_, b) in combinations(annotators.items(), 2)]
        row["annotators_pairwise_dice"] = float(np.mean(pair)) if pair else float("nan")
        per_structure[name] = row
    swaps = []
    for left, right in PAIRS:
        pl = out.labels == BY_NAME[left].id
        if pl.any() and dice(pl, truth == BY_NAME[right].id) > dice(pl, truth == BY_NAME[left].id):
            swaps.append(left)
    result: dict[str, Any] = {
        "case": folder.name,
        "structures": per_structure,
        "left_right_swaps": swaps,
        "seconds": {k: round(v, 3) for k, v in out.seconds.items()},
    }
    if TUMOR in ids:
        result["tumors"] = tumor_scores(out.labels == TUMOR, truth == TUMOR, voxel)
        result["metastases"] = metastasis_scores(out.labels == METASTASIS, truth == METASTASIS, voxel)
    if len(annotators) >= 2:
        real = real_disagreement(list(annotators.values()))
        result["uncertainty_dice"] = dice(out.uncertainty >= 128, real)
    return result


def finite_median(values: list[float]) -> float:
    """Median of the finite values, rounded to 4 decimals (NaN when there are none)."""
    finite = [v for v in values if np.isfinite(v)]
    return round(float(np.median(finite)), 4) if finite else float("nan")


def summarise(cases: list[dict[str, Any]]) -> dict[str, Any]:
    names: dict[str, list[dict]] = {}
    for case in cases:
        for name, row in case["structures"].items():
            names.setdefault(name, []).append(row)
    structures = {}
    for name, rows in names.items():
        who = sorted(rows[0]["vs_annotators"])
        structures[name] = {
            "cases": len(rows),
            "dice": finite_median([r["dice"] for r in rows]),
            "hd95_mm": finite_median([r["hd95_mm"] for r in rows]),
            "msd_mm": finite_median([r["msd_mm"] for r in rows]),
            "volume_error_pct": finite_median([r["volume_error_pct"] for r in rows]),
            "dice_vs_annotator": {k: finite_median([r["vs_annotators"][k] for r in rows]) for k in who},
            "annotators_pairwise_dice": finite_median([r["annotators_pairwise_dice"] for r in rows]),
        }
    summary: dict[str, Any] = {
        "structures": structures,
        "left_right_swaps": sum(len(c["left_right_swaps"]) for c in cases),
    }
    tumors = [t for c in cases for t in c.get("tumors", [])]
    if tumors:
        big = [t for t in tumors if t["volume_mm3"] >= 50]
        summary["tumors"] = {
            "count": len(tumors),
            "dice_median_ge_50mm3": finite_median([t["dice"] for t in big]),
            "dice_min_ge_50mm3": round(min((t["dice"] for t in big), default=float("nan")), 4),
            "count_ge_50mm3": len(big),
            "missed_gt_100mm3": sum(1 for t in tumors if t["volume_mm3"] > 100 and not t["detected"]),
            "missed_all": sum(1 for t in tumors if not t["detected"]),
        }
    mets = [m for c in cases if "metastases" in c for m in c["metastases"]["lesions"]]
    if any("metastases" in c for c in cases):
        bins = {"<0.5 mm": (0, 0.5), "0.5-1 mm": (0.5, 1.0), ">=1 mm": (1.0, 99.0)}
        summary["metastases"] = {
            "true": len(mets),
            "false_positives": sum(c["metastases"]["false_positives"] for c in cases if "metastases" in c),
            "sensitivity_by_diameter": {
                k: (
                    round(float(np.mean([m["detected"] for m in mets if lo <= m["diameter_mm"] < hi])), 3)
                    if any(lo <= m["diameter_mm"] < hi for m in mets)
                    else None
                )
                for k, (lo, hi) in bins.items()
            },
        }
    unc = [c["uncertainty_dice"] for c in cases if "uncertainty_dice" in c]
    if unc:
        summary["uncertainty_dice"] = finite_median(unc)
    stages = sorted({k for c in cases for k in c["seconds"]})
    summary["seconds_median"] = {k: finite_median([c["seconds"].get(k, 0.0) for c in cases]) for k in stages}
    return summary


def format_table(summary: dict[str, Any]) -> str:
    lines = [
        f"{'structure':<13} {'n':>3} {'Dice':>6} {'HD95mm':>7} {'MSDmm':>6} {'dVol%':>7}  "
        f"{'Dice vs annotators':<22} {'human pairwise':>14}"
    ]
    for name, s in summary["structures"].items():
        vs = " ".join(f"{k}:{v:.3f}" for k, v in s["dice_vs_annotator"].items())
        lines.append(
            f"{name:<13} {s['cases']:>3} {s['dice']:>6.3f} {s['hd95_mm']:>7.2f} {s['msd_mm']:>6.2f} "
            f"{s['volume_error_pct']:>7.1f}  {vs:<22} {s['annotators_pairwise_dice']:>14.3f}"
        )
    for key in ("left_right_swaps", "tumors", "metastases", "uncertainty_dice", "seconds_median"):
        if key in summary:
            lines.append(f"{key}: {json.dumps(summary[key])}")
    return "\n".join(lines)


def evaluate(model_dirs: Sequence[Path], data: Path, *, threads: int = 0, limit: int | None = None) -> dict:
    cards = [load_card(d) for d in model_dirs]
    folders = find_cases(data)[:limit]
    if not folders:
        raise FileNotFoundError(f"no phantom cases (folders with labels.nii.gz) under {data}")
    cases = [evaluate_case(f, cards, threads=threads) for f in folders]
    return {
        "models": [{"name": c.name, "version": c.version, "sha256": c.sha256} for c in cards],
        "data": str(data),
        "summary": summarise(cases),
        "cases": cases,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m inference.training.evaluate", description=__doc__)
    parser.add_argument(
        "--model",
        type=Path,
        action="append",
        required=True,
        help="model version folder (repeat to run organs and tumor together)",
    )
    parser.add_argument("--data", type=Path, required=True, help="flat-layout phantom folder")
    parser.add_argument("--json", type=Path, help="write the full results here")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--limit", type=int, help="only the first N cases")
    args = parser.parse_args(argv)
    report = evaluate(args.model, args.data, threads=args.threads, limit=args.limit)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(finite_or_null(report), indent=1))
    sys.stdout.write(format_table(report["summary"]) + "\n")


if __name__ == "__main__":
    main()
