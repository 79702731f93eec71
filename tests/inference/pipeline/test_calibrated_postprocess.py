"""Post-processing tuned on validation scans: the calibrated uncertainty map and full-resolution bones."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy import ndimage

from inference.metrics import dice
from inference.pipeline import predict_volume
from inference.pipeline.nodules import detect_bright_lesions
from inference.pipeline.postprocess import (
    MIXED_WITH_AIR_HU,
    calibrate_uncertainty,
    mark_outlines,
    outline_band,
    refine_air_edge,
    refine_by_intensity,
    refine_contrast_edge,
    refine_edge,
    refine_enclosed,
    voxels_across,
    voxels_within,
)
from inference.registry import ModelCard, ModelCardError, load_card
from inference.structures import BY_NAME
from tests.inference.pipeline.conftest import WINDOW
from tests.inference.pipeline.tiny_models import write_threshold_model

BONES = BY_NAME["bones"].id
BRAIN = BY_NAME["brain"].id
LIVER = BY_NAME["liver"].id
LUNG = BY_NAME["lung_left"].id
HEART = BY_NAME["heart"].id


def with_postprocess(folder: Path, post: dict) -> ModelCard:
    raw = json.loads((folder / "model.json").read_text())
    raw["postprocess"] = post
    (folder / "model.json").write_text(json.dumps(raw))
    return load_card(folder)


def test_the_calibrated_threshold_becomes_the_maps_half_mark() -> None:
    p = np.array([0.0, 0.1, 0.2, 0.25, 0.6, 1.0], dtype=np.float32)

    shown = calibrate_uncertainty(p, 0.2)

    np.testing.assert_allclose(shown, [0.0, 0.25, 0.5, 0.53125, 0.75, 1.0], atol=1e-6)
    assert np.all(np.diff(shown) > 0)
    assert calibrate_uncertainty(p, 0.5) is not None
    np.testing.assert_array_equal(calibrate_uncertainty(p, 0.5), p)


def test_bones_are_redrawn_from_intensity_inside_the_grown_coarse_mask() -> None:
    # Coarse 4^3 grid over a fine 12^3 one (factor 3); the model found bone in coarse voxel (1, 1, 1).
    coarse = np.zeros((4, 4, 4), bool)
    coarse[1, 1, 1] = True
    labels = np.zeros((12, 12, 12), np.uint8)
    labels[3:6, 3:6, 3:6] = BONES  # the coarse voxel, upsampled
    labels[6, 4, 4] = LIVER  # another organ in the grown region stays what it is
    hu = np.zeros((12, 12, 12), np.float32)
    hu[4, 4, 2:8] = 900.0  # a thin bright rod: partly in the coarse voxel, partly in its margin
    hu[6, 4, 4] = 900.0
    hu[11, 11, 11] = 900.0  # bright but far from any bone the model found: left alone

    changed = refine_by_intensity(labels, coarse, hu, BONES, min_hu=400.0, margin_voxels=1)

    assert set(zip(*np.nonzero(labels == BONES), strict=True)) == {(4, 4, z) for z in range(2, 8)}
    assert labels[6, 4, 4] == LIVER and labels[11, 11, 11] == 0
    assert changed == (27 - 3) + 3  # 24 dim voxels lost, 3 bright ones gained


def test_without_margin_the_rod_is_cut_at_the_coarse_voxel() -> None:
    coarse = np.zeros((4, 4, 4), bool)
    coarse[1, 1, 1] = True
    labels = np.zeros((12, 12, 12), np.uint8)
    hu = np.zeros((12, 12, 12), np.float32)
    hu[4, 4, 2:8] = 900.0

    refine_by_intensity(labels, coarse, hu, BONES, min_hu=400.0, margin_voxels=0)

    assert set(zip(*np.nonzero(labels == BONES), strict=True)) == {(4, 4, 3), (4, 4, 4), (4, 4, 5)}
    assert refine_by_intensity(labels, np.zeros_like(coarse), hu, BONES, min_hu=1, margin_voxels=2) == 0


def test_connected_bright_voxels_join_the_bones_wherever_they_lie() -> None:
    # The model found the spine's coarse voxel only; a limb bone attached to it lies far outside
    # the margin, and a bright tag lies apart from every bone.
    coarse = np.zeros((4, 4, 4), bool)
    coarse[1, 1, 1] = True
    labels = np.zeros((12, 12, 12), np.uint8)
    hu = np.zeros((12, 12, 12), np.float32)
    hu[4, 4, 3:6] = 900.0  # inside the coarse voxel
    hu[4, 4:12, 5] = 700.0  # the attached "limb", out to the edge of the scan
    hu[4, 11, 5] = 0.0  # (ends one voxel short)
    labels[4, 9, 5] = LIVER  # another organ on the way keeps its label and does not block
    hu[10, 1, 10] = 900.0  # the tag

    alone = labels.copy()
    refine_by_intensity(alone, coarse, hu, BONES, min_hu=400.0, margin_voxels=0)
    changed = refine_by_intensity(labels, coarse, hu, BONES, min_hu=400.0, margin_voxels=0, connected=True)

    found = {(4, 4, 3), (4, 4, 4), (4, 4, 5), (4, 5, 5)}  # the bright voxels inside the coarse voxel
    limb = {(4, 6, 5), (4, 7, 5), (4, 8, 5), (4, 10, 5)}  # beyond it, past the liver voxel
    assert set(zip(*np.nonzero(alone == BONES), strict=True)) == found
    assert set(zip(*np.nonzero(labels == BONES), strict=True)) == found | limb
    assert labels[4, 9, 5] == LIVER and labels[10, 1, 10] == 0
    assert changed == len(found) + len(limb)


def test_the_cord_is_redrawn_as_the_canal_the_vertebrae_enclose() -> None:
    cord_id = BY_NAME["spinal_cord"].id
    shape = (12, 12, 9)
    labels = np.zeros(shape, np.uint8)
    hu = np.zeros(shape, np.float32)
    ring = np.zeros((12, 12), bool)
    ring[3:9, 3:9] = True
    ring[4:8, 4:8] = False  # a 4 x 4 canal inside a one-voxel wall
    for z in range(9):
        if z != 6:  # an intervertebral gap at z = 6: the wall is open there
            labels[ring, z] = BONES
            hu[ring, z] = 900.0
    labels[5:7, 5:7, :] = cord_id  # the model's thin cord, 2 x 2
    hu[5, 5, 2] = 800.0  # a bright voxel the model called cord is bone
    coarse = np.zeros((4, 4, 3), bool)
    coarse[1:3, 1:3, :] = True  # the cord's coarse voxels (factor 3)

    changed = refine_enclosed(labels, coarse, hu, cord_id, wall_id=BONES, max_hu=400.0, margin_voxels=0)

    for z in range(9):
        expected = np.zeros((12, 12), bool)
        if z == 6:
            expected[5:7, 5:7] = True  # open wall: the model's outline stays
        else:
            expected[4:8, 4:8] = True
        if z == 2:
            expected[5, 5] = False
        assert np.array_equal(labels[:, :, z] == cord_id, expected), z
    assert labels[5, 5, 2] == BONES
    assert changed == 8 * (16 - 4) + 1
    nothing = np.zeros_like(coarse)
    assert refine_enclosed(labels, nothing, hu, cord_id, wall_id=BONES, max_hu=1, margin_voxels=1) == 0


def test_an_outline_moves_onto_the_organs_edge_with_the_fat_around_it() -> None:
    # A 6-voxel-wide organ (40 HU) in fat (-100 HU); the model drew it one voxel too far along x
    # (5..10 instead of 4..9). Another structure touches it, and a gas pocket lies deep inside.
    shape = (16, 12, 12)
    hu = np.full(shape, -100.0, np.float32)
    hu[4:10, 3:9, 3:9] = 40.0
    hu[6:8, 5:7, 5:7] = -900.0  # two voxels inside the true outline
    labels = np.zeros(shape, np.uint8)
    labels[5:11, 3:9, 3:9] = LIVER
    labels[11:14, 3:9, 3:9] = BONES
    hu[11:14, 3:9, 3:9] = 40.0  # as bright as the organ: only background may join it

    changed = refine_edge(labels, hu, LIVER, edge_hu=-20.0, margin_voxels=1)

    expected = np.zeros(shape, bool)
    expected[4:10, 3:9, 3:9] = True  # the pocket, deeper than the margin, stays the organ's
    assert np.array_equal(labels == LIVER, expected)
    assert np.all(labels[11:14, 3:9, 3:9] == BONES) and labels[10, 5, 5] == 0
    assert changed == 2 * 36  # one 6 x 6 layer gained, one shed
    assert refine_edge(labels, hu, LIVER, edge_hu=-20.0, margin_voxels=0) == 0
    assert refine_edge(labels, hu, BY_NAME["spleen"].id, edge_hu=-20.0, margin_voxels=2) == 0


def test_an_outline_moves_onto_the_edge_between_two_soft_tissues() -> None:
    # A liver (65 HU) in muscle (45 HU), 12 HU of noise, drawn one voxel too far along x; a
    # kidney beside it is never touched. Where the contrast is under the rule's smallest, the
    # network's outline stays.
    rng = np.random.default_rng(1)
    grid = np.indices((30, 24, 24))
    liver = sum((g - c) ** 2 for g, c in zip(grid, (12, 12, 12), strict=True)) <= 7.5**2
    noise = rng.normal(0.0, 12.0, liver.shape).astype(np.float32)
    hu = np.where(liver, 65.0, 45.0).astype(np.float32) + noise
    labels = np.zeros(hu.shape, np.uint8)
    labels[1:][liver[:-1]] = LIVER
    kidney = BY_NAME["kidney_left"].id
    labels[22:27, 8:16, 8:16] = kidney
    drawn = labels.copy()

    assert refine_contrast_edge(labels.copy(), hu, LIVER, min_contrast_hu=30.0, margin_voxels=2) == 0
    # A level that drifts across the organ by as much as its contrast (cupping, drift.py) leaves
    # the outline as drawn.
    assert (
        refine_contrast_edge(labels.copy(), hu, LIVER, min_contrast_hu=8.0, margin_voxels=2, drift_hu=20.0)
        == 0
    )
    changed = refine_contrast_edge(labels, hu, LIVER, min_contrast_hu=8.0, margin_voxels=2)

    assert dice(labels == LIVER, liver) > dice(drawn == LIVER, liver) + 0.02
    assert changed > 0 and np.array_equal(labels == kidney, drawn == kidney)


def test_the_contrast_edge_leaves_an_outline_against_the_lungs_as_drawn() -> None:
    # A liver (65 HU) in muscle (45 HU), drawn one voxel off along x, whose top lies under a lung
    # (-450 HU). Beside the lung a voxel's averaged level is the lung's partial volume, darker
    # than the liver's edge: read as a level, the liver's dome would be shed. It keeps the
    # network's label there; elsewhere the outline moves onto the edge as before.
    rng = np.random.default_rng(1)
    grid = np.indices((30, 24, 24))
    liver = sum((g - c) ** 2 for g, c in zip(grid, (12, 12, 12), strict=True)) <= 7.5**2
    lung = grid[2] >= 18
    liver &= ~lung
    hu = np.where(liver, 65.0, 45.0).astype(np.float32) + rng.normal(0.0, 12.0, liver.shape).astype(
        np.float32
    )
    hu[lung] = -450.0
    labels = np.zeros(hu.shape, np.uint8)
    labels[1:][liver[:-1]] = LIVER
    drawn = labels.copy()
    beside_lung = ndimage.minimum_filter(hu, 3) < MIXED_WITH_AIR_HU

    changed = refine_contrast_edge(labels, hu, LIVER, min_contrast_hu=8.0, margin_voxels=2)

    assert changed > 0
    assert (drawn[beside_lung] == LIVER).sum() > 50
    assert np.array_equal(labels[beside_lung], drawn[beside_lung])
    assert dice(labels == LIVER, liver) > dice(drawn == LIVER, liver) + 0.01


def test_growth_stops_at_a_dark_gap_and_at_the_margin() -> None:
    # Two bright slabs separated by one fat voxel: the organ in the first must not jump the gap.
    hu = np.full((14, 4, 4), -100.0, np.float32)
    hu[1:6] = 40.0
    hu[7:13] = 40.0
    labels = np.zeros(hu.shape, np.uint8)
    labels[1:3] = LIVER  # drawn three voxels short of its edge at x = 5

    refine_edge(labels, hu, LIVER, edge_hu=0.0, margin_voxels=2)

    assert np.array_equal(np.unique(np.nonzero(labels == LIVER)[0]), [1, 2, 3, 4])  # two steps only
    refine_edge(labels, hu, LIVER, edge_hu=0.0, margin_voxels=5)
    assert np.array_equal(np.unique(np.nonzero(labels == LIVER)[0]), [1, 2, 3, 4, 5])  # not past the gap


def _lung_in_the_chest() -> tuple[np.ndarray, np.ndarray]:
    """A lung (-450 HU) x 5..14 in soft tissue (40 HU), a vessel (40 HU) deep inside it, an
    airway (-1000 HU) running into it from x = 0, and a rib (900 HU) against its y face."""
    shape = (20, 16, 16)
    hu = np.full(shape, 40.0, np.float32)
    hu[5:15, 4:12, 4:12] = -450.0
    hu[9:11, 7:9, 7:9] = 40.0  # a vessel three voxels inside
    hu[0:5, 7:9, 7:9] = -1000.0  # the airway, outside the lung
    hu[5:15, 3, 4:12] = 900.0  # a rib: never lung
    return hu, hu == -450.0


def test_a_lungs_outline_moves_onto_the_edge_its_air_draws() -> None:
    hu, lung = _lung_in_the_chest()
    labels = np.zeros(hu.shape, np.uint8)
    labels[6:16, 3:11, 4:12] = LUNG  # one voxel off along x and y: over the rib, short of the far face
    labels[9:11, 7:9, 7:9] = LUNG  # the vessel inside is the network's lung
    labels[16:19, 4:12, 4:12] = HEART  # an organ beside it keeps its tissue
    heart = labels == HEART
    labels[13:15, 9:11, 5:11] = HEART  # and gives up the air it was drawn over
    drawn = labels == LUNG

    changed = refine_air_edge(labels, hu, LUNG, fraction=0.5, margin_voxels=2)

    expected = lung.copy()
    expected[9:11, 7:9, 7:9] = True  # the vessel, deeper than the margin, stays lung
    assert np.array_equal(labels == LUNG, expected)
    assert np.array_equal(labels == HEART, heart)
    assert not np.any(labels[0:5] == LUNG)  # the airway beyond the old outline does not join
    assert changed == int((expected != drawn).sum())  # each voxel gained or shed counted once
    gut = np.zeros(hu.shape, np.uint8)
    gut[6:16, 3:11, 4:12] = LUNG
    gut[13:15, 9:11, 5:11] = BY_NAME["intestine"].id  # gas in the gut is the gut's own
    refine_air_edge(gut, hu, LUNG, fraction=0.5, margin_voxels=2)
    assert np.all(gut[13:15, 9:11, 5:11] == BY_NAME["intestine"].id)
    assert labels[5, 5, 5] == LUNG and labels[15, 5, 5] == 0 and labels[8, 3, 5] == 0


def test_a_lung_nearly_as_dark_as_air_keeps_its_noisy_voxels() -> None:
    # A hyperinflated lung (-850 HU, noise 60 HU): many of its voxels fall below the airway level.
    rng = np.random.default_rng(0)
    hu = np.full((20, 16, 16), 40.0, np.float32)
    hu[5:15, 4:12, 4:12] = -850.0
    lung = hu < 0
    hu += rng.normal(0.0, 60.0, hu.shape).astype(np.float32)
    labels = np.zeros(hu.shape, np.uint8)
    labels[6:16, 4:12, 4:12] = LUNG

    refine_air_edge(labels, hu, LUNG, fraction=0.5, margin_voxels=2)

    assert np.array_equal(labels == LUNG, lung)


def test_a_lung_that_holds_no_air_keeps_the_networks_outline() -> None:
    hu, _ = _lung_in_the_chest()
    labels = np.zeros(hu.shape, np.uint8)
    labels[6:16, 3:11, 4:12] = LUNG
    collapsed = np.where(hu == -450.0, 30.0, hu).astype(np.float32)  # atelectasis: no air left
    before = labels.copy()

    assert refine_air_edge(labels, collapsed, LUNG, fraction=0.5, margin_voxels=2) == 0
    assert np.array_equal(labels, before)
    assert refine_air_edge(labels, hu, LUNG, fraction=0.5, margin_voxels=0) == 0
    assert refine_air_edge(labels, hu, HEART, fraction=0.5, margin_voxels=2) == 0  # none drawn


def test_predict_applies_the_cards_refinement_and_calibration(tmp_path: Path) -> None:
    # Tiny model: liver where 300 < HU < 600, "bones" above 600 HU, on a 0.4 mm grid; scan at 0.2 mm.
    folder = tmp_path / "tiny" / "1"
    plain = write_threshold_model(
        folder, structures=(0, LIVER, BONES), spacing_mm=(0.4, 0.4, 0.4), normalisation=WINDOW
    )
    volume = np.full((24, 24, 24), 450.0, np.float32)
    volume[:, :, :4] = 0.0
    volume[:, :, 4:6] = 310.0  # where the tiny head's disagreement peaks (at 300 HU)
    volume[8:16, 8:16, 8:16] = 650.0  # bone-like block the model finds
    volume[10:14, 10:14, 10:14] = 950.0  # its bright core

    # Synthetic blocks are no mouse scan: here and below they are taken as HU unchecked.
    before = predict_volume(volume, np.diag([0.2, 0.2, 0.2, 1.0]), [plain], threads=1, intensity="hu")
    tuned = with_postprocess(
        folder,
        {
            "uncertainty_threshold": 0.1,
            "refine": [{"structure": BONES, "min_hu": 900.0, "margin_mm": 0.0}],
        },
    )
    after = predict_volume(volume, np.diag([0.2, 0.2, 0.2, 1.0]), [tuned], threads=1, intensity="hu")

    assert np.all(before.labels[volume >= 900.0] == BONES) and np.any(before.labels[volume == 650.0] == BONES)
    assert np.array_equal(np.argwhere(after.labels == BONES), np.argwhere(volume >= 900.0))
    assert not np.any(after.labels[volume == 650.0] == BONES)  # the dim rim is no longer bone
    assert np.all(after.uncertainty >= before.uncertainty)
    # Voxels the raw head put between 10 % and 50 % now read as uncertain; certain ones stay certain.
    assert np.any((before.uncertainty < 128) & (after.uncertainty >= 128))
    assert np.all(after.uncertainty[before.uncertainty == 0] == 0)

    outlined = with_postprocess(
        folder,
        {
            "uncertainty_threshold": 0.1,
            "refine": [{"structure": BONES, "min_hu": 900.0, "margin_mm": 0.0}],
            "uncertainty_outline": {"smoothing_mm": [0.2, 0.2, 0.2], "levels": {str(BONES): 0.25}},
        },
    )
    banded = predict_volume(volume, np.diag([0.2, 0.2, 0.2, 1.0]), [outlined], threads=1, intensity="hu")
    expected = outline_band(after.labels, (0.2, 0.2, 0.2), [((0.2, 0.2, 0.2), {BONES: 0.25})])
    # Uncertain exactly on the bright core's outline band; the head's shade elsewhere, below 50 %.
    assert np.array_equal(banded.uncertainty >= 128, expected >= 128)
    assert expected[10, 10, 10] >= 128 and expected[12, 12, 12] < 128
    outside = expected == 0
    assert np.array_equal(banded.uncertainty[outside], np.minimum(after.uncertainty[outside], 127))


@pytest.mark.parametrize(
    ("structure", "threshold", "dark", "organ_hu", "around_hu", "rule"),
    [
        # Liver where 300 < HU < 600 ("bones" above), in 0 HU: the edge rule.
        (LIVER, 300.0, False, 450.0, 0.0, {"edge_hu": 300.0, "margin_mm": 1.0}),
        # Lung where the scan is below -100 HU, in soft tissue: the air-edge rule.
        (LUNG, -100.0, True, -450.0, 40.0, {"air_edge": 0.5, "margin_mm": 0.4}),
    ],
)
def test_predict_moves_outlines_onto_edges_with_the_cards_rule(
    tmp_path: Path,
    structure: int,
    threshold: float,
    dark: bool,
    organ_hu: float,
    around_hu: float,
    rule: dict,
) -> None:
    # Tiny model on a 0.6 mm grid; the scan's organ block (0.2 mm) ends mid-way through coarse
    # voxels: the upsampled outline misses or overshoots a layer on every face (a rounded corner
    # is several face steps away, hence the edge rule's 1 mm margin).
    folder = tmp_path / "tiny" / "1"
    window = {"kind": "window", "low_hu": -1000, "high_hu": 1000}
    plain = write_threshold_model(
        folder,
        structures=(0, structure) if dark else (0, structure, BONES),
        thresholds=((threshold + 1000) / 2000,) if dark else (0.65, 0.8),
        spacing_mm=(0.6, 0.6, 0.6),
        normalisation=window,
        dark=dark,
    )
    volume = np.full((30, 30, 30), around_hu, np.float32)
    volume[7:20, 8:22, 10:23] = organ_hu
    organ = volume == organ_hu
    affine = np.diag([0.2, 0.2, 0.2, 1.0])

    before = predict_volume(volume, affine, [plain], threads=1, intensity="hu")
    ruled = with_postprocess(folder, {"refine": [{"structure": structure, **rule}]})
    after = predict_volume(volume, affine, [ruled], threads=1, intensity="hu")

    assert not np.array_equal(before.labels == structure, organ)
    assert np.array_equal(after.labels == structure, organ)


def test_score_offsets_move_a_structures_outline(tmp_path: Path) -> None:
    # Tiny model on its own grid: liver where 300 < HU < 600, bones above (logit slopes 60 per
    # unit of the 0..1000 HU window, so +6 on the liver's score moves both its edges by 100 HU).
    folder = tmp_path / "tiny" / "1"
    plain = write_threshold_model(folder, structures=(0, LIVER, BONES), normalisation=WINDOW)
    volume = np.broadcast_to(np.arange(16, dtype=np.float32)[:, None, None] * 62.5, (16, 4, 4)).copy()
    affine = np.diag([0.2, 0.2, 0.2, 1.0])

    before = predict_volume(volume, affine, [plain], threads=1, intensity="hu")
    shifted = with_postprocess(folder, {"score_offsets": {str(LIVER): 6.0}})
    after = predict_volume(volume, affine, [shifted], threads=1, keep_scores=True, intensity="hu")

    liver = (volume > 300) & (volume < 600)
    assert np.array_equal(before.labels == LIVER, liver)
    assert np.array_equal(after.labels == LIVER, (volume > 200) & (volume < 700))
    assert shifted.score_offsets == [0.0, 6.0, 0.0]
    assert set(after.scores) == {"organs"} and after.scores["organs"].shape == (3, 16, 4, 4)
    assert not before.scores  # kept only when asked


@pytest.mark.parametrize(
    ("post", "message"),
    [
        ({"uncertainty_threshold": 1.5}, "strictly between 0 and 1"),
        ({"uncertainty_outline": {"smoothing_mm": [0.3, 0.3], "levels": {}}}, "three values"),
        (
            {
                "uncertainty_outline": {
                    "smoothing_mm": [0.3, 0.3, 0],
                    "levels": {str(LIVER): 0.2},
                    "smoothing_by_structure": {str(LIVER): [0.3, -1, 0]},
                }
            },
            "three values",
        ),
        (
            {
                "uncertainty_outline": {
                    "smoothing_mm": [0.3, 0.3, 0],
                    "levels": {str(LIVER): 0.2},
                    "smoothing_by_structure": {"7": [0.3, 0.3, 0]},
                }
            },
            "smoothing_by_structure names 7",
        ),
        ({"uncertainty_outline": {"smoothing_mm": [0.3, 0.3, 0], "levels": {"7": 0.2}}}, "names 7"),
        ({"uncertainty_outline": {"smoothing_mm": [0.3, 0.3, 0], "levels": {str(LIVER): 0.7}}}, "levels"),
        ({"uncertainty_outline": {"levels": {str(LIVER): 0.2}}}, "malformed"),
        ({"score_offsets": {"7": 1.0}}, "score_offsets names 7"),
        ({"score_offsets": {str(LIVER): "nan"}}, "finite"),
        ({"refine": [{"structure": 7, "min_hu": 400, "margin_mm": 1}]}, "structure 7, not an output"),
        ({"refine": [{"structure": LIVER, "min_hu": 400, "margin_mm": -1}]}, "margin_mm"),
        ({"refine": [{"structure": LIVER, "margin_mm": 1}]}, "malformed"),
        ({"refine": [{"structure": LIVER, "enclosed_by": 7, "max_hu": 400, "margin_mm": 1}]}, "enclosed_by"),
        ({"refine": [{"structure": LIVER, "enclosed_by": LIVER, "max_hu": 400, "margin_mm": 1}]}, "another"),
        ({"refine": [{"structure": LIVER, "enclosed_by": BONES, "margin_mm": 1}]}, "malformed"),
        ({"refine": [{"structure": LIVER, "edge_hu": "fat", "margin_mm": 0.2}]}, "malformed"),
        ({"refine": [{"structure": LIVER, "edge_hu": -20, "margin_mm": -0.2}]}, "margin_mm"),
        ({"refine": [{"structure": LIVER, "air_edge": 1.5, "margin_mm": 0.4}]}, "air_edge"),
        ({"refine": [{"structure": LIVER, "contrast_edge": -5, "margin_mm": 0.4}]}, "contrast_edge"),
        ({"refine": [{"structure": LIVER, "air_edge": "half", "margin_mm": 0.4}]}, "malformed"),
    ],
)
def test_the_registry_refuses_bad_postprocess_sections(tmp_path: Path, post: dict, message: str) -> None:
    folder = tmp_path / "m" / "1"
    write_threshold_model(folder, structures=(0, LIVER, BONES))

    with pytest.raises(ModelCardError, match=message):
        with_postprocess(folder, post)


def test_a_structure_with_its_own_smoothing_gets_its_own_band_group(tmp_path: Path) -> None:
    folder = tmp_path / "m" / "1"
    write_threshold_model(folder, structures=(0, LIVER, BONES))
    outline = {
        "smoothing_mm": [0.21, 0.21, 0.21],
        "levels": {str(LIVER): 0.3, str(BONES): 0.25},
        "smoothing_by_structure": {str(BONES): [0.32, 0.32, 0.0]},
    }

    card = with_postprocess(folder, {"uncertainty_outline": outline})

    assert card.uncertainty_outlines == [
        ([0.21, 0.21, 0.21], {LIVER: 0.3}),
        ([0.32, 0.32, 0.0], {BONES: 0.25}),
    ]


def test_a_card_without_postprocess_keeps_the_raw_head(tmp_path: Path) -> None:
    card = write_threshold_model(tmp_path / "m" / "1")

    assert (card.uncertainty_threshold, card.refinements, card.as_json()["postprocess"]) == (0.5, [], {})
    assert card.uncertainty_outlines == []


METASTASIS = BY_NAME["metastasis"].id


def test_rule_sizes_in_mm_become_whole_voxels() -> None:
    fine = (0.21, 0.21, 0.21)
    assert voxels_across(0.63, fine) == 3
    assert voxels_across(0.0, fine) == 0
    assert voxels_across(0.63, (0.2, 0.22, 0.21)) == 3  # mean spacing
    assert voxels_within(0.2, fine) == 22  # 0.2 / 0.009261 = 21.6
    assert voxels_within(0.001, fine) == 1  # never zero: a rule always needs a voxel


def test_bright_nodules_inside_the_lungs_are_found_and_the_rim_is_not() -> None:
    organs = np.zeros((20, 20, 20), np.uint8)
    organs[4:16, 4:16, 4:16] = LUNG
    organs[9:11, 9:11, 9:11] = 0  # the organ model left the nodule unlabelled: a hole in the lung
    hu = np.full(organs.shape, -430.0, np.float32)
    hu[organs == 0] = 40.0  # soft tissue around the lung (and in the hole) ...
    hu[9:11, 9:11, 9:11] = 60.0  # ... and the nodule
    hu[4, 4:16, 4:16] = 0.0  # partial-volume rim inside the lung's outer layer
    hu[13, 13, 13] = 50.0  # one bright voxel: below the smallest volume
    hu[1, 1, 1] = 500.0  # bright but outside every host

    found = detect_bright_lesions(organs, hu, hosts=[LUNG], min_hu=-150.0, erode_voxels=1, min_voxels=2)

    assert set(zip(*np.nonzero(found), strict=True)) == {
        (x, y, z) for x in (9, 10) for y in (9, 10) for z in (9, 10)
    }
    no_host = detect_bright_lesions(organs, hu, hosts=[LIVER], min_hu=-150.0, erode_voxels=1, min_voxels=2)
    assert not no_host.any()


def test_a_ribs_halo_against_the_lung_is_no_nodule() -> None:
    # A rib (bone, 900 HU) runs along the lung inside its reach; its partial-volume halo (-100 HU,
    # bright for the rule) lies in the lung. A real nodule sits in the middle. On the real
    # Digimouse anatomy such halos were 96 "metastases" (19-22 mm^3) in a tumor-free mouse.
    organs = np.zeros((20, 20, 20), np.uint8)
    organs[4:16, 4:16, 4:16] = LUNG
    hu = np.full(organs.shape, -430.0, np.float32)
    hu[organs == 0] = 40.0
    organs[3, 4:16, 6:8] = BONES
    hu[3, 4:16, 6:8] = 900.0
    hu[4:6, 4:16, 6:8] = -100.0  # the halo: two voxels deep into the lung
    hu[9:11, 9:11, 9:11] = 60.0  # the nodule

    # The committed lung rule's shell share (mouse-tumor 2.0.0: half the shell dim parenchyma).
    found = detect_bright_lesions(
        organs, hu, hosts=[LUNG], min_hu=-150.0, erode_voxels=1, min_voxels=2, min_dim_shell=0.5
    )

    assert set(zip(*np.nonzero(found), strict=True)) == {
        (x, y, z) for x in (9, 10) for y in (9, 10) for z in (9, 10)
    }


def _tiny_lesion_model(folder: Path, window: dict, rule: dict) -> ModelCard:
    """A tiny lesion model that finds nothing itself (its classes sit at the window's top), with
    ``rule`` as its one ``detect`` rule."""
    write_threshold_model(
        folder,
        name="tiny-lesions",
        task="tumor",
        structures=(0, BY_NAME["tumor"].id, METASTASIS),
        thresholds=(0.97, 0.99),
        normalisation=window,
    )
    return with_postprocess(folder, {"detect": [rule]})


def test_the_lesion_models_detect_rule_runs_on_the_organ_map_of_the_same_call(tmp_path: Path) -> None:
    # Soft tissue (40 HU) round a lung (-450 HU) that the tiny organ model calls lung below -100 HU,
    # and a nodule (60 HU) in it, which that model leaves out: a hole in the lung.
    window = {"kind": "window", "low_hu": -1000, "high_hu": 1000}
    organs = write_threshold_model(
        tmp_path / "organs" / "1", structures=(0, LUNG), thresholds=(0.45,), normalisation=window, dark=True
    )
    rule = {"structure": METASTASIS, "hosts": [LUNG], "min_hu": -150, "erode_mm": 0.0, "min_volume_mm3": 0.0}
    lesions = _tiny_lesion_model(tmp_path / "lesions" / "1", window, rule)
    volume = np.full((20, 20, 20), 40.0, np.float32)
    volume[4:16, 4:16, 4:16] = -450.0
    volume[8:10, 8:10, 8:10] = 60.0
    affine = np.diag([0.2, 0.2, 0.2, 1.0])

    both = predict_volume(volume, affine, [organs, lesions], threads=1, intensity="hu")
    alone = predict_volume(volume, affine, [lesions], threads=1, intensity="hu")

    assert both.lesion_labels is not None and alone.lesion_labels is not None
    assert np.array_equal(np.argwhere(both.lesion_labels == METASTASIS), np.argwhere(volume == 60.0))
    assert np.array_equal(both.labels == METASTASIS, volume == 60.0)
    assert not alone.lesion_labels.any()  # no organ map, no hosts: the rule is skipped


def test_the_lungs_air_edge_waits_until_the_nodules_in_them_are_found(tmp_path: Path) -> None:
    # A faint nodule (-150 HU) against the chest wall (40 HU) in a lung (-450 HU). The tiny organ
    # model calls everything below -100 HU lung, the nodule included, as networks do; put where
    # the air ends, the lung leaves the nodule outside. The nodule rule looks in the lung as drawn.
    window = {"kind": "window", "low_hu": -1000, "high_hu": 1000}
    write_threshold_model(
        tmp_path / "organs" / "1", structures=(0, LUNG), thresholds=(0.45,), normalisation=window, dark=True
    )
    lesions = _tiny_lesion_model(
        tmp_path / "lesions" / "1", window, {**NODULE_RULE, "min_hu": -180, "min_dim_shell": 0.3}
    )
    volume = np.full((24, 20, 20), 40.0, np.float32)
    volume[4:18, 4:16, 4:16] = -450.0
    volume[4:6, 8:11, 8:11] = -150.0  # two voxels deep, on the lung's x = 4 face
    nodule = volume == -150.0
    affine = np.diag([0.2, 0.2, 0.2, 1.0])
    aired = with_postprocess(
        tmp_path / "organs" / "1", {"refine": [{"structure": LUNG, "air_edge": 0.5, "margin_mm": 0.4}]}
    )

    out = predict_volume(volume, affine, [aired, lesions], threads=1, intensity="hu")

    assert out.organ_labels is not None and out.lesion_labels is not None
    assert np.array_equal(out.organ_labels == LUNG, volume == -450.0)  # the nodule is no lung
    assert np.array_equal(out.lesion_labels == METASTASIS, nodule)  # and was found in it


def test_a_lesion_rule_that_searches_the_brain_sees_the_braincase_filled(tmp_path: Path) -> None:
    # A head: soft tissue (10 HU) round a 0.4 mm skull (900 HU) whose braincase is 5 mm across.
    # The tiny organ model draws brain only above 25 HU: the brain's core (40 HU, to 4 mm), half the
    # braincase, and a bright speck (60 HU) in the rim between core and skull, which it reads as
    # a scrap of brain of its own. The braincase fill grows the brain over the rim; only then does
    # the speck lie deep in the host, where the lesion rule (brain host, from 50 HU) seeds it.
    # Before the fill the scrap is all edge and seeds nothing (``nodule_candidates``), so a search
    # that did not wait for the fill would find nothing.
    n, spacing = 64, 0.2
    axis = (np.arange(n) - n / 2 + 0.5) * spacing
    x, y, z = np.meshgrid(axis, axis, axis, indexing="ij")
    radius = np.sqrt(x**2 + y**2 + z**2)
    volume = np.where(radius < 6.0, 10.0, -1000.0).astype(np.float32)
    volume[(radius >= 5.0) & (radius < 5.4)] = 900.0
    volume[radius < 4.0] = 40.0
    speck = (x - 4.5) ** 2 + y**2 + z**2 < 0.3**2
    volume[speck] = 60.0
    window = {"kind": "window", "low_hu": -1000, "high_hu": 1000}
    # Window 0-1: 10 HU -> 0.505, 40 HU -> 0.52, 900 HU -> 0.95.
    organs = write_threshold_model(
        tmp_path / "organs" / "1",
        structures=(0, BRAIN, BONES),
        thresholds=(0.5125, 0.7),
        normalisation=window,
    )
    rule = {"structure": METASTASIS, "hosts": [BRAIN], "min_hu": 50, "erode_mm": 0.2, "min_volume_mm3": 0.0}
    lesions = _tiny_lesion_model(tmp_path / "lesions" / "1", window, rule)
    affine = np.diag([spacing, spacing, spacing, 1.0])

    out = predict_volume(volume, affine, [organs, lesions], threads=2, intensity="hu", orient="header")

    assert out.braincase is not None and out.braincase.grown
    assert out.organ_labels is not None and out.lesion_labels is not None
    brain = out.organ_labels == BRAIN
    assert brain[(radius >= 4.0) & (radius < 4.8) & ~speck].all()  # the rim is brain now
    assert np.array_equal(out.lesion_labels == METASTASIS, speck)  # and the speck in it was found


NODULE_RULE = {"structure": METASTASIS, "hosts": [LUNG], "min_hu": 0, "erode_mm": 0, "min_volume_mm3": 0}


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        (
            {"structure": LIVER, "hosts": [LUNG], "min_hu": 0, "erode_mm": 0, "min_volume_mm3": 0},
            "not an output",
        ),
        (
            {"structure": METASTASIS, "hosts": [99], "min_hu": 0, "erode_mm": 0, "min_volume_mm3": 0},
            "\\[99\\]",
        ),
        (
            {"structure": METASTASIS, "hosts": [LUNG], "min_hu": 0, "erode_mm": -1, "min_volume_mm3": 0},
            ">= 0",
        ),
        ({**NODULE_RULE, "wall_mm": -1}, ">= 0"),
        ({**NODULE_RULE, "min_dim_shell": 2}, "between 0 and 1"),
        ({**NODULE_RULE, "smooth_to_hu": 0}, "above 0, or null"),
        ({**NODULE_RULE, "peak_snr": -1}, "0 or more"),
    ],
)
def test_the_registry_refuses_bad_detect_rules(tmp_path: Path, rule: dict, message: str) -> None:
    folder = tmp_path / "m" / "1"
    write_threshold_model(folder, task="tumor", structures=(0, BY_NAME["tumor"].id, METASTASIS))

    with pytest.raises(ModelCardError, match=message):
        with_postprocess(folder, {"detect": [rule]})


def test_the_uncertain_mark_follows_each_structures_outline_band() -> None:
    labels = np.zeros((12, 12, 16), np.uint8)
    labels[:, :, 8:] = LIVER  # one flat outline between z = 7 and z = 8
    labels[2:5, 2:5, 2:5] = BONES  # a small cube, outlined with a narrower band
    uncertainty = np.full(labels.shape, 200, np.uint8)
    uncertainty[11, 11, 0] = 40
    spacing = (0.2, 0.2, 0.2)

    band = outline_band(labels, spacing, [((0.0, 0.0, 0.2), {LIVER: 0.45, BONES: 0.1})])
    mark_outlines(uncertainty, band)

    # Smoothing 1 voxel along z: the liver's share is about 0.31 / 0.69 on the voxels at the face
    # and 0.07 / 0.93 one further: a level of 0.45 marks both on each side, highest at the face.
    column = [int(v) for v in band[8, 8, 4:12]]
    assert column[:2] == [0, 0] and column[6:] == [0, 0]
    assert column[3] == column[4] > column[2] == column[5] >= 128
    assert np.all(band[:, :, 6:10] == band[8:9, 8:9, 6:10])  # the same all along the face
    # The cube is smoothed along z only: its x/y faces stay sharp and its z faces never come
    # within 0.1 of one half (0.31 / 0.69 at best): no band at all.
    assert not band[:, :, :6].any()
    assert np.all(uncertainty[band >= 128] == band[band >= 128])
    assert np.all(uncertainty[(band == 0) & (uncertainty != 40)] == 127)
    assert uncertainty[11, 11, 0] == 40
    # A structure without a level, or absent from the map, gets no band.
    assert not outline_band(labels, spacing, [((0.2, 0.2, 0.2), {LUNG: 0.4})]).any()


def test_a_bright_sheet_crossing_the_lung_is_not_a_nodule() -> None:
    # A contrast-bright structure running through the lung (a vessel, the heart's edge) passes the
    # threshold and the erosion, but its shell is bright where it leaves the lung: rejected.
    organs = np.zeros((20, 20, 20), np.uint8)
    organs[4:16, 4:16, 4:16] = LUNG
    hu = np.full(organs.shape, 40.0, np.float32)
    hu[organs == LUNG] = -430.0
    hu[6:9, :, :] = 300.0  # a 3-voxel-thick bright sheet across the whole lung and beyond
    hu[12:14, 10:12, 10:12] = 60.0  # and a real nodule

    found = detect_bright_lesions(organs, hu, hosts=[LUNG], min_hu=-150.0, erode_voxels=1, min_voxels=2)

    assert np.array_equal(np.argwhere(found), np.argwhere(hu == 60.0))


def _lung_in_a_thick_wall() -> tuple[np.ndarray, np.ndarray]:
    """A lung cube (x, y, z 8-27) in 8 voxels of soft-tissue wall, 36 voxels a side."""
    organs = np.zeros((36, 36, 36), np.uint8)
    organs[8:28, 8:28, 8:28] = LUNG
    hu = np.full(organs.shape, 40.0, np.float32)
    hu[organs == LUNG] = -430.0
    return organs, hu


def test_a_nodule_against_the_chest_wall_is_found_whole_with_the_wall_rule() -> None:
    organs, hu = _lung_in_a_thick_wall()
    nodule = np.zeros(hu.shape, bool)
    nodule[8:13, 16:19, 16:19] = True  # a nodule on the lung's x = 8 face, touching the wall
    hu[nodule] = 60.0
    organs[8:10, 16:19, 16:19] = 0  # whose outer part the organ model called background
    rule: dict[str, Any] = {"hosts": [LUNG], "min_hu": -150.0, "erode_voxels": 1, "min_voxels": 2}

    plain = detect_bright_lesions(organs, hu, **rule)
    with_wall = detect_bright_lesions(organs, hu, **rule, reach_voxels=3, wall_voxels=2, min_dim_shell=0.5)

    # Without the rule only the part inside the lung's mask is found; with it the nodule reaches
    # out to the wall (the layer touching the wall goes with the wall) and no wall comes along.
    assert np.array_equal(plain, nodule & (organs == LUNG))
    assert not with_wall[~nodule].any()
    assert with_wall.sum() >= 0.75 * nodule.sum() > plain.sum()


def test_a_large_nodule_inside_the_lung_stays_whole_under_the_wall_rule() -> None:
    organs, hu = _lung_in_a_thick_wall()
    grid = np.indices(hu.shape)
    ball = ((grid - 18) ** 2).sum(axis=0) <= 16  # radius 4: a ball of radius 2 fits inside it
    hu[ball] = 60.0

    found = detect_bright_lesions(
        organs,
        hu,
        hosts=[LUNG],
        min_hu=-150.0,
        erode_voxels=1,
        min_voxels=2,
        reach_voxels=3,
        wall_voxels=2,
        min_dim_shell=0.5,
    )

    assert np.array_equal(found, ball)


def test_no_growth_where_the_organ_meets_tissue_as_bright_as_itself() -> None:
    # A kidney-like block (40 HU) pressed against muscle-like tissue (40 HU) on one side and fat
    # (-100 HU) two voxels away on the other: the scan shows an edge only on the fat side.
    hu = np.full((16, 6, 6), 40.0, np.float32)
    hu[11:] = -100.0  # fat from x = 11
    labels = np.zeros(hu.shape, np.uint8)
    labels[5:10] = LIVER  # drawn one voxel short of the fat edge (x = 10 is still bright)

    refine_edge(labels, hu, LIVER, edge_hu=-20.0, margin_voxels=1)

    rows = np.unique(np.nonzero(labels == LIVER)[0])
    assert rows.tolist() == [5, 6, 7, 8, 9, 10]  # grew onto the fat edge, not into the muscle at x = 4


def test_the_outline_band_is_the_same_whatever_the_number_of_threads() -> None:
    rng = np.random.default_rng(4)
    labels = np.zeros((30, 28, 26), dtype=np.uint8)
    for sid in (1, 2, 5, 7):
        centre = rng.integers(6, 20, size=3)
        x, y, z = np.ogrid[:30, :28, :26]
        labels[(x - centre[0]) ** 2 + (y - centre[1]) ** 2 + (z - centre[2]) ** 2 <= rng.integers(9, 40)] = (
            sid
        )
    outlines = [((0.2, 0.2, 0.2), {1: 0.3, 2: 0.25, 5: 0.4}), ((0.2, 0.2, 0.4), {7: 0.35, 2: 0.0})]

    serial = outline_band(labels, (0.2, 0.2, 0.2), outlines)
    threaded = outline_band(labels, (0.2, 0.2, 0.2), outlines, workers=3)

    assert np.count_nonzero(serial) > 0
    np.testing.assert_array_equal(serial, threaded)
