"""The phantom generator: deterministic, anatomically sensible, annotators imperfect but close."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from inference.metrics import dice
from inference.phantom import generate_phantom
from inference.phantom.writer import write_dataset
from inference.structures import BY_ID, BY_NAME
from tests.nifti import load_nifti

# Coarse spacing keeps each phantom well under a second; the anatomy is the same in millimetres.
SPACING_MM = 0.63


@pytest.fixture(scope="module")
def phantom():  # type: ignore[no-untyped-def]
    return generate_phantom(7, spacing_mm=SPACING_MM)


def test_same_seed_gives_identical_arrays(phantom) -> None:  # type: ignore[no-untyped-def]
    again = generate_phantom(7, spacing_mm=SPACING_MM)
    assert np.array_equal(again.ct, phantom.ct)
    assert np.array_equal(again.labels, phantom.labels)
    for name, labels in phantom.annotators.items():
        assert np.array_equal(again.annotators[name], labels)
    assert again.meta == phantom.meta


def test_another_seed_gives_another_mouse(phantom) -> None:  # type: ignore[no-untyped-def]
    other = generate_phantom(8, spacing_mm=SPACING_MM)
    assert other.ct.shape != phantom.ct.shape or not np.array_equal(other.ct, phantom.ct)


def test_every_organ_is_present_with_a_plausible_volume(phantom) -> None:  # type: ignore[no-untyped-def]
    volumes = phantom.meta["volumes_mm3"]
    # Wide bounds around adult-mouse figures: coarse voxels and per-animal variation move them.
    expected = {
        "brain": (300, 650),
        "heart": (90, 300),
        "liver": (800, 2000),
        "kidney_left": (90, 280),
        "kidney_right": (90, 280),
        "spleen": (50, 200),
        "stomach": (80, 300),
        "bones": (300, 2000),
    }
    for name, (low, high) in expected.items():
        assert low <= volumes[name] <= high, f"{name}: {volumes[name]} mm3"
    lungs = volumes["lung_left"] + volumes["lung_right"]
    assert 200 <= lungs <= 650
    for name in ("bladder", "intestine", "spinal_cord"):
        assert volumes[name] > 0


def test_hounsfield_units_are_realistic(phantom) -> None:  # type: ignore[no-untyped-def]
    ct, labels = phantom.ct, phantom.labels

    def median(name: str) -> float:
        return float(np.median(ct[labels == BY_NAME[name].id]))

    assert float(np.median(ct[:, :, :3])) < -900  # air beyond the nose
    assert -650 < median("lung_left") < -200
    assert median("bones") > 300
    for name in ("liver", "spleen", "heart", "kidney_left", "brain"):
        assert -20 < median(name) < 120, name
    # Native CT: spleen and liver overlap within a few tens of HU.
    assert abs(median("liver") - median("spleen")) < 40


def test_organs_inside_the_muscle_have_a_visible_fat_edge() -> None:
    # Heart, kidneys and spleen sit in fat (pericardial, perirenal, omental) as in a mouse, so on
    # native CT their outline can be seen, not only guessed from a shape (muscle is within 15 HU).
    # 0.42 mm: the thinnest pericardial fat (0.2 mm) is lost in a 0.63 mm voxel's partial volume.
    fine = generate_phantom(7, spacing_mm=0.42)
    ct, labels = fine.ct.astype(np.float32), fine.labels
    for name in ("heart", "kidney_left", "kidney_right", "spleen"):
        organ = labels == BY_NAME[name].id
        rim = ndimage.binary_dilation(organ) & ~organ & (labels == 0)
        drop = float(np.median(ct[organ]) - np.median(ct[rim]))
        assert drop > 40, f"{name}: the tissue around it is only {drop:.0f} HU darker"


def test_contrast_agent_raises_liver_and_spleen() -> None:
    native = generate_phantom(7, spacing_mm=SPACING_MM)
    contrast = generate_phantom(7, spacing_mm=SPACING_MM, modality="contrast")
    for name in ("liver", "spleen"):
        sid = BY_NAME[name].id
        gain = np.median(contrast.ct[contrast.labels == sid]) - np.median(native.ct[native.labels == sid])
        assert gain > 60, name


def test_left_organs_lie_at_lower_x_than_right_ones(phantom) -> None:  # type: ignore[no-untyped-def]
    for left, right in (("lung_left", "lung_right"), ("kidney_left", "kidney_right")):
        x_left = np.argwhere(phantom.labels == BY_NAME[left].id)[:, 0].mean()
        x_right = np.argwhere(phantom.labels == BY_NAME[right].id)[:, 0].mean()
        assert x_left < x_right


def test_metastases_are_recorded_with_the_organ_that_holds_them() -> None:
    with_mets = next(
        p for p in (generate_phantom(s, spacing_mm=0.42) for s in range(20)) if p.meta["metastases"]
    )
    metastases = with_mets.meta["metastases"]
    assert isinstance(metastases, list)
    for met in metastases:
        assert BY_ID[met["organ_id"]].name == met["organ"]
        assert 0.2 <= met["diameter_mm"] <= 2.0


def test_annotators_differ_from_the_truth_but_stay_close(phantom) -> None:  # type: ignore[no-untyped-def]
    assert set(phantom.annotators) == {"A", "B", "C"}
    liver = BY_NAME["liver"].id
    scores = [dice(a == liver, phantom.labels == liver) for a in phantom.annotators.values()]
    assert all(0.75 < s < 1.0 for s in scores)


def test_flat_layout_writes_ct_labels_annotators_and_meta(tmp_path: Path) -> None:
    [folder] = write_dataset(tmp_path, n=1, seed=3, spacing_mm=0.84)
    names = sorted(p.name for p in folder.iterdir())
    assert names == [
        "annotator_A.nii.gz",
        "annotator_B.nii.gz",
        "annotator_C.nii.gz",
        "ct.nii.gz",
        "labels.nii.gz",
        "meta.json",
    ]
    image = load_nifti(folder / "ct.nii.gz")
    assert nib.aff2axcodes(image.affine) == ("R", "A", "S")
    assert np.allclose(image.header.get_zooms(), 0.84)
    assert json.loads((folder / "meta.json").read_text())["seed"] == 3


def test_tumor_db_layout_mirrors_the_public_database(tmp_path: Path) -> None:
    folders = write_dataset(tmp_path, n=2, seed=3, spacing_mm=0.84, layout="tumor-db")
    assert len(folders) == 6  # two mice at three time points
    ct = tmp_path / "Dataset 1" / "M01_M02_8d" / "M02_8d" / "CT_M02_8d.nii.gz"
    mask = ct.parent / "Annotator_B_M02_8d.nii.gz"
    assert ct.exists() and mask.exists()
    data = np.asanyarray(load_nifti(ct).dataobj)
    assert data.min() >= -400 and data.max() <= 1000
    assert set(np.unique(np.asanyarray(load_nifti(mask).dataobj))) <= {0, 1}
    # The same mouse's tumors grow over the time series.
    early = json.loads((tmp_path / "Dataset 1/M01_M02_0d/M02_0d/meta_M02_0d.json").read_text())
    late = json.loads((ct.parent / "meta_M02_8d.json").read_text())
    if early["tumors"]:
        assert late["tumor_volume_mm3"] > early["tumor_volume_mm3"]
