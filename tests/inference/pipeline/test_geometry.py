"""Every geometric step has an inverse, and the round trips hold."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from inference.pipeline.geometry import (
    axis_map,
    box_within,
    from_canonical,
    grown_box,
    record_geometry,
    resample_linear,
    resample_nearest,
    resampled_affine,
    resampled_shape,
    to_canonical,
    upsample_argmax,
    upsample_to_uint8,
)
from tests.inference.pipeline.conftest import AFFINES


@pytest.mark.parametrize("name", AFFINES)
def test_reorientation_round_trip_is_exact(name: str) -> None:
    affine = AFFINES[name]
    volume = np.random.default_rng(1).integers(0, 255, size=(7, 9, 11), dtype=np.uint8)
    geometry = record_geometry(volume.shape, affine)

    canonical = to_canonical(volume, geometry)

    assert canonical.shape == geometry.canonical_shape
    assert np.array_equal(from_canonical(canonical, geometry), volume)


@pytest.mark.parametrize("name", AFFINES)
def test_canonical_voxels_keep_their_world_position(name: str) -> None:
    affine = AFFINES[name]
    volume = np.arange(7 * 9 * 11, dtype=np.int32).reshape(7, 9, 11)
    geometry = record_geometry(volume.shape, affine)
    canonical = to_canonical(volume, geometry)

    for index in [(0, 0, 0), (3, 2, 5), tuple(n - 1 for n in geometry.canonical_shape)]:
        world = geometry.canonical_affine @ [*index, 1]
        original_index = np.rint(np.linalg.solve(affine, world)[:3]).astype(int)
        assert canonical[index] == volume[tuple(original_index)]
    assert all(s > 0 for s in geometry.spacing_mm)


def test_spacing_follows_the_canonical_axes() -> None:
    geometry = record_geometry((10, 20, 30), AFFINES["anisotropic SAR"])

    # Array axis 2 (0.3 mm) points Right, axis 1 (0.2 mm) Anterior, axis 0 (0.5 mm) Superior.
    assert geometry.canonical_shape == (30, 20, 10)
    assert np.allclose(geometry.spacing_mm, (0.3, 0.2, 0.5))
    assert geometry.axcodes == ("S", "A", "R")


def test_equal_shapes_resample_to_the_identity() -> None:
    volume = np.random.default_rng(2).random((6, 7, 8)).astype(np.float32)

    assert np.array_equal(resample_linear(volume, volume.shape), volume)
    assert np.array_equal(resample_nearest(volume, volume.shape), volume)
    assert axis_map(5, 5).identity


@pytest.mark.parametrize("factor", [3, 5])
def test_a_model_grid_an_odd_whole_factor_finer_than_the_scan_comes_back_on_the_scans_grid(
    factor: int,
) -> None:
    # A coarse scan (1 mm voxels) under a finer model grid (0.2 mm): every scan voxel's centre
    # falls exactly on a grid voxel, which is still no identity (it once returned the grid's shape).
    assert not axis_map(4 * factor, 4).identity
    scores = np.zeros((2, 4 * factor, 4 * factor, 4 * factor), np.float32)
    scores[1, : 2 * factor] = 1.0

    labels = upsample_argmax(scores, (4, 4, 4), (0, 7))

    expected = np.zeros((4, 4, 4), np.uint8)
    expected[:2] = 7
    np.testing.assert_array_equal(labels, expected)


def test_integer_upsampling_then_nearest_downsampling_is_voxel_exact() -> None:
    labels = np.random.default_rng(3).integers(0, 16, size=(5, 6, 7), dtype=np.uint8)

    fine = resample_nearest(labels, (10, 18, 14))

    assert np.array_equal(resample_nearest(fine, labels.shape), labels)


def test_resampled_grid_covers_the_same_field_of_view() -> None:
    affine = AFFINES["oblique"]
    shape = (40, 30, 20)
    geometry = record_geometry(shape, affine)
    target = resampled_shape(geometry.canonical_shape, geometry.spacing_mm, (0.4, 0.4, 0.4))
    coarse = resampled_affine(geometry.canonical_affine, geometry.canonical_shape, target)

    def extent(a: np.ndarray, n: tuple[int, int, int]) -> np.ndarray:
        # World position of the outer face of the first and last voxels along each axis.
        return np.array([a @ [-0.5, -0.5, -0.5, 1], a @ [n[0] - 0.5, n[1] - 0.5, n[2] - 0.5, 1]])

    assert target == (20, 22, 23)
    assert np.allclose(extent(geometry.canonical_affine, geometry.canonical_shape), extent(coarse, target))


def test_linear_resampling_reproduces_a_linear_ramp() -> None:
    ramp = np.broadcast_to(np.arange(16, dtype=np.float32)[:, None, None], (16, 4, 4))

    coarse = resample_linear(ramp, (8, 4, 4))

    assert np.allclose(coarse[:, 0, 0], np.arange(8) * 2 + 0.5)


def dense_argmax(scores: np.ndarray, out_shape: tuple[int, int, int]) -> np.ndarray:
    return np.argmax(np.stack([resample_linear(s, out_shape) for s in scores]), axis=0)


@pytest.mark.parametrize("classes", [2, 5])
def test_upsampled_argmax_equals_argmax_of_interpolated_probabilities(classes: int) -> None:
    rng = np.random.default_rng(classes)
    scores = ndimage.gaussian_filter(rng.random((classes, 12, 10, 9)), sigma=(0, 1.5, 1.5, 1.5))
    scores = scores.astype(np.float32)
    out_shape = (29, 21, 20)

    fast = upsample_argmax(scores, out_shape, list(range(classes)), chunk_voxels=500)
    reference = dense_argmax(scores, out_shape)
    # Slabs filled by threads give the very same map.
    threaded = upsample_argmax(scores, out_shape, list(range(classes)), chunk_voxels=500, workers=3)
    np.testing.assert_array_equal(threaded, fast)

    agreement = float(np.mean(fast == reference))
    # Two classes: exact. More: a class that is nowhere a corner's winner may rarely win in between.
    assert agreement == 1.0 if classes == 2 else agreement > 0.995


def test_upsampled_uncertainty_matches_linear_resampling() -> None:
    values = np.random.default_rng(4).random((6, 7, 5)).astype(np.float32)

    fast = upsample_to_uint8(values, (12, 13, 11), chunk_voxels=100)
    reference = np.rint(resample_linear(values, (12, 13, 11)) * 255)

    assert fast.dtype == np.uint8
    assert np.max(np.abs(fast.astype(int) - reference)) <= 1


def test_label_round_trip_through_a_coarser_grid_is_exact_away_from_borders() -> None:
    x, y, z = np.ogrid[:40, :36, :30]
    labels = np.zeros((40, 36, 30), dtype=np.uint8)
    labels[(x - 14) ** 2 + (y - 18) ** 2 + (z - 15) ** 2 < 10**2] = 4
    labels[(x - 30) ** 2 + (y - 15) ** 2 + (z - 12) ** 2 < 7**2] = 12
    affine = AFFINES["LPS"]
    geometry = record_geometry(labels.shape, affine)
    canonical = to_canonical(labels, geometry)
    coarse_shape = tuple(n // 2 for n in geometry.canonical_shape)
    one_hot = np.stack([resample_linear(canonical == v, coarse_shape) for v in (0, 4, 12)])

    restored = from_canonical(upsample_argmax(one_hot, geometry.canonical_shape, (0, 4, 12)), geometry)

    border = ndimage.maximum_filter(labels, size=3) != ndimage.minimum_filter(labels, size=3)
    assert restored.shape == labels.shape
    assert np.array_equal(restored[~border], labels[~border])
    assert np.mean(restored[border] == labels[border]) > 0.8


def test_antialiased_whole_factor_shrink_is_the_training_block_mean() -> None:
    from inference.training.data import block_mean

    volume = np.random.default_rng(7).normal(50.0, 30.0, size=(12, 9, 15)).astype(np.float32)

    coarse = resample_linear(volume, (4, 3, 5), antialias=True)

    assert np.allclose(coarse, block_mean(volume, 3), atol=1e-4)


def test_antialiasing_keeps_a_block_averages_noise_level() -> None:
    noise = np.random.default_rng(8).normal(0.0, 30.0, size=(60, 60, 60)).astype(np.float32)

    sampled = resample_linear(noise, (20, 20, 20))
    averaged = resample_linear(noise, (20, 20, 20), antialias=True)

    # Point sampling keeps one voxel's noise (30 HU); a 3 x 3 x 3 average divides it by sqrt(27).
    assert 27.0 < float(sampled.std()) < 33.0
    assert 4.5 < float(averaged.std()) < 7.0


def test_antialiasing_handles_uneven_factors_and_growing_axes() -> None:
    ramp = np.broadcast_to(np.arange(25, dtype=np.float32)[:, None, None], (25, 4, 6)).copy()

    out = resample_linear(ramp, (10, 8, 6), antialias=True)

    assert out.shape == (10, 8, 6)
    # A box average of a linear ramp is the ramp at the output voxel's centre (inside the axis).
    centres = (np.arange(10) + 0.5) * 2.5 - 0.5
    assert np.allclose(out[1:-1, 0, 0], centres[1:-1], atol=1e-4)


def test_a_box_grows_within_the_array_and_a_box_inside_it_maps_back() -> None:
    box = (slice(2, 5), slice(0, 4), slice(7, 9))
    assert grown_box(box, 2, (10, 10, 10)) == (slice(0, 7), slice(0, 6), slice(5, 10))
    assert grown_box(box, (1, 0, 3), (10, 10, 10)) == (slice(1, 6), slice(0, 4), slice(4, 10))
    array = np.arange(1000).reshape(10, 10, 10)
    inner = (slice(1, 2), slice(2, 4), slice(0, 1))
    np.testing.assert_array_equal(array[box][inner], array[box_within(box, inner)])
