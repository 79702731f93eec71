"""The lung-nodule rule on a scan of thick slices: its reaches measured per axis in mm, and a rib's
halo beyond the organ map's bone read as bone (``nodules.nodule_candidates``)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from inference.pipeline.nodules import detect_bright_lesions, open_by_ball
from inference.pipeline.postprocess import (
    diamond,
    dilate_by,
    erode_by,
    voxels_across,
    voxels_along,
)
from inference.structures import BY_NAME

BONES = BY_NAME["bones"].id
LUNG = BY_NAME["lung_left"].id


def _blob(shape: tuple[int, int, int] = (30, 30, 30), seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.asarray(ndimage.gaussian_filter(rng.random(shape), 3.0) > 0.5)


def test_reaches_are_counted_per_axis_and_match_the_mean_on_an_isotropic_grid() -> None:
    # 0.14 x 0.14 x 0.28 mm slices: 0.63 mm is 4 voxels in-plane and 2 across slices. By the mean
    # spacing (0.187 mm) it was 3 everywhere: 0.42 mm in-plane, 0.84 mm across slices.
    assert voxels_along(0.63, (0.14, 0.14, 0.28)) == (4, 4, 2)
    assert voxels_across(0.63, (0.14, 0.14, 0.28)) == 3
    assert voxels_along(0.21, (0.14, 0.14, 0.28)) == (1, 1, 1)
    for spacing in (0.1, 0.14, 0.21, 0.28, 0.35):
        for mm in (0.0, 0.21, 0.63):
            assert voxels_along(mm, (spacing,) * 3) == (voxels_across(mm, (spacing,) * 3),) * 3


@pytest.mark.parametrize("radius", [1, 2, 3])
def test_equal_radii_erode_grow_and_open_exactly_as_before(radius: int) -> None:
    # An isotropic scan's nodule search must not move: the diamond of radius r is r iterations of
    # the face-neighbour cross, and the ellipsoid of equal radii the ball of the distance map.
    mask = _blob()
    structure = diamond((radius,) * 3)
    assert np.array_equal(erode_by(mask, radius), ndimage.binary_erosion(mask, structure=structure))
    assert np.array_equal(erode_by(mask, radius), ndimage.binary_erosion(mask, iterations=radius))
    assert np.array_equal(dilate_by(mask, (radius,) * 3), ndimage.binary_dilation(mask, iterations=radius))
    core = ndimage.distance_transform_edt(mask) > radius
    assert np.array_equal(open_by_ball(mask, (radius,) * 3), ndimage.distance_transform_edt(~core) <= radius)


def test_unequal_radii_reach_as_far_in_mm_along_each_axis() -> None:
    point = np.zeros((11, 11, 11), bool)
    point[5, 5, 5] = True
    grown = dilate_by(point, (4, 4, 2))
    extent = [int(np.ptp(np.nonzero(grown)[axis])) + 1 for axis in range(3)]
    assert extent == [9, 9, 5]
    assert diamond((2, 2, 0)).shape == (5, 5, 1)
    assert np.array_equal(erode_by(grown, 0), grown)
    with pytest.raises(ValueError, match="3 per-axis radii"):
        erode_by(grown, (1, 2))


def test_a_ribs_halo_beyond_the_mapped_bone_is_no_nodule() -> None:
    # Thick slices average an oblique rib into a band of 300-800 HU that the organ map leaves
    # unlabelled, and a halo beyond it reaches into the lung (on the Digimouse torso at 0.14 x 0.14
    # x 0.28 mm, a 0.04 mm^3 "metastasis" 0.31 mm from the mapped bone). A real nodule is kept.
    organs = np.zeros((20, 20, 20), np.uint8)
    organs[4:16, 4:16, 4:16] = LUNG
    hu = np.full(organs.shape, -430.0, np.float32)
    hu[organs == 0] = 40.0
    organs[1, 4:16, 6:8] = BONES  # the mapped rib
    hu[1, 4:16, 6:8] = 900.0
    hu[2:4, 4:16, 6:8] = 500.0  # the rib's unmapped band, outside the lung
    hu[4:6, 4:16, 6:8] = -100.0  # the halo: two voxels deep into the lung
    hu[9:11, 9:11, 9:11] = 60.0  # the nodule

    found = detect_bright_lesions(
        organs, hu, hosts=[LUNG], min_hu=-150.0, erode_voxels=1, min_voxels=2, min_dim_shell=0.5
    )

    assert set(zip(*np.nonzero(found), strict=True)) == {
        (x, y, z) for x in (9, 10) for y in (9, 10) for z in (9, 10)
    }


def test_slices_too_thick_for_a_nodule_leave_the_lungs_not_assessed() -> None:
    # The atlas torso at 0.14 mm, its slices averaged in eights (1.12 mm: a box spreading 0.32 mm,
    # past the blur at which the rule stands down): 5 "metastases" before; now the lungs are left
    # unsearched, which the run reports "not assessed". Pairs (0.28 mm) are still searched.
    from inference.phantom import digimouse
    from inference.pipeline import predict_volume
    from inference.registry import find_model
    from inference.training.robustness import Case, thicken

    if not (digimouse.DEFAULT_DIR / digimouse.FILENAME).is_file():
        pytest.skip("Digimouse atlas not present")
    atlas = digimouse.load()
    render = digimouse.render_ct(atlas, seed=0, spacing_mm=0.14, crop="torso")
    case = Case(name="t", ct=render.ct, labels=render.labels, affine=render.affine)
    cards = [find_model("mouse-organs"), find_model("mouse-tumor")]
    metastasis = BY_NAME["metastasis"].id

    unsearched = {}
    for slices in (8, 2):
        thick = thicken(case, slices)
        out = predict_volume(thick.ct, thick.affine, cards, threads=2)
        assert not (out.labels == metastasis).any(), slices
        unsearched[slices] = set(out.unsearched)
    assert unsearched == {8: {"lung_left", "lung_right"}, 2: set()}
