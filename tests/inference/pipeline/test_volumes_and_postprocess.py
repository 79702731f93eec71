"""Volumes carry an uncertainty range; post-processing keeps the components the rules say."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from inference.assessment import CUT_BY_FIELD, judge_volume
from inference.pipeline.postprocess import clean, to_scores, uncertainty_from
from inference.pipeline.volumes import (
    BY_VALUE_BELOW,
    label_counts,
    labels_present,
    structure_volumes,
    write_volumes_csv,
)
from inference.structures import BY_NAME

LIVER = BY_NAME["liver"].id
LUNG_LEFT, LUNG_RIGHT = BY_NAME["lung_left"].id, BY_NAME["lung_right"].id
TUMOR = BY_NAME["tumor"].id


def test_volumes_count_voxels_and_bound_them_by_the_uncertain_border() -> None:
    labels = np.zeros((10, 10, 10), dtype=np.uint8)
    labels[2:6, 2:6, 2:6] = LIVER
    uncertainty = np.zeros_like(labels)
    uncertainty[5, 2:6, 2:6] = 200  # the liver's outer x layer is uncertain (16 voxels)
    uncertainty[6, 2:6, 2:6] = 200  # and so is the background layer just outside (16 voxels)
    uncertainty[9, 9, 9] = 255  # uncertain but touching nothing

    [row] = structure_volumes(labels, 0.5, uncertainty, structure_ids=[LIVER])

    assert (row.name, row.voxels) == ("liver", 64)
    assert row.volume_mm3 == 32.0
    assert row.volume_low_mm3 == (64 - 16) * 0.5
    assert row.volume_high_mm3 == (64 + 16) * 0.5


@pytest.mark.parametrize("top", [0, 1, 15, BY_VALUE_BELOW - 1, BY_VALUE_BELOW, 200])
@pytest.mark.parametrize("fortran", [False, True])
def test_label_counts_match_a_plain_bincount_whichever_way_they_are_counted(top: int, fortran: bool) -> None:
    rng = np.random.default_rng(top)
    labels = rng.integers(0, top + 1, size=(9, 7, 5)).astype(np.uint8)
    if fortran:
        labels = np.asfortranarray(labels)
    expected = np.bincount(labels.ravel(), minlength=256)

    assert np.array_equal(label_counts(labels, 256), expected)
    # Fewer bins than values: the larger values are left out, not folded into the last bin.
    assert np.array_equal(label_counts(labels, 4), expected[:4])
    assert labels_present(labels) == frozenset(int(v) for v in np.flatnonzero(expected))


def test_absent_structures_get_a_zero_row_and_no_uncertainty_means_no_range() -> None:
    labels = np.zeros((4, 4, 4), dtype=np.uint8)
    labels[0, 0, 0] = LIVER

    rows = structure_volumes(labels, 2.0, None, structure_ids=[LIVER, TUMOR])

    assert [(r.name, r.voxels, r.volume_low_mm3, r.volume_high_mm3) for r in rows] == [
        ("liver", 1, 2.0, 2.0),
        ("tumor", 0, 0.0, 0.0),
    ]


def test_the_volumes_csv_gives_no_volume_for_an_organ_not_found_or_cut_by_the_field(tmp_path: Path) -> None:
    # "Not found" is not 0 mm3 (a head scan holds no heart), and a kidney the field cuts through
    # was only partly scanned; a tumor of 0 voxels is a measurement: no tumor.
    labels = np.zeros((6, 6, 6), dtype=np.uint8)
    labels[0:2, 0:2, 0:2] = LIVER
    labels[4:6, 4:6, 4:6] = BY_NAME["kidney_left"].id
    heart, kidney = BY_NAME["heart"].id, BY_NAME["kidney_left"].id
    rows = structure_volumes(labels, 0.5, None, structure_ids=[heart, LIVER, kidney, TUMOR])
    write_volumes_csv(tmp_path / "volumes.csv", rows, cut=["kidney_left"])

    with (tmp_path / "volumes.csv").open() as handle:
        table = {row["structure"]: row for row in csv.DictReader(handle)}

    assert {
        name: (row["voxels"], row["volume_mm3"], row["volume_high_mm3"], row["assessment"])
        for name, row in table.items()
    } == {
        "heart": ("0", "", "", "not found"),
        "liver": ("8", "4.0", "4.0", "measured"),
        "kidney_left": ("8", "", "", CUT_BY_FIELD),
        "tumor": ("0", "0.0", "0.0", "measured"),
    }


def one_hot_scores(labels: np.ndarray, channels: int) -> np.ndarray:
    return np.stack([(labels == c).astype(np.float32) * 5 for c in range(channels)])


def test_a_single_organ_keeps_its_largest_component() -> None:
    channels = np.zeros((20, 10, 10), dtype=np.uint8)
    channels[2:8, 2:8, 2:8] = 1
    channels[15:17, 2:4, 2:4] = 1  # a speck
    scores = one_hot_scores(channels, 2)

    report = clean(scores, (0, LIVER), (0.5, 0.5, 0.5))

    kept = np.argmax(scores, axis=0)
    assert kept[15:17, 2:4, 2:4].max() == 0 and kept[2:8, 2:8, 2:8].min() == 1
    assert report.components_removed == {LIVER: 1} and report.voxels_removed == {LIVER: 8}


def test_paired_organs_keep_one_component_on_their_own_side() -> None:
    # Canonical x grows towards the subject's Right: the left lung belongs at low x.
    channels = np.zeros((30, 10, 10), dtype=np.uint8)
    channels[2:8, 2:8, 2:8] = 1  # left lung, left side
    channels[22:29, 2:8, 2:8] = 1  # a bigger "left lung" blob on the right side: wrong side
    channels[18:21, 2:5, 2:5] = 2  # right lung, right side
    scores = one_hot_scores(channels, 3)

    clean(scores, (0, LUNG_LEFT, LUNG_RIGHT), (0.5, 0.5, 0.5))

    kept = np.argmax(scores, axis=0)
    assert kept[2:8, 2:8, 2:8].min() == 1
    assert kept[22:29, 2:8, 2:8].max() == 0
    assert kept[18:21, 2:5, 2:5].min() == 2


def test_lesions_keep_every_component_above_the_minimum_volume() -> None:
    channels = np.zeros((20, 10, 10), dtype=np.uint8)
    channels[2:5, 2:5, 2:5] = 1  # 27 voxels = 3.375 mm3
    channels[10:12, 2:4, 2:4] = 1  # 8 voxels = 1 mm3
    channels[16, 6, 6] = 1  # 1 voxel = 0.125 mm3
    scores = one_hot_scores(channels, 2)

    clean(scores, (0, TUMOR), (0.5, 0.5, 0.5), min_lesion_volume_mm3=0.5)

    kept = np.argmax(scores, axis=0)
    assert kept.sum() == 27 + 8


def test_sigmoid_scores_label_a_structure_where_its_probability_exceeds_half() -> None:
    logits = np.array([[[[9.0, 9.0, 9.0]]], [[[-1.0, 0.2, 3.0]]]], dtype=np.float32)

    scores = to_scores(logits, "sigmoid")

    assert list(np.argmax(scores, axis=0).ravel()) == [0, 1, 1]


def test_uncertainty_is_the_runner_up_to_winner_probability_ratio() -> None:
    probabilities = np.array([0.5, 0.25, 0.25], dtype=np.float32).reshape(3, 1, 1, 1)

    uncertainty = uncertainty_from(np.log(probabilities), None)

    assert uncertainty.ravel()[0] == pytest.approx(0.5)
    assert uncertainty_from(np.log(probabilities), np.full((1, 1, 1), 0.9))[0, 0, 0] == pytest.approx(0.9)


def test_dense_and_sparse_uncertain_borders_agree() -> None:
    rng = np.random.default_rng(7)
    labels = rng.integers(0, 4, size=(12, 11, 10)).astype(np.uint8)
    mostly = rng.random(labels.shape) < 0.9
    few = rng.random(labels.shape) < 0.05

    dense = structure_volumes(labels, 1.0, np.where(mostly, 255, 0).astype(np.uint8))
    sparse = [
        structure_volumes(labels, 1.0, np.where(mostly & part, 255, 0).astype(np.uint8))
        for part in (few, ~few)
    ]

    # The dense path (90 % uncertain) equals the sum of two sparse runs over disjoint halves.
    growth = [r.volume_high_mm3 - r.volume_mm3 for r in dense]
    assert growth == [
        a.volume_high_mm3 - a.volume_mm3 + b.volume_high_mm3 - b.volume_mm3
        for a, b in zip(*sparse, strict=True)
    ]


def test_a_volume_of_an_id_outside_the_label_table_is_judged_as_an_organ() -> None:
    # A volume stored under an older label table still gets an answer, not an error.
    assert judge_volume(250, 0, cut=[]) == (False, "not found")
    assert judge_volume(250, 12, cut=[]) == (True, "measured")
