"""Tune the outline-to-edge rules (``postprocess.refine_edge``, ``refine_air_edge``) on validation scans.

The organ model draws on a 0.63 mm grid; upsampled, an outline lands up to a voxel from where
the scan shows the organ meeting fat. For each structure without a rule of its own, every
candidate (edge threshold, margin) is applied to the pipeline's full-resolution organ map of each
validation case (the rules already chosen in force) and scored by Dice against the ground truth;
the candidate with the best median Dice becomes a rule when it beats the unrefined outline by
``MIN_GAIN``. A structure whose edge is not an organ-to-fat edge (lungs, brain in the skull,
bladder urine as dim as its fat) gains nothing and keeps its network outline.

The lungs have their own family (``tune_air_edges``): a lung holds air, so its edge against every
neighbour is in the scan, half-way (``AIR_EDGE_FRACTION``) from its own level to soft tissue.
Organs pressed against other soft tissue have a third (``tune_contrast_edges``): the edge half-way
between the organ's own level and its neighbours', read from a 3-voxel mean, where the two
differ by at least ``CONTRAST_HU``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from itertools import product
from pathlib import Path

import numpy as np

from inference.metrics import dice
from inference.pipeline import predict_volume
from inference.pipeline.geometry import bounding_box
from inference.pipeline.postprocess import apply_outline_rule, voxels_across
from inference.registry import ModelCard
from inference.structures import BY_ID
from inference.training.evaluate import load_canonical

log = logging.getLogger(__name__)

#: Candidate thresholds, between fat (-100 HU) or visceral fat (-45 HU) and soft tissue (25-60 HU).
EDGE_HU = (-60.0, -40.0, -20.0, -10.0, 0.0, 10.0, 20.0)
#: Candidate margins: one to three 0.21 mm scan voxels (a model-grid voxel is 0.63 mm).
EDGE_MARGIN_MM = (0.21, 0.42, 0.63)
#: Candidate places of a lung's edge between its own level and soft tissue (0.5: half-way, where
#: a voxel holds as much lung as tissue).
AIR_EDGE_FRACTION = (0.35, 0.5, 0.65)
#: Candidate smallest contrasts (HU) between an organ's level and its neighbours' for the
#: contrast-edge rule: below it the scan shows no edge and the network's outline stays.
CONTRAST_HU = (8.0, 15.0)
#: Median Dice a rule must add to be kept (below it, a rule is noise on eight validation cases).
MIN_GAIN = 0.002

Candidate = tuple[float, float]


def tune_edges(target: ModelCard, cases: Sequence[Path], *, threads: int = 2) -> tuple[list[dict], dict]:
    """The edge rules to append to ``target``'s ``refine`` list, and a report of the sweep."""
    return _sweep(target, cases, "edge_hu", list(product(EDGE_HU, EDGE_MARGIN_MM)), "HU", threads)


def tune_air_edges(target: ModelCard, cases: Sequence[Path], *, threads: int = 2) -> tuple[list[dict], dict]:
    """The air-edge rules (``postprocess.refine_air_edge``: lungs) for ``target``, and a report.

    Every structure without a rule of its own is tried; one that holds no air keeps its outline
    (the rule leaves it alone, so it gains nothing), so only the lungs can win a rule.
    """
    keys = list(product(AIR_EDGE_FRACTION, EDGE_MARGIN_MM))
    return _sweep(target, cases, "air_edge", keys, "of the way to soft tissue", threads)


def tune_contrast_edges(
    target: ModelCard, cases: Sequence[Path], *, threads: int = 2
) -> tuple[list[dict], dict]:
    """The contrast-edge rules (``postprocess.refine_contrast_edge``) for ``target``, and a report:
    every structure without a rule of its own, each smallest contrast (``CONTRAST_HU``) and margin."""
    keys = list(product(CONTRAST_HU, EDGE_MARGIN_MM))
    return _sweep(target, cases, "contrast_edge", keys, "HU of contrast at least", threads)


def unruled(target: ModelCard) -> list[int]:
    """``target``'s structures that no outline rule of its own places yet: the candidates of a
    sweep. An interface rule (``refine_interface``) places only the outline two organs share, not
    the rest of an organ's, so it does not count."""
    ruled = {int(rule["structure"]) for rule in target.refinements if "interface_with" not in rule}
    return [s for s in target.structures[1:] if s not in ruled]


def _sweep(
    target: ModelCard, cases: Sequence[Path], kind: str, keys: Sequence[Candidate], unit: str, threads: int
) -> tuple[list[dict], dict]:
    """Score each candidate ``(value, margin_mm)`` of the outline rule ``kind`` (a key of
    ``postprocess.OUTLINE_RULES``) on every structure without a rule (see the module notes)."""

    def make_rule(sid: int, key: Candidate) -> dict:
        return {"structure": sid, kind: key[0], "margin_mm": key[1]}

    candidates = unruled(target)
    scores: dict[int, dict[Candidate | None, list[float]]] = {s: {} for s in candidates}
    for folder in cases:
        ct, affine = load_canonical(folder / "ct.nii.gz")
        truth, _ = load_canonical(folder / "labels.nii.gz")
        ct = ct.astype(np.float32)
        spacing = [float(v) for v in np.sqrt((affine[:3, :3] ** 2).sum(axis=0))]
        # Validation scans are HU phantoms by construction: no intensity check (intensity.py).
        labels = predict_volume(ct, affine, [target], threads=threads, intensity="hu").labels
        # Room for the widest margin and the contrast rule's shell, three voxels beyond it.
        reach = voxels_across(max(EDGE_MARGIN_MM), spacing) + 4
        for sid in candidates:
            # A rule only changes voxels within its margin of the structure: score it in the box
            # around the predicted and the true structure, not on copies of the whole scan.
            box = bounding_box((labels == sid) | (truth == sid), reach)
            if box is None or not (truth[box] == sid).any():
                continue
            own, true_mask, hu = labels[box], truth[box] == sid, ct[box]
            scores[sid].setdefault(None, []).append(dice(own == sid, true_mask))
            for key in keys:
                changed = own.copy()
                apply_outline_rule(changed, hu, make_rule(sid, key), spacing)
                scores[sid].setdefault(key, []).append(dice(changed == sid, true_mask))
        log.info("%s rules scored on %s", unit, folder.name)
    rules: list[dict] = []
    report: dict = {}
    for sid, by_key in scores.items():
        if None not in by_key:
            continue
        medians = {k: float(np.median(v)) for k, v in by_key.items()}
        best = max((k for k in medians if k is not None), key=lambda k: medians[k])
        gain = medians[best] - medians[None]
        kept = gain >= MIN_GAIN
        report[BY_ID[sid].name] = {
            "unrefined": round(medians[None], 4),
            "best": f"{best[0]:g} {unit}, {best[1]:g} mm",
            "best_dice": round(medians[best], 4),
            "kept": kept,
        }
        if kept:
            rules.append(make_rule(sid, best))
    return rules, report
