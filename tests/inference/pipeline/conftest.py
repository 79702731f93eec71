"""Fixtures for the pipeline tests: tiny ONNX models (see ``tiny_models``) and synthetic scans."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from inference.registry import ModelCard
from tests.inference.pipeline.tiny_models import write_threshold_model

WINDOW = {"kind": "window", "low_hu": 0, "high_hu": 1000}


def voxelwise_model(folder: Path, spacing_mm: float) -> ModelCard:
    """A threshold model on a scan's own grid (``spacing_mm``): liver 300-600 HU, brain above,
    voxel by voxel, so a turned or straightened scan must give the scan's own labels back."""
    return write_threshold_model(
        folder / "tiny-organs" / "0.0.1",
        thresholds=(0.3, 0.6),
        structures=(0, 4, 12),
        spacing_mm=(spacing_mm, spacing_mm, spacing_mm),
        normalisation=WINDOW,
    )


def rotation_z(degrees: float) -> np.ndarray:
    angle = np.deg2rad(degrees)
    matrix = np.eye(4)
    matrix[:2, :2] = [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]
    return matrix


#: Geometries the round trips cover: RAS, LPS, permuted axes with anisotropic voxels, and an oblique
#: rotation (which reorientation cannot remove: it stays in the affine).
AFFINES = {
    "RAS": np.diag([0.2, 0.2, 0.2, 1.0]),
    "LPS": np.diag([-0.14, -0.14, 0.14, 1.0]),
    "anisotropic SAR": np.array([[0, 0, 0.3, 1], [0, 0.2, 0, 2], [0.5, 0, 0, 3], [0, 0, 0, 1]], dtype=float),
    "oblique": rotation_z(25) @ np.diag([-0.2, 0.3, 0.45, 1.0]),
}


@pytest.fixture(scope="session")
def models_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def organ_model(models_root: Path) -> ModelCard:
    """Softmax organs: liver where 300 < HU < 600, brain above 600 HU; 0.4 mm grid."""
    return write_threshold_model(
        models_root / "tiny-organs" / "0.0.1",
        thresholds=(0.3, 0.6),
        structures=(0, 4, 12),
        spacing_mm=(0.4, 0.4, 0.4),
        normalisation=WINDOW,
    )


@pytest.fixture(scope="session")
def tumor_model(models_root: Path) -> ModelCard:
    """Sigmoid tumor above 850 HU; 0.4 mm grid, no disagreement head."""
    return write_threshold_model(
        models_root / "tiny-tumor" / "0.0.1",
        name="tiny-tumor",
        task="tumor",
        structures=(0, 14),
        thresholds=(0.85,),
        activation="sigmoid",
        spacing_mm=(0.4, 0.4, 0.4),
        normalisation=WINDOW,
        disagreement=False,
    )


def body_phantom(shape: tuple[int, int, int] = (48, 40, 64)) -> np.ndarray:
    """int16 HU volume [x, y, z]: air, a soft-tissue body, a 'liver' ball at 450 HU containing a
    bright 'tumor' ball at 950 HU, and a 'brain' ball at 800 HU on the +x side."""
    x, y, z = np.ogrid[: shape[0], : shape[1], : shape[2]]
    volume = np.full(shape, -1000, dtype=np.int16)
    cx, cy = shape[0] / 2, shape[1] / 2
    body = ((x - cx) / (shape[0] * 0.45)) ** 2 + ((y - cy) / (shape[1] * 0.45)) ** 2 < 1
    volume[np.broadcast_to(body, shape)] = 40
    volume[(x - 16) ** 2 + (y - 20) ** 2 + (z - 24) ** 2 < 9**2] = 450
    volume[(x - 16) ** 2 + (y - 20) ** 2 + (z - 24) ** 2 < 3**2] = 950
    volume[(x - 34) ** 2 + (y - 20) ** 2 + (z - 46) ** 2 < 7**2] = 800
    return volume


@pytest.fixture
def phantom_file(tmp_path: Path) -> Path:
    path = tmp_path / "phantom.nii.gz"
    nib.save(nib.Nifti1Image(body_phantom(), np.diag([0.2, 0.2, 0.2, 1.0])), str(path))
    return path
