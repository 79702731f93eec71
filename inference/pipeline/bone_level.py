"""How bright the scan's bone reads, and what the models and the bone rule make of it.

The models learned bone at the level the phantoms and the atlas show it (700-1,100 HU read as
below; the organ model's domain-randomised volumes drew 280-1,800 HU, the tumor model's too, for
a third of its crops). Bone does not read that bright on every scanner or in every mouse: a young
mouse's bone is less mineralised, a harder beam reads bone lower, and a thin bone blurred over
0.2 mm voxels keeps only part of its contrast. Measured on the held-out phantoms with their bone
brought down to 350-500 HU (robustness ``dimbone``) and the Digimouse atlas rendered with bone at
500 HU: the tumor model took soft tissue beside a dim shoulder or hip for a tumor (up to 21 and
43 mm^3 in tumor-free mice), and the organ model's bone rule (``model.json`` ``refine``: bone at
or above 450 HU) kept a quarter of the atlas' skeleton (Dice 0.27).

So the bone is read once, before the models, in every run with a model that draws bone (the organ
model; a tumor model alone reads the scan as it is), not with ``intensity="hu"``, which takes the
values as they are (``read_bone_level``), over the voxels brighter than soft tissue can be
(``FLOOR_HU``, or ``NOISE_SDS`` noise standard deviations above soft tissue on a noisy scan): its
level, their ``LEVEL_PERCENTILE``, and its peak, their ``PEAK_PERCENTILE``. Blur lowers the level
(a thin bone's partial-volume rim) far more than the peak (the cores of thick bones): the held-out
phantoms blurred by 0.3 mm read levels of 626-823 HU and peaks of 725-950, the same phantoms with
their bone at 0.4 of its height peaks of 461-624. Two uses:

- a scan whose bone peaks below ``DIM_BELOW_HU`` is read by the models and rules with every value
  above ``STRETCH_FROM_HU`` stretched so that its peak reads ``TARGET_HU`` (``BoneLevel.apply``):
  soft tissue, fat, lungs and air are untouched, and the written scan keeps its own values. The
  manifest says so and the QC gate holds the run for review (the numbers rest on that fix);
- a ``min_hu`` rule uses ``BoneLevel.threshold``: half-way from soft tissue to the bone's level as
  the rules read it, never above the card's level (bright bone is redrawn exactly as before) nor
  below the floor. (The spinal cord's ``enclosed_by`` rule keeps the card's level:
  ``postprocess.apply_refinement``.)

Array contract: ``volume`` float32 HU ``[x, y, z]`` (any axis order).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from inference.pipeline.intensity import SOFT_TISSUE_HU

#: The bone's level: this percentile of the voxels brighter than ``FLOOR_HU`` (a scan's brightest
#: voxels, teeth and metal, sit above it; partial-volume rims below) ...
LEVEL_PERCENTILE = 90.0
#: ... and its peak, which blur barely lowers.
PEAK_PERCENTILE = 99.0
#: Voxels at or above this are read as bone (HU): above contrast-free soft tissue, fat and gut
#: content by far. The bone rule's threshold never goes below it either.
FLOOR_HU = 250.0
#: ... nor below this many noise standard deviations above soft tissue (noise is no bone).
NOISE_SDS = 4.0
#: The level is read on a strided subsample of at most this many voxels: a few milliseconds.
SAMPLE_VOXELS = 2_000_000
#: Fewer bone voxels than this (in the subsample) read no level: a scan with no bone in view.
MIN_BONE_VOXELS = 500
#: Below this peak (HU; the held-out phantoms read 998 or more, blurred by 0.3 mm 725 or more, the
#: atlas 914) the models read the scan stretched ... (the tumor model took soft tissue beside the
#: atlas' shoulder for a tumor with its bone at 500-650 HU, peaks of 527-673: 43-23 mm^3)
DIM_BELOW_HU = 690.0
#: ... from this value up (HU: soft tissue, fat, lungs and air stay as they are) ...
STRETCH_FROM_HU = 150.0
#: ... so that the bone's peak reads this (the held-out phantoms peak at 998-1,396 HU, median 1,200;
#: the atlas at 914-919). At 1,000 the stretched phantoms' bone level read under 850 HU and the
#: rule's threshold came down too: their cord 0.972, bones 0.948; at 1,100: 0.976, 0.953.
TARGET_HU = 1100.0


@dataclass(frozen=True)
class BoneLevel:
    """What the scan's bone reads (``level_hu``, ``peak_hu``), and the peak the models read it at
    when the scan was stretched (``stretched_to_hu``, None when not). ``noise_hu``: the noise of
    the image it was read on."""

    level_hu: float
    peak_hu: float
    stretched_to_hu: float | None
    noise_hu: float

    @property
    def gain(self) -> float:
        """How much the values above ``STRETCH_FROM_HU`` are stretched (1: not at all)."""
        if self.stretched_to_hu is None:
            return 1.0
        return (self.stretched_to_hu - STRETCH_FROM_HU) / (self.peak_hu - STRETCH_FROM_HU)

    @property
    def read_hu(self) -> float:
        """The bone's level as the models and the rules read it."""
        return STRETCH_FROM_HU + (self.level_hu - STRETCH_FROM_HU) * self.gain

    def threshold(self, card_hu: float) -> float:
        """A ``min_hu`` rule's level: half-way from soft tissue to ``read_hu``, at most ``card_hu``."""
        half = SOFT_TISSUE_HU + 0.5 * (self.read_hu - SOFT_TISSUE_HU)
        floor = max(FLOOR_HU, SOFT_TISSUE_HU + NOISE_SDS * self.noise_hu)
        return float(min(card_hu, max(half, floor)))

    def apply(self, volume: np.ndarray) -> np.ndarray:
        """``volume`` as the models read it: itself, or a stretched float32 copy."""
        if self.stretched_to_hu is None:
            return volume
        out = np.array(volume, dtype=np.float32, copy=True)
        bright = out > STRETCH_FROM_HU
        out[bright] = np.float32(STRETCH_FROM_HU) + (out[bright] - np.float32(STRETCH_FROM_HU)) * np.float32(
            self.gain
        )
        return out


