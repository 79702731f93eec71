"""Bone that reads dimmer than the models learned it (a young mouse, a harder beam): its level is
read before the models (pipeline/bone_level.py); a dim scan is read stretched to the models'
level, said so in the manifest and held for review; the bone rule's threshold follows a bone
between, the spinal cord's rule with it; a scan of ordinary bone is read as before."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from inference.metrics import dice
from inference.phantom import generate_phantom
from inference.pipeline.bone_level import (
    DIM_BELOW_HU,
    FLOOR_HU,
    NOISE_SDS,
    STRETCH_FROM_HU,
    TARGET_HU,
    BoneLevel,
    bone_level_finding,
    read_bone_level,
)
from inference.pipeline.intensity import SOFT_TISSUE_HU
from inference.pipeline.postprocess import apply_refinement
from inference.pipeline.qc import NEEDS_REVIEW, OK
from inference.structures import BY_NAME
from inference.training.robustness import Case, dim_bone, false_positive_mm3
from tests.inference.pipeline.segmented import segment_case

BONES = BY_NAME["bones"].id
CORD = BY_NAME["spinal_cord"].id
TUMOR = BY_NAME["tumor"].id


def body(bone_hu: float, noise_hu: float = 0.0) -> np.ndarray:
    """A 60^3 field: air, a soft-tissue block, and a bone rod (5 % of the field) at ``bone_hu``."""
    hu = np.full((60, 60, 60), -1000.0, np.float32)
    hu[10:50, 10:50, :] = SOFT_TISSUE_HU
    hu[25:38, 25:38, :] = bone_hu
    rng = np.random.default_rng(0)
    return hu + rng.normal(0.0, noise_hu, hu.shape).astype(np.float32) if noise_hu else hu


def test_ordinary_bone_is_read_as_it_is() -> None:
    bone = read_bone_level(body(1000.0), 20.0)

    assert bone is not None and bone.stretched_to_hu is None
    assert bone.level_hu == pytest.approx(1000.0) and bone.peak_hu == pytest.approx(1000.0)
    assert bone.threshold(450.0) == 450.0  # half-way would be 525: the card's level holds
    volume = body(1000.0)
    assert bone.apply(volume) is volume
    assert bone_level_finding(bone) is None and bone_level_finding(None) is None


def test_dim_bone_is_stretched_to_the_models_level_and_soft_tissue_is_not() -> None:
    volume = body(450.0)
    bone = read_bone_level(volume, 20.0)

    assert bone is not None and bone.peak_hu < DIM_BELOW_HU and bone.stretched_to_hu == TARGET_HU
    seen = bone.apply(volume)
    assert seen[30, 30, 30] == pytest.approx(TARGET_HU)  # the bone (a uniform rod: level = peak)
    assert seen[15, 15, 30] == SOFT_TISSUE_HU and seen[0, 0, 0] == -1000.0  # soft tissue, air
    assert volume[30, 30, 30] == 450.0  # the scan itself is left alone
    assert bone.threshold(450.0) == 450.0  # read at 1,000 HU, half-way lies above the card's level
    finding = bone_level_finding(bone)
    assert (
        finding is not None and "at about 450 HU" in finding and f"above {STRETCH_FROM_HU:.0f} HU" in finding
    )


def test_blur_lowers_the_level_more_than_the_peak_and_only_a_dim_peak_stretches() -> None:
    def skeleton(bone_hu: float) -> np.ndarray:
        """A thick bone and eight thin plates in soft tissue, blurred over about a voxel."""
        hu = np.full((60, 60, 60), -1000.0, np.float32)
        hu[5:55, 5:55, :] = SOFT_TISSUE_HU
        hu[27:34, 27:34, :] = bone_hu
        for x in (8, 13, 18, 23, 38, 43, 48):
            hu[x, 8:52, :] = bone_hu
        return ndimage.gaussian_filter(hu, 1.0)

    bright, dim = read_bone_level(skeleton(1000.0), 20.0), read_bone_level(skeleton(550.0), 20.0)

    assert bright is not None and dim is not None
    # Blur took the thin plates' level down to that of dim bone; the thick bone's core kept it.
    assert bright.level_hu < DIM_BELOW_HU < bright.peak_hu and bright.stretched_to_hu is None
    assert dim.peak_hu < DIM_BELOW_HU and dim.stretched_to_hu == TARGET_HU
    assert dim.gain == pytest.approx((TARGET_HU - STRETCH_FROM_HU) / (dim.peak_hu - STRETCH_FROM_HU))


def test_bone_between_lowers_the_rules_threshold_half_way_and_not_below_its_floor() -> None:
    between = read_bone_level(body(750.0), 20.0)
    noisy = BoneLevel(level_hu=600.0, peak_hu=800.0, stretched_to_hu=None, noise_hu=80.0)
    faint = BoneLevel(level_hu=300.0, peak_hu=800.0, stretched_to_hu=None, noise_hu=10.0)

    assert between is not None and between.stretched_to_hu is None
    assert between.threshold(450.0) == pytest.approx(SOFT_TISSUE_HU + 0.5 * (750.0 - SOFT_TISSUE_HU))
    assert noisy.threshold(450.0) == SOFT_TISSUE_HU + NOISE_SDS * 80.0  # 370, above half-way (325)
    assert faint.threshold(450.0) == FLOOR_HU


def test_no_bone_in_view_reads_no_level() -> None:
    water = np.full((40, 40, 40), -1000.0, np.float32)
    water[5:35, 5:35, :] = 0.0  # a QA cylinder of water

    assert read_bone_level(water, 10.0) is None
    # Noise alone does not pass for bone: the cutoff follows it.
    noisy = water + np.random.default_rng(1).normal(0, 60, water.shape).astype(np.float32)
    assert read_bone_level(noisy, 60.0) is None


def test_the_bone_rule_takes_the_lower_threshold_and_the_cord_rule_keeps_the_cards() -> None:
    # A canal of bone reading 400 HU around a cord (40 HU). The model's coarse bone covers the
    # canal's wall; the model drew the cord one voxel into the wall.
    hu = np.full((12, 12, 12), 40.0, np.float32)
    hu[3:9, 3:9, :] = 400.0
    hu[5:7, 5:7, :] = 40.0
    coarse = np.zeros((4, 4, 4), np.intp)
    coarse[1:3, 1:3, :] = 1  # bone's channel on a 3x coarser grid
    structures = [0, BONES, CORD]
    grids = ([0.63] * 3, [0.21] * 3)
    bone_rule = {"structure": BONES, "min_hu": 450.0, "margin_mm": 0.0}
    cord_rule = {"structure": CORD, "enclosed_by": BONES, "max_hu": 450.0, "margin_mm": 0.63}

    at_card = np.zeros(hu.shape, np.uint8)
    apply_refinement(at_card, coarse, hu, bone_rule, structures, *grids)
    lowered = np.zeros(hu.shape, np.uint8)
    apply_refinement(lowered, coarse, hu, bone_rule, structures, *grids, thresholds_hu={BONES: 225.0})
    lowered[5:7, 5:7, :] = CORD
    lowered[4, 5, :] = CORD
    coarse[1:3, 1:3, :] = 2  # now the cord's channel
    apply_refinement(lowered, coarse, hu, cord_rule, structures, *grids, thresholds_hu={BONES: 225.0})

    assert not (at_card == BONES).any()  # 400 HU is no bone at the card's 450
    assert np.all(lowered[5:7, 5:7, :] == CORD) and np.all(lowered[4, 5, :] == CORD)
    assert (lowered == BONES).sum() == 6 * 6 * 12 - 4 * 12 - 12  # the wall, less the cord's voxels


def test_a_dim_boned_mouse_keeps_its_skeleton_no_false_tumor_and_is_held_for_review(tmp_path: Path) -> None:
    # Seed 9001 at 0.42 mm: with its bone at 40 % of its height (robustness ``dimbone``) and read
    # as it is, the bone rule kept a fifth of the skeleton and the tumor model drew soft tissue
    # beside a dim hip as tumor.
    phantom = generate_phantom(9001, spacing_mm=0.42, n_annotators=0)
    base = Case(name="p", ct=phantom.ct, labels=phantom.labels, affine=phantom.affine, meta=phantom.meta)
    runs = {}
    for name, scan in (("plain", base), ("dim", dim_bone(base, 0.4))):
        manifest, labels = segment_case(scan, tmp_path / name)
        runs[name] = (
            manifest,
            dice(labels == BONES, phantom.labels == BONES),
            dice(labels == CORD, phantom.labels == CORD),
            false_positive_mm3(labels == TUMOR, phantom.labels == TUMOR, 0.42**3),
        )

    plain, plain_bones, plain_cord, _ = runs["plain"]
    dim, dim_bones, dim_cord, dim_false_tumor = runs["dim"]
    assert plain["intensity"]["bone_stretched_to_hu"] is None and plain["intensity"]["bone_peak_hu"] > 900
    assert "bone_dim" not in {r["code"] for r in plain["qc"]["reasons"]}
    assert dim["intensity"]["bone_peak_hu"] < DIM_BELOW_HU
    assert dim["intensity"]["bone_stretched_to_hu"] == TARGET_HU
    assert any("Bone reads dimmer" in f for f in dim["intensity"]["findings"])
    assert dim["qc"]["status"] == NEEDS_REVIEW and "bone_dim" in {r["code"] for r in dim["qc"]["reasons"]}
    assert plain["qc"]["status"] == OK
    assert dim_bones > plain_bones - 0.02 and dim_cord > plain_cord - 0.02
    assert dim_false_tumor <= 1.0
