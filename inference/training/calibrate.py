"""``python -m inference.training.calibrate --model DIR [--model DIR] --data VAL_DIR``.

Tunes a model's post-processing on validation phantoms (never the test ones) and writes it into
its ``model.json`` under ``"postprocess"``:

- ``score_offsets`` (organ model), first: per-structure shifts of the class scores that correct
  structures drawn systematically too small or too large (``offsets.py``); every rule below is
  tuned on the organ map they give;
- ``uncertainty_threshold``: the disagreement-head probability that, sent to the map's 50 % mark,
  best matches the voxels where the simulated annotators really disagree (Dice of the map at 50 %,
  the way AIMOS thresholds its heatmap), so that 50 % means "annotators would disagree here"; the
  other models' outline bands are left out meanwhile (they would cover the head's map at 50 %);
- ``refine`` (organ model): bones redrawn at full resolution as the voxels at or above
  ``min_hu`` inside the network's bone mask grown by ``margin_mm`` (and, with ``connected``,
  every bright voxel attached to them), with the rule that gives the best bone Dice against
  ground truth; then the spinal cord redrawn as the space the redrawn vertebrae enclose, if that
  beats the network's cord on its Dice; then the card's outline refiner networks
  (``refiner.py``), kept as they are; then the lungs' outlines moved onto the edge their air
  draws (``edges.tune_air_edges``; the pipeline applies these last, after the lesion search),
  and, for every other organ, the outline moved onto its edge with the fat around it
  (``edges.py``), then, for those still without a rule, onto the edge between the organ's own
  level and its neighbours' (``edges.tune_contrast_edges``), each where that beats the network's
  outline on its Dice;
- ``detect`` (lesion model, run with an organ model): lung metastases as bright nodules in and at
  the edge of the organ model's lungs (``pipeline.nodules.detect_bright_lesions``), with the
  threshold, rim erosion, smallest volume, chest-wall radius, dim-shell share, smoothing of noisy
  scans and peak contrast over the noise that give the best detection F0.5 (precision weighs
  twice: a false metastasis in a lab's count costs more than a missed 0.3 mm one), on the
  validation phantoms as they are and with 50 HU more noise, counting every nodule found in
  tumor-free real anatomy (the Digimouse atlas rendered at three sizes and two noise levels,
  ``atlas_negatives``) as a false positive;
- ``uncertainty_outline``: last, with the rules above in force, the per-structure outline bands
  that become the map's "uncertain" part (``outline.py``).

``--add-edges`` tunes only the air-edge and contrast-edge rules and adds them to the
post-processing the model already has (how ``mouse-organs/2.4.1`` was made from 2.4.0);
``--nodules`` tunes only the lung-nodule rule again (how ``mouse-tumor/2.0.3`` was made from 2.0.2);
``--outline`` tunes only the uncertainty outline bands again, with every rule in force (for a model
whose rules moved its outlines; on ``mouse-organs/2.4.2`` it changed four levels and no held-out
figure: the model card's "A liver refiner learned on the phantoms" section).

The other models passed with ``--model`` run beside the one being tuned (their uncertainty maps
join the combined map as they are), exactly as the pipeline runs them.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from collections.abc import Callable, Sequence
from itertools import product
from pathlib import Path
from typing import Literal

import numpy as np
from scipy import ndimage

from inference.jsonsafe import finite_or_null
from inference.metrics import dice
from inference.phantom import digimouse
from inference.pipeline import predict_volume
from inference.pipeline.nodules import nodule_candidates
from inference.pipeline.noise import noise_hu
from inference.pipeline.postprocess import (
    BONES,
    FACE_NEIGHBOURS,
    voxels_along,
    voxels_within,
)
from inference.registry import ModelCard, load_card
from inference.structures import BY_NAME
from inference.training.data import find_cases
from inference.training.edges import tune_air_edges, tune_contrast_edges, tune_edges
from inference.training.evaluate import load_canonical, metastasis_scores, real_disagreement
from inference.training.offsets import tune_offsets
from inference.training.outline import tune_outline

log = logging.getLogger(__name__)

THRESHOLDS = (0.05, 0.1, 0.15, 0.2, 0.3, 0.5)
BONE_MIN_HU = (300.0, 400.0, 450.0, 500.0, 600.0)
BONE_MARGIN_MM = (0.63, 1.26)
#: Whether bright voxels connected to the redrawn bones join them wherever they lie.
BONE_CONNECTED = (False, True)
#: Margins (mm) of the spinal-canal rule; None stands for "no rule".
CORD_MARGIN_MM = (None, 0.63, 1.26)
CORD = BY_NAME["spinal_cord"].id
METASTASIS = BY_NAME["metastasis"].id
LUNGS = (BY_NAME["lung_left"].id, BY_NAME["lung_right"].id)
#: Thresholds at least 7 noise sigmas above aerated parenchyma (about -430 HU, up to 40 HU of noise):
#: -250 HU found as many nodules on validation but fired on noise in the noisiest scans.
NODULE_MIN_HU = (-150.0, -50.0, 50.0)
NODULE_ERODE_MM = (0.21, 0.42)
NODULE_MIN_VOLUME_MM3 = (0.02, 0.05, 0.1)
#: Radius of the ball that finds the chest wall (0: no top-hat) and the dim share of the shell.
NODULE_WALL_MM = (0.0, 0.63, 0.84, 1.05)
NODULE_DIM_SHELL = (0.5, 0.6, 0.7, 0.9)
#: How far beyond the organ model's lungs a nodule may reach (its outer half is often "background").
NODULE_REACH_MM = 0.63
#: The noise (HU) a noisier scan is smoothed down to before the threshold (None: never), and how
#: many noise standard deviations above the threshold a nodule's brightest voxel must reach.
NODULE_SMOOTH_TO_HU = (None, 30.0, 40.0)
NODULE_PEAK_SNR = (0.0, 2.0, 3.0)
#: Each validation phantom is scored a second time with this much white noise (HU) added: our
#: phantoms hold 20-40 HU, a lab's low-dose in-vivo scan often 50-80.
NODULE_NOISIER_HU = 50.0
#: A detection rule: (min_hu, erode_mm, min_volume_mm3, wall_mm, min_dim_shell, smooth_to_hu,
#: peak_snr).
NoduleRule = tuple[float, float, float, float, float, float | None, float]
#: A tumor-free scan for the nodule rule: (name, CT in HU, labels, affine), canonical axes.
Negative = tuple[str, np.ndarray, np.ndarray, np.ndarray]
#: The atlas' sizes (times its length: about 17, 28 and 48 g) and the renders' noise seeds (the
#: robustness report draws seed 0, bench/tumor_fp_probe.py seed 1: both stay out).
NEGATIVE_SIZES = (0.85, 1.0, 1.2)
NEGATIVE_SEEDS = (2,)
#: The renders' noise (HU): the phantoms' own level, and a noisy low-dose scan's.
NEGATIVE_NOISE_HU = (20.0, 60.0)
#: Sharper renders at the atlas' own size, (noise HU, blur mm): a crisp reconstruction leaves the
#: lungs' rim against the heart one partial-volume voxel thick, read near the rule's threshold (at
#: 0.1 mm of blur 2.0.3 counted a 0.019 mm^3 speck there in one noise draw of five, seed 1).
NEGATIVE_SHARP = ((5.0, 0.1), (40.0, 0.1))


def _real_disagreement(folder: Path) -> np.ndarray | None:
    maps = [load_canonical(p)[0] for p in sorted(folder.glob("annotator_*.nii.gz"))]
    return real_disagreement(maps) if len(maps) >= 2 else None


#: An outline-rule family's tuner (``edges.py``): the rules it keeps and its sweep.
OutlineTuner = Callable[..., tuple[list[dict], dict]]
#: The outline-rule families in the order they are tuned (each takes only structures without a
#: rule): lungs onto their air, organs onto fat, then the rest onto their neighbours' level.
AIR: tuple[tuple[str, OutlineTuner], ...] = (("air_edge_rules", tune_air_edges),)
FAT: tuple[tuple[str, OutlineTuner], ...] = (("edge_rules", tune_edges),)
CONTRAST: tuple[tuple[str, OutlineTuner], ...] = (("contrast_edge_rules", tune_contrast_edges),)


def _bare(card: ModelCard) -> ModelCard:
    return dataclasses.replace(card, postprocess={})


def _before_air_edges(card: ModelCard) -> ModelCard:
    """``card`` without its air-edge rules, which the pipeline applies after the lesion search
    (``predict.settle_air_edges``)."""
    rules = [r for r in card.postprocess.get("refine", []) if "air_edge" not in r]
    return dataclasses.replace(card, postprocess={**card.postprocess, "refine": rules})


def _without_outline(card: ModelCard) -> ModelCard:
    """``card`` without its outline bands, which would cover every head's map at 50 %."""
    post = {k: v for k, v in card.postprocess.items() if k != "uncertainty_outline"}
    return dataclasses.replace(card, postprocess=post)


