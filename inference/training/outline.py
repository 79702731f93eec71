"""Tune the uncertainty map's outline bands (``postprocess.uncertainty_outline``) on validation scans.

Annotators part along the outlines, more where a boundary is hard to see: a band around each
predicted structure (``pipeline.postprocess.outline_band``) whose width is a per-structure level
matches the voxels where they really disagree far better than a 0.63 mm head can. For each
smoothing in ``SMOOTHINGS_MM`` the levels are chosen by coordinate ascent on the Dice of the map's
"uncertain" part (>= 50 %) against the real disagreement, pooled over the validation cases, with
the bands of the other models' structures (their own ``uncertainty_outline``) held fixed.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from inference.pipeline import predict_volume
from inference.pipeline.postprocess import outline_band, outline_distances
from inference.registry import ModelCard
from inference.training.evaluate import load_canonical, real_disagreement

log = logging.getLogger(__name__)

#: Gaussian smoothing (mm, canonical x, y, z) of the predicted masks; z is the slice axis.
SMOOTHINGS_MM = ((0.32, 0.32, 0.0), (0.32, 0.32, 0.21), (0.21, 0.21, 0.21))
#: Candidate levels (the band holds voxels whose smoothed share is within this of one half);
#: 0 stands for "no band for this structure".
LEVELS = (0.0, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5)
ROUNDS = 2


@dataclasses.dataclass
class _Case:
    real: np.ndarray
    #: Per structure id: (box, |smoothed share - 1/2|) inside the box.
    distances: dict[int, tuple[tuple[slice, ...], np.ndarray]]
    #: The other models' bands (>= 50 %), fixed while this model's levels are tuned.
    fixed: np.ndarray


def _union(case: _Case, levels: dict[int, float], skip: int) -> np.ndarray:
    marked = case.fixed.copy()
    for sid, (box, dist) in case.distances.items():
        if sid != skip and levels.get(sid, 0.0) > 0:
            marked[box] |= dist < levels[sid]
    return marked


def _ascend(cases: Sequence[_Case], sids: Sequence[int]) -> tuple[dict[int, float], float]:
    """Per-structure levels with the best pooled Dice, by coordinate ascent from 0.25 each."""
    levels = dict.fromkeys(sids, 0.25)
    real_total = sum(int(c.real.sum()) for c in cases)
    best = 0.0
    for _ in range(ROUNDS):
        for sid in sids:
            tp = dict.fromkeys(LEVELS, 0)
            marked = dict.fromkeys(LEVELS, 0)
            for case in cases:
                others = _union(case, levels, skip=sid)
                if sid not in case.distances:
                    for level in LEVELS:
                        tp[level] += int((others & case.real).sum())
                        marked[level] += int(others.sum())
                    continue
                box, dist = case.distances[sid]
                inside, real = others[box], case.real[box]
                base_tp = int((others & case.real).sum()) - int((inside & real).sum())
                base_marked = int(others.sum()) - int(inside.sum())
                for level in LEVELS:
                    here = inside | (dist < level) if level > 0 else inside
                    tp[level] += base_tp + int((here & real).sum())
                    marked[level] += base_marked + int(here.sum())
            scores = {lv: 2 * tp[lv] / max(marked[lv] + real_total, 1) for lv in LEVELS}
            levels[sid] = max(scores, key=lambda lv: scores[lv])
            best = scores[levels[sid]]
    return levels, best


def tune_outline(
    target: ModelCard,
    others: Sequence[ModelCard],
    post: dict,
    cases: Sequence[Path],
    *,
    threads: int = 2,
) -> tuple[dict | None, dict]:
    """``(uncertainty_outline or None, report)`` for ``target`` run with its tuned ``post``."""
    runs = []
    for folder in cases:
        maps = [load_canonical(p)[0] for p in sorted(folder.glob("annotator_*.nii.gz"))]
        if len(maps) < 2:
            continue
        ct, affine = load_canonical(folder / "ct.nii.gz")
        card = dataclasses.replace(target, postprocess={k: v for k, v in post.items() if k != "calibration"})
        out = predict_volume(ct.astype(np.float32), affine, [card, *others], threads=threads)
        spacing = out.geometry.spacing_mm
        fixed = outline_band(out.labels, spacing, [o for other in others if (o := other.uncertainty_outline)])
        runs.append((real_disagreement(maps), out.labels, spacing, fixed >= 128))
    if not runs:
        return None, {}
    sids = list(target.structures[1:])
    report: dict = {}
    best: tuple[float, tuple[float, ...], dict[int, float]] | None = None
    for smoothing in SMOOTHINGS_MM:
        prepared = [
            _Case(real, outline_distances(labels, spacing, smoothing_mm=smoothing, structures=sids), fixed)
            for real, labels, spacing, fixed in runs
        ]
        levels, score = _ascend(prepared, sids)
        report[f"smoothing {smoothing[0]:g}/{smoothing[1]:g}/{smoothing[2]:g} mm"] = {
            "pooled_dice": round(score, 4),
            "levels": {str(k): v for k, v in levels.items()},
        }
        log.info("outline bands, smoothing %s mm: pooled Dice %.4f", smoothing, score)
        if best is None or score > best[0]:
            best = (score, smoothing, levels)
        del prepared
    assert best is not None
    score, smoothing, levels = best
    chosen = {str(k): v for k, v in levels.items() if v > 0}
    if not chosen:
        return None, report
    return {"smoothing_mm": list(smoothing), "levels": chosen}, report
