"""From logits to clean class probabilities and an uncertainty map, on the model's grid.

Array contracts: logits and probabilities are float32 ``[K, x, y, z]`` (canonical RAS axes, model
grid), channel ``k`` standing for structure ``structures[k]`` and channel 0 for background. The
cleaned probabilities are then upsampled to the scan's grid (``geometry.upsample_argmax``), so the
component rules below are applied where the network saw the scan, and cheaply.

Rules (issue 5): single organs keep their largest connected component; paired organs keep one
component on their own body side (left/right along canonical x, split at the body's centre of mass);
lesions (tumor, metastasis) keep every component of at least ``min_lesion_volume_mm3``. Voxels a
rule removes give their probability to background, so they become background after argmax.
Connectivity is 26 (face, edge and corner neighbours).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from inference.structures import BY_ID

CONNECTIVITY_26 = np.ones((3, 3, 3), dtype=bool)
#: Lesions smaller than this (mm^3) are treated as specks and removed.
DEFAULT_MIN_LESION_VOLUME_MM3 = 0.2


def to_probabilities(logits: np.ndarray, activation: str) -> np.ndarray:
    """Softmax over channels, or per-channel sigmoid with background = 1 - the largest foreground.

    The sigmoid form makes ``argmax`` equal "the most likely structure where it exceeds 0.5",
    the usual threshold for multi-label outputs. Works in place on a float32 copy.
    """
    result = np.array(logits, dtype=np.float32, copy=True)
    if activation == "softmax":
        result -= result.max(axis=0, keepdims=True)
        np.exp(result, out=result)
        result /= result.sum(axis=0, keepdims=True)
        return result
    if activation == "sigmoid":
        np.negative(result, out=result)
        np.exp(result, out=result)
        result += 1.0
        np.reciprocal(result, out=result)
        result[0] = 1.0 - (result[1:].max(axis=0) if result.shape[0] > 1 else 0.0)
        return result
    raise ValueError(f"unknown activation {activation!r}")


def sigmoid(values: np.ndarray) -> np.ndarray:
    return (1.0 / (1.0 + np.exp(-np.asarray(values, dtype=np.float32)))).astype(np.float32)


def uncertainty_from(probabilities: np.ndarray, disagreement: np.ndarray | None) -> np.ndarray:
    """Uncertainty in 0..1 on the model grid, float32 ``[x, y, z]``.

    With a disagreement head: its probability that annotators disagree at the voxel. Without: the
    normalised shortfall of the top class probability, ``(1 - p_max) * K / (K - 1)`` (0 when the
    model is certain, 1 when every class is equally likely).
    """
    if disagreement is not None:
        return np.clip(disagreement, 0.0, 1.0).astype(np.float32, copy=False)
    n_classes = probabilities.shape[0]
    top = probabilities.max(axis=0)
    return np.clip((1.0 - top) * (n_classes / max(n_classes - 1, 1)), 0.0, 1.0).astype(np.float32)


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
        on_side = [n for n, c in zip(numbers, centres, strict=True) if (c[0] + box[0].start - midline_x) * side > 0]
        if on_side:
            return np.array([max(on_side, key=lambda n: sizes[n])])
    return np.array([numbers[int(np.argmax(sizes[1:]))]])


def clean(
    probabilities: np.ndarray,
    structures: Sequence[int],
    spacing_mm: Sequence[float],
    *,
    min_lesion_volume_mm3: float = DEFAULT_MIN_LESION_VOLUME_MM3,
) -> CleanReport:
    """Apply the component rules to ``probabilities`` (modified in place); see the module notes."""
    report = CleanReport()
    argmax = np.argmax(probabilities, axis=0).astype(np.uint8)
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
        region = probabilities[(slice(None), *box)]
        region[0][removed] += region[channel][removed]
        region[channel][removed] = 0.0
        report.components_removed[structure_id] = int(sizes.size - 1 - keep.size)
        report.voxels_removed[structure_id] = int(removed.sum())
    return report