def trained_rules(card: ModelCard) -> list[dict]:
    """The ``refine`` rules that calibration keeps as they are: refiner networks (trained by
    ``refiner.py``) and the rules that stand in for them on other voxel sizes (``unless_refined``)."""
    return [r for r in card.refinements if "network" in r or r.get("unless_refined")]


def calibrate(
    target: ModelCard,
    others: Sequence[ModelCard],
    cases: Sequence[Path],
    *,
    threads: int = 2,
    negatives: Sequence[Negative] | None = None,
) -> dict:
    """The tuned ``postprocess`` section for ``target`` (nothing is written here). ``negatives``:
    tumor-free scans for the lung-nodule rule (default ``atlas_negatives()``)."""
    post: dict = {}
    report: dict = {"cases": [c.name for c in cases]}
    # Refiner networks are trained, not tuned here: they stay after the bone and cord rules, and
    # the edge rules leave their structures alone.
    refiners = trained_rules(target)
    if target.task == "organs":
        offsets, report["score_offsets"] = tune_offsets(target, cases, threads=threads)
        if offsets:
            post["score_offsets"] = offsets
    # Every later rule is tuned on the organ map the offsets give.
    base = dict(post)
    target = dataclasses.replace(target, postprocess=base)
    unc_scores: dict[float, list[float]] = {}
    bone_scores: dict[tuple[float, float, bool], list[float]] = {}
    unrefined: list[float] = []
    heads_only = [_without_outline(c) for c in others]
    for folder in cases:
        ct, affine = load_canonical(folder / "ct.nii.gz")
        truth, _ = load_canonical(folder / "labels.nii.gz")
        ct = ct.astype(np.float32)
        real = _real_disagreement(folder)
        own = predict_volume(ct, affine, [target], threads=threads)
        if real is not None:
            # Run as the pipeline runs: calibrated on the model grid, then upsampled and thresholded.
            for t in THRESHOLDS:
                card = dataclasses.replace(target, postprocess={**base, "uncertainty_threshold": t})
                out = predict_volume(ct, affine, [card, *heads_only], threads=threads)
                unc_scores.setdefault(t, []).append(dice(out.uncertainty >= 128, real))
        if BONES in target.structures and (truth == BONES).any():
            for key in product(BONE_MIN_HU, BONE_MARGIN_MM, BONE_CONNECTED):
                card = dataclasses.replace(target, postprocess={**base, "refine": [_bone_rule(*key)]})
                labels = predict_volume(ct, affine, [card], threads=threads).labels
                bone_scores.setdefault(key, []).append(dice(labels == BONES, truth == BONES))
            unrefined.append(dice(own.labels == BONES, truth == BONES))
        log.info("calibrated on %s", folder.name)
    if unc_scores:
        medians = {k: float(np.median(v)) for k, v in unc_scores.items()}
        threshold = max(medians, key=lambda k: medians[k])
        post["uncertainty_threshold"] = threshold
        report["uncertainty_dice_by_threshold"] = {f"{t:g}": round(m, 4) for t, m in medians.items()}
    if bone_scores:
        medians_b = {k: float(np.median(v)) for k, v in bone_scores.items()}
        without = float(np.median(unrefined))
        best_key, best_b = max(medians_b.items(), key=lambda kv: kv[1])
        report["bones_dice_unrefined"] = round(without, 4)
        report["bones_dice_by_rule"] = {
            f"{h:g} HU, {m:g} mm{', connected' if c else ''}": round(v, 4)
            for (h, m, c), v in medians_b.items()
        }
        if best_b > without:
            post["refine"] = [_bone_rule(*best_key)]
            if CORD in target.structures:
                cord = _pick_cord_rule(target, post["refine"][0], cases, threads)
                report["spinal_cord_dice_by_rule"] = cord["scores"]
                if cord["rule"] is not None:
                    post["refine"].append(cord["rule"])
    if refiners:
        post["refine"] = [*post.get("refine", []), *refiners]
    if target.task == "organs":
        _add_outline_rules(target, base, post, report, (*AIR, *FAT, *CONTRAST), cases, threads)
    if METASTASIS in target.structures and any(c.task == "organs" for c in others):
        _set_nodule_rule(target, others, cases, post, report, negatives, threads)
    if unc_scores:
        outline, sweep = tune_outline(target, others, post, cases, threads=threads)
        report["uncertainty_outline_sweep"] = sweep
        if outline is not None:
            post["uncertainty_outline"] = outline
    post["calibration"] = report
    return post


