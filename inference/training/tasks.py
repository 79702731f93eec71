"""What each trainable task segments and how its input is prepared (no torch here)."""

from __future__ import annotations

from dataclasses import dataclass

from inference.structures import BY_NAME, ORGAN_NAMES


@dataclass(frozen=True)
class TaskSpec:
    """``structures[c]`` is the canonical id of output channel ``c`` (channel 0 = background)."""

    name: str
    task: str
    structures: tuple[int, ...]
    #: Block size of the coarse training grid, in 0.21 mm source voxels (3 -> 0.63 mm).
    factor: int
    low_hu: float
    high_hu: float
    base_channels: int
    crop: tuple[int, int, int]
    #: Canonical ids whose voxels are left out of the loss (e.g. metastases for the organ model,
    #: whose host organ is not known voxel by voxel).
    ignore: tuple[int, ...] = ()
    #: mm by which the pipeline continues a scan past a cranial or caudal end that cuts through
    #: the body (``ModelCard.cut_face_extension_mm``); 0: not at all.
    extend_cut_faces_mm: float = 0.0


ORGANS = TaskSpec(
    name="mouse-organs",
    task="organs",
    structures=(0, *(BY_NAME[n].id for n in ORGAN_NAMES)),
    factor=3,
    low_hu=-1000.0,
    high_hu=1000.0,
    base_channels=8,
    crop=(48, 48, 72),
    ignore=(BY_NAME["metastasis"].id,),
)

TUMOR = TaskSpec(
    name="mouse-tumor",
    task="tumor",
    structures=(0, BY_NAME["tumor"].id, BY_NAME["metastasis"].id),
    # 0.63 mm like the organ model: tumors of 50 mm3 and more still span 7+ voxels, and inference
    # is about 3x faster than at 0.42 mm (bench/segment_speed.py: the tumor pass dominated).
    factor=3,
    # The tumor database ships CTs clipped to [-400, 1000] HU: train in that window.
    low_hu=-400.0,
    high_hu=1000.0,
    base_channels=6,
    crop=(48, 48, 72),
    # A foreleg cut by the field of view ends in a stump beside the chest that the network took
    # for a tumor (bench/tumor_fp_probe.py); continued 2 mm it runs on as a leg. The organ model
    # is better without (the model card's "mouse-tumor/2.0.1").
    extend_cut_faces_mm=2.0,
)

TASKS = {"organs": ORGANS, "tumor": TUMOR}
