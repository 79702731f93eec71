"""Tune the uncertainty map's outline bands (``postprocess.uncertainty_outline``) on validation scans.

Annotators part along the outlines, more where a boundary is hard to see: a band around each
predicted structure (``pipeline.postprocess.outline_band``) whose width is a per-structure level
matches the voxels where they really disagree far better than a 0.63 mm head can. For each
smoothing in ``SMOOTHINGS_MM`` the levels are chosen by coordinate ascent on the Dice of the map's
"uncertain" part (>= 50 %) against the real disagreement, pooled over the validation cases, with
the bands of the other models' structures (their own ``uncertainty_outline``) held fixed. The best
smoothing becomes the card's; then each structure in turn may take another smoothing of its own
(``smoothing_by_structure``) with its best level, where that raises the pooled Dice: people draw
bone with a threshold tool on every slice and organs by hand on every fifth slice, so the two
part along differently shaped bands.
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
SMOOTHINGS_MM = ((0.32, 0.32, 0.0), (0.32, 0.32, 0.21), (0.21, 0.21, 0.21), (0.21, 0.21, 0.42))
#: Candidate levels (the band holds voxels whose smoothed share is within this of one half), in
#: steps of 0.025 (a band's width moves by about a tenth of a voxel per step); 0 stands for "no
#: band for this structure".
LEVELS = (0.0, *(round(0.1 + 0.025 * i, 3) for i in range(17)))
ROUNDS = 2
#: Pooled Dice a structure's own smoothing must add to be kept.
MIN_GAIN = 0.0005


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


def _level_scores(
    cases: Sequence[_Case],
    sid: int,
    levels: dict[int, float],
    trial: Sequence[tuple[tuple[slice, ...], np.ndarray] | None] | None = None,
) -> dict[float, float]:
    """Pooled Dice for each candidate level of ``sid``, the other structures' bands as ``levels``.

    ``trial`` (one entry per case) replaces the structure's own ``(box, distances)`` in each case,
    to score it under another smoothing.
    """
    real_total = sum(int(c.real.sum()) for c in cases)
    tp = dict.fromkeys(LEVELS, 0)
    marked = dict.fromkeys(LEVELS, 0)
    for i, case in enumerate(cases):
        others = _union(case, levels, skip=sid)
        own = case.distances.get(sid) if trial is None else trial[i]
        if own is None:
            for level in LEVELS:
                tp[level] += int((others & case.real).sum())
                marked[level] += int(others.sum())
            continue
        box, dist = own
        inside, real = others[box], case.real[box]
        base_tp = int((others & case.real).sum()) - int((inside & real).sum())
        base_marked = int(others.sum()) - int(inside.sum())
        for level in LEVELS:
            here = inside | (dist < level) if level > 0 else inside
            tp[level] += base_tp + int((here & real).sum())
            marked[level] += base_marked + int(here.sum())
    return {lv: 2 * tp[lv] / max(marked[lv] + real_total, 1) for lv in LEVELS}


def _ascend(cases: Sequence[_Case], sids: Sequence[int]) -> tuple[dict[int, float], float]:
    """Per-structure levels with the best pooled Dice, by coordinate ascent from 0.25 each."""
    levels = dict.fromkeys(sids, 0.25)
    best = 0.0
    for _ in range(ROUNDS):
        for sid in sids:
            scores = _level_scores(cases, sid, levels)
            levels[sid] = max(scores, key=lambda lv: scores[lv])
            best = scores[levels[sid]]
    return levels, best


def _own_smoothings(
    cases: list[_Case],
    runs: Sequence[tuple[np.ndarray, np.ndarray, Sequence[float], np.ndarray]],
    levels: dict[int, float],
    chosen: tuple[float, ...],
    score: float,
) -> tuple[dict[int, tuple[float, ...]], float, dict]:
    """Give structures a smoothing of their own where it raises the pooled Dice (one pass, in
    order; ``cases`` and ``levels`` are updated in place). Returns the overrides, the new score
    and a report."""
    own: dict[int, tuple[float, ...]] = {}
    report: dict = {}
    for sid in list(levels):
        best: tuple[float, tuple[float, float, float], float, list] | None = None
        for smoothing in SMOOTHINGS_MM:
            if smoothing == chosen:
                continue
            trial = [
                outline_distances(labels, spacing, smoothing_mm=smoothing, structures=[sid]).get(sid)
                for _, labels, spacing, _ in runs
            ]
            scores = _level_scores(cases, sid, levels, trial)
            level = max(scores, key=lambda lv: scores[lv])
            if level > 0 and scores[level] > score + MIN_GAIN and (best is None or scores[level] > best[0]):
                best = (scores[level], smoothing, level, trial)
        if best is None:
            continue
        score, smoothing, levels[sid], trial = best
        own[sid] = smoothing
        for case, entry in zip(cases, trial, strict=True):
            if entry is not None:
                case.distances[sid] = entry
        report[str(sid)] = {
            "smoothing_mm": list(smoothing),
            "level": levels[sid],
            "pooled_dice": round(score, 4),
        }
        log.info("outline band of %s: smoothing %s mm, pooled Dice %.4f", sid, smoothing, score)
    return own, score, report


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
        # Validation scans are HU phantoms by construction: no intensity check (intensity.py).
        out = predict_volume(ct.astype(np.float32), affine, [card, *others], threads=threads, intensity="hu")
        spacing = out.geometry.spacing_mm
        fixed = outline_band(
            out.labels, spacing, [group for other in others for group in other.uncertainty_outlines]
        )
        runs.append((real_disagreement(maps), out.labels, spacing, fixed >= 128))
    if not runs:
        return None, {}
    sids = list(target.structures[1:])
    report: dict = {}
    # The best smoothing's distances are kept for the per-structure pass (at most two sets held).
    best: tuple[float, tuple[float, float, float], dict[int, float], list[_Case]] | None = None
    for smoothing in SMOOTHINGS_MM:
        prepared = _prepare(runs, smoothing, sids)
        levels, score = _ascend(prepared, sids)
        report[f"smoothing {smoothing[0]:g}/{smoothing[1]:g}/{smoothing[2]:g} mm"] = {
            "pooled_dice": round(score, 4),
            "levels": {str(k): v for k, v in levels.items()},
        }
        log.info("outline bands, smoothing %s mm: pooled Dice %.4f", smoothing, score)
        if best is None or score > best[0]:
            best = (score, smoothing, levels, prepared)
        del prepared
    assert best is not None
    score, smoothing, levels, prepared = best
    del best
    own, score, report["own_smoothing"] = _own_smoothings(prepared, runs, levels, smoothing, score)
    chosen = {str(k): v for k, v in levels.items() if v > 0}
    if not chosen:
        return None, report
    outline: dict = {"smoothing_mm": list(smoothing), "levels": chosen}
    kept = {str(k): list(v) for k, v in own.items() if str(k) in chosen}
    if kept:
        outline["smoothing_by_structure"] = kept
    report["pooled_dice"] = round(score, 4)
    return outline, report


def _prepare(
    runs: Sequence[tuple[np.ndarray, np.ndarray, Sequence[float], np.ndarray]],
    smoothing: tuple[float, ...],
    sids: Sequence[int],
) -> list[_Case]:
    return [
        _Case(real, outline_distances(labels, spacing, smoothing_mm=smoothing, structures=sids), fixed)
        for real, labels, spacing, fixed in runs
    ]
