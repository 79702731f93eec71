"""predict_volume puts its label map on the scan's exact grid: real files and synthetic geometries."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from inference.pipeline import predict_volume, segment_file
from inference.pipeline.geometry import record_geometry
from inference.registry import ModelCard
from tests.conftest import REALDATA
from tests.inference.pipeline.conftest import AFFINES, body_phantom
from tests.inference.pipeline.tiny_models import write_threshold_model
from tests.nifti import load_nifti

REAL_FILES = sorted(p.name for p in REALDATA.glob("*.nii.gz"))
# Lesion structures keep every component, so a threshold model's output is known voxel by voxel.
LESIONS = (0, 14, 15)
LOW, HIGH = 0.31, 0.61


def window_for(volume: np.ndarray) -> dict[str, object]:
    # The files differ in range (label maps hold small integers, one template peaks at 87).
    return {"kind": "window", "low_hu": 0, "high_hu": float(volume.max())}


def expected_labels(volume: np.ndarray, high: float) -> np.ndarray:
    value = volume.astype(np.float32) * np.float32(1.0 / high)
    return np.select([value > HIGH, value > LOW], [15, 14], 0).astype(np.uint8)


def lesion_model(folder: Path, spacing_mm: tuple[float, float, float], volume: np.ndarray) -> ModelCard:
    return write_threshold_model(
        folder,
        name="tiny-lesions",
        task="tumor",
        structures=LESIONS,
        thresholds=(LOW, HIGH),
        spacing_mm=spacing_mm,
        normalisation=window_for(volume),
    )


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * np.sum(a & b) / max(np.sum(a) + np.sum(b), 1))


def test_every_real_file_is_present(realdata: Path) -> None:
    assert len(REAL_FILES) >= 5


@pytest.mark.parametrize("name", REAL_FILES)
def test_real_file_labels_land_on_the_input_grid(realdata: Path, tmp_path: Path, name: str) -> None:
    image = load_nifti(str(realdata / name))
    volume = np.asanyarray(image.dataobj)
    model = lesion_model(tmp_path / "m", (0.3, 0.3, 0.3), volume)

    # The model is windowed on the file's own units (8-bit, label values): no HU check.
    output = predict_volume(volume, image.affine, [model], threads=2, min_lesion_volume_mm3=0, intensity="hu")

    assert output.labels.shape == volume.shape
    assert output.uncertainty.shape == volume.shape
    assert output.labels.dtype == np.uint8 and output.uncertainty.dtype == np.uint8
    # The 35 um atlas has 195 M voxels: compare every second voxel along each axis.
    step = 2 if volume.size > 50_000_000 else 1
    sample = (slice(None, None, step),) * 3
    expected = expected_labels(volume[sample], float(volume.max()))
    # Box-averaged to 0.3 mm and back: the same objects in the same place. The threshold model
    # sees thin skull bone averaged with the soft tissue beside it, so about half of that bone falls
    # below its threshold (Dice 0.49-0.57 on the CT files, 0.98 on the label files); a flipped or
    # shifted map scores near 0.
    assert dice(output.labels[sample] > 0, expected > 0) > 0.4


@pytest.mark.parametrize("name", [n for n in REAL_FILES if "35_mic" not in n])
def test_real_file_at_its_own_spacing_is_voxel_exact(realdata: Path, tmp_path: Path, name: str) -> None:
    image = load_nifti(str(realdata / name))
    volume = np.asanyarray(image.dataobj)
    spacing = record_geometry(volume.shape, image.affine).spacing_mm
    model = lesion_model(tmp_path / "m", spacing, volume)

    output = predict_volume(volume, image.affine, [model], threads=2, min_lesion_volume_mm3=0, intensity="hu")

    assert np.array_equal(output.labels, expected_labels(volume, float(volume.max())))


@pytest.mark.parametrize("name", [n for n in REAL_FILES if "35_mic" not in n])
def test_written_maps_keep_the_real_file_header_geometry(
    realdata: Path, tmp_path: Path, name: str, organ_model: ModelCard
) -> None:
    image = load_nifti(str(realdata / name))

    result = segment_file(realdata / name, tmp_path / "out", cards=[organ_model], threads=2, intensity="hu")

    for path in (result.labels_path, result.uncertainty_path):
        written = load_nifti(str(path))
        assert written.shape == image.shape
        assert np.array_equal(written.affine, image.affine)
        assert written.get_data_dtype() == np.uint8


def world_sphere(shape: tuple[int, int, int], affine: np.ndarray, centre_mm: np.ndarray) -> np.ndarray:
    """True where a voxel centre lies within 2 mm of ``centre_mm`` (a 'liver' ball)."""
    index = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1)
    world = index @ affine[:3, :3].T + affine[:3, 3]
    return np.linalg.norm(world - centre_mm, axis=-1) < 2.0


@pytest.mark.parametrize("name", list(AFFINES))
def test_synthetic_geometries_land_on_the_input_grid(
    name: str, organ_model: ModelCard, tmp_path: Path
) -> None:
    affine = AFFINES[name]
    shape = (30, 26, 22)
    centre = affine @ [shape[0] / 2, shape[1] / 2, shape[2] / 2, 1]
    ball = world_sphere(shape, affine, centre[:3])
    volume = np.where(ball, 450, 0).astype(np.int16)
    spacing = record_geometry(shape, affine).spacing_mm
    exact_model = write_threshold_model(
        tmp_path / "exact", thresholds=(0.3, 0.6), spacing_mm=spacing, normalisation=organ_model.normalisation
    )

    # A bare ball in zeros is no mouse scan: taken as HU unchecked.
    coarse = predict_volume(volume, affine, [organ_model], threads=1, intensity="hu")
    exact = predict_volume(volume, affine, [exact_model], threads=1, intensity="hu")

    assert coarse.labels.shape == shape
    assert dice(coarse.labels == 4, ball) > 0.85
    assert np.array_equal(exact.labels, np.where(ball, 4, 0))
    assert exact.organ_labels is not None and np.array_equal(exact.organ_labels, exact.labels)
    # The tiny model's disagreement head peaks at the liver threshold: uncertain where the ball's
    # blurred border crosses it on the coarse grid, certain in air and deep inside.
    assert coarse.uncertainty.max() > 150
    assert coarse.uncertainty[0, 0, 0] < 10 and coarse.uncertainty[15, 13, 11] < 64


def test_tumor_is_drawn_over_the_organs(organ_model: ModelCard, tumor_model: ModelCard) -> None:
    volume = body_phantom()

    output = predict_volume(volume, np.diag([0.2, 0.2, 0.2, 1.0]), [organ_model, tumor_model], threads=1)

    assert set(np.unique(output.labels)) == {0, 4, 12, 14}
    assert output.lesion_labels is not None and output.organ_labels is not None
    assert np.array_equal(
        output.labels[output.lesion_labels > 0], output.lesion_labels[output.lesion_labels > 0]
    )
    assert not np.any(output.organ_labels == 14)
    assert set(output.seconds) == {"preprocess", "inference", "postprocess", "restore"}
    assert output.providers == {
        organ_model.key: "CPUExecutionProvider",
        tumor_model.key: "CPUExecutionProvider",
    }


def test_ensembles_need_matching_members(organ_model: ModelCard, tmp_path: Path) -> None:
    other = write_threshold_model(tmp_path / "other", name="other", spacing_mm=(0.3, 0.3, 0.3))

    with pytest.raises(ValueError, match="cannot be ensembled"):
        predict_volume(np.zeros((8, 8, 8), np.int16), np.eye(4), [organ_model, other])