def atlas_negatives() -> list[Negative]:
    """Tumor-free real anatomy for the lung-nodule rule: the Digimouse atlas rendered as CT
    (``NEGATIVE_SEEDS``, ``NEGATIVE_NOISE_HU``), whole and shoulders to hips, at each of
    ``NEGATIVE_SIZES`` times its length, and sharper at its own size (``NEGATIVE_SHARP``); none
    when the atlas is not beside the clone. Every nodule found in them is false."""
    if not (digimouse.DEFAULT_DIR / digimouse.FILENAME).is_file():
        return []
    atlas = digimouse.load()
    found: list[Negative] = []
    crops: tuple[Literal["whole", "torso"], ...] = ("whole", "torso")
    for size, seed, noise, crop in product(NEGATIVE_SIZES, NEGATIVE_SEEDS, NEGATIVE_NOISE_HU, crops):
        mouse = dataclasses.replace(atlas, spacing_mm=atlas.spacing_mm * size)
        scan = digimouse.render_ct(mouse, seed=seed, crop=crop, noise_hu=noise)
        name = f"digimouse_{crop}_x{size:g}_seed{seed}_noise{noise:g}"
        found.append((name, scan.ct.astype(np.float32), scan.labels, scan.affine))
    for seed, (noise, blur), crop in product(NEGATIVE_SEEDS, NEGATIVE_SHARP, crops):
        scan = digimouse.render_ct(atlas, seed=seed, crop=crop, noise_hu=noise, blur_mm=blur)
        name = f"digimouse_{crop}_x1_seed{seed}_noise{noise:g}_blur{blur:g}"
        found.append((name, scan.ct.astype(np.float32), scan.labels, scan.affine))
    return found


