"""The Digimouse atlas as real anatomy: canonical orientation, canonical labels, a rendered CT."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from inference.phantom import digimouse
from inference.phantom.digimouse import TISSUES, Digimouse
from inference.phantom.generator import Phantom
from inference.structures import BY_NAME
from tests.conftest import SHARED

ATLAS_DIR = SHARED / "realdata" / "digimouse"
#: Volumes (mm^3) stated in the atlas' README.txt.
README_MM3 = {
    "heart": 223,
    "liver": 2008,
    "spleen": 139,
    "stomach": 226,
    "bladder": 190,
    "bones": 1182,
}
README_LUNGS_MM3 = 417
README_KIDNEYS_MM3 = 495
VOXEL_MM3 = 0.2**3


def _id(name: str) -> int:
    return BY_NAME[name].id


def _centre(mask: np.ndarray) -> np.ndarray:
    return np.array(ndimage.center_of_mass(mask))


@pytest.fixture(scope="module")
def mouse() -> Digimouse:
    if not ATLAS_DIR.exists():
        pytest.fail(f"the Digimouse atlas is missing: expected {ATLAS_DIR}")
    return digimouse.load(ATLAS_DIR)


@pytest.fixture(scope="module")
def torso(mouse: Digimouse) -> Phantom:
    return digimouse.render_ct(mouse, seed=3, crop="torso")


def test_orientation_is_canonical_ras_from_the_anatomy(mouse: Digimouse) -> None:
    labels = mouse.labels
    body = mouse.tissues > 0
    mid_x = _centre(body)[0]
    liver, stomach, spleen = (_centre(labels == _id(n)) for n in ("liver", "stomach", "spleen"))
    # Liver on the mouse's right (+x); stomach and spleen on its left.
    assert liver[0] > mid_x + 1
    assert stomach[0] < mid_x - 5 and spleen[0] < mid_x - 5
    # Cranial is +z: brain above heart above liver above bladder.
    z = {n: _centre(labels == _id(n))[2] for n in ("brain", "heart", "liver", "bladder")}
    assert z["brain"] > z["heart"] > z["liver"] > z["bladder"]
    # Dorsal is -y: the spine (bone within 2 mm of the midline between kidneys and heart) lies
    # dorsal to the body's centre, and the kidneys dorsal to the liver.
    z_lo, z_hi = int(z["liver"]) - 40, int(z["heart"])
    x_lo, x_hi = int(mid_x) - 10, int(mid_x) + 10
    bone = labels[x_lo:x_hi, :, z_lo:z_hi] == _id("bones")
    inside = body[x_lo:x_hi, :, z_lo:z_hi]
    assert _centre(bone)[1] < _centre(inside)[1] - 10
    kidneys = np.isin(labels, [_id("kidney_left"), _id("kidney_right")])
    assert _centre(kidneys)[1] < liver[1] - 10


def test_kidneys_and_lungs_are_split_by_side(mouse: Digimouse) -> None:
    labels = mouse.labels
    for base, total in (("kidney", README_KIDNEYS_MM3), ("lung", README_LUNGS_MM3)):
        left, right = labels == _id(f"{base}_left"), labels == _id(f"{base}_right")
        assert _centre(left)[0] < _centre(right)[0] - 20  # > 4 mm apart across the body
        v_left, v_right = left.sum() * VOXEL_MM3, right.sum() * VOXEL_MM3
        assert abs(v_left + v_right - total) <= 0.01 * total
        # Each side is one connected organ holding a fair share of the pair.
        assert min(v_left, v_right) > 0.35 * total
        for side in (left, right):
            assert ndimage.label(side)[1] == 1
    # Kidneys each about half; the right lung (four lobes in a mouse) is the larger.
    assert (labels == _id("lung_right")).sum() > (labels == _id("lung_left")).sum()
    # README: the right kidney is the more cranial one.
    assert _centre(labels == _id("kidney_right"))[2] > _centre(labels == _id("kidney_left"))[2]


def test_volumes_match_the_readme(mouse: Digimouse) -> None:
    for name, mm3 in README_MM3.items():
        assert abs((mouse.labels == _id(name)).sum() * VOXEL_MM3 - mm3) <= 0.01 * mm3 + 1, name
    brain_parts = np.isin(mouse.atlas, [4, 5, 6, 7, 8, 10]).sum()
    assert (mouse.labels == _id("brain")).sum() == brain_parts


def test_labelled_structures_and_tissue_map(mouse: Digimouse) -> None:
    assert "intestine" not in mouse.labelled and "spinal_cord" not in mouse.labelled
    for name in ("heart", "lung_left", "kidney_right", "liver", "bones", "brain", "tumor"):
        assert name in mouse.labelled
    assert mouse.labels.shape == mouse.tissues.shape == mouse.atlas.shape == (190, 104, 496)
    # Air exactly outside the body; every canonical label lies inside it; every tissue is used.
    assert np.array_equal(mouse.tissues == TISSUES.index("air"), mouse.atlas == 0)
    assert not (mouse.labels[mouse.tissues == 0]).any()
    assert set(np.unique(mouse.tissues)) == set(range(len(TISSUES)))
    assert mouse.tissues[mouse.labels == _id("liver")].max() == TISSUES.index("liver")
    assert not mouse.labels.flags.writeable


def test_render_is_deterministic_and_follows_the_tissue_model(mouse: Digimouse, torso: Phantom) -> None:
    again = digimouse.render_ct(mouse, seed=3, crop="torso")
    assert np.array_equal(again.ct, torso.ct) and np.array_equal(again.labels, torso.labels)
    assert again.meta == torso.meta
    other = digimouse.render_ct(mouse, seed=4, crop="torso")
    assert not np.array_equal(other.ct, torso.ct)
    assert np.array_equal(other.labels, torso.labels)
    assert torso.ct.dtype == np.int16 and torso.labels.dtype == np.uint8
    assert torso.spacing_mm == pytest.approx(0.21)
    assert torso.ct.shape[:2] == (192, 192)  # the phantom's 40.32 mm field at 0.21 mm
    median = {n: float(np.median(torso.ct[torso.labels == _id(n)])) for n in ("liver", "lung_left", "bones")}
    assert 45 < median["liver"] < 80
    assert -600 < median["lung_left"] < -300
    assert median["bones"] > 500
    assert np.median(torso.ct[:5, :5]) < -900  # air in the corners
    assert torso.meta["labelled_structures"] == list(mouse.labelled)


def test_torso_crop_keeps_the_trunk_organs_and_drops_the_head(mouse: Digimouse, torso: Phantom) -> None:
    volumes = torso.meta["volumes_mm3"]
    assert isinstance(volumes, dict)
    assert volumes["brain"] == 0
    for name in ("heart", "liver", "lung_left", "lung_right", "kidney_left", "kidney_right", "bladder"):
        whole = (mouse.labels == _id(name)).sum() * VOXEL_MM3
        assert volumes[name] == pytest.approx(whole, rel=0.05), name
    z_lo, z_hi = digimouse.torso_range(mouse.labels, 0.2)
    assert 35 < (z_hi - z_lo) * 0.2 < 60  # shoulders to hips of a 28 g mouse, in mm


def test_tissue_override_and_voxel_size(mouse: Digimouse) -> None:
    coarse = digimouse.render_ct(mouse, seed=1, spacing_mm=0.35, noise_hu=0, crop="torso", hu={"lung": -800})
    assert coarse.spacing_mm == pytest.approx(0.35)
    lung = coarse.ct[coarse.labels == _id("lung_right")]
    assert np.median(lung) < -700
    heart_mm3 = (coarse.labels == _id("heart")).sum() * 0.35**3
    assert heart_mm3 == pytest.approx(README_MM3["heart"], rel=0.1)
    with pytest.raises(ValueError, match="unknown tissues"):
        digimouse.render_ct(mouse, seed=1, hu={"fat": -100})
