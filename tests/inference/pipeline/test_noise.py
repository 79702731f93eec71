"""The noise estimate and the copy of a scan that the threshold rules read (pipeline/noise.py)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from inference.phantom import generate_phantom
from inference.pipeline.noise import MEDIAN_VOXELS, SMOOTH_ABOVE_HU, for_threshold_rules, noise_hu


@pytest.fixture(scope="module")
def phantom_hu() -> tuple[np.ndarray, float]:
    phantom = generate_phantom(seed=9000, spacing_mm=0.42, n_annotators=0)
    scanner = phantom.meta["scanner"]
    assert isinstance(scanner, dict)
    return phantom.ct.astype(np.float32), float(scanner["noise_hu"])


@pytest.mark.parametrize("added_hu", [0.0, 100.0, 250.0])
def test_the_noise_of_soft_tissue_is_measured(phantom_hu: tuple[np.ndarray, float], added_hu: float) -> None:
    ct, own = phantom_hu
    rng = np.random.default_rng(3)
    noisy = ct + rng.standard_normal(ct.shape).astype(np.float32) * np.float32(added_hu)
    # The phantom's own noise was box-averaged onto 0.42 mm, so measure it rather than assume it.
    base = noise_hu(ct)
    assert 0.3 * own < base < 1.5 * own

    expected = float(np.hypot(base, added_hu))

    assert noise_hu(noisy) == pytest.approx(expected, rel=0.12)


def test_an_ordinary_scan_is_read_as_it_is(phantom_hu: tuple[np.ndarray, float]) -> None:
    ct, _ = phantom_hu

    read, noise, width = for_threshold_rules(ct)

    assert read is ct and width == 0 and noise < SMOOTH_ABOVE_HU


def test_a_very_noisy_scan_is_read_through_a_median_that_keeps_bone_edges(
    phantom_hu: tuple[np.ndarray, float],
) -> None:
    ct, _ = phantom_hu
    noisy = ct + np.random.default_rng(4).standard_normal(ct.shape).astype(np.float32) * np.float32(250.0)
    soft = (ct > 0) & (ct < 100)
    # Bone a voxel in from its surface: a plate one voxel thick is lost in the median (and, at
    # 250 HU of noise, would be lost in the noise anyway).
    bone = ndimage.binary_erosion(ct > 800)

    read, noise, width = for_threshold_rules(noisy)

    assert noise > SMOOTH_ABOVE_HU and width == MEDIAN_VOXELS
    # Soft tissue that reached the bone rule's 450 HU by noise alone mostly no longer does ...
    assert (read[soft] >= 450).mean() < 0.1 * (noisy[soft] >= 450).mean()
    # ... while bone stays bone.
    assert (read[bone] >= 450).mean() > 0.9


def test_no_soft_tissue_means_no_estimate() -> None:
    assert noise_hu(np.full((8, 8, 8), -1000.0, np.float32)) == 0.0
    assert noise_hu(np.zeros((2, 8, 8), np.float32)) == 0.0