def tune_nodules(
    target: ModelCard,
    others: Sequence[ModelCard],
    cases: Sequence[Path],
    negatives: Sequence[Negative],
    *,
    threads: int = 2,
) -> tuple[dict | None, dict]:
    """The lung-nodule ``detect`` rule for ``target`` (None when no rule finds a nodule) and the
    sweep. Lesion counts per organ are what the product reports: the rule with the best detection
    F0.5 over all validation cases wins (cases without metastases count their false positives
    too), not the best voxel Dice, which the largest nodules dominate. A nodule found in one of
    the tumor-free ``negatives`` is a false positive like any other: phantoms alone let the rule
    go down to specks that a real mouse's ribs and vessels at the lungs' rim also give. Each case
    is scored as it is and again with ``NODULE_NOISIER_HU`` of noise added (seeded by its place in
    ``cases``): a rule tuned at the phantoms' noise alone reads a noisy scan's rim as nodules."""
    scores: dict[NoduleRule, list[tuple[int, int, int]]] = {}
    for index, folder in enumerate(cases):
        ct, affine = load_canonical(folder / "ct.nii.gz")
        truth, _ = load_canonical(folder / "labels.nii.gz")
        ct = ct.astype(np.float32)
        noise = np.random.default_rng([index, 50]).standard_normal(ct.shape, dtype=np.float32)
        for scan in (ct, ct + noise * np.float32(NODULE_NOISIER_HU)):
            _score_nodules(scores, scan, truth, affine, target, others, threads)
    on_negatives: dict[NoduleRule, list[tuple[int, int, int]]] = {}
    for name, ct, truth, affine in negatives:
        _score_nodules(on_negatives, ct, truth, affine, target, others, threads)
        log.info("nodule rules on %s", name)
    for rule, rows in on_negatives.items():
        scores.setdefault(rule, []).extend(rows)
    f_half = {k: _f_half(v) for k, v in scores.items()}
    best_rule, best_n = max(f_half.items(), key=lambda kv: kv[1])
    report = {
        _nodule_name(rule): {
            "detection_f05": round(f_half[rule], 4),
            "found": sum(r[0] for r in rows),
            "missed": sum(r[2] for r in rows),
            "false_positives": sum(r[1] for r in rows),
            "false_positives_in_negatives": sum(r[1] for r in on_negatives.get(rule, [])),
        }
        for rule, rows in scores.items()
    }
    if best_n <= 0:
        return None, report
    min_hu, erode, volume, wall, shell, smooth, snr = best_rule
    chosen = {
        "structure": METASTASIS,
        "hosts": list(LUNGS),
        "min_hu": min_hu,
        "erode_mm": erode,
        "min_volume_mm3": volume,
        "reach_mm": NODULE_REACH_MM,
        "wall_mm": wall,
        "min_dim_shell": shell,
        "smooth_to_hu": smooth,
        "peak_snr": snr,
    }
    return chosen, report


