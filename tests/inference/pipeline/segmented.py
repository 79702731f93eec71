"""A robustness case run through the product's ``segment_file`` with the served models."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from inference.phantom.writer import save_nifti
from inference.pipeline import segment_file
from inference.registry import find_model
from inference.training.robustness import Case
from tests.nifti import load_nifti


def segment_case(case: Case, folder: Path) -> tuple[dict, np.ndarray]:
    """``case`` written as ``folder``.nii.gz and segmented into ``folder``: (its manifest, its
    label map as written)."""
    path = folder.with_suffix(".nii.gz")
    save_nifti(case.ct, case.affine, path)
    cards = [find_model("mouse-organs"), find_model("mouse-tumor")]
    result = segment_file(path, folder, cards=cards, device="cpu", threads=2)
    labels = load_nifti(str(folder / "labels.nii.gz")).get_fdata().astype(int)
    return result.manifest, labels
