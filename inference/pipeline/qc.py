"""The QC gate: is a segmentation run plausible enough to chart, or does a person need to look?

Every run gets a verdict, ``ok`` or ``needs_review``, and the reasons in plain words. A run that
needs review is kept out of charts, cohort means and humane-endpoint alerts until a reviewer
accepts it (the server records who and when). The checks, each with its own reason code:

- ``nothing_found``: the models drew nothing at all (no organ, bone or tumor): a QA phantom, an
  empty bed or a scan of something else, never an "ok" mouse without organs.
- ``no_skeleton``: the organ model drew organs but no bone. Every slice through a mouse's head or
  trunk holds bone (skull, spine, ribs, pelvis), so such a run is a QA phantom, a tube of water
  or gel, or a crop of soft tissue alone, whatever organs the network drew in it (a water
  cylinder came out as a 1,218 mm^3 "liver"): its volumes are no measurements. A tumor alone,
  as in a crop of the flank, is no reason.
- ``volume_range``: an organ's volume outside the range of adult mice (15-40 g). The reference is
  the Digimouse atlas (one 28 g male, ``../shared/science.md``) and the published adult means the
  phantom is calibrated to; organ volume scales with body mass, so when the whole body is in view
  the range follows the body's volume. Stomach, bladder and spleen (filling, splenomegaly in
  tumor-bearing mice) get wide ranges.
- ``paired_asymmetry``: one kidney or lung more than ``PAIRED_MAX_RATIO`` times the other.
- ``missing``: a structure the field of view holds but the model did not find (the regions in
  view are read from what was found: brain -> head, lungs/heart -> thorax, liver/kidneys/stomach/
  spleen -> abdomen, bladder -> pelvis; thorax and pelvis in view mean the abdomen is too).
- ``tumor_burden``: lesions above the humane-endpoint burden (2000 uL), or more than
  ``MAX_TUMOR_BODY_FRACTION`` of the body: suspicious before alarming.
- ``lesion_outside_body``: a lesion mostly outside the mouse's body (on the animal bed, in air, in
  another object) or whose mean intensity is air-like; specks below the pipeline's smallest lesion
  (``postprocess.DEFAULT_MIN_LESION_VOLUME_MM3``) are not lesions and are not counted.
- ``tumor_at_field_edge``: a tumor within ``EDGE_MM`` of the edge of the scanned field: its volume is only a
  lower bound, and a leg or the neck cut by the field of view ends in a soft-tissue stump that
  the tumor model can take for a tumor.
- ``uncertain``: more than ``MAX_UNCERTAIN_FRACTION`` of the labelled voxels very uncertain
  (map >= ``VERY_UNCERTAIN``). The map is calibrated so that 50 % means "annotators would
  disagree here", so outlines are always half uncertain: on held-out native phantoms 14-15 % of
  the labelled voxels are above 78 %.
- ``intensity_calibrated`` / ``orientation_disagrees``: the scan was not in HU and was calibrated
  (by more than ``CALIBRATION_TOLERANCE_HU`` somewhere in -1000..+1000 HU), or its header's
  orientation disagreed with the anatomy: the numbers rest on that fix.
- ``intensity_drift``: the scan's soft tissue grows darker (or brighter) from the body's outline
  to its centre by more than ``drift.MAX_DEPTH_DRIFT_HU`` (beam hardening not corrected): HU
  read deep in the body are off, and the liver's and bladder's outlines were left as the model
  drew them.
- ``bone_dim``: the scan's bone peaks dimmer than the models learned it (``bone_level.DIM_BELOW_HU``)
  and the models read the scan stretched so that it reads at their level: the numbers rest on that
  fix (a scanner whose HU calibration is off above soft tissue, or a young mouse's bone).
- ``coarse_voxels``: the scan's voxels (their longest edge) coarser than ``MAX_VOXEL_MM``. The
  models learned from scans of 0.1-0.4 mm voxels (``phantom.synth``); on the Digimouse torso
  rendered coarser, the liver falls from 0.91 (0.4-0.5 mm) to 0.86 (0.8 mm) and 0.81 (1 mm), the
  bones from 0.83 to 0.57, and every outline is a coarse voxel's partial volume.
- ``several_animals``: more than one mouse in the field of view (``animals.find_animals``). The
  models segment each, but a scan's volumes and counts add up over all of them.
- ``tissue``: an organ drawn on the wrong kind of tissue, by its median HU: lungs that hold no
  air (above ``LUNG_MAX_HU``), a solid organ that is mostly air (below ``SOLID_MIN_HU``), bones
  that are not dense (below ``BONE_MIN_HU``). No upper bound for solid organs: contrast agent
  takes kidneys and bladder far above soft tissue. Only structures of at least
  ``LAYOUT_MIN_MM3`` are read.
- ``layout``: the organs are not where they lie in every mouse: the centre of one more than
  ``LAYOUT_TOLERANCE_MM`` on the wrong side of another's (heart cranial of liver and kidneys,
  those cranial of the bladder; the left lung and kidney left of the right ones), or a trunk
  organ's centre, cut by the field or not, less than ``HEAD_TO_TRUNK_MM`` caudal of the brain's
  (lungs drawn in a head, as in a head scan cropped to the skull whose pose was not found).
  Volumes can be in range while the models draw organs in the wrong places, as on anatomy they
  do not know; the centres come from the canonical pose (``organ_centres``), one mouse only.

- ``unstable``: a big organ (heart, lungs, liver, kidneys) the network draws differently when it
  reads the scan moved by a few of its voxels (its card's shifted passes; Dice between the
  passes under ``MIN_PASS_AGREEMENT``). On anatomy a network learned, the grid's phase barely
  moves an outline; on anatomy it does not know, its answer depends on it, and its volumes can
  still each look like a mouse's. Only read where the card asks for shifted passes.

Structures the model can draw that lie outside the field of view are listed as ``not_in_view``
("not assessed": never a 0); organs the field's edge cuts through as ``cut_by_field`` (only part
of each was scanned: no volume check reads them, no region counts as in view by them, and the
exports give no volume for them; a brain whose skull lies between it and the edge is whole).
Array contract: ``labels`` uint8 and ``uncertainty`` uint8 (0-255) on the scan's grid, ``scan``
the scan's values on the same grid (any axis order), turned into HU with the run's intensity
calibration (``slope``, ``intercept``); ``voxel_volume_mm3`` the volume of one voxel.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

from inference.pipeline.drift import drifts, how_far
from inference.pipeline.geometry import bounding_box
from inference.pipeline.lesions import LesionRow
from inference.pipeline.postprocess import DEFAULT_MIN_LESION_VOLUME_MM3, fill_holes, label_mask
from inference.pipeline.volumes import VolumeRow
from inference.structures import BY_ID, BY_NAME, LESION_NAMES

OK = "ok"
NEEDS_REVIEW = "needs_review"

#: Adult mouse organ volumes (mm^3) at 28 g: Digimouse (measured) where it labels the organ.
REFERENCE_MM3: dict[str, float] = {
    "heart": 223.0,
    "lungs": 417.0,
    "liver": 2008.0,
    "kidneys": 495.0,
    "spleen": 139.0,
    "stomach": 226.0,
    "bladder": 190.0,
    "brain": 416.0,
}
#: Allowed volume as a factor of the reference (low, high): mice of 15-40 g, plus each organ's own
#: spread (the phantom's means, from published adult figures, lie inside: heart 160, liver 1300,
#: kidneys 320, spleen 95, brain 450 mm^3).
RANGE_FACTORS: dict[str, tuple[float, float]] = {
    "heart": (0.35, 2.5),
    "lungs": (0.3, 2.5),
    "liver": (0.35, 2.5),
    "kidneys": (0.3, 2.5),
    "spleen": (0.25, 8.0),
    "stomach": (0.1, 6.0),
    "bladder": (0.05, 6.0),
    "brain": (0.55, 1.7),
}
#: Canonical structures summed into each reference group.
GROUP_MEMBERS: dict[str, tuple[str, ...]] = {
    "heart": ("heart",),
    "lungs": ("lung_left", "lung_right"),
    "liver": ("liver",),
    "kidneys": ("kidney_left", "kidney_right"),
    "spleen": ("spleen",),
    "stomach": ("stomach",),
    "bladder": ("bladder",),
    "brain": ("brain",),
}
REFERENCE_BODY_MM3 = 28_000.0  # 28 g at about 1 g/mL
PAIRED_MAX_RATIO = 2.5
HUMANE_BURDEN_MM3 = 2000.0
MAX_TUMOR_BODY_FRACTION = 0.15
#: A lesion with less than this fraction of its voxels in the body is not in the mouse.
MIN_LESION_IN_BODY = 0.5
#: A calibration that moves no value of -1000..+1000 by more than this many HU left the scan in
#: HU for every purpose here (3x noise shifts the soft-tissue peak a few HU): not a reason.
CALIBRATION_TOLERANCE_HU = 30.0
AIR_LIKE_HU = -700.0
#: A tumor reaching this close to a face of the scanned array (mm) is at the field's edge.
EDGE_MM = 1.0
#: An organ with at least this many (QC view) voxels within ``EDGE_MM`` of the field's edge is cut
#: by it: a few voxels are an outline's noise.
CUT_MIN_VOXELS = 3
#: Organs in a bony case: bone between one and the field's edge shows the case whole there.
ENCASED = ("brain",)
#: Pairs whose first organ's centre lies cranial of the second's in every mouse, and pairs whose
#: first lies on the mouse's left of the second (6.5-11.5 mm apart in Digimouse, 9-10.5 in the
#: phantoms).
CRANIAL_OF: tuple[tuple[str, str], ...] = (
    ("heart", "liver"),
    ("heart", "kidney_left"),
    ("heart", "kidney_right"),
    ("liver", "bladder"),
    ("kidney_left", "bladder"),
    ("kidney_right", "bladder"),
)
LEFT_OF: tuple[tuple[str, str], ...] = (("lung_left", "lung_right"), ("kidney_left", "kidney_right"))
#: Median HU bounds of the ``tissue`` check. On the held-out phantoms (native, 3x noise, 8-bit
#: calibrated, clipped, contrast) and Digimouse the lungs the models draw sit at -400 to -510, the
#: solid organs at 17-211, the bones at 678-915.
LUNG_MAX_HU = -100.0
SOLID_MIN_HU = -200.0
BONE_MIN_HU = 200.0
SOLID_ORGANS = ("heart", "liver", "kidney_left", "kidney_right", "spleen", "bladder", "brain")
#: How far (mm) caudal of the brain's centre a trunk organ's centre lies at least, even where the
#: field cuts either: the nearest trunk organ's cranial tip lies 14.0 mm caudal of it in Digimouse
#: (the left lung) and 15.0-19.5 mm in test phantoms 9000-9003, 11.9 mm in a mouse 0.85 times as
#: long; a brain cut at its cranial end moves its centre by at most half its length (~6 mm).
HEAD_TO_TRUNK_MM = 5.0
#: How far (mm) one centre may lie on the wrong side of another before the layout is named.
LAYOUT_TOLERANCE_MM = 1.0
#: Structures smaller than this (mm^3) are too little of an organ for their centre to say much.
LAYOUT_MIN_MM3 = 5.0
BODY_HU = -350.0
#: Uncertainty map value (0-255) from which a voxel counts as very uncertain (78 %), and the share
#: of labelled voxels that may be so before the run needs review (twice the held-out phantoms').
VERY_UNCERTAIN = 200
MAX_UNCERTAIN_FRACTION = 0.3
#: ``unstable``: the organs read, and the Dice between the network's shifted passes under which one
#: needs review. The served organ model's passes agree at 0.895 or more for these on the eight
#: validation phantoms and at 0.867 or more on seven Digimouse renders (its left kidney the
#: lowest, both times). The phantom-only 1.9.0, read with the same passes, draws the atlas heart
#: at 0.06-0.78 and the kidneys at 0-0.58 between them (model card, "Unstable outlines").
STABLE_ORGANS = ("heart", "lung_left", "lung_right", "liver", "kidney_left", "kidney_right")
MIN_PASS_AGREEMENT = 0.80
#: A scan whose voxels' longest edge exceeds this (mm) is coarser than the models learned from.
MAX_VOXEL_MM = 0.5
#: The image checks run on every ``step``-th voxel along each axis once a scan holds more voxels
#: than this (body and lesion masks at 0.42 mm are plenty for a plausibility check).
FULL_GRID_MAX_VOXELS = 4_000_000

REGION_OF: dict[str, str] = {
    "brain": "head",
    "heart": "thorax",
    "lung_left": "thorax",
    "lung_right": "thorax",
    "liver": "abdomen",
    "kidney_left": "abdomen",
    "kidney_right": "abdomen",
    "stomach": "abdomen",
    "spleen": "abdomen",
    "bladder": "pelvis",
}
TRUNK_ORGANS: tuple[str, ...] = tuple(name for name, region in REGION_OF.items() if region != "head")
#: What each region in view must show (the big, always-present organs).
EXPECTED_IN: dict[str, tuple[str, ...]] = {
    "head": ("brain",),
    "thorax": ("heart", "lung_left", "lung_right"),
    "abdomen": ("liver", "kidney_left", "kidney_right"),
    "pelvis": ("bladder",),
}


@dataclass(frozen=True)
class Reason:
    """One reason for review: a stable ``code``, the structure it is about, and plain words."""

    code: str
    message: str
    structure: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {"code": self.code, "structure": self.structure, "message": self.message}


@dataclass
class QCReport:
    """The verdict of one run: ``status`` ``ok`` or ``needs_review`` and why."""

    reasons: list[Reason] = field(default_factory=list)
    regions: list[str] = field(default_factory=list)
    not_in_view: list[str] = field(default_factory=list)
    cut_by_field: list[str] = field(default_factory=list)
    body_volume_mm3: float | None = None
    uncertain_fraction: float | None = None
    #: Per big organ (``STABLE_ORGANS``), how alike the network's shifted passes drew it
    #: (``infer.pass_agreement``); empty where none ran.
    pass_agreement: dict[str, float] = field(default_factory=dict)

    @property
    def status(self) -> str:
        return NEEDS_REVIEW if self.reasons else OK

    def as_json(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "reasons": [r.as_json() for r in self.reasons],
            "regions_in_view": list(self.regions),
            "not_in_view": list(self.not_in_view),
            "cut_by_field": list(self.cut_by_field),
            "body_volume_mm3": None if self.body_volume_mm3 is None else round(self.body_volume_mm3, 1),
            "uncertain_fraction": None
            if self.uncertain_fraction is None
            else round(self.uncertain_fraction, 4),
            "pass_agreement": {name: round(value, 3) for name, value in sorted(self.pass_agreement.items())},
        }


def body_mask(hu: np.ndarray) -> np.ndarray:
    """The largest 26-connected region denser than ``BODY_HU``, holes filled (the lungs and the
    gut's gas are inside the body): the mouse, without a bed or an object apart from it.

    Holes are filled in 3D and also slice by slice along each axis: where the field of view cuts
    through the chest, the lungs open onto the cut face and are no 3D hole, but every slice across
    the body still rings them (a lung nodule there is inside the mouse)."""
    dense = np.asarray(hu) > BODY_HU
    components, count = ndimage.label(dense, structure=np.ones((3, 3, 3), dtype=bool))
    if count == 0:
        return dense
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    mouse = components == int(np.argmax(sizes))
    # Filled inside the mouse's box, one voxel wider: that ring is background joined to
    # everything outside, so each slice's holes are the same as in the whole field of view.
    box = bounding_box(mouse, 1)
    assert box is not None  # the largest component has a voxel
    # A 3D hole is a hole in every slice through it, so the slice fills hold the 3D fill too.
    filled = fill_holes(mouse[box], across=0)
    for axis in (1, 2):
        filled |= fill_holes(mouse[box], across=axis)
    body = np.zeros_like(mouse)
    body[box] = filled
    return body


def regions_in_view(found: Collection[str]) -> list[str]:
    """Body regions the field of view holds, read from the structures found."""
    regions = {REGION_OF[name] for name in found if name in REGION_OF}
    if "thorax" in regions and "pelvis" in regions:
        regions.add("abdomen")
    return [r for r in ("head", "thorax", "abdomen", "pelvis") if r in regions]


def organ_centres(
    labels: np.ndarray, spacing_mm: Sequence[float], *, step: int = 2
) -> dict[str, tuple[float, float, float]]:
    """The centre (mm) of each structure of ``labels`` larger than ``LAYOUT_MIN_MM3``, measured on
    every ``step``-th voxel. ``labels`` must be in the canonical pose (geometry and orientation
    modules: +x the mouse's right, +y ventral, +z cranial) for ``layout`` to read them."""
    sampled = np.ascontiguousarray(np.asarray(labels)[::step, ::step, ::step])
    voxel_mm3 = float(np.prod(spacing_mm)) * step**3
    flat = sampled.ravel()
    counts = np.bincount(flat, minlength=256)
    ids = [int(i) for i in np.flatnonzero(counts) if i and counts[i] * voxel_mm3 >= LAYOUT_MIN_MM3]
    if not ids:
        return {}
    # Per axis, voxels per (label, plane): one bincount each, where ``ndimage.center_of_mass``
    # walks the array once per label and coordinate (0.13 s on a 192 x 192 x 520 map).
    sums = np.zeros((3, 256))
    for axis, n in enumerate(sampled.shape):
        shape = [1, 1, 1]
        shape[axis] = n
        plane = np.broadcast_to(np.arange(n, dtype=np.int32).reshape(shape), sampled.shape).ravel()
        per_plane = np.bincount(plane * 256 + flat, minlength=256 * n).reshape(n, 256)
        sums[axis] = np.arange(n) @ per_plane
    found: dict[str, tuple[float, float, float]] = {}
    for i in ids:
        if i in BY_ID:
            x, y, z = (float(sums[a, i] / counts[i] * step * s) for a, s in enumerate(spacing_mm))
            found[BY_ID[i].name] = (x, y, z)
    return found


def tissue_reasons(labels: np.ndarray, hu: np.ndarray, voxel_volume_mm3: float) -> list[Reason]:
    """The ``tissue`` check on ``labels`` and the scan in HU (same grid), read on every second
    voxel along each axis (a median needs no more, and costs a sort)."""
    labels, hu, voxel_volume_mm3 = labels[::2, ::2, ::2], hu[::2, ::2, ::2], voxel_volume_mm3 * 8
    ids = {name: BY_NAME[name].id for name in ("lung_left", "lung_right", "bones", *SOLID_ORGANS)}
    counts = np.bincount(np.asarray(labels).ravel(), minlength=256)
    present = {n: i for n, i in ids.items() if counts[i] * voxel_volume_mm3 >= LAYOUT_MIN_MM3}
    if not present:
        return []
    # One mask per structure and a partial sort of its voxels: ``ndimage.median`` sorts every
    # voxel of the scan by label and value (three times as long, the same medians).
    flat_labels, flat_hu = np.asarray(labels).ravel(), np.asarray(hu).ravel()
    medians = {name: np.median(flat_hu[flat_labels == sid]) for name, sid in present.items()}
    reasons = []
    for name, value in medians.items():
        if name.startswith("lung") and value > LUNG_MAX_HU:
            wrong = f"holds no air (median {value:.0f} HU; lungs sit below {LUNG_MAX_HU:.0f})"
        elif name in SOLID_ORGANS and value < SOLID_MIN_HU:
            wrong = f"is mostly air (median {value:.0f} HU)"
        elif name == "bones" and value < BONE_MIN_HU:
            wrong = f"is not dense (median {value:.0f} HU; bone sits above {BONE_MIN_HU:.0f})"
        else:
            continue
        reasons.append(
            Reason("tissue", f"the {_words(name)} the models drew {wrong}: check the overlay", name)
        )
    return reasons


def _words(name: str) -> str:
    return name.replace("_", " ")


def layout_reasons(centres: Mapping[str, Sequence[float]], cut: Collection[str] = ()) -> list[Reason]:
    """The ``layout`` check on organ centres in the canonical pose. Organs in ``cut`` (by the
    field) are left out of the pairs, whose centres they would shift, but not out of the test
    against the brain: no part of a trunk organ lies within ``HEAD_TO_TRUNK_MM`` of its centre."""
    wrong = []
    brain = centres.get("brain")
    below_brain = {n: brain[2] - centres[n][2] for n in TRUNK_ORGANS if n in centres} if brain else {}
    for name, gap in below_brain.items():
        if gap < HEAD_TO_TRUNK_MM:
            if gap >= 0.5:
                where = f"{gap:.0f} mm caudal of"
            else:
                where = "level with" if gap > -0.5 else f"{-gap:.0f} mm cranial of"
            wrong.append(f"{_words(name)} {where} the brain's centre")
    whole = {k: v for k, v in centres.items() if k not in cut}
    for cranial, caudal in CRANIAL_OF:
        if cranial in whole and caudal in whole:
            gap = whole[cranial][2] - whole[caudal][2]
            if gap < -LAYOUT_TOLERANCE_MM:
                wrong.append(f"{_words(cranial)} {-gap:.0f} mm caudal of {_words(caudal)}")
    for left, right in LEFT_OF:
        if left in whole and right in whole:
            gap = whole[left][0] - whole[right][0]
            if gap > LAYOUT_TOLERANCE_MM:
                wrong.append(f"{_words(left)} {gap:.0f} mm right of {_words(right)}")
    if not wrong:
        return []
    return [
        Reason(
            "layout",
            "the organs are not laid out as in a mouse ("
            + "; ".join(wrong)
            + "): the models may have met anatomy they do not know, or the file is mirrored or turned; "
            "check the overlay",
        )
    ]


def edge_voxels(voxel_volume_mm3: float, step: int = 1) -> int:
    """``EDGE_MM`` in voxels of a map read at every ``step``-th voxel, as if its voxels were cubes
    (a QC view's may be anisotropic)."""
    return max(1, int(np.ceil(EDGE_MM / (voxel_volume_mm3 ** (1 / 3) * step))))


def unstable_reasons(
    agreement: Mapping[str, float], cut: Collection[str] = (), drawn: Collection[str] | None = None
) -> list[Reason]:
    """``unstable``: a big organ the network draws differently when it reads the scan moved by a
    few of its voxels (Dice between its shifted passes under ``MIN_PASS_AGREEMENT``). Only organs
    in ``drawn`` (the run's output; all when None) are read: specks the network's passes disagree
    on and the pipeline drops are no organ. Nor is an organ the field cuts: a pass that sees one
    plane more of it reads another organ."""
    reasons = []
    for name in STABLE_ORGANS:
        value = agreement.get(name)
        read = name not in cut and (drawn is None or name in drawn)
        if read and value is not None and value < MIN_PASS_AGREEMENT:
            reasons.append(
                Reason(
                    "unstable",
                    f"the {_words(name)}'s outline changes when the model reads the scan moved by a few "
                    f"of its voxels (its readings agree at Dice {value:.2f}; on anatomy it learned, "
                    f"{MIN_PASS_AGREEMENT:.2f} or more): it does not know this anatomy well; "
                    "check the overlay",
                    name,
                )
            )
    return reasons


def _volume_reasons(volumes: Mapping[str, float], drawable: Collection[str], scale: float) -> list[Reason]:
    reasons = []
    for group, members in GROUP_MEMBERS.items():
        present = [m for m in members if volumes.get(m, 0.0) > 0]
        if not present or not set(members) <= set(drawable):
            continue
        if len(present) < len(members):
            continue  # a missing half is the "missing" check's to report
        total = sum(volumes[m] for m in members)
        low_factor, high_factor = RANGE_FACTORS[group]
        low, high = REFERENCE_MM3[group] * low_factor * scale, REFERENCE_MM3[group] * high_factor * scale
        if not low <= total <= high:
            side = "below" if total < low else "above"
            reasons.append(
                Reason(
                    "volume_range",
                    f"{group.replace('_', ' ')} {total:.0f} mm3 is {side} the {low:.0f}-{high:.0f} mm3 "
                    "expected for an adult mouse of this size",
                    group,
                )
            )
        if len(members) == 2:
            a, b = (volumes[m] for m in members)
            if max(a, b) > PAIRED_MAX_RATIO * min(a, b):
                reasons.append(
                    Reason(
                        "paired_asymmetry",
                        f"{members[0].replace('_', ' ')} {a:.0f} mm3 and {members[1].replace('_', ' ')} "
                        f"{b:.0f} mm3 differ more than {PAIRED_MAX_RATIO:g} times",
                        group,
                    )
                )
    return reasons


def _lesion_reasons(
    labels: np.ndarray,
    hu: np.ndarray,
    body: np.ndarray,
    lesions: Sequence[LesionRow],
    body_mm3: float,
    min_voxels: int = 1,
    edge_voxels: int = 1,
) -> list[Reason]:
    reasons = []
    lesion_ids = [BY_NAME[name].id for name in LESION_NAMES]
    tumor_mm3 = sum(row.volume_mm3 for row in lesions if row.structure_id == BY_NAME["tumor"].id)
    if tumor_mm3 > HUMANE_BURDEN_MM3:
        reasons.append(
            Reason(
                "tumor_burden",
                f"tumor burden {tumor_mm3:.0f} uL is above the humane-endpoint burden of "
                f"{HUMANE_BURDEN_MM3:.0f} uL: check the outline before acting on it",
                "tumor",
            )
        )
    elif body_mm3 > 0 and tumor_mm3 > MAX_TUMOR_BODY_FRACTION * body_mm3:
        reasons.append(
            Reason(
                "tumor_burden",
                f"tumor {tumor_mm3:.0f} uL is {100 * tumor_mm3 / body_mm3:.0f} % of the body in view",
                "tumor",
            )
        )
    mask = label_mask(labels, lesion_ids)
    box = bounding_box(mask, 0)
    if box is None:
        return reasons
    # Lesions are small: measuring them inside their bounding box skips the rest of the scan.
    reasons.extend(
        _tumors_at_field_edge(
            labels[box] == BY_NAME["tumor"].id, _edge_band(box, labels.shape, edge_voxels), min_voxels
        )
    )
    mask, hu, body = mask[box], hu[box], body[box]
    components, count = ndimage.label(mask, structure=np.ones((3, 3, 3), dtype=bool))
    index = np.arange(1, count + 1)
    in_body = ndimage.mean(body, components, index)
    mean_hu = ndimage.mean(hu, components, index)
    sizes = ndimage.sum(mask, components, index)
    outside = [
        i
        for i in range(count)
        if sizes[i] >= min_voxels and (in_body[i] < MIN_LESION_IN_BODY or mean_hu[i] < AIR_LIKE_HU)
    ]
    if outside:
        voxels = int(sum(sizes[i] for i in outside))
        reasons.append(
            Reason(
                "lesion_outside_body",
                f"{len(outside)} lesion(s), {voxels} voxels, lie mostly outside the mouse's body (on the "
                "animal bed, in air or in another object): exclude them or check the scan",
                "tumor",
            )
        )
    return reasons


def _edge_band(box: tuple[slice, ...], shape: tuple[int, ...], voxels: int) -> np.ndarray:
    """Within ``box``, the voxels less than ``voxels`` from a face of the whole array."""
    band = np.zeros(tuple(part.stop - part.start for part in box), dtype=bool)
    for axis, (part, n) in enumerate(zip(box, shape, strict=True)):
        low, high = voxels - part.start, n - voxels - part.start
        index: list[slice] = [slice(None)] * len(box)
        if low > 0:
            index[axis] = slice(0, low)
            band[tuple(index)] = True
        if high < band.shape[axis]:
            index[axis] = slice(max(high, 0), None)
            band[tuple(index)] = True
    return band


def organs_cut_by_field(labels: np.ndarray, edge_voxels: int) -> list[str]:
    """Organs (``REGION_OF``'s) with at least ``CUT_MIN_VOXELS`` voxels less than ``edge_voxels``
    from a face of the scanned field: the field cuts them, so only part of each was scanned.

    An organ in a bony case (``ENCASED``) counts only its voxels with no bone between them and
    the face (``exposed_at_faces``): a head scan cropped to the skull holds the whole brain within
    a millimetre of its edge, and its skull shows that the field left the braincase whole."""
    labels = np.asarray(labels)
    band = _edge_band(tuple(slice(0, n) for n in labels.shape), labels.shape, edge_voxels)
    counts = np.bincount(labels[band].ravel(), minlength=max(BY_ID) + 1)
    near = [name for name in REGION_OF if counts[BY_NAME[name].id] >= CUT_MIN_VOXELS]
    return sorted(
        name
        for name in near
        if name not in ENCASED or exposed_at_faces(labels, BY_NAME[name].id, edge_voxels) >= CUT_MIN_VOXELS
    )


def exposed_at_faces(labels: np.ndarray, structure: int, edge_voxels: int) -> int:
    """Voxels of ``structure`` less than ``edge_voxels`` from a face of ``labels`` with no bone
    between them and that face (along the face's normal)."""
    bone = BY_NAME["bones"].id
    exposed = np.zeros(labels.shape, dtype=bool)
    for axis, n in enumerate(labels.shape):
        depth = min(edge_voxels, n)
        # Each face's slab read from the face inwards (the far face's reversed): bone met on the
        # way in shields every voxel behind it.
        for inwards in (slice(0, depth), slice(n - 1, n - 1 - depth if n > depth else None, -1)):
            index: list[slice] = [slice(None)] * labels.ndim
            index[axis] = inwards
            slab = labels[tuple(index)]
            shielded = np.logical_or.accumulate(slab == bone, axis=axis)
            exposed[tuple(index)] |= (slab == structure) & ~shielded
    return int(np.count_nonzero(exposed))


def _tumors_at_field_edge(tumor: np.ndarray, faces: np.ndarray, min_voxels: int) -> list[Reason]:
    """One reason when tumor components reach the edge of the scanned field (``faces``: the band
    along it, ``EDGE_MM`` deep): cut by it, so their volume is only a lower bound. A limb or the
    neck cut by the field ends in a soft-tissue stump beside the body, which the tumor model can
    take for a tumor (the large Digimouse torso of ``inference/training/robustness.py``, cut
    through the shoulders, where ``mouse-tumor/2.0.0`` drew 12 and 37 mm^3 ending 0.6-0.8 mm short
    of the edge). ``tumor`` is the tumor mask in the lesions' box."""
    if not (tumor & faces).any():
        return []
    components, count = ndimage.label(tumor, structure=np.ones((3, 3, 3), dtype=bool))
    index = np.arange(1, count + 1)
    touching = ndimage.maximum(faces, components, index)
    sizes = ndimage.sum(tumor, components, index)
    cut = [i for i in range(count) if touching[i] and sizes[i] >= min_voxels]
    if not cut:
        return []
    return [
        Reason(
            "tumor_at_field_edge",
            f"{len(cut)} tumor(s) run out of the scanned field: the volume is only what lies inside it, "
            "and a leg or the neck cut by the field can look like a tumor; check the outline, or "
            "scan with the whole tumor in view",
            "tumor",
        )
    ]


@dataclass(frozen=True)
class QCView:
    """What the checks read of a run's maps: every ``step``-th voxel of the labels, the scan in
    HU and the uncertainty map, and the body mask (``body_mask``: the costliest part, so a caller
    can build it while the volumes are still being counted)."""

    step: int
    labels: np.ndarray
    hu: np.ndarray
    uncertainty: np.ndarray | None
    body: np.ndarray

    @classmethod
    def of(
        cls,
        labels: np.ndarray,
        scan: np.ndarray,
        intensity: Mapping[str, Any] | None = None,
        uncertainty: np.ndarray | None = None,
    ) -> QCView:
        step = 2 if np.asarray(labels).size > FULL_GRID_MAX_VOXELS else 1
        slope, intercept = _calibration(intensity)
        hu = np.asarray(scan)[::step, ::step, ::step].astype(np.float32) * np.float32(slope) + np.float32(
            intercept
        )
        return cls(
            step=step,
            labels=np.asarray(labels)[::step, ::step, ::step],
            hu=hu,
            uncertainty=None if uncertainty is None else np.asarray(uncertainty)[::step, ::step, ::step],
            body=body_mask(hu),
        )


def _calibration(intensity: Mapping[str, Any] | None) -> tuple[float, float]:
    """``(slope, intercept)`` of the run's intensity map to HU (the identity for HU scans)."""
    return float((intensity or {}).get("slope") or 1.0), float((intensity or {}).get("intercept") or 0.0)


def check_run(
    *,
    labels: np.ndarray,
    scan: np.ndarray,
    voxel_volume_mm3: float,
    volumes: Sequence[VolumeRow],
    lesions: Sequence[LesionRow],
    structure_ids: Collection[int],
    uncertainty: np.ndarray | None = None,
    intensity: Mapping[str, Any] | None = None,
    orientation: Mapping[str, Any] | None = None,
    animals: int = 1,
    centres: Mapping[str, Sequence[float]] | None = None,
    view: QCView | None = None,
    spacing_mm: Sequence[float] | None = None,
    pass_agreement: Mapping[str, float] | None = None,
) -> QCReport:
    """Every check above on one run; ``structure_ids`` are the structures the models can draw;
    ``spacing_mm`` the scan's voxel edges (the voxel check is skipped without them);
    ``centres`` the organ centres in the canonical pose (``organ_centres``), where known;
    ``view`` the ``QCView`` of ``labels``, ``scan``, ``intensity`` and ``uncertainty`` when the
    caller built it already; ``pass_agreement`` how alike the shifted passes drew each structure,
    by name (``infer.pass_agreement``), where they ran."""
    drawable = {s.name for s in BY_NAME.values() if s.id in set(structure_ids)}
    found = {row.name: row.volume_mm3 for row in volumes if row.voxels > 0}
    report = QCReport()
    if view is None:
        view = QCView.of(labels, scan, intensity, uncertainty)
    step, labels, hu, uncertainty, body = view.step, view.labels, view.hu, view.uncertainty, view.body
    slope, intercept = _calibration(intensity)
    report.body_volume_mm3 = float(body.sum()) * voxel_volume_mm3 * step**3
    edge = edge_voxels(voxel_volume_mm3, step)
    # An organ the field cuts (a thorax scan's liver, an abdomen scan's heart) is only partly
    # scanned: its volume is no measurement, and it says which regions are wholly in view.
    report.cut_by_field = [name for name in organs_cut_by_field(labels, edge) if name in found]
    cut = set(report.cut_by_field)
    by_name = {name: volume for name, volume in found.items() if name not in cut}
    report.regions = regions_in_view(by_name)
    whole_body = {"head", "thorax", "abdomen", "pelvis"} <= set(report.regions)
    # Organ volume follows body mass; only a whole mouse in view tells its mass.
    scale = float(np.clip(report.body_volume_mm3 / REFERENCE_BODY_MM3, 0.55, 1.45)) if whole_body else 1.0
    if not found:
        # A QA phantom, an empty bed, a scan of something else: "ok" with every organ "not found"
        # would read as a mouse without organs.
        report.reasons.append(
            Reason(
                "nothing_found",
                "the models found nothing they know in this scan (no organ, bone or tumor): check that it "
                "is a CT of a mouse; its volumes are not measurements",
            )
        )
    elif "bones" in drawable and "bones" not in found and any(BY_NAME[n].kind != "lesion" for n in found):
        report.reasons.append(
            Reason(
                "no_skeleton",
                "the models found no bone, though every slice through a mouse's head or trunk holds some "
                "(skull, spine, ribs, pelvis): the scan may be a QA phantom, a tube or a crop of soft tissue "
                "alone, and the organs drawn in it are no measurements; check that it is a CT of a mouse",
                "bones",
            )
        )
    report.reasons.extend(_volume_reasons(by_name, drawable, scale))
    report.reasons.extend(tissue_reasons(labels, hu, voxel_volume_mm3 * step**3))
    for region in report.regions:
        for name in EXPECTED_IN[region]:
            if name in drawable and name not in found:
                report.reasons.append(
                    Reason(
                        "missing",
                        f"{name.replace('_', ' ')} not found, though the field of view holds the {region}",
                        name,
                    )
                )
    report.not_in_view = sorted(
        name
        for name in drawable
        if name in REGION_OF and REGION_OF[name] not in report.regions and name not in cut
    )
    speck = DEFAULT_MIN_LESION_VOLUME_MM3 / (voxel_volume_mm3 * step**3)
    report.reasons.extend(
        _lesion_reasons(labels, hu, body, lesions, report.body_volume_mm3, max(1, int(np.ceil(speck))), edge)
    )
    if uncertainty is not None:
        labelled = np.asarray(labels) > 0
        if labelled.any():
            report.uncertain_fraction = float((np.asarray(uncertainty)[labelled] >= VERY_UNCERTAIN).mean())
            if report.uncertain_fraction > MAX_UNCERTAIN_FRACTION:
                report.reasons.append(
                    Reason(
                        "uncertain",
                        f"the models are very unsure of {100 * report.uncertain_fraction:.0f} % of what they "
                        f"drew (review from {100 * MAX_UNCERTAIN_FRACTION:.0f} %)",
                    )
                )
    moved = max(abs((slope - 1.0) * v + intercept) for v in (-1000.0, 1000.0))
    if intensity is not None and intensity.get("units") == "calibrated" and moved > CALIBRATION_TOLERANCE_HU:
        report.reasons.append(
            Reason(
                "intensity_calibrated",
                "the scan was not in Hounsfield units and was calibrated from its air and soft-tissue peaks "
                f"(HU = {slope:.4g} x value {intercept:+.0f}): check the overlay",
            )
        )
    drift = (intensity or {}).get("depth_drift_hu")
    if drift is not None and drifts(drift):
        report.reasons.append(
            Reason(
                "intensity_drift",
                f"the scan's soft tissue grows {how_far(drift)} from the body's outline to its "
                "centre, as uncorrected beam hardening draws it: HU read deep in the body are off, and the "
                "liver's and bladder's outlines rest on the model alone; check the overlay",
            )
        )
    stretched = (intensity or {}).get("bone_stretched_to_hu")
    if stretched is not None:
        peak = (intensity or {}).get("bone_peak_hu")
        report.reasons.append(
            Reason(
                "bone_dim",
                f"the scan's bone reads at most about {peak} HU, dimmer than the models learned it; they "
                f"read the scan with bone brought to {stretched} HU: check the scanner's HU "
                "calibration and the overlay near the limbs",
            )
        )
    if spacing_mm is not None and max(spacing_mm) > MAX_VOXEL_MM:
        edges = " x ".join(f"{float(s):.3g}" for s in spacing_mm)
        report.reasons.append(
            Reason(
                "coarse_voxels",
                f"the scan's voxels ({edges} mm) are coarser than any the models learned from (0.1-0.4 mm): "
                "outlines and small organs are least reliable and volumes carry the coarse voxels' partial "
                "volume; check the overlay",
            )
        )
    report.pass_agreement = {n: float(v) for n, v in (pass_agreement or {}).items() if n in STABLE_ORGANS}
    report.reasons.extend(unstable_reasons(report.pass_agreement, cut, drawn=found))
    if centres is not None and animals <= 1:
        report.reasons.extend(layout_reasons(centres, cut))
    if animals > 1:
        report.reasons.append(
            Reason(
                "several_animals",
                f"{animals} mice lie in the field of view: each is segmented, but this scan's volumes and "
                "lesion counts add up over all of them; crop the scan to one mouse for per-mouse figures",
            )
        )
    if orientation is not None and orientation.get("agrees_with_header") is False:
        report.reasons.append(
            Reason(
                "orientation_disagrees",
                "the file's orientation disagrees with the anatomy; the anatomy's was used: check that the "
                "overlay sits on the right organs",
            )
        )
    return report
