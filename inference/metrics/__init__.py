"""Segmentation metrics: pure numpy / scipy / SimpleITK, no Django and no torch.

Used by the review app (agreement between annotators, prediction against humans) and by model
evaluation in training. Masks are boolean numpy arrays of equal shape on the same voxel grid;
``spacing_mm`` is the voxel size along each array axis, in the arrays' axis order.
"""

from .agreement import (
    StapleResult,
    ci_gen,
    dice_matching_any,
    disagreement_map,
    fleiss_kappa,
    intersection_consensus,
    majority_vote,
    staple,
    vote_counts,
)
from .overlap import DICE_EPS, dice, jaccard, pairwise_dice, pairwise_jaccard
from .stats import WilcoxonResult, wilcoxon_signed_rank
from .surface import (
    centre_of_mass_mm,
    com_displacement_mm,
    directed_surface_distances_mm,
    hd95_mm,
    msd_mm,
    surface_distances_mm,
    surface_voxels,
    volume_mm3,
)
from .variability import Variability, VolumeRecord, structure_variability, volumetry_variability

__all__ = [
    "DICE_EPS",
    "StapleResult",
    "Variability",
    "VolumeRecord",
    "WilcoxonResult",
    "centre_of_mass_mm",
    "ci_gen",
    "com_displacement_mm",
    "dice",
    "dice_matching_any",
    "directed_surface_distances_mm",
    "disagreement_map",
    "fleiss_kappa",
    "hd95_mm",
    "intersection_consensus",
    "jaccard",
    "majority_vote",
    "msd_mm",
    "pairwise_dice",
    "pairwise_jaccard",
    "staple",
    "structure_variability",
    "surface_distances_mm",
    "surface_voxels",
    "volume_mm3",
    "volumetry_variability",
    "vote_counts",
    "wilcoxon_signed_rank",
]
