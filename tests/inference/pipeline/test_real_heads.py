"""Real 8-bit head micro-CT (../shared/realdata/mouse_ct_atlas/) with the committed models: calibrated
to HU, recognised as a head alone, and segmented as brain and bones, with no trunk organ and no tumor.

The organ model, run on a head, used to draw the middle ear's air as lung and a few voxels of the
neck as heart or gut (0.1-7 mm^3), and the lung-nodule rule then found an 8.8 mm^3 "metastasis" in
that "lung"; the orientation finder's head-only verdict now keeps the trunk out of view."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from inference.phantom import generate_phantom
from inference.pipeline import segment_file
from inference.pipeline.braincase import FILLED
from inference.pipeline.geometry import record_geometry, to_canonical
from inference.pipeline.orientation import find_orientation
from inference.pipeline.predict import IN_A_HEAD, drop_out_of_view
from inference.structures import BY_ID, BY_NAME
from tests.nifti import load_nifti

RAW_HEADS = ("C57BL6_J_.nii.gz", "BALB_CJ_.nii.gz")


def canonical(path: Path) -> tuple[np.ndarray, tuple[float, ...]]:
    image = load_nifti(str(path))
    geometry = record_geometry(image.shape, image.affine)
    return to_canonical(np.asanyarray(image.dataobj), geometry), tuple(geometry.spacing_mm)


@pytest.mark.parametrize("name", RAW_HEADS)
def test_a_raw_head_scan_is_a_head_alone(realdata: Path, name: str) -> None:
    volume, spacing = canonical(realdata / name)

    finding = find_orientation(volume, spacing)

    assert finding.head_only
    assert finding.as_json()["head_only"] is True
    assert any("not in view" in sentence for sentence in finding.findings)


def test_a_whole_mouse_is_not_a_head_alone() -> None:
    phantom = generate_phantom(seed=1, spacing_mm=0.42)

    finding = find_orientation(phantom.ct, (0.42, 0.42, 0.42))

    assert not finding.head_only


def test_a_thorax_cut_short_is_not_a_head() -> None:
    # At 1 mm its ribs close round the lungs like a skull round a brain (a 310-360 mm3 "braincase"
    # in 12-22 mm of the real Digimouse thorax); what fills it, the lungs' air, tells them apart.
    from inference.phantom import digimouse

    mouse = digimouse.load()
    ph = digimouse.render_ct(mouse, seed=1, spacing_mm=0.42, crop="whole")
    z = np.nonzero((ph.labels == BY_NAME["lung_left"].id).any(axis=(0, 1)))[0]
    margin = int(4 / 0.42)
    for lo, hi in ((z.min(), z.max() + 1), (z.min() - margin, z.max() + margin)):
        finding = find_orientation(ph.ct[:, :, lo:hi], (0.42, 0.42, 0.42))
        assert not finding.head_only, (lo, hi, finding.measures)


def test_out_of_view_organs_are_cleared_and_the_head_kept() -> None:
    ids = np.arange(16, dtype=np.uint8).reshape(2, 2, 4)
    organs = ids.copy()

    cleared = drop_out_of_view(organs, list(range(14)))

    assert {BY_ID[i].name for i in cleared} == {
        "heart", "lung_left", "lung_right", "liver", "kidney_left", "kidney_right",
        "spleen", "bladder", "stomach", "intestine",
    }  # fmt: skip
    kept = {BY_ID[int(i)].name for i in np.unique(organs) if i}
    # Lesion ids are the tumor model's: never touched here.
    assert kept == set(IN_A_HEAD) | {"tumor", "metastasis"}


@pytest.mark.parametrize("name", RAW_HEADS)
def test_the_committed_models_find_brain_and_bones_and_nothing_of_the_trunk(
    realdata: Path, tmp_path: Path, name: str
) -> None:
    result = segment_file(realdata / name, tmp_path / "out", threads=2)

    labels = np.asanyarray(load_nifti(str(result.labels_path)).dataobj)
    found = {BY_ID[int(i)].name for i in np.unique(labels) if i}
    assert found <= set(IN_A_HEAD)
    assert {"brain", "bones"} <= found
    volumes = {row.name: row.volume_mm3 for row in result.volumes}
    # An adult mouse brain is 400-500 mm^3. Turned to its nearest pose by its own landmarks,
    # mouse-organs 2.4.1 draws 239 (C57BL6_J_, 73 % of the braincase its skull closes) and 348 mm^3
    # (BALB_CJ_, 82 %). A brain filling under 84 % is grown into its braincase (braincase.py: 329
    # and 423 mm^3) and the manifest says so; one filling more is left as drawn. (2.2.0 drew 242
    # and 273, grown to 345 and 383; left as its header had it, 196 and 18: the model card says so.)
    # Against the atlas' cavity registered onto them: tests/inference/training/test_real_heads.py.
    # Calibrated 8-bit intensities always send the scan to review (below).
    assert volumes["brain"] > 320
    braincase = result.manifest["postprocess"]["braincase"]
    assert braincase["brain_mm3"] >= FILLED * braincase["braincase_mm3"]
    if braincase["grown"]:
        assert braincase["drawn_mm3"] < FILLED * braincase["braincase_mm3"] < braincase["brain_mm3"]
        assert "grown into the rest of it" in braincase["finding"]
    else:
        assert braincase["drawn_mm3"] == braincase["brain_mm3"] and braincase["finding"] is None
    # Their calibrated noise (229-265 HU a voxel) made the bone rule draw speckle as bone (806 and
    # 820 mm^3 of "bones"); read through a median, the skull stays and the speckle goes (690, 711).
    assert volumes["bones"] < 760
    assert any("median" in sentence for sentence in result.manifest["intensity"]["findings"])
    assert not result.lesions
    assert (labels == BY_NAME["tumor"].id).sum() == 0 and (labels == BY_NAME["metastasis"].id).sum() == 0
    manifest = result.manifest
    assert manifest["intensity"]["units"] == "calibrated"
    assert manifest["orientation"]["head_only"] is True
    assert {"heart", "lung_left", "liver"} <= set(manifest["qc"]["not_in_view"])
    assert manifest["qc"]["status"] == "needs_review"  # calibrated intensities always get a look
