"""Overlap between binary masks: Dice (AIMOS's epsilon form), Jaccard and their pairwise tables.

Array contract: every mask is a boolean (or 0/1) numpy array; masks compared with each other have
the same shape and lie on the same voxel grid. Axis order does not matter for overlap.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import combinations

import numpy as np
import numpy.typing as npt

Mask = npt.NDArray[np.bool_] | npt.NDArray[np.integer]

#: AIMOS's epsilon: keeps Dice defined (= 1) when both masks are empty.
DICE_EPS = 1e-5


def as_mask(array: npt.ArrayLike) -> npt.NDArray[np.bool_]:
    """A boolean view of ``array`` (non-zero = inside)."""
    arr = np.asarray(array)
    return arr if arr.dtype == np.bool_ else arr != 0


def check_same_shape(masks: Sequence[npt.ArrayLike]) -> None:
    """Raise ``ValueError`` in plain words when masks are not on the same grid."""
    shapes = {np.shape(m) for m in masks}
    if len(shapes) > 1:
        raise ValueError(f"masks must have the same shape to be compared; got {sorted(shapes)}")


def confusion_counts(prediction: npt.ArrayLike, reference: npt.ArrayLike) -> tuple[int, int, int]:
    """``(TP, FP, FN)`` voxel counts of ``prediction`` against ``reference``."""
    check_same_shape([prediction, reference])
    p, r = as_mask(prediction), as_mask(reference)
    tp = int(np.count_nonzero(p & r))
    return tp, int(np.count_nonzero(p)) - tp, int(np.count_nonzero(r)) - tp


def dice(a: npt.ArrayLike, b: npt.ArrayLike, eps: float = DICE_EPS) -> float:
    """AIMOS Dice, ``(2TP + eps) / (2TP + FP + FN + eps)``; symmetric in ``a`` and ``b``.

    Two empty masks score 1.0 (perfect agreement that nothing is there); an empty mask against a
    non-empty one scores about 0.
    """
    tp, fp, fn = confusion_counts(a, b)
    return (2 * tp + eps) / (2 * tp + fp + fn + eps)


def jaccard(a: npt.ArrayLike, b: npt.ArrayLike) -> float:
    """Jaccard similarity ``|A n B| / |A u B|``; 1.0 when both masks are empty."""
    tp, fp, fn = confusion_counts(a, b)
    union = tp + fp + fn
    return 1.0 if union == 0 else tp / union


def pairwise_dice(masks: Sequence[npt.ArrayLike], eps: float = DICE_EPS) -> dict[tuple[int, int], float]:
    """Dice of every unordered pair ``(i, j)``, ``i < j``, of the masks (indices into ``masks``)."""
    check_same_shape(masks)
    bools = [as_mask(m) for m in masks]
    return {(i, j): dice(bools[i], bools[j], eps) for i, j in combinations(range(len(bools)), 2)}


def pairwise_jaccard(masks: Sequence[npt.ArrayLike]) -> dict[tuple[int, int], float]:
    """Jaccard of every unordered pair ``(i, j)``, ``i < j``, of the masks."""
    check_same_shape(masks)
    bools = [as_mask(m) for m in masks]
    return {(i, j): jaccard(bools[i], bools[j]) for i, j in combinations(range(len(bools)), 2)}