def retune_nodules(
    target: ModelCard, others: Sequence[ModelCard], cases: Sequence[Path], *, threads: int = 2
) -> dict:
    """``target``'s ``postprocess`` as it stands with only its lung-nodule rule tuned again
    (``tune_nodules`` on ``cases`` and ``atlas_negatives``; how ``mouse-tumor/2.0.3`` was made
    from 2.0.2). The sweep replaces ``calibration.metastasis_rules``."""
    post = dict(target.postprocess)
    report = dict(post.get("calibration", {}))
    _set_nodule_rule(target, others, cases, post, report, None, threads)
    post["calibration"] = report
    return post


def retune_outline(
    target: ModelCard, others: Sequence[ModelCard], cases: Sequence[Path], *, threads: int = 2
) -> dict:
    """``target``'s ``postprocess`` as it stands with only its uncertainty outline bands tuned
    again, every rule in force (``outline.tune_outline``; for a new refiner or edge rule, which
    moves the outlines the bands sit on). The sweep replaces
    ``calibration.uncertainty_outline_sweep``; the bands stay as they were if none is found."""
    post = {k: v for k, v in target.postprocess.items() if k != "uncertainty_outline"}
    report = dict(post.get("calibration", {}))
    outline, report["uncertainty_outline_sweep"] = tune_outline(target, others, post, cases, threads=threads)
    post["uncertainty_outline"] = outline or target.postprocess.get("uncertainty_outline")
    post["calibration"] = report
    return {k: v for k, v in post.items() if v is not None}


def _set_nodule_rule(
    target: ModelCard,
    others: Sequence[ModelCard],
    cases: Sequence[Path],
    post: dict,
    report: dict,
    negatives: Sequence[Negative] | None,
    threads: int,
) -> None:
    """``tune_nodules``' rule into ``post["detect"]`` (none when no rule finds a nodule) and its
    sweep and negatives into ``report``; ``negatives`` default to ``atlas_negatives()``."""
    negatives = atlas_negatives() if negatives is None else negatives
    rule, report["metastasis_rules"] = tune_nodules(target, others, cases, negatives, threads=threads)
    post.pop("detect", None)
    if rule is not None:
        post["detect"] = [rule]
    report["nodule_negatives"] = [name for name, *_ in negatives]


def _bone_rule(min_hu: float, margin_mm: float, connected: bool) -> dict:
    rule: dict = {"structure": BONES, "min_hu": min_hu, "margin_mm": margin_mm}
    if connected:
        rule["connected"] = True
    return rule


def _cord_rule(margin_mm: float, bone_rule: dict) -> dict:
    return {"structure": CORD, "enclosed_by": BONES, "max_hu": bone_rule["min_hu"], "margin_mm": margin_mm}


def _pick_cord_rule(target: ModelCard, bone_rule: dict, cases: Sequence[Path], threads: int) -> dict:
    """The spinal-canal rule (after ``bone_rule``) with the best median cord Dice, or None."""
    scores: dict[float | None, list[float]] = {}
    for folder in cases:
        ct, affine = load_canonical(folder / "ct.nii.gz")
        truth, _ = load_canonical(folder / "labels.nii.gz")
        if not (truth == CORD).any():
            continue
        for margin in CORD_MARGIN_MM:
            rules = [bone_rule] + ([] if margin is None else [_cord_rule(margin, bone_rule)])
            card = dataclasses.replace(target, postprocess={**target.postprocess, "refine": rules})
            labels = predict_volume(ct.astype(np.float32), affine, [card], threads=threads).labels
            scores.setdefault(margin, []).append(dice(labels == CORD, truth == CORD))
    if not scores:
        return {"rule": None, "scores": {}}
    medians = {m: float(np.median(v)) for m, v in scores.items()}
    best = max(medians, key=lambda m: medians[m])
    return {
        "rule": None if best is None else _cord_rule(best, bone_rule),
        "scores": {("none" if m is None else f"canal, {m:g} mm"): round(v, 4) for m, v in medians.items()},
    }


