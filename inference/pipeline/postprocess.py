"""From network logits to clean class scores and an uncertainty map, on the model's grid.

Array contracts: logits and scores are float32 ``[K, x, y, z]`` (canonical RAS axes, model grid),
channel ``k`` standing for structure ``structures[k]`` and channel 0 for background. A *score* is
any per-class number whose argmax is the label: the logits themselves for a softmax model (softmax
is monotonic, so the exponentials over K x millions of voxels are never needed), and for a sigmoid
model the logits with background set to ``-max(foreground logits)`` (so a structure wins exactly
where its probability exceeds 0.5). Ensembles average probabilities and turn them back into log
scores. The cleaned scores are then upsampled to the scan's grid (``geometry.upsample_argmax``).

Rules (issue 5): single organs keep their largest connected component; paired organs keep one
component on their own body side (left/right along canonical x, split at the body's centre of mass);
lesions (tumor, metastasis) keep every component of at least ``min_lesion_volume_mm3``. At voxels a
rule removes, the structure's score and the background's are swapped, so those voxels become
background. Connectivity is 26 (face, edge and corner neighbours).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from inference.pipeline.geometry import channel_argmax
from inference.structures import BY_ID

CONNECTIVITY_26 = np.ones((3, 3, 3), dtype=bool)
#: Lesions smaller than this (mm^3) are treated as specks and removed.
DEFAULT_MIN_LESION_VOLUME_MM3 = 0.2
#: Share of a bright nodule's surrounding voxel shell that must be dim host tissue (parenchyma).
MIN_DIM_SHELL = 0.9
_EPS = 1e-7


def sigmoid(values: np.ndarray) -> np.ndarray:
    return (1.0 / (1.0 + np.exp(-np.asarray(values, dtype=np.float32)))).astype(np.float32)


def to_scores(logits: np.ndarray, activation: str) -> np.ndarray:
    """Class scores (see the module notes) as a new float32 array."""
    scores = np.array(logits, dtype=np.float32, copy=True)
    if activation == "softmax":
        return scores
    if activation == "sigmoid":
        scores[0] = -scores[1:].max(axis=0) if scores.shape[0] > 1 else 0.0
        return scores
    raise ValueError(f"unknown activation {activation!r}")


def to_probabilities(logits: np.ndarray, activation: str) -> np.ndarray:
    """Softmax over channels, or per-channel sigmoid with background = 1 - the largest foreground."""
    result = np.array(logits, dtype=np.float32, copy=True)
    if activation == "softmax":
        result -= result.max(axis=0, keepdims=True)
        np.exp(result, out=result)
        result /= result.sum(axis=0, keepdims=True)
        return result
    if activation == "sigmoid":
        result = sigmoid(result)
        result[0] = 1.0 - (result[1:].max(axis=0) if result.shape[0] > 1 else 0.0)
        return result
    raise ValueError(f"unknown activation {activation!r}")


def ensemble_scores(members: Sequence[np.ndarray], activation: str) -> np.ndarray:
    """Scores of an ensemble: log of the members' mean probability (one member: its own scores)."""
    if len(members) == 1:
        return to_scores(members[0], activation)
    mean = sum(to_probabilities(m, activation) for m in members) / len(members)
    return np.log(np.maximum(mean, _EPS)).astype(np.float32)


def uncertainty_from(scores: np.ndarray, disagreement: np.ndarray | None) -> np.ndarray:
    """Uncertainty in 0..1 on the model grid, float32 ``[x, y, z]``.

    With a disagreement head: its probability that annotators disagree at the voxel. Without: how
    close the runner-up class comes, ``exp(second score - top score)``, i.e. the runner-up's
    probability divided by the winner's (softmax models): 0 when certain, 1 for a tie.
    """
    if disagreement is not None:
        return np.clip(disagreement, 0.0, 1.0).astype(np.float32, copy=False)
    top = np.array(scores[0], dtype=np.float32, copy=True)
    second = np.full(top.shape, -np.inf, dtype=np.float32)
    for k in range(1, scores.shape[0]):
        np.maximum(second, np.minimum(top, scores[k]), out=second)
        np.maximum(top, scores[k], out=top)
    second -= top
    return np.exp(second, out=second)


@dataclass
class CleanReport:
    """What post-processing removed, per structure id: components and voxels (model grid)."""

    components_removed: dict[int, int] = field(default_factory=dict)
    voxels_removed: dict[int, int] = field(default_factory=dict)


