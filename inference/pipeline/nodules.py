"""Lung metastases as bright nodules in their host organs, found by intensity on the scan's grid.

A metastasis in air-filled lung is hundreds of HU brighter than the parenchyma around it, so a
threshold finds it where the network (on its 0.63 mm grid) cannot. ``nodule_candidates`` gathers
the bright blobs in and at the edge of the host organs; ``pick_nodules`` keeps those of a nodule's
size, shell and contrast; ``detect_bright_lesions`` does both. A tumor model's ``detect`` rules in
``model.json`` name the hosts and thresholds (``predict.detect_lesions``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from inference.pipeline.geometry import bounding_box
from inference.pipeline.intensity import MIN_BONE_HU
from inference.pipeline.postprocess import (
    BONES,
    CONNECTIVITY_26,
    FACE_NEIGHBOURS,
    components_26,
    dilate_by,
    erode_by,
    fill_holes,
    label_mask,
    per_axis,
)

#: Share of a bright nodule's surrounding voxel shell that must be dim host tissue (parenchyma),
#: unless its detection rule says otherwise (``min_dim_shell``).
MIN_DIM_SHELL = 0.9


@dataclass
class NoduleCandidates:
    """Bright blobs near the host organs, before the size and shell rules (``pick_nodules``).

    ``labelled`` holds 26-connected component ids inside ``box``; per id: ``sizes`` (voxels),
    ``seeded`` (it reaches the eroded host) and ``dim_share`` (share of its one-voxel shell that is
    dim tissue near the host).
    """

    shape: tuple[int, ...]
    box: tuple[slice, ...]
    labelled: np.ndarray
    sizes: np.ndarray
    seeded: np.ndarray
    dim_share: np.ndarray
    #: Per id, the brightest voxel of the image the candidates were read from (HU).
    peaks: np.ndarray
    #: That image's noise (HU, one voxel's standard deviation): the scan's, or less once smoothed.
    noise_hu: float
    #: The threshold the candidates were read with (HU).
    min_hu: float
    #: Where the scan was smoothed: the voxels inside ``box`` that pass the same rules unsmoothed
    #: (``pick_nodules`` gives each nodule back the outer layer that smoothing took).
    unsmoothed: np.ndarray | None = None

    def kept(self, *, min_voxels: int, min_dim_shell: float, peak_snr: float = 0.0) -> np.ndarray:
        """Per component id: seeded, at least ``min_voxels``, at least ``min_dim_shell`` dim, and
        peaking at least ``peak_snr`` noise standard deviations above the threshold."""
        keep = self.seeded & (self.sizes >= max(min_voxels, 1)) & (self.dim_share >= min_dim_shell)
        if peak_snr > 0:
            keep &= self.peaks >= self.min_hu + peak_snr * self.noise_hu
        keep[0] = False
        return keep


def quieting_sigma(noise_hu: float, target_hu: float) -> float:
    """The Gaussian sigma (voxels) that brings white noise of ``noise_hu`` down to ``target_hu``
    (0 when it is there already): the kernel's gain on white noise, ``sqrt(sum of its squared
    weights)``, found by bisection on SciPy's own sampled kernel."""
    if noise_hu <= target_hu or target_hu <= 0:
        return 0.0

    def gain(sigma: float) -> float:
        delta = np.zeros(4 * math.ceil(3.0 * sigma) + 3, dtype=np.float64)
        delta[delta.size // 2] = 1.0
        weights = ndimage.gaussian_filter1d(delta, sigma, truncate=3.0)
        return float(np.sqrt((weights**2).sum())) ** 3

    low, high = 0.05, 8.0
    for _ in range(40):
        middle = 0.5 * (low + high)
        low, high = (middle, high) if noise_hu * gain(middle) > target_hu else (low, middle)
    return high


def open_by_ball(mask: np.ndarray, radii: tuple[int, int, int]) -> np.ndarray:
    """Binary opening by a ball of per-axis ``radii`` voxels, an ellipsoid on thick slices (via
    distance maps measured in radii: fast for big balls)."""
    # Distances in radii; the tolerance keeps a voxel exactly one radius away where it was.
    sampling = [1.0 / max(r, 1) for r in radii]
    core = ndimage.distance_transform_edt(mask, sampling=sampling) > 1.0 + 1e-9
    if not core.any():
        return np.zeros_like(mask)
    return ndimage.distance_transform_edt(~core, sampling=sampling) <= 1.0 + 1e-9


def nodule_candidates(
    organ_labels: np.ndarray,
    intensity: np.ndarray,
    *,
    hosts: Sequence[int],
    min_hu: float,
    erode_voxels: int | Sequence[int],
    reach_voxels: int | Sequence[int] = 0,
    wall_voxels: int | Sequence[int] = 0,
    noise_hu: float = 0.0,
    smooth_to_hu: float | None = None,
) -> NoduleCandidates | None:
    """Bright blobs in and at the edge of the host organs; None when no host voxel is labelled.

    The hosts' mask (full resolution) has its enclosed holes filled, since the organ model leaves
    a nodule inside the lung unlabelled or labels it otherwise. Candidates are the voxels at or
    above ``min_hu`` within ``reach_voxels`` of that mask (the organ model often calls the outer
    half of a nodule at the lung's edge "background"), grouped 26-connected; a group is seeded
    when it reaches the mask eroded by ``erode_voxels`` (so that the partial-volume rim against
    the chest wall and heart alone is not a nodule). With ``wall_voxels``, bright tissue that a
    ball of that radius fits in (chest wall, heart, diaphragm) is taken away first, so that a
    nodule touching the wall comes apart from it (a top-hat filter); thick tissue wholly inside the
    host (a large nodule) stays. A nodule is soft tissue: voxels ``organ_labels`` calls bone are
    none, and neither is a group touching them (a rib's partial-volume halo against the lung: on
    the real Digimouse anatomy 96 such specks, 19-22 mm^3, were called metastases; the ribs of our
    phantoms lie further from their lungs).

    ``noise_hu`` is the scan's noise (``noise.noise_hu``). With ``smooth_to_hu``, a scan noisier
    than that is read through a Gaussian that brings its noise down to it: at 40-80 HU of noise the
    lungs' partial-volume rim breaks into specks above ``min_hu`` that pass every shape rule (on
    the tumor-free atlas at 40-80 HU, 1-5 "metastases" in 13 of 18 scans), while a nodule, a blob,
    keeps most of its contrast. The candidates carry their peaks and the noise of the image read
    (``NoduleCandidates.kept``'s ``peak_snr``).
    """
    reach, wall_radii = per_axis(reach_voxels), per_axis(wall_voxels)
    host = label_mask(organ_labels, hosts)
    box = bounding_box(host, max(reach) + max(wall_radii) + 1)
    if box is None:
        return None
    filled = fill_holes(host[box])
    seeds = erode_by(filled, erode_voxels)
    near = dilate_by(filled, reach)
    image = intensity[box]
    smoothed = False
    if smooth_to_hu is not None and noise_hu > smooth_to_hu:
        smoothed = True
        sigma = quieting_sigma(noise_hu, smooth_to_hu)
        image = ndimage.gaussian_filter(np.asarray(image, dtype=np.float32), sigma, truncate=3.0)
        noise_hu = smooth_to_hu
    bright = image >= min_hu
    # Bone is what the organ map calls bone and what reads at bone's level beside it: on thick
    # slices a rib's partial-volume halo reaches past the map's bone (0.14 x 0.14 x 0.28 mm atlas:
    # a 0.04 mm^3 "metastasis" 0.31 mm from it, beside voxels of 300-800 HU). A nodule is soft
    # tissue and never reads there (read on the smoothed image where the scan is noisy).
    bone = (organ_labels[box] == BONES) | (image >= MIN_BONE_HU)
    wanted = bright & near & ~bone
    unsmoothed = (intensity[box] >= min_hu) & near & ~bone if smoothed else None
    if max(wall_radii) > 0:
        # Thick bright tissue that also lies outside the host (the wall, not a nodule inside).
        thick, _ = components_26(open_by_ball(bright, wall_radii))
        wall = np.unique(thick[~near & (thick > 0)])
        not_wall = ~np.isin(thick, wall[wall > 0])
        wanted &= not_wall
        if unsmoothed is not None:
            unsmoothed &= not_wall
    labelled, sizes = components_26(wanted)
    seeded = np.bincount(labelled[seeds], minlength=sizes.size) > 0
    # A nodule sits in parenchyma: most of the voxel shell around it must be dim tissue. A bright
    # fragment of the lung's rim (contrast-enhanced blood or heart beyond the erosion) fails.
    grown = ndimage.grey_dilation(labelled, footprint=CONNECTIVITY_26)
    shell = (grown > 0) & (labelled == 0)
    owner = grown[shell]
    total = np.bincount(owner, minlength=sizes.size)
    dim = np.bincount(owner, weights=(near & ~bright)[shell], minlength=sizes.size)
    # Bone in the shell (each shell voxel counts for its highest-numbered neighbour: a rib's halo
    # touches its rib along many voxels, so none is missed that way).
    seeded &= np.bincount(owner, weights=bone[shell], minlength=sizes.size) == 0
    share = np.divide(dim, total, out=np.zeros(sizes.size), where=total > 0)
    peaks = np.full(sizes.size, -np.inf)
    if sizes.size > 1:
        peaks[1:] = ndimage.maximum(image, labelled, np.arange(1, sizes.size))
    return NoduleCandidates(
        organ_labels.shape,
        box,
        labelled,
        sizes,
        seeded,
        share,
        peaks,
        float(noise_hu),
        float(min_hu),
        unsmoothed,
    )


def pick_nodules(
    candidates: NoduleCandidates, *, min_voxels: int, min_dim_shell: float, peak_snr: float = 0.0
) -> np.ndarray:
    """Boolean mask (the organ map's shape) of the candidates ``NoduleCandidates.kept`` keeps.

    Where the scan was smoothed, each nodule also takes back the unsmoothed voxels above the
    threshold that touch it: smoothing pulls a small nodule's outer layer under the threshold (on
    the validation phantoms with 40-60 HU of noise added, the nodules' voxel Dice is 0.36-0.60
    with this, 0.31-0.56 without).
    """
    found = np.zeros(candidates.shape, dtype=bool)
    keep = candidates.kept(min_voxels=min_voxels, min_dim_shell=min_dim_shell, peak_snr=peak_snr)
    inside = keep[candidates.labelled]
    if candidates.unsmoothed is not None and inside.any():
        inside |= ndimage.binary_dilation(inside, structure=FACE_NEIGHBOURS) & candidates.unsmoothed
    found[candidates.box] = inside
    return found


def detect_bright_lesions(
    organ_labels: np.ndarray,
    intensity: np.ndarray,
    *,
    hosts: Sequence[int],
    min_hu: float,
    erode_voxels: int | Sequence[int],
    min_voxels: int,
    reach_voxels: int | Sequence[int] = 0,
    wall_voxels: int | Sequence[int] = 0,
    min_dim_shell: float = MIN_DIM_SHELL,
    noise_hu: float = 0.0,
    smooth_to_hu: float | None = None,
    peak_snr: float = 0.0,
) -> np.ndarray:
    """Boolean mask of bright nodules in host organs (lung metastases in native CT).

    ``nodule_candidates`` then ``pick_nodules``. A metastasis in air-filled lung is hundreds of HU
    brighter than the parenchyma; one in soft tissue (liver) is not, and is left to the lesion
    model.
    """
    candidates = nodule_candidates(
        organ_labels,
        intensity,
        hosts=hosts,
        min_hu=min_hu,
        erode_voxels=erode_voxels,
        reach_voxels=reach_voxels,
        wall_voxels=wall_voxels,
        noise_hu=noise_hu,
        smooth_to_hu=smooth_to_hu,
    )
    if candidates is None:
        return np.zeros(organ_labels.shape, dtype=bool)
    return pick_nodules(candidates, min_voxels=min_voxels, min_dim_shell=min_dim_shell, peak_snr=peak_snr)
