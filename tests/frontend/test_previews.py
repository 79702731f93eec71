"""Previews and crops of volumes for the viewer (pure numpy + nibabel, no Django)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from frontend import previews
from tests.nifti import load_nifti


def _save(path: Path, data: np.ndarray, affine: np.ndarray) -> Path:
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path


def test_the_factor_is_the_smallest_that_fits_the_voxel_budget() -> None:
    assert previews.preview_factor((100, 100, 100), max_voxels=1_000_000) == 1
    assert previews.preview_factor((192, 192, 520), max_voxels=2_500_000) == 2
    assert previews.preview_factor((1024, 1024, 1024), max_voxels=2_500_000) == 8
    for shape in [(1000, 10, 10), (513, 511, 509), (7, 3000, 2)]:
        factor = previews.preview_factor(shape, max_voxels=50_000)
        assert np.prod([max(1, s // factor) for s in shape]) <= 50_000
        assert factor == 1 or np.prod([max(1, s // (factor - 1)) for s in shape]) > 50_000


def test_an_intensity_preview_is_the_block_mean_read_slab_by_slab(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(previews, "_SLAB_BYTES", 4096)  # force many slabs
    rng = np.random.default_rng(0)
    volume = rng.normal(size=(12, 10, 17)).astype(np.float32)
    out = previews.downsample_intensity(volume, 2)
    expected = volume[:12, :10, :16].reshape(6, 2, 5, 2, 8, 2).mean(axis=(1, 3, 5))
    assert out.shape == (6, 5, 8)
    np.testing.assert_allclose(out, expected, rtol=1e-5)


def test_a_label_preview_keeps_small_lesions_that_a_centre_sample_would_lose() -> None:
    labels = np.zeros((8, 8, 8), dtype=np.uint8)
    labels[:4, :4, :4] = 4  # liver fills the first block
    labels[0, 0, 0] = 15  # a one-voxel metastasis off the block centre
    labels[5, 5, 5] = 14  # a tumor voxel in another block
    out = previews.downsample_labels(labels, 4, keep_ids=(14, 15))
    assert out.shape == (2, 2, 2)
    assert out[0, 0, 0] == 15 and out[1, 1, 1] == 14 and out[1, 0, 0] == 0
    assert previews.downsample_labels(labels, 4)[0, 0, 0] == 4  # without keep_ids: the centre


def test_a_preview_lies_on_the_scan_in_world_coordinates(tmp_path: Path) -> None:
    affine = np.array([[-0.2, 0, 0, 10.0], [0, 0.2, 0, -5.0], [0, 0, 0.25, 3.0], [0, 0, 0, 1]])
    data = np.arange(24 * 20 * 16, dtype=np.int16).reshape(24, 20, 16)
    source = _save(tmp_path / "ct.nii.gz", data, affine)
    factor = previews.make_intensity_preview(source, tmp_path / "p.nii.gz", max_voxels=24 * 20 * 16 // 8)
    preview = load_nifti(str(tmp_path / "p.nii.gz"))
    assert factor == 2 and preview.shape == (12, 10, 8) and preview.get_data_dtype() == np.int16
    # Preview voxel (1, 2, 3) is the mean of scan voxels 2-3, 4-5, 6-7: its centre is at 2.5, 4.5, 6.5.
    centre_mm = preview.affine @ [1, 2, 3, 1]
    np.testing.assert_allclose(centre_mm, affine @ [2.5, 4.5, 6.5, 1])
    assert float(preview.dataobj[1, 2, 3]) == pytest.approx(data[2:4, 4:6, 6:8].mean(), abs=0.5)


def test_a_label_preview_can_carry_the_label_intent_and_canonical_ids(tmp_path: Path) -> None:
    labels = np.zeros((8, 8, 8), dtype=np.uint8)
    labels[2:6, 2:6, 2:6] = 1
    source = _save(tmp_path / "ann.nii.gz", labels, np.eye(4))
    target = tmp_path / "out.nii.gz"
    previews.make_label_preview(
        source, target, factor=2, relabel=lambda d: previews.remap_labels(d, {1: 14}), label_intent=True
    )
    image = load_nifti(str(target))
    assert image.header.get_intent()[0] == "label"
    assert set(np.unique(np.asarray(image.dataobj))) == {0, 14}


def test_a_region_is_cropped_at_full_resolution_with_its_own_affine(tmp_path: Path) -> None:
    affine = np.diag([0.5, 0.5, 0.5, 1.0])
    data = np.arange(10 * 12 * 14, dtype=np.int16).reshape(10, 12, 14)
    source = _save(tmp_path / "ct.nii", data, affine)
    # An 8-voxel cube around (9, 0, 7), pushed back inside the 10 x 12 x 14 grid.
    start, stop = previews.clamp_region(data.shape, (9, 0, 7), max_voxels=8**3)
    assert start == (2, 0, 3) and stop == (10, 8, 11)
    previews.crop_volume(source, tmp_path / "r.nii.gz", start=start, stop=stop)
    crop = load_nifti(str(tmp_path / "r.nii.gz"))
    np.testing.assert_array_equal(np.asarray(crop.dataobj), data[2:10, 0:8, 3:11])
    np.testing.assert_allclose(crop.affine @ [0, 0, 0, 1], affine @ [2, 0, 3, 1])


def test_the_consensus_is_the_label_more_than_half_of_the_annotators_chose() -> None:
    a = np.array([[0, 14, 14, 14]], dtype=np.uint8)
    b = np.array([[0, 14, 0, 14]], dtype=np.uint8)
    c = np.array([[14, 0, 0, 14]], dtype=np.uint8)
    np.testing.assert_array_equal(previews.majority_labels([a, b, c]), [[0, 14, 0, 14]])
    with pytest.raises(ValueError, match="at least one"):
        previews.majority_labels([])