def _components(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    labelled, count = ndimage.label(mask, structure=CONNECTIVITY_26)
    sizes = np.bincount(labelled.ravel(), minlength=count + 1)
    return labelled, sizes


def _side_of(structure_name: str) -> int:
    """+1 for right-side structures (canonical +x is Right), -1 for left, 0 otherwise."""
    if structure_name.endswith("_right"):
        return 1
    if structure_name.endswith("_left"):
        return -1
    return 0


def _keep(
    structure_id: int,
    labelled: np.ndarray,
    sizes: np.ndarray,
    box: tuple[slice, ...],
    midline_x: float,
    min_voxels: float,
) -> np.ndarray:
    """Component numbers (1-based, within ``labelled``) that the rules keep."""
    structure = BY_ID[structure_id]
    numbers = np.arange(1, sizes.size)
    if numbers.size == 0:
        return numbers
    if structure.kind == "lesion":
        return numbers[sizes[1:] >= min_voxels]
    if structure.kind == "paired":
        side = _side_of(structure.name)
        centres = ndimage.center_of_mass(np.ones_like(labelled), labelled, numbers)
        on_side = [
            n for n, c in zip(numbers, centres, strict=True) if (c[0] + box[0].start - midline_x) * side > 0
        ]
        if on_side:
            return np.array([max(on_side, key=lambda n: sizes[n])])
    return np.array([numbers[int(np.argmax(sizes[1:]))]])


def clean(
    scores: np.ndarray,
    structures: Sequence[int],
    spacing_mm: Sequence[float],
    *,
    min_lesion_volume_mm3: float = DEFAULT_MIN_LESION_VOLUME_MM3,
) -> CleanReport:
    """Apply the component rules to ``scores`` (modified in place); see the module notes."""
    report = CleanReport()
    argmax = channel_argmax(scores)
    foreground = np.nonzero(np.any(argmax > 0, axis=(1, 2)))[0]
    if foreground.size == 0:
        return report
    weights = np.bincount(np.nonzero(argmax)[0], minlength=argmax.shape[0])
    midline_x = float(np.average(np.arange(argmax.shape[0]), weights=weights))
    voxel_mm3 = float(np.prod(spacing_mm))
    min_voxels = min_lesion_volume_mm3 / voxel_mm3
    for channel, box in enumerate(ndimage.find_objects(argmax), start=1):
        if box is None or channel >= len(structures):
            continue
        structure_id = int(structures[channel])
        labelled, sizes = _components(argmax[box] == channel)
        keep = _keep(structure_id, labelled, sizes, box, midline_x, min_voxels)
        removed = (labelled > 0) & ~np.isin(labelled, keep)
        if not np.any(removed):
            continue
        region = scores[(slice(None), *box)]
        background = region[0][removed]
        region[0][removed] = region[channel][removed]
        region[channel][removed] = background
        report.components_removed[structure_id] = int(sizes.size - 1 - keep.size)
        report.voxels_removed[structure_id] = int(removed.sum())
    return report


def calibrate_uncertainty(probability: np.ndarray, threshold: float) -> np.ndarray:
    """Monotonic piecewise-linear map of the head's probability with ``threshold`` sent to 0.5.

    The disagreement head is trained on the fraction of each coarse voxel where annotators differ,
    so thin disagreement bands give probabilities below 0.5; the threshold that best matches the
    real disagreement on validation scans (``model.json`` ``postprocess.uncertainty_threshold``)
    becomes the map's 50 % mark, as AIMOS thresholds its heatmap at 50 %. 0 and 1 stay put.
    """
    p = np.asarray(probability, dtype=np.float32)
    if threshold == 0.5:
        return p
    low = p * np.float32(0.5 / threshold)
    high = np.float32(0.5) + (p - np.float32(threshold)) * np.float32(0.5 / (1.0 - threshold))
    return np.where(p < threshold, low, high).astype(np.float32)


def _nearest_index(n_fine: int, n_coarse: int) -> np.ndarray:
    """Coarse index of each fine voxel centre (same field of view, cell-centred grids)."""
    return np.minimum(((np.arange(n_fine) + 0.5) * (n_coarse / n_fine)).astype(np.intp), n_coarse - 1)


def refine_by_intensity(
    labels: np.ndarray,
    coarse_mask: np.ndarray,
    intensity: np.ndarray,
    structure_id: int,
    *,
    min_hu: float,
    margin_voxels: int,
) -> int:
    """Redraw a bright structure (bones) at full resolution; ``labels`` is modified in place.

    Within the model's coarse mask of the structure grown by ``margin_voxels`` coarse voxels, the
    structure becomes exactly the voxels at or above ``min_hu``: dimmer voxels it held become
    background, brighter background voxels join it (other structures are left alone). This is
    what a threshold tool does inside a region the network found, and it recovers thin bone that
    a 0.63 mm grid cannot draw. Returns the number of voxels changed.
    """
    if not coarse_mask.any():
        return 0
    region = coarse_mask
    if margin_voxels > 0:
        region = ndimage.binary_dilation(coarse_mask, structure=CONNECTIVITY_26, iterations=margin_voxels)
    box = ndimage.find_objects(region.astype(np.uint8))[0]
    fine_box = []
    index = []
    for axis in range(3):
        nearest = _nearest_index(labels.shape[axis], region.shape[axis])
        inside = np.nonzero((nearest >= box[axis].start) & (nearest < box[axis].stop))[0]
        fine_box.append(slice(int(inside[0]), int(inside[-1]) + 1))
        index.append(nearest[inside])
    grown = region[np.ix_(*index)]
    sub = labels[tuple(fine_box)]
    bright = grown & (intensity[tuple(fine_box)] >= min_hu)
    gained = bright & (sub == 0)
    lost = (sub == structure_id) & ~bright
    sub[gained] = structure_id
    sub[lost] = 0
    return int(gained.sum() + lost.sum())


def detect_bright_lesions(
    organ_labels: np.ndarray,
    intensity: np.ndarray,
    *,
    hosts: Sequence[int],
    min_hu: float,
    erode_voxels: int,
    min_voxels: int,
) -> np.ndarray:
    """Boolean mask of bright nodules inside host organs (lung metastases in native CT).

    The hosts' mask (full resolution) has its enclosed holes filled, since the organ model leaves
    a nodule inside the lung unlabelled or labels it otherwise, is eroded by ``erode_voxels`` so
    that the partial-volume rim against the chest wall and heart is not taken for a nodule, and
    every 26-connected group of voxels at or above ``min_hu`` of at least ``min_voxels`` inside it,
    whose surrounding shell is at least ``MIN_DIM_SHELL`` dim host tissue, is a lesion. A
    metastasis in air-filled lung is hundreds of HU brighter than the parenchyma; one in soft
    tissue (liver) is not, and is left to the lesion model.
    """
    found = np.zeros(organ_labels.shape, dtype=bool)
    host = np.isin(organ_labels, np.asarray(hosts, dtype=organ_labels.dtype))
    if not host.any():
        return found
    box = tuple(
        slice(max(s.start - 1, 0), min(s.stop + 1, n))
        for s, n in zip(ndimage.find_objects(host.astype(np.uint8))[0], host.shape, strict=True)
    )
    inside = ndimage.binary_fill_holes(host[box])
    if erode_voxels > 0:
        inside = ndimage.binary_erosion(inside, iterations=erode_voxels)
    bright = intensity[box] >= min_hu
    labelled, sizes = _components(inside & bright)
    big = np.flatnonzero(sizes >= max(min_voxels, 1))
    big = big[big > 0]
    # A nodule sits in parenchyma: most of the voxel shell around it must be dim host tissue. A
    # bright fragment of the lung's rim (contrast-enhanced blood or heart beyond the erosion) fails.
    grown = ndimage.grey_dilation(labelled, footprint=CONNECTIVITY_26)
    shell = (grown > 0) & (labelled == 0)
    dim_host = ndimage.binary_fill_holes(host[box]) & ~bright
    owner = grown[shell]
    total = np.bincount(owner, minlength=sizes.size)
    dim = np.bincount(owner, weights=dim_host[shell], minlength=sizes.size)
    isolated = big[dim[big] >= MIN_DIM_SHELL * total[big]]
    found[box] = np.isin(labelled, isolated)
    return found


def boundary_band(labels: np.ndarray, radius: int) -> np.ndarray:
    """Voxels within ``radius`` voxels (a cube) of a face between two different labels."""
    band = np.zeros(labels.shape, dtype=bool)
    for axis in range(3):
        differs = np.diff(labels, axis=axis) != 0
        lower = [slice(None)] * 3
        upper = [slice(None)] * 3
        lower[axis] = slice(None, -1)
        upper[axis] = slice(1, None)
        band[tuple(lower)] |= differs
        band[tuple(upper)] |= differs
    for axis in range(3):  # separable dilation: a shifted OR per step along each axis
        grown = band.copy()
        for step in range(1, radius + 1):
            ahead = [slice(None)] * 3
            behind = [slice(None)] * 3
            ahead[axis] = slice(step, None)
            behind[axis] = slice(None, -step)
            grown[tuple(ahead)] |= band[tuple(behind)]
            grown[tuple(behind)] |= band[tuple(ahead)]
        band = grown
    return band


def sharpen_uncertainty(uncertainty_u8: np.ndarray, labels: np.ndarray, radius: int) -> None:
    """Keep the map's "uncertain" (>= 50 %) mark only near the predicted boundaries (in place).

    The disagreement head sees 0.63 mm voxels; real disagreement is a band one or two 0.21 mm
    voxels wide along the outlines. Outside ``radius`` voxels of a full-resolution boundary of
    ``labels`` the map is capped just below 50 %, so it still shows a shade there but the
    uncertain region follows the outlines the annotators would draw differently.
    """
    outside = ~boundary_band(labels, radius)
    np.minimum(uncertainty_u8, np.uint8(127), out=uncertainty_u8, where=outside)
