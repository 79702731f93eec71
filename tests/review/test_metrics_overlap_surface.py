"""Overlap and surface metrics against hand-computed values and brute force."""

from __future__ import annotations

import math
from itertools import product

import numpy as np
import pytest
from scipy.spatial.distance import cdist

from inference.metrics import (
    ci_gen,
    com_displacement_mm,
    dice,
    hd95_mm,
    jaccard,
    msd_mm,
    pairwise_dice,
    surface_distances_mm,
    volume_mm3,
)

SPACING_MM = (0.5, 0.8, 1.3)


def test_dice_and_jaccard_match_hand_computed_counts():
    a = np.array([1, 1, 1, 0, 0], dtype=bool)
    b = np.array([0, 1, 1, 1, 0], dtype=bool)
    # TP = 2, FP = 1, FN = 1
    assert dice(a, b) == pytest.approx((4 + 1e-5) / (6 + 1e-5), abs=1e-12)
    assert jaccard(a, b) == pytest.approx(2 / 4)


def test_dice_of_two_empty_masks_is_one_and_empty_against_full_is_near_zero():
    empty = np.zeros((3, 3), dtype=bool)
    assert dice(empty, empty) == 1.0
    assert jaccard(empty, empty) == 1.0
    assert dice(empty, ~empty) == pytest.approx(1e-5 / (9 + 1e-5))


def test_ci_gen_is_pairwise_intersections_over_pairwise_unions():
    a = np.array([1, 1, 1, 1, 0, 0], dtype=bool)
    b = np.array([0, 1, 1, 1, 1, 0], dtype=bool)
    c = np.array([0, 0, 1, 1, 1, 1], dtype=bool)
    # |a n b| = 3, |a u b| = 5; |a n c| = 2, |a u c| = 6; |b n c| = 3, |b u c| = 5
    assert ci_gen([a, b, c]) == pytest.approx((3 + 2 + 3) / (5 + 6 + 5))
    assert ci_gen([a, b]) == pytest.approx(jaccard(a, b))


def test_pairwise_dice_lists_every_unordered_pair():
    masks = [np.eye(4, dtype=bool), np.eye(4, dtype=bool), np.ones((4, 4), dtype=bool)]
    table = pairwise_dice(masks)
    assert set(table) == {(0, 1), (0, 2), (1, 2)}
    assert table[(0, 1)] == pytest.approx(1.0)
    assert table[(0, 2)] == pytest.approx((8 + 1e-5) / (8 + 12 + 1e-5))


def test_masks_of_different_shapes_are_refused_in_plain_words():
    with pytest.raises(ValueError, match="same shape"):
        dice(np.zeros((2, 2)), np.zeros((2, 3)))


def _brute_surface_points_mm(mask: np.ndarray, spacing: tuple[float, ...]) -> np.ndarray:
    """Border voxels found one by one: inside with a face-neighbour outside or off the array."""
    points = []
    for index in zip(*np.nonzero(mask), strict=True):
        for axis, step in product(range(mask.ndim), (-1, 1)):
            neighbour = list(index)
            neighbour[axis] += step
            off_array = not 0 <= neighbour[axis] < mask.shape[axis]
            if off_array or not mask[tuple(neighbour)]:
                points.append(np.array(index) * np.array(spacing))
                break
    return np.array(points)


def _random_blob(rng: np.random.Generator, shape: tuple[int, int, int]) -> np.ndarray:
    centre = rng.uniform(3, np.array(shape) - 3)
    radii = rng.uniform(2, 4, size=3)
    grid = np.indices(shape).transpose(1, 2, 3, 0)
    inside = (((grid - centre) / radii) ** 2).sum(-1) <= 1
    return inside | (rng.random(shape) < 0.02)  # speckle: several components, odd surfaces


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_surface_distances_hd95_and_msd_match_brute_force_with_anisotropic_spacing(seed):
    rng = np.random.default_rng(seed)
    a, b = _random_blob(rng, (12, 10, 9)), _random_blob(rng, (12, 10, 9))
    pa, pb = _brute_surface_points_mm(a, SPACING_MM), _brute_surface_points_mm(b, SPACING_MM)
    pairwise = cdist(pa, pb)
    brute_ab, brute_ba = pairwise.min(axis=1), pairwise.min(axis=0)

    ab, ba = surface_distances_mm(a, b, SPACING_MM)

    assert np.sort(ab) == pytest.approx(np.sort(brute_ab))
    assert np.sort(ba) == pytest.approx(np.sort(brute_ba))
    assert hd95_mm(a, b, SPACING_MM, symmetric=False) == pytest.approx(np.percentile(brute_ab, 95))
    assert hd95_mm(a, b, SPACING_MM) == pytest.approx(
        max(np.percentile(brute_ab, 95), np.percentile(brute_ba, 95))
    )
    assert msd_mm(a, b, SPACING_MM) == pytest.approx(np.concatenate([brute_ab, brute_ba]).mean())


def test_shifted_cube_has_the_shift_as_every_distance():
    a = np.zeros((10, 10, 10), dtype=bool)
    a[2:6, 2:6, 2:6] = True
    b = np.roll(a, 2, axis=2)  # shift along the 1.3 mm axis
    assert com_displacement_mm(a, b, SPACING_MM) == pytest.approx(2 * 1.3)
    assert hd95_mm(a, b, SPACING_MM) == pytest.approx(2 * 1.3)
    assert volume_mm3(a, SPACING_MM) == pytest.approx(64 * 0.5 * 0.8 * 1.3)


def test_empty_masks_give_zero_distance_and_one_empty_mask_gives_infinity():
    empty = np.zeros((5, 5, 5), dtype=bool)
    full = empty.copy()
    full[1:3, 1:3, 1:3] = True
    assert hd95_mm(empty, empty, SPACING_MM) == 0.0
    assert msd_mm(empty, empty, SPACING_MM) == 0.0
    assert hd95_mm(full, empty, SPACING_MM) == math.inf
    assert msd_mm(empty, full, SPACING_MM) == math.inf
    assert math.isnan(com_displacement_mm(full, empty, SPACING_MM))
