"""The lung-nodule rule on a noisy scan: smoothed down to the noise it was tuned at, and each
nodule's peak held to the noise (``nodules.nodule_candidates``, ``NoduleCandidates.kept``)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from scipy import ndimage

from inference.pipeline.nodules import detect_bright_lesions, quieting_sigma
from inference.pipeline.noise import noise_hu
from inference.structures import BY_NAME

LUNG = BY_NAME["lung_left"].id


def _noisy_blurred_lung(noise_hu: float, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A lung ball (radius 14 voxels, -450 HU) in soft tissue (40 HU), its rim blurred as a scanner
    blurs it, with white noise of ``noise_hu``, and a nodule (a ball of radius 2.5, 40 HU) in it.
    The organ model's lung reaches half a voxel past the air, into the rim, as on real anatomy.
    Returns (organ map, HU, the nodule)."""
    grid = np.indices((40, 40, 40))
    radius2 = ((grid - 20) ** 2).sum(axis=0)
    nodule = ((grid - np.array([20, 26, 20])[:, None, None, None]) ** 2).sum(axis=0) <= 6
    hu = np.where((radius2 <= 14**2) & ~nodule, -450.0, 40.0).astype(np.float32)
    hu = ndimage.gaussian_filter(hu, 0.7)
    hu += np.random.default_rng(seed).standard_normal(hu.shape).astype(np.float32) * np.float32(noise_hu)
    organs = np.where((radius2 <= 14.5**2) & ~nodule, LUNG, 0).astype(np.uint8)
    return organs, hu, nodule


#: The served rule's shape (``mouse-tumor`` ``detect``) at 0.21 mm voxels.
RULE: dict[str, Any] = {
    "hosts": [LUNG],
    "min_hu": -150.0,
    "erode_voxels": 1,
    "min_voxels": 2,
    "reach_voxels": 3,
    "wall_voxels": 3,
    "min_dim_shell": 0.6,
}


def test_a_noisy_scans_lung_rim_is_no_nodule_once_smoothed_and_held_to_its_noise() -> None:
    # At 70 HU of noise the blurred rim (-450 -> 40 HU over a few voxels) breaks into specks above
    # -150 HU that reach into the lung and pass the shape rules; a nodule is a blob and keeps its
    # contrast once the scan is smoothed down to 40 HU of noise.
    specks = 0
    for seed in range(3):
        organs, hu, nodule = _noisy_blurred_lung(70.0, seed)
        noise = noise_hu(hu)
        plain = detect_bright_lesions(organs, hu, **RULE)
        aware = detect_bright_lesions(organs, hu, **RULE, noise_hu=noise, smooth_to_hu=40.0, peak_snr=3.0)
        away = ~ndimage.binary_dilation(nodule, iterations=2)
        specks += ndimage.label(plain & away)[1]
        assert aware[20, 26, 20] and (aware & nodule).sum() >= nodule.sum() // 3  # the nodule is found ...
        assert not (aware & away).any()  # ... and nothing else
        # Smoothing pulls the nodule's outer layer under the threshold; it is given back, so the
        # nodule is drawn as wide as the unsmoothed scan shows it (else 39-41 voxels, not 48-56).
        assert abs(int((aware & nodule).sum()) - int((plain & nodule).sum())) <= 2
    assert specks >= 3  # where the plain rule counts rim specks as nodules


def test_a_quiet_scan_is_read_as_it_is() -> None:
    organs, hu, nodule = _noisy_blurred_lung(20.0, 0)
    rule: dict[str, Any] = {"hosts": [LUNG], "min_hu": -150.0, "erode_voxels": 1, "min_voxels": 2}

    plain = detect_bright_lesions(organs, hu, **rule, min_dim_shell=0.6)
    smoothed_only = detect_bright_lesions(
        organs, hu, **rule, min_dim_shell=0.6, noise_hu=20.0, smooth_to_hu=40.0
    )

    assert np.array_equal(plain, smoothed_only)  # 20 HU is under 40: nothing is smoothed
    assert plain[nodule].any()


@pytest.mark.parametrize(("noise", "target"), [(80.0, 40.0), (60.0, 30.0), (45.0, 40.0)])
def test_the_quieting_gaussian_brings_white_noise_to_its_target(noise: float, target: float) -> None:
    field = np.random.default_rng(3).standard_normal((64, 64, 64)).astype(np.float32) * np.float32(noise)
    sigma = quieting_sigma(noise, target)

    smoothed = ndimage.gaussian_filter(field, sigma, truncate=3.0)

    assert float(smoothed[8:-8, 8:-8, 8:-8].std()) == pytest.approx(target, rel=0.05)
    assert quieting_sigma(target, target) == 0.0 and quieting_sigma(20.0, 40.0) == 0.0
