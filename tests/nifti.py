"""Reading NIfTI files in tests with their type known to mypy."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib


def load_nifti(path: str | Path) -> nib.Nifti1Image:
    """``nib.load`` of a NIfTI-1 or NIfTI-2 file (``Nifti2Image`` is a ``Nifti1Image``); any other
    format fails the test here instead of as a missing ``affine`` later."""
    image = nib.load(str(path))
    assert isinstance(image, nib.Nifti1Image), f"{path} is not a NIfTI file ({type(image).__name__})"
    return image