def read_bone_level(volume: np.ndarray, noise_hu: float) -> BoneLevel | None:
    """The bone level of ``volume`` (HU) whose noise is ``noise_hu``; None with no bone in view."""
    step = max(round((volume.size / SAMPLE_VOXELS) ** (1 / 3)), 1)
    sample = np.asarray(volume[::step, ::step, ::step], dtype=np.float32)
    cutoff = max(FLOOR_HU, SOFT_TISSUE_HU + NOISE_SDS * noise_hu)
    bone = sample[sample >= cutoff]
    if bone.size < MIN_BONE_VOXELS:
        return None
    level, peak = (float(v) for v in np.percentile(bone, [LEVEL_PERCENTILE, PEAK_PERCENTILE]))
    # The peak is at least the cutoff (>= FLOOR_HU), so the stretch's gain stays below 8.5.
    return BoneLevel(level, peak, TARGET_HU if peak < DIM_BELOW_HU else None, noise_hu)


def bone_level_finding(bone: BoneLevel | None) -> str | None:
    """The manifest's sentence for a scan the models read stretched (None otherwise)."""
    if bone is None or bone.stretched_to_hu is None:
        return None
    return (
        f"Bone reads dimmer than the models learned it (its brightest at about {bone.peak_hu:.0f} HU; they "
        f"saw {DIM_BELOW_HU:.0f} HU or more): the models read the scan with everything above "
        f"{STRETCH_FROM_HU:.0f} HU stretched so that its brightest reads {bone.stretched_to_hu:.0f} HU "
        "(soft tissue, fat and lungs unchanged; the written scan keeps its own values). Check the "
        "scanner's HU calibration and the overlay near the limbs."
    )
