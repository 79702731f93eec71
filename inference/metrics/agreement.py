"""Agreement between several annotators of the same scan and structure.

Array contract: ``masks`` is a sequence of k >= 2 boolean (or 0/1) arrays of equal shape, one per
annotator, on the same voxel grid; ``label_maps`` are integer arrays of equal shape whose values
are categories (structure ids or 0/1). Outputs keep the input shape and axis order.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import combinations
from typing import NamedTuple

import numpy as np
import numpy.typing as npt
import SimpleITK as sitk  # noqa: N813  (the name every SimpleITK example uses)

from .overlap import as_mask, check_same_shape


def _masks(masks: Sequence[npt.ArrayLike], minimum: int = 2) -> list[npt.NDArray[np.bool_]]:
    if len(masks) < minimum:
        raise ValueError(f"at least {minimum} annotations are needed; got {len(masks)}")
    check_same_shape(masks)
    return [as_mask(m) for m in masks]


def ci_gen(masks: Sequence[npt.ArrayLike]) -> float:
    """Generalised conformity index, ``sum over pairs |Ai n Aj| / sum over pairs |Ai u Aj|``.

    Equals Jaccard for two annotators; 1.0 when every mask is empty.
    """
    bools = _masks(masks)
    intersections = unions = 0
    for a, b in combinations(bools, 2):
        intersections += int(np.count_nonzero(a & b))
        unions += int(np.count_nonzero(a | b))
    return 1.0 if unions == 0 else intersections / unions


def fleiss_kappa(label_maps: Sequence[npt.ArrayLike], categories: Sequence[int] | None = None) -> float:
    """Fleiss' kappa over voxels: k raters (the maps) each put every voxel in one of n categories.

    ``kappa = (P_bar - P_e) / (1 - P_e)`` with ``P_bar`` the mean per-voxel agreement
    ``(sum_j n_ij^2 - k) / (k (k - 1))`` and ``P_e = sum_j p_j^2``. Boolean masks are the two
    categories inside/outside. ``categories`` defaults to every value present. When all raters put
    every voxel in the same single category (``P_e = 1``) the agreement is perfect and 1.0 is
    returned. Memory stays at one count array per category (no voxel x category table).
    """
    if len(label_maps) < 2:
        raise ValueError(f"Fleiss' kappa needs at least 2 raters; got {len(label_maps)}")
    check_same_shape(label_maps)
    maps = [np.asarray(m) for m in label_maps]
    maps = [m.astype(np.uint8) if m.dtype == np.bool_ else m for m in maps]
    k = len(maps)
    n_voxels = maps[0].size
    if n_voxels == 0:
        raise ValueError("Fleiss' kappa needs at least one voxel")
    if categories is None:
        categories = sorted({int(v) for m in maps for v in np.unique(m)})
    sum_squares = 0  # sum over voxels and categories of n_ij^2
    p_e = 0.0
    for category in categories:
        counts = np.zeros(maps[0].shape, dtype=np.int32)
        for m in maps:
            counts += m == category
        sum_squares += int(np.square(counts, dtype=np.int64).sum())
        p_e += (int(counts.sum()) / (n_voxels * k)) ** 2
    p_bar = (sum_squares - n_voxels * k) / (n_voxels * k * (k - 1))
    if np.isclose(p_e, 1.0):
        return 1.0
    return float((p_bar - p_e) / (1.0 - p_e))


def vote_counts(masks: Sequence[npt.ArrayLike]) -> npt.NDArray[np.int32]:
    """How many annotators put each voxel inside (same shape as the masks)."""
    bools = _masks(masks, minimum=1)
    counts = np.zeros(bools[0].shape, dtype=np.int32)
    for m in bools:
        counts += m
    return counts


def majority_vote(masks: Sequence[npt.ArrayLike]) -> npt.NDArray[np.bool_]:
    """Voxels that strictly more than half of the annotators put inside (2 of 3; both of 2)."""
    return vote_counts(masks) * 2 > len(masks)


def intersection_consensus(masks: Sequence[npt.ArrayLike]) -> npt.NDArray[np.bool_]:
    """Voxels that every annotator put inside."""
    return vote_counts(masks) == len(masks)


def disagreement_map(masks: Sequence[npt.ArrayLike]) -> npt.NDArray[np.float32]:
    """Per voxel, the fraction of annotators who disagree with the majority vote (0 .. 0.5).

    With an even number of annotators a tie counts as "outside" for the majority (see
    ``majority_vote``), so a 1-1 split between two annotators reads 0.5.
    """
    counts = vote_counts(masks)
    k = len(masks)
    majority = counts * 2 > k
    disagreeing = np.where(majority, k - counts, counts)
    return (disagreeing / k).astype(np.float32)


class StapleResult(NamedTuple):
    """STAPLE's output: ``probability`` (float32, shape of the masks) that each voxel is inside, and
    one estimated sensitivity and specificity per annotator (in input order). Unpacks as
    ``probability, sensitivities, specificities = staple(masks)``."""

    probability: npt.NDArray[np.float32]
    sensitivities: tuple[float, ...]
    specificities: tuple[float, ...]

    def consensus(self, threshold: float = 0.5) -> npt.NDArray[np.bool_]:
        """The STAPLE label map: voxels whose probability is at least ``threshold``."""
        return self.probability >= threshold


def staple(
    masks: Sequence[npt.ArrayLike], *, confidence_weight: float = 1.0, max_iterations: int = 200
) -> StapleResult:
    """Warfield's STAPLE with SimpleITK's ``STAPLEImageFilter`` (foreground value 1).

    The filter estimates each annotator's sensitivity and specificity by expectation-maximisation
    and returns the probability of the true segmentation at every voxel. When every mask is empty
    the probability is 0 everywhere, each specificity 1.0 and each sensitivity ``nan``.
    """
    bools = _masks(masks)
    if not any(m.any() for m in bools):
        # Nobody marked anything: the consensus is empty, specificity is perfect and sensitivity
        # is undefined (no true voxel to find). SimpleITK would answer NaN everywhere.
        k = len(bools)
        return StapleResult(np.zeros(bools[0].shape, np.float32), (math.nan,) * k, (1.0,) * k)
    images = [sitk.GetImageFromArray(m.astype(np.uint8)) for m in bools]
    staple_filter = sitk.STAPLEImageFilter()
    staple_filter.SetForegroundValue(1.0)
    staple_filter.SetConfidenceWeight(confidence_weight)
    staple_filter.SetMaximumIterations(max_iterations)
    probability = staple_filter.Execute(images)
    return StapleResult(
        probability=sitk.GetArrayFromImage(probability).astype(np.float32),
        sensitivities=tuple(float(s) for s in staple_filter.GetSensitivity()),
        specificities=tuple(float(s) for s in staple_filter.GetSpecificity()),
    )


def dice_matching_any(
    prediction: npt.ArrayLike, annotations: Sequence[npt.ArrayLike], eps: float = 1e-5
) -> float:
    """AIMOS's "correct if it matches at least one annotator" Dice (voxel by voxel).

    A predicted-inside voxel is a true positive when any annotator put it inside and a false
    positive when none did; a predicted-outside voxel is a false negative only when every annotator
    put it inside (otherwise it matches the annotators who left it out). Then
    ``(2TP + eps) / (2TP + FP + FN + eps)``. With one annotation this is the ordinary Dice.
    """
    bools = _masks(annotations, minimum=1)
    check_same_shape([prediction, bools[0]])
    p = as_mask(prediction)
    counts = vote_counts(bools)
    union, every = counts > 0, counts == len(bools)
    tp = int(np.count_nonzero(p & union))
    fp = int(np.count_nonzero(p & ~union))
    fn = int(np.count_nonzero(~p & every))
    return (2 * tp + eps) / (2 * tp + fp + fn + eps)
