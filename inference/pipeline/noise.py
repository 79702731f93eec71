"""A scan's noise, and the copy of it that the intensity threshold rules read.

The post-processing rules of ``model.json`` (``refine``: bones at or above 450 HU, the spinal
cord in the canal, outlines moved onto an intensity edge) threshold single voxels at full
resolution. They were tuned on phantoms whose noise is 20-35 HU per voxel. The real 8-bit head scans
of ``../shared/realdata/mouse_ct_atlas/`` hold 240-265 HU of noise once calibrated (one grey level
is ~120 HU): 5-10 % of their brain's voxels reach 450 HU, and the bone rule, which joins bright
voxels within a model voxel of the skeleton, drew that speckle as bone (~15 % of their 806-820
mm^3 of "bones"). Such scans are read through a 3 x 3 x 3 median instead, which keeps the edges of
bone (a Gaussian blur that quietens the noise as much spreads the bone's 1,600-1,900 HU outwards
and thickens it): there 0.03-0.2 % of the brain reaches 450 HU, and "bones" come to 690 / 711 mm^3.
It costs about 2 s for their 4-5 million voxels, and nothing on a scan of ordinary noise.

Array contract: ``volume`` float32 HU ``[x, y, z]`` (canonical axes; any axis order works).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

#: Above this noise (HU, one voxel's standard deviation in soft tissue) the rules read the median.
#: Our phantoms hold 20-35 HU, 70-95 HU with the robustness report's 3x noise.
SMOOTH_ABOVE_HU = 150.0
#: The median's width in voxels.
MEDIAN_VOXELS = 3
#: Soft tissue, where the noise is measured: the local mean within this range (HU).
SOFT_HU = (-150.0, 250.0)
#: Axial slices the estimate reads (evenly spaced): a few milliseconds on any scan.
SAMPLE_SLICES = 16


def noise_hu(volume: np.ndarray) -> float:
    """Robust per-voxel noise (HU standard deviation) of ``volume``'s soft tissue; 0 if none.

    On up to ``SAMPLE_SLICES`` axial slices: the residual of each voxel against the mean of its
    3 x 3 in-plane neighbourhood, where that mean is soft tissue; its median absolute value
    (robust against the edges between tissues) scaled to a white-noise standard deviation
    (the residual of white noise against a 3 x 3 mean has 8/9 of its variance).
    """
    if volume.ndim != 3 or min(volume.shape) < 3:
        return 0.0
    picks = np.unique(np.linspace(0, volume.shape[2] - 1, SAMPLE_SLICES).round().astype(int))
    residuals = []
    for z in picks:
        plane = np.asarray(volume[:, :, z], dtype=np.float32)
        local = ndimage.uniform_filter(plane, size=3, mode="nearest")
        soft = (local >= SOFT_HU[0]) & (local <= SOFT_HU[1])
        soft[[0, -1], :] = False
        soft[:, [0, -1]] = False
        residuals.append((plane - local)[soft])
    values = np.concatenate(residuals)
    if values.size < 100:
        return 0.0
    mad = float(np.median(np.abs(values - np.median(values))))
    return 1.4826 * mad / float(np.sqrt(8.0 / 9.0))


def for_threshold_rules(volume: np.ndarray) -> tuple[np.ndarray, float, int]:
    """(the intensities the threshold rules read, the scan's noise in HU, the median's width or 0).

    ``volume`` itself (no copy) up to ``SMOOTH_ABOVE_HU``; above, a float32 median-filtered copy."""
    noise = noise_hu(volume)
    if noise <= SMOOTH_ABOVE_HU:
        return volume, noise, 0
    return (
        ndimage.median_filter(np.asarray(volume, dtype=np.float32), size=MEDIAN_VOXELS),
        noise,
        MEDIAN_VOXELS,
    )


def threshold_rules_finding(noise: float, width: int) -> str:
    """The manifest's sentence when ``for_threshold_rules`` chose the median (``width`` > 0)."""
    return (
        f"The scan's noise ({noise:.0f} HU per voxel in soft tissue) is above the {SMOOTH_ABOVE_HU:.0f} HU "
        f"that the bone, spinal cord and outline rules were tuned for: they read it through a "
        f"{width}x{width}x{width}-voxel median, so that noise is not drawn as bone."
    )