def _f_half(rows: Sequence[tuple[int, int, int]]) -> float:
    """Detection F0.5 of (found, false positives, missed) rows: precision weighs twice."""
    found, false_pos, missed = (sum(r[i] for r in rows) for i in range(3))
    return 1.25 * found / (1.25 * found + 0.25 * missed + false_pos) if found else 0.0


def _nodule_name(rule: NoduleRule) -> str:
    min_hu, erode, volume, wall, shell, smooth, snr = rule
    wall_part = f", chest wall {wall:g} mm" if wall else ""
    smooth_part = f", smoothed to {smooth:g} HU" if smooth is not None else ""
    snr_part = f", peak {snr:g} sd" if snr else ""
    return (
        f"{min_hu:g} HU, erode {erode:g} mm, >= {volume:g} mm3{wall_part}, dim shell {shell:g}"
        f"{smooth_part}{snr_part}"
    )


def _score_nodules(
    scores: dict[NoduleRule, list[tuple[int, int, int]]],
    ct: np.ndarray,
    truth: np.ndarray,
    affine: np.ndarray,
    target: ModelCard,
    others: Sequence[ModelCard],
    threads: int,
) -> None:
    """(found, false positives, missed) of each lung-nodule rule on one pipeline run's organ map.

    Candidates are built once per threshold, erosion and wall radius; each size and shell rule
    then only picks among them. A true nodule counts as found when a kept candidate (or the lesion
    model) comes within one voxel of it, as in ``evaluate.metastasis_scores``; a kept candidate
    near no true nodule is a false positive.
    """
    # The organ map as the pipeline's lesion search sees it: before the lungs' air-edge rules.
    out = predict_volume(ct, affine, [_bare(target), *map(_before_air_edges, others)], threads=threads)
    assert out.organ_labels is not None and out.lesion_labels is not None
    spacing = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    voxel_mm3 = float(np.prod(spacing))
    true_mask = truth == METASTASIS
    model = metastasis_scores(out.lesion_labels == METASTASIS, true_mask, voxel_mm3)
    model_hits = {i for i, lesion in enumerate(model["lesions"], start=1) if lesion["detected"]}
    true_ids, n_true = ndimage.label(true_mask)
    noise = noise_hu(ct)
    sweep = product(NODULE_MIN_HU, NODULE_ERODE_MM, NODULE_WALL_MM, NODULE_SMOOTH_TO_HU)
    for min_hu, erode, wall, smooth in sweep:
        found = nodule_candidates(
            out.organ_labels,
            ct,
            hosts=LUNGS,
            min_hu=min_hu,
            erode_voxels=voxels_along(erode, spacing),
            reach_voxels=voxels_along(NODULE_REACH_MM, spacing),
            wall_voxels=voxels_along(wall, spacing),
            noise_hu=noise,
            smooth_to_hu=smooth,
        )
        touches: dict[int, set[int]] = {}
        if found is not None:
            near = ndimage.grey_dilation(true_ids[found.box], footprint=FACE_NEIGHBOURS)
            both = (found.labelled > 0) & (near > 0)
            pairs = zip(found.labelled[both].tolist(), near[both].tolist(), strict=True)
            for component, lesion in set(pairs):
                touches.setdefault(component, set()).add(lesion)
        for volume, shell, snr in product(NODULE_MIN_VOLUME_MM3, NODULE_DIM_SHELL, NODULE_PEAK_SNR):
            hits, false_pos = set(model_hits), int(model["false_positives"])
            if found is not None:
                least = voxels_within(volume, spacing)
                keep = found.kept(min_voxels=least, min_dim_shell=shell, peak_snr=snr)
                for component in np.flatnonzero(keep).tolist():
                    if component in touches:
                        hits |= touches[component]
                    else:
                        false_pos += 1
            scores.setdefault((min_hu, erode, volume, wall, shell, smooth, snr), []).append(
                (len(hits), false_pos, n_true - len(hits))
            )


