"""Agreement metrics against independent implementations (statsmodels, SimpleITK) and by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import SimpleITK as sitk  # noqa: N813
from statsmodels.stats.inter_rater import aggregate_raters
from statsmodels.stats.inter_rater import fleiss_kappa as statsmodels_fleiss_kappa

from inference.metrics import (
    Variability,
    VolumeRecord,
    dice_matching_any,
    disagreement_map,
    fleiss_kappa,
    majority_vote,
    staple,
    volumetry_variability,
    wilcoxon_signed_rank,
)


@pytest.mark.parametrize(("raters", "categories", "seed"), [(2, 2, 0), (3, 2, 1), (3, 4, 2), (5, 3, 3)])
def test_fleiss_kappa_matches_statsmodels(raters, categories, seed):
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, categories, size=(6, 7, 5))
    maps = [
        np.where(rng.random(truth.shape) < 0.3, rng.integers(0, categories, truth.shape), truth)
        for _ in range(raters)
    ]
    table, _ = aggregate_raters(np.stack([m.ravel() for m in maps], axis=1))
    assert fleiss_kappa(maps) == pytest.approx(statsmodels_fleiss_kappa(table, method="fleiss"))


def test_fleiss_kappa_of_identical_boolean_masks_is_one():
    mask = np.zeros((4, 4), dtype=bool)
    mask[1:3, 1:3] = True
    assert fleiss_kappa([mask, mask, mask]) == pytest.approx(1.0)
    assert fleiss_kappa([np.zeros((3, 3), bool)] * 2) == 1.0


def test_staple_matches_simpleitk_called_directly():
    rng = np.random.default_rng(4)
    truth = np.zeros((8, 12, 10), dtype=bool)
    truth[2:6, 3:9, 2:8] = True
    masks = [truth ^ (rng.random(truth.shape) < rate) for rate in (0.02, 0.05, 0.15)]
    staple_filter = sitk.STAPLEImageFilter()
    staple_filter.SetForegroundValue(1.0)
    expected = sitk.GetArrayFromImage(
        staple_filter.Execute([sitk.GetImageFromArray(m.astype(np.uint8)) for m in masks])
    )

    probability, sensitivities, specificities = staple(masks)

    assert probability.shape == truth.shape
    assert probability == pytest.approx(expected, abs=1e-6)
    assert sensitivities == pytest.approx(staple_filter.GetSensitivity())
    assert specificities == pytest.approx(staple_filter.GetSpecificity())
    # The noisiest annotator is estimated as the least reliable one.
    assert min(range(3), key=lambda i: sensitivities[i] + specificities[i]) == 2


def test_majority_vote_and_disagreement_map_by_hand():
    a = np.array([1, 1, 1, 0, 0], dtype=bool)
    b = np.array([1, 1, 0, 0, 1], dtype=bool)
    c = np.array([1, 0, 0, 0, 1], dtype=bool)
    assert majority_vote([a, b, c]).tolist() == [True, True, False, False, True]
    assert disagreement_map([a, b, c]) == pytest.approx([0, 1 / 3, 1 / 3, 0, 1 / 3])
    # Two annotators: a split voxel is outside the majority and half of them disagree with it.
    assert majority_vote([a, b]).tolist() == [True, True, False, False, False]
    assert disagreement_map([a, b]) == pytest.approx([0, 0, 0.5, 0, 0.5])


def test_dice_matching_any_annotator_by_hand():
    prediction = np.array([1, 1, 1, 0, 0, 1], dtype=bool)
    first = np.array([1, 1, 0, 1, 0, 0], dtype=bool)
    second = np.array([1, 0, 1, 1, 1, 0], dtype=bool)
    # TP: voxels 0,1,2 (someone said inside); FP: voxel 5 (nobody did); FN: voxel 3 (everybody did)
    assert dice_matching_any(prediction, [first, second]) == pytest.approx((6 + 1e-5) / (6 + 1 + 1 + 1e-5))


def _table() -> list[VolumeRecord]:
    # mouse, time point, annotator, volume; two mice x two time points x two annotators.
    raw = [
        ("M1", "0h", "A", 100.0),
        ("M1", "0h", "B", 120.0),
        ("M1", "24h", "A", 110.0),
        ("M1", "24h", "B", 130.0),
        ("M2", "0h", "A", 80.0),
        ("M2", "0h", "B", 100.0),
        ("M2", "24h", "A", 90.0),
        ("M2", "24h", "B", 90.0),
    ]
    return [VolumeRecord(m, t, a, "liver", v) for m, t, a, v in raw]


def test_variability_matches_a_hand_computed_table():
    (result,) = volumetry_variability(_table(), reference_annotator="A")
    assert isinstance(result, Variability)
    # scan means: M1 110, 120 -> v_M1 = 115; M2 90, 90 -> v_M2 = 90; mean volume 102.5
    assert result.mean_volume_mm3 == pytest.approx(102.5)
    # intersubject: population SD of (115, 90) = 12.5
    assert result.intersubject == pytest.approx(12.5 / 102.5)
    # interannotator: SD over annotators per scan = 10, 10, 10, 0 -> mean 7.5
    assert result.interannotator == pytest.approx(7.5 / 102.5)
    # intraannotator (annotator A): SD over time points per mouse = 5, 5 -> mean 5
    assert result.intraannotator == pytest.approx(5 / 102.5)
    assert (result.n_mice, result.n_scans, result.n_annotators) == (2, 4, 2)


def test_variability_is_nan_where_the_table_cannot_support_it():
    (result,) = volumetry_variability([VolumeRecord("M1", "0h", "A", "spleen", 50.0)])
    assert result.mean_volume_mm3 == 50.0
    assert math.isnan(result.intersubject)
    assert math.isnan(result.interannotator)
    assert math.isnan(result.intraannotator)


def test_wilcoxon_is_two_sided_with_the_exact_small_sample_p_value():
    better = [0.91, 0.92, 0.93, 0.94, 0.95, 0.96]
    worse = [0.90, 0.90, 0.90, 0.90, 0.90, 0.90]
    result = wilcoxon_signed_rank(better, worse)
    # Every difference is positive: exact two-sided p = 2 / 2^6.
    assert result.p_value == pytest.approx(2 / 64)
    assert result.significant
    assert wilcoxon_signed_rank(better, better).p_value == 1.0


def test_staple_of_empty_masks_is_an_empty_consensus_instead_of_nan():
    empty = np.zeros((4, 4, 4), dtype=bool)

    probability, sensitivities, specificities = staple([empty, empty, empty])

    assert not probability.any()
    assert specificities == (1.0, 1.0, 1.0)
    assert all(math.isnan(s) for s in sensitivities)
