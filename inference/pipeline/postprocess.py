"""From network logits to clean class scores and an uncertainty map, on the model's grid.

Array contracts: logits and scores are float32 ``[K, x, y, z]`` (canonical RAS axes, model grid),
channel ``k`` standing for structure ``structures[k]`` and channel 0 for background. A *score* is
any per-class number whose argmax is the label: the logits themselves for a softmax model (softmax
is monotonic, so the exponentials over K x millions of voxels are never needed), and for a sigmoid
model the logits with background set to ``-max(foreground logits)`` (so a structure wins exactly
where its probability exceeds 0.5). Ensembles average probabilities and turn them back into log
scores. The cleaned scores are then upsampled to the scan's grid (``geometry.upsample_argmax``).

Rules: single organs keep their largest connected component; paired organs keep one
component on their own body side (left/right along canonical x, split at the body's centre of mass);
lesions (tumor, metastasis) keep every component of at least ``min_lesion_volume_mm3`` that touches
a mouse (``animals.find_animals``; every component where none was found). At voxels a
rule removes, the structure's score and the background's are swapped, so those voxels become
background. Connectivity is 26 (face, edge and corner neighbours).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from inference.pipeline.geometry import bounding_box, box_within, channel_argmax, grown_box
from inference.pipeline.parallel import executor
from inference.structures import BY_ID, BY_NAME

CONNECTIVITY_26 = np.ones((3, 3, 3), dtype=bool)
BONES = BY_NAME["bones"].id
FACE_NEIGHBOURS = ndimage.generate_binary_structure(3, 1)
#: Lesions smaller than this (mm^3) are treated as specks and removed.
DEFAULT_MIN_LESION_VOLUME_MM3 = 0.2
#: Soft tissue (muscle, blood, liver: 40-60 HU): the bright side of a lung's edge (``refine_air_edge``).
SOFT_TISSUE_HU = 40.0
#: Darker than this a voxel is airway or the air outside the mouse, never lung (inflated lungs
#: read -300 to -700 HU, ../shared/science.md).
AIRWAY_MAX_HU = -900.0
#: A lung whose core is brighter than this holds no credible air: its outline stays as drawn.
LUNG_MAX_CORE_HU = -150.0
#: Fewer core voxels than this are too little lung to read its level from.
MIN_CORE_VOXELS = 50
#: ``refine_contrast_edge``: the cube (voxels a side) its intensities are averaged over, and the
#: HU range of the neighbouring soft tissue whose level it reads.
CONTRAST_SMOOTHING_VOXELS = 3
NEIGHBOUR_HU = (-50.0, 200.0)
#: A voxel whose averaging cube holds a voxel darker than this (air, lung; fat reads -220..-45)
#: has a mean that reads their partial volume, not the organ's level against its neighbours'.
MIXED_WITH_AIR_HU = -300.0
#: Solid organs: none holds air, so an air voxel drawn as one of them beside a lung is lung.
AIRLESS = tuple(BY_NAME[name].id for name in ("heart", "liver", "kidney_left", "kidney_right", "spleen"))
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


def components_26(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
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
    numbers: np.ndarray | None = None,
) -> np.ndarray:
    """Component numbers (1-based, within ``labelled``) that the rules keep, among ``numbers``
    (default: all of them; one animal's when the field holds several)."""
    structure = BY_ID[structure_id]
    if numbers is None:
        numbers = np.arange(1, sizes.size)
    if numbers.size == 0:
        return numbers
    if structure.kind == "lesion":
        return numbers[sizes[numbers] >= min_voxels]
    if structure.kind == "paired":
        side = _side_of(structure.name)
        centres = ndimage.center_of_mass(np.ones_like(labelled), labelled, numbers)
        on_side = [
            n for n, c in zip(numbers, centres, strict=True) if (c[0] + box[0].start - midline_x) * side > 0
        ]
        if on_side:
            return np.array([max(on_side, key=lambda n: sizes[n])])
    return np.array([numbers[int(np.argmax(sizes[numbers]))]])


def animal_of_components(labelled: np.ndarray, animals: np.ndarray, count: int) -> np.ndarray:
    """For components numbered 1..``count`` in ``labelled``: the animal each overlaps most.

    0 for a component that touches no animal's tissue (a lung's air only, or something in the
    air): the caller treats those as one more group. ``animals`` (``animals.find_animals``) is
    cut to ``labelled``'s box."""
    owner = np.zeros(count + 1, dtype=np.int64)
    if count == 0:
        return owner
    inside = (labelled > 0) & (animals > 0)
    if not inside.any():
        return owner
    n_animals = int(animals.max()) + 1
    pairs = np.bincount(
        labelled[inside].astype(np.int64) * n_animals + animals[inside], minlength=(count + 1) * n_animals
    ).reshape(count + 1, n_animals)
    owner = np.argmax(pairs, axis=1)
    owner[pairs.max(axis=1) == 0] = 0
    return owner


def clean(
    scores: np.ndarray,
    structures: Sequence[int],
    spacing_mm: Sequence[float],
    *,
    min_lesion_volume_mm3: float = DEFAULT_MIN_LESION_VOLUME_MM3,
    animals: np.ndarray | None = None,
) -> CleanReport:
    """Apply the component rules to ``scores`` (modified in place); see the module notes.

    ``animals`` (``animals.find_animals`` on the same grid) applies them per animal: each mouse
    of a multi-mouse field keeps its own heart, liver and kidneys, sided by its own midline."""
    report = CleanReport()
    argmax = channel_argmax(scores)
    foreground = np.nonzero(np.any(argmax > 0, axis=(1, 2)))[0]
    if foreground.size == 0:
        return report
    found_animals = 0 if animals is None else int(animals.max(initial=0))
    several = found_animals > 1
    voxel_mm3 = float(np.prod(spacing_mm))
    min_voxels = min_lesion_volume_mm3 / voxel_mm3
    midlines = _midlines(argmax, animals if several else None)
    for channel, box in enumerate(ndimage.find_objects(argmax), start=1):
        if box is None or channel >= len(structures):
            continue
        structure_id = int(structures[channel])
        labelled, sizes = components_26(argmax[box] == channel)
        lesion = BY_ID[structure_id].kind == "lesion"
        owner = None
        if animals is not None and (several or (lesion and found_animals)):
            owner = animal_of_components(labelled, animals[box], sizes.size - 1)
        if several:
            assert owner is not None
            numbers = np.arange(1, sizes.size)
            groups = [(int(a), numbers[owner[1:] == a]) for a in np.unique(owner[1:])]
            keep = np.concatenate(
                [_keep(structure_id, labelled, sizes, box, midlines[a], min_voxels, n) for a, n in groups]
            )
        else:
            keep = _keep(structure_id, labelled, sizes, box, midlines[0], min_voxels)
        if lesion and owner is not None:
            # A tumor grows on a mouse: one drawn in an object apart from every mouse (a syringe
            # or a tube of water beside it) is none.
            keep = keep[owner[keep] > 0]
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


def _midlines(argmax: np.ndarray, animals: np.ndarray | None) -> dict[int, float]:
    """The left-right midline (x) of the labelled voxels: ``{0: whole field}``, and with
    ``animals`` one per animal (its own labelled voxels; the field's where it has none)."""
    whole = np.bincount(np.nonzero(argmax)[0], minlength=argmax.shape[0])
    midlines = {0: float(np.average(np.arange(argmax.shape[0]), weights=whole))}
    if animals is None:
        return midlines
    for animal in range(1, int(animals.max()) + 1):
        x = np.nonzero((argmax > 0) & (animals == animal))[0]
        midlines[animal] = float(x.mean()) if x.size else midlines[0]
    return midlines


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


def _fine_region(coarse_mask: np.ndarray, fine_shape: tuple[int, ...], margin_voxels: int):
    """The coarse mask grown by ``margin_voxels``, on the fine grid inside its bounding box.

    Returns ``(box, region)``: the fine slices that hold the grown mask and the mask there.
    """
    region = coarse_mask
    if margin_voxels > 0:
        region = ndimage.binary_dilation(coarse_mask, structure=CONNECTIVITY_26, iterations=margin_voxels)
    box = ndimage.find_objects(region.astype(np.uint8))[0]
    fine_box = []
    index = []
    for axis in range(3):
        nearest = _nearest_index(fine_shape[axis], region.shape[axis])
        inside = np.nonzero((nearest >= box[axis].start) & (nearest < box[axis].stop))[0]
        fine_box.append(slice(int(inside[0]), int(inside[-1]) + 1))
        index.append(nearest[inside])
    return tuple(fine_box), region[np.ix_(*index)]


def refine_by_intensity(
    labels: np.ndarray,
    coarse_mask: np.ndarray,
    intensity: np.ndarray,
    structure_id: int,
    *,
    min_hu: float,
    margin_voxels: int,
    connected: bool = False,
) -> int:
    """Redraw a bright structure (bones) at full resolution; ``labels`` is modified in place.

    Within the model's coarse mask of the structure grown by ``margin_voxels`` coarse voxels, the
    structure becomes exactly the voxels at or above ``min_hu``: dimmer voxels it held become
    background, brighter background voxels join it (other structures are left alone). This is
    what a threshold tool does inside a region the network found, and it recovers thin bone that
    a 0.63 mm grid cannot draw. With ``connected``, every bright background voxel connected
    through bright voxels to the redrawn structure joins it too, wherever it lies: a limb bone
    the network missed is still attached to the skeleton, while a bright object that touches no
    bone (a tag, a needle, contrast agent) is not. Returns the number of voxels changed.
    """
    if not coarse_mask.any():
        return 0
    box, grown = _fine_region(coarse_mask, labels.shape, margin_voxels)
    sub = labels[box]
    bright = grown & (intensity[box] >= min_hu)
    gained = bright & (sub == 0)
    lost = (sub == structure_id) & ~bright
    sub[gained] = structure_id
    sub[lost] = 0
    changed = int(gained.sum() + lost.sum())
    if connected:
        changed += _grow_through_bright(labels, intensity, structure_id, min_hu)
    return changed


def _grow_through_bright(labels: np.ndarray, intensity: np.ndarray, structure_id: int, min_hu: float) -> int:
    """Background voxels at or above ``min_hu`` 26-connected through bright voxels (whatever their
    label, so a bright voxel another organ holds does not cut a bone) to the structure join it."""
    bright = intensity >= min_hu
    # Only the bright voxels' bounding box is labelled (the skeleton's: a fifth of the scan).
    box = bounding_box(bright, 0)
    if box is None:
        return 0
    bright, sub = bright[box], labels[box]
    components, count = ndimage.label(bright, structure=CONNECTIVITY_26)
    keep = np.zeros(count + 1, dtype=bool)
    keep[components[bright & (sub == structure_id)]] = True
    keep[0] = False
    gained = keep[components] & (sub == 0)
    sub[gained] = structure_id
    return int(gained.sum())


def refine_enclosed(
    labels: np.ndarray,
    coarse_mask: np.ndarray,
    intensity: np.ndarray,
    structure_id: int,
    *,
    wall_id: int,
    max_hu: float,
    margin_voxels: int,
) -> int:
    """Redraw a structure as the space a wall encloses (spinal cord in the spinal canal), in place.

    Within the model's coarse mask grown by ``margin_voxels``, the structure becomes the voxels
    below ``max_hu`` that it already held or that the wall (bones, already redrawn at full
    resolution) surrounds in their axial slice (the canonical third axis runs head to tail); its
    voxels at or above ``max_hu`` go to the wall. Only background and the structure itself change,
    and where the wall is open (an intervertebral gap) the model's outline stays. A 0.63 mm grid
    cannot draw a 1 mm cord (the Dice of its true fractions upsampled is 0.81); the canal can.
    Returns the number of voxels changed.
    """
    if not coarse_mask.any():
        return 0
    box, grown = _fine_region(coarse_mask, labels.shape, margin_voxels)
    sub = labels[box]
    wall = sub == wall_id
    enclosed = fill_holes(wall, across=2)
    dim = intensity[box] < max_hu
    gained = grown & enclosed & ~wall & dim & (sub == 0)
    to_wall = grown & (sub == structure_id) & ~dim
    sub[gained] = structure_id
    sub[to_wall] = wall_id
    return int(gained.sum() + to_wall.sum())


def refine_edge(
    labels: np.ndarray, intensity: np.ndarray, structure_id: int, *, edge_hu: float, margin_voxels: int
) -> int:
    """Move a soft-tissue organ's outline onto its intensity edge with the fat around it, in place.

    A 0.63 mm grid upsampled places an outline up to a voxel off; where the organ (30-60 HU) meets
    fat (-100 to -45 HU) the scan itself shows where the edge is. Within ``margin_voxels`` scan
    voxels of the outline the structure grows, one face-neighbour step at a time, into background
    voxels at or above ``edge_hu``, and sheds its own voxels below ``edge_hu``, peeled from the
    outline inwards (so dark gut content or gas deeper than the margin stays). Other structures
    are never touched. Returns the number of voxels changed.
    """
    own_any = labels == structure_id
    box = _outline_box(own_any, margin_voxels)
    if box is None:
        return 0
    # The fat that licenses growth may lie up to three margins out: look that far.
    wide = bounding_box(own_any, 3 * margin_voxels)
    assert wide is not None
    inner = tuple(slice(b.start - w.start, b.stop - w.start) for b, w in zip(box, wide, strict=True))
    bright_wide = intensity[wide] >= edge_hu
    sub = labels[box]
    bright = bright_wide[inner]
    # Grow only towards an edge that is there: into bright voxels with fat at most twice the
    # margin away (the edge lies within reach of the outline). Where the organ meets tissue as
    # bright as itself (the liver, muscle) the scan shows no edge, and growing there would only
    # fatten the organ by the margin all round (kidneys 1.2-1.5 times their size on the
    # Digimouse CT, ``inference/models/README.md``).
    near_fat = ndimage.binary_dilation(~bright_wide, structure=FACE_NEIGHBOURS, iterations=2 * margin_voxels)
    return _settle_outline(sub, structure_id, bright, (sub == 0) & bright & near_fat[inner], margin_voxels)


def refine_air_edge(
    labels: np.ndarray,
    intensity: np.ndarray,
    structure_id: int,
    *,
    fraction: float,
    margin_voxels: int,
    trim: bool = True,
) -> int:
    """Move an air-filled organ's outline (a lung) onto the edge the air draws, in place.

    A lung is the one organ that holds air, so the scan shows its edge against every neighbour:
    blood, muscle, liver, fat and bone are all far brighter. The edge sits ``fraction`` of the way
    from the lung's own level (the median of its core, its outline's partial-volume voxels left
    out, so an inflated or a collapsing lung sets its own) to soft tissue (``SOFT_TISSUE_HU``).
    Within ``margin_voxels`` scan voxels of the outline the lung grows, one face-neighbour step at
    a time, into voxels darker than the edge (never into airway or outside air, below
    ``AIRWAY_MAX_HU``, unless the lung itself is nearly that dark) that are background or drawn
    as an organ that holds no air (``AIRLESS``: heart, liver, kidneys, spleen; not the gut, whose
    gas is its own), and sheds its own voxels that are not, to background, peeled from the
    outline inwards, so the vessels and nodules deeper inside stay lung. With ``trim`` False (a
    blurred scan: ``blur.SHARP_MM``) it grows and sheds nothing: a lobe thinner than the blur
    never reaches the edge and would be peeled. A lung whose core holds
    no credible air (above ``LUNG_MAX_CORE_HU``: a collapsed lung, a lung full of tumor, a scan
    not in HU) keeps the network's outline. Returns the number of voxels changed.
    """
    box = _outline_box(labels == structure_id, margin_voxels)
    if box is None:
        return 0
    sub = labels[box]
    core = ndimage.binary_erosion(sub == structure_id, structure=FACE_NEIGHBOURS, iterations=2)
    if int(core.sum()) < MIN_CORE_VOXELS:
        return 0
    level = float(np.median(intensity[box][core]))
    if level > LUNG_MAX_CORE_HU:
        return 0
    edge = level + fraction * (SOFT_TISSUE_HU - level)
    # A lung as dark as air (hyperinflated, or a scan with little contrast) keeps its own noisy
    # voxels: the floor then lies as far below its level as the edge lies above.
    floor = min(AIRWAY_MAX_HU, 2.0 * level - edge)
    values = intensity[box]
    inside = (values < edge) & (values >= floor)
    free = ((sub == 0) | label_mask(sub, AIRLESS)) & inside
    return _settle_outline(sub, structure_id, inside if trim else None, free, margin_voxels)


def refine_contrast_edge(
    labels: np.ndarray,
    intensity: np.ndarray,
    structure_id: int,
    *,
    min_contrast_hu: float,
    margin_voxels: int,
    drift_hu: float = 0.0,
) -> int:
    """Move a soft organ's outline onto the edge between its own level and its neighbours', in place.

    Solid organs differ by a few tens of HU (liver 55-75, muscle 40-50, gut 25-45) where no fat
    lies between them: too little for one voxel at 10-20 HU of noise, plenty for the mean of
    27 (``CONTRAST_SMOOTHING_VOXELS``). The organ's level is the median of that mean over its core
    (two voxels in from its outline); its neighbours' is the median over a shell one to three
    voxels outside it, soft tissue only (``NEIGHBOUR_HU``: fat, air and bone have their own edges).
    When the two differ by ``min_contrast_hu`` or more, the edge sits half-way between them, and
    within ``margin_voxels`` scan voxels of the outline the organ grows into background on its
    side of the edge and sheds its outline voxels on the other, peeled from the outside in (as
    ``refine_edge``). A voxel whose cube reaches air or lung (below ``MIXED_WITH_AIR_HU``: the
    liver's dome under the lungs, gas in the gut) reads their partial volume, not a level: it
    keeps the network's label, neither shed nor grown into. An organ no brighter or darker than
    what surrounds it keeps the network's outline, and so does one whose contrast is no larger
    than ``drift_hu``, the HU its level drifts across it (uncorrected beam hardening,
    ``drift.py``: one edge for the whole organ would then cut into it where it lies deep and
    leave its neighbours in where it lies shallow). Other structures are never touched. Returns
    the number of voxels changed.
    """
    own_any = labels == structure_id
    # The shell that reads the neighbours' level lies up to three voxels out.
    box = _outline_box(own_any, margin_voxels + 3) if margin_voxels > 0 else None
    if box is None:
        return 0
    sub = labels[box]
    own = own_any[box]
    mean = ndimage.uniform_filter(intensity[box].astype(np.float32), CONTRAST_SMOOTHING_VOXELS)
    shell = ndimage.binary_dilation(own, iterations=3) & ~ndimage.binary_dilation(own, iterations=1)
    shell &= (mean > NEIGHBOUR_HU[0]) & (mean < NEIGHBOUR_HU[1])
    level = _core_level(own, mean)
    if level is None or int(shell.sum()) < MIN_CORE_VOXELS:
        return 0
    around = float(np.median(mean[shell]))
    if abs(level - around) < max(min_contrast_hu, drift_hu):
        return 0
    edge = 0.5 * (level + around)
    inside = mean >= edge if level > around else mean < edge
    mixed = ndimage.minimum_filter(intensity[box], CONTRAST_SMOOTHING_VOXELS) < MIXED_WITH_AIR_HU
    inside |= mixed & own
    return _settle_outline(sub, structure_id, inside, (sub == 0) & inside & ~mixed, margin_voxels)


def refine_interface(
    labels: np.ndarray,
    intensity: np.ndarray,
    structure_id: int,
    neighbour_ids: Sequence[int],
    *,
    min_contrast_hu: float,
    margin_voxels: int,
    drift_hu: float = 0.0,
) -> int:
    """Move the outline where a solid organ meets another onto the edge between their levels, in place.

    Where two solid organs touch with no fat between them (the liver on the right kidney, the
    spleen on the left one) the network places their shared outline from their shapes, and on
    anatomy it has not learned it places it off the edge the scan shows (on the Digimouse CT the
    right kidney reached into the liver and the spleen over the left kidney by a voxel or two).
    Only for solid organs: a hollow one (stomach, bladder, gut) is a wall and a content of two
    levels, and its wall against the liver reads like liver (on a blurred test phantom the liver
    took 3,182 of the stomach's voxels so, its Dice 0.913 -> 0.802). Each organ's level is the
    median of the ``CONTRAST_SMOOTHING_VOXELS``-cube mean over its core (two voxels in from its
    outline), as ``refine_contrast_edge`` reads it, but only beside the outline the two share
    (``_meeting_box``): a level read there holds where an organ's level drifts across it, and it
    costs a box, not the whole organ.
    For each neighbour in ``neighbour_ids`` that touches ``structure_id`` and whose level differs
    from it by ``min_contrast_hu`` or more (and by more than ``drift_hu``, as there), the shared
    outline moves to the mean half-way between the two levels: a voxel of either organ beside the
    other and on the other's side of that edge goes to the other, one face-neighbour step at a
    time, at most ``margin_voxels`` steps each way. Only the two organs' voxels change hands;
    a voxel whose cube reaches air or lung (``MIXED_WITH_AIR_HU``) or whose mean lies beyond both
    levels by more than their contrast (bone's partial volume, a vessel) keeps its label. Returns
    the number of voxels changed.
    """
    if margin_voxels <= 0:
        return 0
    own_box = bounding_box(labels == structure_id, margin_voxels + 2)
    if own_box is None:
        return 0
    changed = 0
    for other in neighbour_ids:
        if other == structure_id:
            continue
        meeting = _meeting_box(labels, own_box, structure_id, other, margin_voxels)
        if meeting is None:
            continue
        sub = labels[meeting]
        hu = intensity[meeting]
        mean = ndimage.uniform_filter(hu.astype(np.float32), CONTRAST_SMOOTHING_VOXELS)
        own_level, other_level = (_core_level(sub == sid, mean) for sid in (structure_id, other))
        if own_level is None or other_level is None:
            continue
        contrast = abs(own_level - other_level)
        if contrast < max(min_contrast_hu, drift_hu):
            continue
        low, high = min(own_level, other_level), max(own_level, other_level)
        settled = (mean >= low - contrast) & (mean <= high + contrast)
        settled &= ndimage.minimum_filter(hu, CONTRAST_SMOOTHING_VOXELS) >= MIXED_WITH_AIR_HU
        edge = 0.5 * (own_level + other_level)
        own_side = mean >= edge if own_level > other_level else mean < edge
        for source, target, wrong_side in ((structure_id, other, ~own_side), (other, structure_id, own_side)):
            for _ in range(margin_voxels):
                beside = ndimage.binary_dilation(sub == target, structure=FACE_NEIGHBOURS)
                step = (sub == source) & beside & wrong_side & settled
                if not step.any():
                    break
                sub[step] = target
                changed += int(step.sum())
    return changed


def _meeting_box(
    labels: np.ndarray, own_box: tuple[slice, ...], sid: int, other: int, margin_voxels: int
) -> tuple[slice, ...] | None:
    """The box (in ``labels``) round the voxels of ``sid`` within ``margin_voxels`` + 1 of
    ``other``, where both organs' levels are read and their shared outline moves; None when they
    do not come that close. It reaches twice the margin, the averaging cube and the two voxels a
    core lies in from an outline past those voxels: where one organ is drawn up to the margin
    into the other, most of each one's core beside the outline is still its own tissue. Only
    ``other``'s own box inside ``own_box`` (``sid``'s) is dilated: a neighbour is small against
    the liver's box."""
    reach = margin_voxels + 1
    near = bounding_box(labels[own_box] == other, reach)
    if near is None:
        return None
    near = box_within(own_box, near)
    meet = ndimage.binary_dilation(labels[near] == other, iterations=reach) & (labels[near] == sid)
    box = bounding_box(meet, 0)
    if box is None:
        return None
    return grown_box(box_within(near, box), 2 * margin_voxels + CONTRAST_SMOOTHING_VOXELS + 2, labels.shape)


def _core_level(own: np.ndarray, mean: np.ndarray) -> float | None:
    """The median of ``mean`` over the core of ``own`` (two face steps in from its outline); None
    when the core holds fewer than ``MIN_CORE_VOXELS``."""
    core = ndimage.binary_erosion(own, structure=FACE_NEIGHBOURS, iterations=2)
    if int(core.sum()) < MIN_CORE_VOXELS:
        return None
    return float(np.median(mean[core]))


def _outline_box(own: np.ndarray, margin_voxels: int) -> tuple[slice, ...] | None:
    """The box of ``own`` grown by ``margin_voxels``: where an outline rule can change anything
    (None when there is no margin or no structure)."""
    return bounding_box(own, margin_voxels) if margin_voxels > 0 else None


def _settle_outline(
    sub: np.ndarray, structure_id: int, inside: np.ndarray | None, free: np.ndarray, steps: int
) -> int:
    """Grow ``structure_id`` in ``sub`` into ``free`` voxels and peel its outline voxels that are
    not ``inside`` (none when ``inside`` is None), ``steps`` face-neighbour steps each way (in
    place); the number changed."""
    own = sub == structure_id
    changed = 0
    for _ in range(steps):
        step = ndimage.binary_dilation(own, structure=FACE_NEIGHBOURS) & free
        if not step.any():
            break
        own |= step
        free &= ~step
        changed += int(step.sum())
    for _ in range(steps):
        if inside is None:
            break
        outline = own & ~ndimage.binary_erosion(own, structure=FACE_NEIGHBOURS, border_value=1)
        step = outline & ~inside
        if not step.any():
            break
        own &= ~step
        changed += int(step.sum())
    sub[(sub == structure_id) & ~own] = 0
    sub[own] = structure_id
    return changed


def fill_holes(mask: np.ndarray, *, across: int | None = None) -> np.ndarray:
    """``mask`` with its holes filled: background not face-connected to the array's border.

    The same answer as ``ndimage.binary_fill_holes`` (face connectivity), from one labelling of
    the background instead of a dilation repeated until it settles, which costs a pass over the
    whole array per voxel of the longest path through the background (seconds on a scan).
    ``across``: fill each slice across that axis on its own (a 2D hole in a slice counts even
    where the background leaks through the slices beside it); only the slice's own edges are
    its border.
    """
    mask = np.asarray(mask, dtype=bool)
    structure = ndimage.generate_binary_structure(mask.ndim, 1)
    if across is not None:
        structure = structure.copy()
        cut = [slice(None)] * mask.ndim
        for step in (0, 2):
            cut[across] = slice(step, step + 1)
            structure[tuple(cut)] = False
    background, count = ndimage.label(~mask, structure=structure)
    if count == 0:
        return mask.copy()
    reaches_border = np.zeros(count + 1, dtype=bool)
    for axis in range(mask.ndim):
        if axis == across:
            continue
        for end in (0, -1):
            reaches_border[np.take(background, end, axis=axis).ravel()] = True
    reaches_border[0] = True  # label 0 is the mask itself
    return mask | ~reaches_border[background]


def label_mask(labels: np.ndarray, ids: Sequence[int]) -> np.ndarray:
    """True where ``labels`` holds one of ``ids``. One comparison per id: for the few ids a rule
    names, five times faster than ``np.isin`` (which sorts) on a whole scan."""
    mask = np.zeros(np.shape(labels), dtype=bool)
    for value in {int(i) for i in ids}:
        mask |= labels == value
    return mask


def apply_refinement(
    labels: np.ndarray,
    coarse_argmax: np.ndarray,
    intensity: np.ndarray,
    rule: dict,
    structures: Sequence[int],
    grid_spacing_mm: Sequence[float],
    spacing_mm: Sequence[float],
    *,
    drift_hu: float = 0.0,
    thresholds_hu: Mapping[int, float] | None = None,
) -> int:
    """Apply one ``model.json`` ``refine`` rule to the full-resolution ``labels`` (in place).

    ``{"structure", "min_hu", "margin_mm"[, "connected"]}`` redraws a bright structure
    (``refine_by_intensity``); ``{"structure", "enclosed_by", "max_hu", "margin_mm"}`` redraws
    a structure as the space its wall encloses (``refine_enclosed``); both margins are whole
    model-grid voxels (``grid_spacing_mm``). ``{"structure", "edge_hu", "margin_mm"}`` moves an
    outline onto the intensity edge (``refine_edge``), within ``margin_mm`` in scan voxels
    (``spacing_mm``); ``{"structure", "contrast_edge", "margin_mm"}`` moves it onto the edge
    between its own level and its neighbours' when they differ by ``contrast_edge`` HU or more
    (``refine_contrast_edge``; ``drift_hu`` as there); ``{"structure", "interface_with",
    "min_contrast_hu", "margin_mm"}`` moves the outline it shares with each organ listed onto the
    edge between their levels (``refine_interface``). Rules run in their order. ``thresholds_hu``:
    by structure id, the level its ``min_hu`` rule uses instead of the card's (the scan's own
    bone, ``bone_level.BoneLevel.threshold``, never above the card's). An ``enclosed_by`` rule
    keeps its card's ``max_hu``: on a blurred scan the bone's blur reaches into the canal, and the
    cord lost a fifth of its Dice where its level followed the wall's.
    (``{"structure", "air_edge", "margin_mm"}`` rules, ``refine_air_edge``, run later, after the
    lesion search: ``predict.settle_air_edges``.)
    """
    sid = int(rule["structure"])
    if any(key in rule for key in OUTLINE_RULES):
        return apply_outline_rule(labels, intensity, rule, spacing_mm, drift_hu=drift_hu)
    coarse = coarse_argmax == structures.index(sid)
    margin = math.ceil(float(rule["margin_mm"]) / min(grid_spacing_mm) - 1e-6)
    if "enclosed_by" in rule:
        return refine_enclosed(
            labels,
            coarse,
            intensity,
            sid,
            wall_id=int(rule["enclosed_by"]),
            max_hu=float(rule["max_hu"]),
            margin_voxels=margin,
        )
    return refine_by_intensity(
        labels,
        coarse,
        intensity,
        sid,
        min_hu=(thresholds_hu or {}).get(sid, float(rule["min_hu"])),
        margin_voxels=margin,
        connected=bool(rule.get("connected", False)),
    )


#: The rules that move an outline onto an edge the scan shows, their margin in scan voxels.
OUTLINE_RULES = ("edge_hu", "contrast_edge", "interface_with", "air_edge")


def apply_outline_rule(
    labels: np.ndarray,
    intensity: np.ndarray,
    rule: dict,
    spacing_mm: Sequence[float],
    *,
    drift_hu: float = 0.0,
    trim_air: bool = True,
) -> int:
    """Apply one outline rule (``OUTLINE_RULES``) of ``model.json`` to ``labels``, in place:
    ``refine_edge``, ``refine_contrast_edge``, ``refine_interface`` (both ``drift_hu`` as there)
    or ``refine_air_edge`` (``trim_air`` its ``trim``), its ``margin_mm`` in scan voxels
    (``spacing_mm``). Returns the number of voxels changed."""
    sid, margin = int(rule["structure"]), voxels_across(float(rule["margin_mm"]), spacing_mm)
    if "interface_with" in rule:
        return refine_interface(
            labels,
            intensity,
            sid,
            [int(other) for other in rule["interface_with"]],
            min_contrast_hu=float(rule["min_contrast_hu"]),
            margin_voxels=margin,
            drift_hu=drift_hu,
        )
    if "air_edge" in rule:
        fraction = float(rule["air_edge"])
        return refine_air_edge(labels, intensity, sid, fraction=fraction, margin_voxels=margin, trim=trim_air)
    if "contrast_edge" in rule:
        contrast = float(rule["contrast_edge"])
        return refine_contrast_edge(
            labels, intensity, sid, min_contrast_hu=contrast, margin_voxels=margin, drift_hu=drift_hu
        )
    return refine_edge(labels, intensity, sid, edge_hu=float(rule["edge_hu"]), margin_voxels=margin)


def voxels_across(mm: float, spacing_mm: Sequence[float]) -> int:
    """A length in mm as a whole number of voxels (mean spacing): radii, erosions, reaches."""
    return round(mm / float(np.mean(spacing_mm)))


def voxels_along(mm: float, spacing_mm: Sequence[float]) -> tuple[int, ...]:
    """A length in mm as a whole number of voxels along each axis: the nodule rule's reaches, so
    that a scan of thick slices is searched and opened as far in-plane as an isotropic scan (by the
    mean spacing, 0.14 x 0.14 x 0.28 mm slices took 3 voxels for 0.63 mm: 0.42 mm in-plane, 0.84
    across slices; now 4 and 2). On an isotropic grid each equals ``voxels_across``."""
    return tuple(round(mm / float(s)) for s in spacing_mm)


def per_axis(voxels: int | Sequence[int]) -> tuple[int, int, int]:
    """Per-axis radii (voxels) from one count or three."""
    if isinstance(voxels, int):
        return (voxels, voxels, voxels)
    radii = [int(v) for v in voxels]
    if len(radii) != 3:
        raise ValueError(f"need 3 per-axis radii, got {radii}")
    return (radii[0], radii[1], radii[2])


def diamond(radii: Sequence[int]) -> np.ndarray:
    """The structuring element ``sum |d_i| / r_i <= 1`` (``d_i = 0`` where ``r_i`` is 0): with
    equal radii ``r`` the diamond that ``r`` iterations of the face-neighbour cross erode by."""
    r = np.array(radii, dtype=float)
    axes = np.ogrid[tuple(slice(-int(v), int(v) + 1) for v in radii)]
    total = sum(np.abs(a) / v for a, v in zip(axes, r, strict=True) if v > 0)
    return np.asarray(total <= 1.0 + 1e-9) if np.any(r > 0) else np.ones((1, 1, 1), dtype=bool)


def _by_diamond(
    operation: Callable[..., np.ndarray], mask: np.ndarray, voxels: int | Sequence[int]
) -> np.ndarray:
    """``operation`` (binary erosion or dilation) of ``mask`` by ``diamond`` of the per-axis
    ``voxels``: as iterated face-neighbour crosses when they are equal (the same, and faster)."""
    radii = per_axis(voxels)
    if max(radii) <= 0:
        return mask
    if len(set(radii)) == 1:
        return operation(mask, iterations=radii[0])
    return operation(mask, structure=diamond(radii))


def erode_by(mask: np.ndarray, voxels: int | Sequence[int]) -> np.ndarray:
    """``mask`` eroded by ``diamond`` of the per-axis ``voxels``."""
    return _by_diamond(ndimage.binary_erosion, mask, voxels)


def dilate_by(mask: np.ndarray, voxels: int | Sequence[int]) -> np.ndarray:
    """``mask`` grown by ``diamond`` of the per-axis ``voxels``."""
    return _by_diamond(ndimage.binary_dilation, mask, voxels)


def voxels_within(mm3: float, spacing_mm: Sequence[float]) -> int:
    """A volume in mm^3 as a whole number of voxels, at least 1: minimum lesion sizes."""
    return max(1, round(mm3 / float(np.prod(spacing_mm))))


def outline_distances(
    labels: np.ndarray,
    spacing_mm: Sequence[float],
    *,
    smoothing_mm: Sequence[float],
    structures: Sequence[int],
    boxes: Sequence[tuple[slice, ...] | None] | None = None,
) -> dict[int, tuple[tuple[slice, ...], np.ndarray]]:
    """Per structure present: ``(box, |smoothed share - 1/2|)``, float32 inside ``box``.

    The structure's mask is smoothed with a Gaussian of ``smoothing_mm`` (per canonical axis);
    the share is one half on its outline and moves towards 0 or 1 away from it, so the distance
    from one half measures closeness to the outline (also for thin parts, which smoothing thins).
    ``boxes`` is ``ndimage.find_objects(labels)`` when the caller already has it.
    """
    sigma = [max(float(s), 0.0) / float(v) for s, v in zip(smoothing_mm, spacing_mm, strict=True)]
    reach = [math.ceil(3.0 * s) + 1 for s in sigma]
    if boxes is None:
        boxes = ndimage.find_objects(labels)
    found = {}
    for sid in structures:
        if not 0 < sid <= len(boxes) or (tight := boxes[sid - 1]) is None:
            continue
        box = grown_box(tight, reach, labels.shape)
        share = ndimage.gaussian_filter((labels[box] == sid).astype(np.float32), sigma, truncate=3.0)
        found[int(sid)] = (box, np.abs(share - np.float32(0.5)))
    return found


def outline_band(
    labels: np.ndarray,
    spacing_mm: Sequence[float],
    outlines: Sequence[tuple[Sequence[float], dict[int, float]]],
    *,
    workers: int = 1,
) -> np.ndarray:
    """uint8 map of the outline bands where annotators part: 0 outside, 128-255 inside.

    ``outlines`` holds ``(smoothing_mm, levels)`` pairs (one per model card). A voxel whose
    smoothed share of structure ``s`` (``outline_distances``) lies within ``levels[s]`` of one half
    sits on the outline, in a band whose width follows how hard that structure's boundary is to
    draw (tuned per structure on annotated validation scans: narrow for lungs and bone, wide for
    spleen and gut). The value is highest on the outline itself. Structures are smoothed
    ``workers`` at a time (SciPy's filters release the GIL).
    """
    band = np.zeros(labels.shape, dtype=np.uint8)
    boxes = ndimage.find_objects(labels)

    def shade(
        smoothing_mm: Sequence[float], levels: dict[int, float], sid: int
    ) -> tuple[tuple[slice, ...], np.ndarray] | None:
        found = outline_distances(
            labels, spacing_mm, smoothing_mm=smoothing_mm, structures=[sid], boxes=boxes
        )
        if sid not in found:
            return None
        box, dist = found[sid]
        closeness = 1.0 - dist / np.float32(levels[sid])
        value = np.where(closeness > 0, np.float32(128.0) + np.float32(127.0) * closeness, 0)
        return box, value.astype(np.uint8)

    jobs = [
        (smoothing_mm, levels, sid)
        for smoothing_mm, levels in outlines
        for sid, level in levels.items()
        if level > 0
    ]
    with executor(workers, "outline") as pool:
        for shaded in pool.map(lambda job: shade(*job), jobs):
            if shaded is not None:
                box, value = shaded
                np.maximum(band[box], value, out=band[box])
    return band


def mark_outlines(uncertainty_u8: np.ndarray, band: np.ndarray) -> None:
    """Make the outline ``band`` (``outline_band``) the map's "uncertain" (>= 50 %) part, in place.

    Every other voxel keeps the disagreement head's shade, capped just below 50 %: the head sees
    0.63 mm voxels and cannot say where inside one the annotators' outlines part; the
    full-resolution outlines can.
    """
    np.minimum(uncertainty_u8, np.uint8(127), out=uncertainty_u8)
    np.maximum(uncertainty_u8, band, out=uncertainty_u8)