def write_postprocess(folder: Path, post: dict) -> None:
    path = folder / "model.json"
    card = json.loads(path.read_text())
    card["postprocess"] = post
    path.write_text(json.dumps(finite_or_null(card), indent=1, allow_nan=False) + "\n")


def add_edges(target: ModelCard, cases: Sequence[Path], *, threads: int = 2) -> dict:
    """``target``'s ``postprocess`` as it stands, with air-edge rules (lungs) and then
    contrast-edge rules for the structures still without a rule, tuned on ``cases``, added (their
    sweeps in ``calibration.air_edge_rules`` and ``contrast_edge_rules``); every other rule, and
    the outline bands, are kept (tuned again with the air edges in force, the lungs' bands came
    out the same: the model card's ``mouse-organs/2.4.1``)."""
    post = dict(target.postprocess)
    report = dict(post.get("calibration", {}))
    _add_outline_rules(target, target.postprocess, post, report, (*AIR, *CONTRAST), cases, threads)
    post["calibration"] = report
    return post


def _add_outline_rules(
    target: ModelCard,
    base: dict,
    post: dict,
    report: dict,
    tuners: Sequence[tuple[str, OutlineTuner]],
    cases: Sequence[Path],
    threads: int,
) -> None:
    """Tune each outline-rule family in turn, on ``target`` with ``base`` and the rules chosen so
    far in force, and add what each keeps to ``post["refine"]`` (its sweep to ``report``)."""
    for name, tune in tuners:
        card = dataclasses.replace(target, postprocess={**base, "refine": post.get("refine", [])})
        rules, report[name] = tune(card, cases, threads=threads)
        post["refine"] = [*post.get("refine", []), *rules]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m inference.training.calibrate", description=__doc__)
    parser.add_argument(
        "--model", type=Path, action="append", required=True, help="model folder (repeatable)"
    )
    parser.add_argument("--tune", type=Path, help="the model folder to tune (default: the first --model)")
    parser.add_argument("--data", type=Path, required=True, help="validation phantoms (flat layout)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--add-edges",
        action="store_true",
        help="only add air-edge (lungs) and contrast-edge rules to the model's post-processing, "
        "for structures without a rule, keeping every other rule",
    )
    parser.add_argument(
        "--nodules",
        action="store_true",
        help="only tune the lung-nodule rule again (a lesion model, with an organ model beside it), "
        "keeping every other rule",
    )
    parser.add_argument(
        "--outline",
        action="store_true",
        help="only tune the uncertainty outline bands again, with every other rule in force",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    tune = (args.tune or args.model[0]).resolve()
    cards = [load_card(m) for m in args.model]
    target = next((c for c in cards if c.folder == tune), None) or load_card(tune)
    others = [c for c in cards if c.folder != tune]
    # Nothing to tune on must not rewrite a model's post-processing with empty sweeps.
    cases = find_cases(args.data)
    if not cases:
        parser.error(
            f"{args.data} holds no validation phantoms (case folders with ct.nii.gz and labels.nii.gz); "
            "nothing was written"
        )
    if args.outline and not any(len(list(c.glob("annotator_*.nii.gz"))) >= 2 for c in cases):
        parser.error(
            f"--outline tunes the bands on where annotators part: no case under {args.data} has two "
            "or more annotator_*.nii.gz; nothing was written"
        )
    if args.add_edges:
        if target.task != "organs":
            parser.error(f"--add-edges tunes an organ model's outlines; {tune} is a {target.task} model")
        post = add_edges(target, cases, threads=args.threads)
    elif args.nodules:
        if METASTASIS not in target.structures or not any(c.task == "organs" for c in others):
            parser.error("--nodules tunes a lesion model's nodule rule: give it and an organ model (--model)")
        post = retune_nodules(target, others, cases, threads=args.threads)
    elif args.outline:
        post = retune_outline(target, others, cases, threads=args.threads)
    else:
        post = calibrate(target, others, cases, threads=args.threads)
    write_postprocess(tune, post)
    print(json.dumps(post, indent=1))


if __name__ == "__main__":
    main()
