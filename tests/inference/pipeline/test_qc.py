"""The QC gate (pipeline/qc.py) on a phantom whose truth is known: a right answer passes, and each
way of being wrong gives its own plain-words reason."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from inference.phantom import Phantom, generate_phantom
from inference.pipeline.lesions import allocate
from inference.pipeline.qc import (
    NEEDS_REVIEW,
    OK,
    check_run,
    exposed_at_faces,
    layout_reasons,
    organ_centres,
    organs_cut_by_field,
    regions_in_view,
)
from inference.pipeline.volumes import structure_volumes
from inference.structures import BY_NAME, STRUCTURES

SPACING_MM = 0.42
ALL_IDS = [s.id for s in STRUCTURES if s.id]
TUMOR = BY_NAME["tumor"].id


@pytest.fixture(scope="module")
def phantom() -> Phantom:
    return generate_phantom(9001, spacing_mm=SPACING_MM, n_annotators=0)


def _check(phantom: Phantom, labels: np.ndarray, ct: np.ndarray | None = None, **extra: Any) -> Any:
    voxel = SPACING_MM**3
    return check_run(
        labels=labels,
        scan=phantom.ct if ct is None else ct,
        voxel_volume_mm3=voxel,
        volumes=structure_volumes(labels, voxel, structure_ids=ALL_IDS),
        lesions=allocate(
            np.where(labels == TUMOR, 0, labels), phantom.affine, np.where(labels == TUMOR, TUMOR, 0)
        ),
        structure_ids=ALL_IDS,
        **extra,
    )


def _codes(report: Any) -> set[str]:
    return {r.code for r in report.reasons}


def test_the_true_segmentation_of_a_phantom_passes(phantom: Phantom) -> None:
    report = _check(phantom, phantom.labels)

    assert report.status == OK, [r.message for r in report.reasons]
    assert report.regions == ["head", "thorax", "abdomen", "pelvis"]
    assert report.not_in_view == []
    assert 10_000 < report.body_volume_mm3 < 40_000


def test_a_missing_heart_a_tiny_liver_and_a_lopsided_kidney_are_each_named(phantom: Phantom) -> None:
    labels = phantom.labels.copy()
    labels[labels == BY_NAME["heart"].id] = 0
    liver = np.argwhere(labels == BY_NAME["liver"].id)
    labels[tuple(liver[: int(0.9 * len(liver))].T)] = 0
    kidney = np.argwhere(labels == BY_NAME["kidney_left"].id)
    labels[tuple(kidney[: int(0.8 * len(kidney))].T)] = 0

    report = _check(phantom, labels)

    assert report.status == NEEDS_REVIEW
    reasons = {(r.code, r.structure) for r in report.reasons}
    assert {("missing", "heart"), ("volume_range", "liver"), ("paired_asymmetry", "kidneys")} <= reasons
    assert any(
        "heart not found, though the field of view holds the thorax" in r.message for r in report.reasons
    )


def test_a_tumor_on_the_bed_and_one_above_the_humane_burden_are_flagged(phantom: Phantom) -> None:
    ct = phantom.ct.copy()
    labels = phantom.labels.copy()
    labels[labels == TUMOR] = 0
    # A plastic block apart from the mouse (a bed), labelled tumor by a confused model.
    ct[:8, :8, :20] = 200
    labels[:8, :8, :20] = TUMOR
    on_bed = _check(phantom, labels, ct)
    # A "tumor" filling half the body.
    body = np.argwhere((phantom.ct > -300) & (labels == 0))
    big = labels.copy()
    big[tuple(body[: len(body) // 2].T)] = TUMOR
    burden = _check(phantom, big)

    assert "lesion_outside_body" in _codes(on_bed)
    assert "tumor_burden" in _codes(burden)
    assert any("humane-endpoint" in r.message or "% of the body" in r.message for r in burden.reasons)


def test_a_tumor_cut_by_the_field_of_view_asks_for_review(phantom: Phantom) -> None:
    """A tumor running out of the scan (or a leg stump the tumor model took for one) is a lower
    bound at best; one wholly inside the field is no reason."""
    tumor = np.argwhere(phantom.labels == TUMOR)
    assert len(tumor), "test phantom 9001 carries a tumor"
    inside = _check(phantom, phantom.labels)
    # Cut the scan through the middle of the tumor, across the long axis.
    cut = int(np.median(tumor[:, 2]))
    for ct, labels in (
        (phantom.ct[:, :, :cut], phantom.labels[:, :, :cut]),
        (phantom.ct[:, :, cut:], phantom.labels[:, :, cut:]),
    ):
        report = _check(phantom, np.ascontiguousarray(labels), np.ascontiguousarray(ct))
        edge = [r for r in report.reasons if r.code == "tumor_at_field_edge"]
        assert report.status == NEEDS_REVIEW and len(edge) == 1
        assert edge[0].structure == "tumor" and "run out of the scanned field" in edge[0].message

    assert "tumor_at_field_edge" not in _codes(inside)
    # A stump-like "tumor" ending just short of the cut (0.84 mm at these 0.42 mm voxels) is at the
    # edge too; one ending 1.7 mm short is not.
    top = int(tumor[:, 2].max())
    for gap, flagged in ((2, True), (4, False)):
        end = top + 1 + gap
        report = _check(
            phantom,
            np.ascontiguousarray(phantom.labels[:, :, :end]),
            np.ascontiguousarray(phantom.ct[:, :, :end]),
        )
        assert ("tumor_at_field_edge" in _codes(report)) is flagged, gap


def test_calibration_orientation_and_uncertainty_findings_ask_for_review(phantom: Phantom) -> None:
    uncertain = np.full(phantom.labels.shape, 255, dtype=np.uint8)
    calibrated = {"units": "calibrated", "slope": 8.0, "intercept": -1000.0}
    eight_bit = np.clip((phantom.ct.astype(np.float32) + 1000.0) / 8.0, 0, 255).astype(np.uint8)

    report = _check(
        phantom,
        phantom.labels,
        eight_bit,
        uncertainty=uncertain,
        intensity=calibrated,
        orientation={"agrees_with_header": False},
    )

    assert {"uncertain", "intensity_calibrated", "orientation_disagrees"} <= _codes(report)
    assert "volume_range" not in _codes(report)  # the calibration put the 8-bit values back in HU


def test_a_level_that_drifts_with_depth_asks_for_review_and_anatomy_s_own_does_not(phantom: Phantom) -> None:
    cupped = _check(phantom, phantom.labels, intensity={"units": "HU", "depth_drift_hu": -45.0})
    plain = _check(phantom, phantom.labels, intensity={"units": "HU", "depth_drift_hu": -12.0})

    assert cupped.status == NEEDS_REVIEW and _codes(cupped) == {"intensity_drift"}
    [reason] = cupped.reasons
    assert "45 HU darker" in reason.message and "beam hardening" in reason.message
    assert plain.status == OK, [r.message for r in plain.reasons]


def test_bone_read_stretched_asks_for_review_and_bone_read_as_it_is_does_not(phantom: Phantom) -> None:
    stretched = _check(
        phantom,
        phantom.labels,
        intensity={"units": "HU", "bone_level_hu": 450, "bone_peak_hu": 470, "bone_stretched_to_hu": 900},
    )
    plain = _check(
        phantom, phantom.labels, intensity={"units": "HU", "bone_level_hu": 980, "bone_stretched_to_hu": None}
    )

    assert stretched.status == NEEDS_REVIEW and _codes(stretched) == {"bone_dim"}
    [reason] = stretched.reasons
    assert "about 470 HU" in reason.message and "900 HU" in reason.message
    assert plain.status == OK, [r.message for r in plain.reasons]


def test_a_speck_in_air_and_a_near_identity_calibration_are_no_reason(phantom: Phantom) -> None:
    # Measured by bench/qc_report.py: a torso crop's 8-voxel tumor speck in air and a 3x-noise scan
    # "calibrated" by HU = 1.013 x value + 10 flagged good predictions; neither changes a number.
    labels = phantom.labels.copy()
    labels[2, 2, 2] = TUMOR  # one voxel, 0.07 mm3: below the pipeline's smallest lesion
    nearly_hu = {"units": "calibrated", "slope": 1.013, "intercept": 10.0}

    report = _check(phantom, labels, intensity=nearly_hu)

    assert report.status == OK, [r.message for r in report.reasons]


def test_a_lung_nodule_at_a_cut_through_the_chest_is_inside_the_body(phantom: Phantom) -> None:
    # Measured by bench/qc_report.py: on a torso crop the lungs open onto the cut face, so they were
    # no 3D hole of the body mask and a true nodule there was called "outside the body".
    lung = np.argwhere(np.isin(phantom.labels, [BY_NAME["lung_left"].id, BY_NAME["lung_right"].id]))
    cut = int(np.median(lung[:, 2]))
    ct, labels = phantom.ct[:, :, :cut].copy(), phantom.labels[:, :, :cut].copy()
    labels[labels == TUMOR] = 0
    near_face = lung[(lung[:, 2] >= cut - 3) & (lung[:, 2] < cut)][:6]
    labels[tuple(near_face.T)] = BY_NAME["metastasis"].id
    ct[tuple(near_face.T)] = 40  # a soft-tissue nodule

    report = _check(phantom, labels, ct)

    assert "lesion_outside_body" not in _codes(report), [r.message for r in report.reasons]


def test_a_scan_in_which_nothing_was_found_asks_for_review(phantom: Phantom) -> None:
    # A water cylinder or an empty bed: nothing drawn is no verdict of "ok".
    nothing = np.zeros_like(phantom.labels)
    water = np.where(phantom.ct > -500, 0, -1000).astype(np.int16)

    report = _check(phantom, nothing, water)

    assert report.status == NEEDS_REVIEW
    assert _codes(report) == {"nothing_found"}
    assert "check that it is a CT of a mouse" in report.reasons[0].message
    assert report.regions == []
    assert "nothing_found" not in _codes(_check(phantom, phantom.labels))


def test_organs_drawn_without_any_bone_ask_for_review(phantom: Phantom) -> None:
    # A water QA cylinder in which the organ network drew a liver (as the served one draws a
    # 1,218 mm^3 "liver" in one): a mouse's head and trunk hold bone in every slice.
    liver = BY_NAME["liver"].id
    labels = np.where(phantom.labels == liver, liver, 0).astype(phantom.labels.dtype)
    water = np.where(phantom.ct > -500, 0, -1000).astype(np.int16)

    report = _check(phantom, labels, water)

    assert report.status == NEEDS_REVIEW
    skeleton = [r for r in report.reasons if r.code == "no_skeleton"]
    assert len(skeleton) == 1 and skeleton[0].structure == "bones"
    assert "the models found no bone" in skeleton[0].message
    assert "QA phantom" in skeleton[0].message
    # A mouse's run has its skeleton; a run of a model that cannot draw bone (the tumor model
    # alone) is not asked for one; nor is a run that found nothing, which has its own reason.
    assert "no_skeleton" not in _codes(_check(phantom, phantom.labels))
    tumor = np.where(labels == liver, TUMOR, 0).astype(labels.dtype)
    tumor_only = check_run(
        labels=tumor,
        scan=water,
        voxel_volume_mm3=SPACING_MM**3,
        volumes=structure_volumes(tumor, SPACING_MM**3, structure_ids=[TUMOR]),
        lesions=[],
        structure_ids=[TUMOR],
    )
    assert tumor_only.status == OK, [r.message for r in tumor_only.reasons]
    # A crop of the flank: both models ran, the tumor model found its tumor, the organ model
    # nothing. No organ was drawn, so none is called into doubt for want of bone.
    flank = _check(phantom, tumor, water)
    assert "no_skeleton" not in _codes(flank)
    assert _codes(_check(phantom, np.zeros_like(labels), water)) == {"nothing_found"}


def test_organs_cut_by_the_field_of_view_are_named_and_not_measured(phantom: Phantom) -> None:
    # A thorax scan whose field ends half-way down the liver: the liver is only partly scanned, so
    # its small volume is no reason, and it does not put the abdomen in view (the kidneys are not
    # "missing": they are not in view).
    liver = np.nonzero((phantom.labels == BY_NAME["liver"].id).any(axis=(0, 1)))[0]
    lung_ids = [BY_NAME[n].id for n in ("lung_left", "lung_right")]
    lungs = np.nonzero(np.isin(phantom.labels, lung_ids).any(axis=(0, 1)))[0]
    thorax = slice(int(liver.mean()), int(lungs.max()) + 5)  # canonical z runs caudal to cranial
    labels, ct = phantom.labels[:, :, thorax], phantom.ct[:, :, thorax]

    report = _check(phantom, labels, ct)

    assert "liver" in report.cut_by_field
    assert report.regions == ["thorax"]
    assert {"kidney_left", "kidney_right", "bladder"} <= set(report.not_in_view)
    assert "liver" not in report.not_in_view
    assert report.status == OK, [r.message for r in report.reasons]
    assert report.as_json()["cut_by_field"] == report.cut_by_field
    assert _check(phantom, phantom.labels).cut_by_field == []


def test_a_brain_behind_its_skull_at_the_edge_of_a_tight_field_is_whole() -> None:
    # A head scan cropped to the skull: the brain lies within the 3-voxel edge band, but its skull
    # lies between it and every face, so the field left the braincase whole (the real head
    # C57BL6_J_ cropped in-plane to 1.1 mm round its brain: "cut" before, whole now).
    brain_id, bones = BY_NAME["brain"].id, BY_NAME["bones"].id
    grid = np.indices((24, 24, 24)).astype(float) - 11.5
    radius = np.sqrt((grid**2).sum(axis=0))
    labels = np.where(radius < 10, brain_id, np.where(radius < 12, bones, 0)).astype(np.uint8)
    assert (labels[:3] == brain_id).any()

    assert exposed_at_faces(labels, brain_id, 3) == 0
    assert "brain" not in organs_cut_by_field(labels, 3)

    # The field cuts through the braincase on one side: no bone between brain and edge there.
    opened = labels[3:].copy()
    assert exposed_at_faces(opened, brain_id, 3) > 0
    assert organs_cut_by_field(opened, 3) == ["brain"]
    # Any other organ at the edge is cut, bone or not (ribs are no case).
    heart = np.where(labels == brain_id, BY_NAME["heart"].id, labels)
    assert organs_cut_by_field(heart, 3) == ["heart"]


def test_regions_in_view_follow_what_was_found() -> None:
    assert regions_in_view(["brain"]) == ["head"]
    assert regions_in_view(["heart", "bladder"]) == ["thorax", "abdomen", "pelvis"]
    assert regions_in_view([]) == []


def _swapped(labels: np.ndarray, a: str, b: str) -> np.ndarray:
    out = labels.copy()
    out[labels == BY_NAME[a].id] = BY_NAME[b].id
    out[labels == BY_NAME[b].id] = BY_NAME[a].id
    return out


def test_organs_in_their_places_pass_the_layout_check(phantom: Phantom) -> None:
    centres = organ_centres(phantom.labels, (SPACING_MM,) * 3)

    report = _check(phantom, phantom.labels, centres=centres)

    assert "layout" not in _codes(report)
    assert {"brain", "heart", "liver", "lung_left", "kidney_right", "bladder"} <= set(centres)


@pytest.mark.parametrize(
    ("a", "b", "words"),
    [
        ("lung_left", "lung_right", "lung left"),  # sides swapped, as a mirrored file or a lost model
        ("heart", "bladder", "heart"),  # an organ drawn at the other end of the body
    ],
)
def test_organs_drawn_in_the_wrong_places_are_named_though_their_volumes_fit(
    phantom: Phantom, a: str, b: str, words: str
) -> None:
    labels = _swapped(phantom.labels, a, b)
    centres = organ_centres(labels, (SPACING_MM,) * 3)

    report = _check(phantom, labels, centres=centres)

    layout = [r for r in report.reasons if r.code == "layout"]
    assert report.status == NEEDS_REVIEW and len(layout) == 1
    assert words in layout[0].message and "check the overlay" in layout[0].message
    # Several mice in one field: their organs' centres mean nothing, so no layout is read.
    assert "layout" not in _codes(_check(phantom, labels, centres=centres, animals=2))


def test_a_lung_drawn_beside_the_brain_is_named_even_where_the_field_cuts_it() -> None:
    # Measured: the real head C57BL6_J_ cropped in-plane to 0.7 mm round its brain. The pose could
    # not be found, the header (the mouse on its side) was used, and a 7 mm^3 "left lung" came out
    # 3 mm caudal of the brain's centre, cut by the field, so its volume hid it; it was "ok" but
    # for the 8-bit calibration.
    centres = {"brain": (5.4, 15.7, 5.9), "lung_left": (1.3, 17.3, 2.7), "bones": (4.1, 12.3, 5.8)}

    reasons = layout_reasons(centres, cut={"lung_left"})

    assert len(reasons) == 1 and "lung left 3 mm caudal of the brain's centre" in reasons[0].message
    # A head and neck scan that ends at the chest: the lungs' tips, cut, lie far caudal of the brain.
    head_and_neck = {"brain": (5.0, 15.0, 30.0), "lung_left": (3.0, 14.0, 16.0)}
    assert layout_reasons(head_and_neck, cut={"lung_left"}) == []
    # A cut liver beside a whole heart is no layout fault of the pairs: its centre moved with the cut.
    assert layout_reasons({"heart": (5.0, 15.0, 30.0), "liver": (5.0, 15.0, 31.0)}, cut={"liver"}) == []


def test_organs_drawn_on_the_wrong_tissue_are_named(phantom: Phantom) -> None:
    # A confused model: the heart's label painted over the lungs (air), the lungs' over the liver
    # (no air), the bones' over the brain (not dense). Each is named once, by what its tissue says.
    labels = phantom.labels.copy()
    ids = {n: BY_NAME[n].id for n in ("heart", "lung_left", "lung_right", "liver", "bones", "brain")}
    labels[phantom.labels == ids["heart"]] = 0
    labels[phantom.labels == ids["lung_left"]] = ids["heart"]
    labels[phantom.labels == ids["liver"]] = ids["lung_right"]
    labels[phantom.labels == ids["lung_right"]] = 0
    labels[phantom.labels == ids["bones"]] = 0
    labels[phantom.labels == ids["brain"]] = ids["bones"]

    report = _check(phantom, labels)

    tissue = {r.structure: r.message for r in report.reasons if r.code == "tissue"}
    assert set(tissue) == {"heart", "lung_right", "bones"}
    assert "is mostly air" in tissue["heart"]
    assert "holds no air" in tissue["lung_right"]
    assert "is not dense" in tissue["bones"]
    # The truth passes: each organ on its own tissue (the first test checks the whole verdict).
    assert "tissue" not in _codes(_check(phantom, phantom.labels))


def test_voxels_coarser_than_the_models_learned_from_ask_for_review(phantom: Phantom) -> None:
    learned = _check(phantom, phantom.labels, spacing_mm=(SPACING_MM,) * 3)
    thick = _check(phantom, phantom.labels, spacing_mm=(SPACING_MM, SPACING_MM, 1.0))

    assert learned.status == OK, [r.message for r in learned.reasons]
    assert thick.status == NEEDS_REVIEW and _codes(thick) == {"coarse_voxels"}
    [reason] = thick.reasons
    assert "0.42 x 0.42 x 1 mm" in reason.message and "0.1-0.4 mm" in reason.message


def test_organs_the_model_reads_differently_on_a_moved_grid_ask_for_review(phantom: Phantom) -> None:
    steady = _check(phantom, phantom.labels, pass_agreement={"heart": 0.96, "liver": 0.95})
    unsteady = _check(phantom, phantom.labels, pass_agreement={"heart": 0.6, "lung_left": 0.97, "brain": 0.5})

    assert steady.status == OK, [r.message for r in steady.reasons]
    assert unsteady.status == NEEDS_REVIEW and _codes(unsteady) == {"unstable"}
    assert unsteady.reasons[0].structure == "heart"
    # Only the big organs are read and reported: the passes run round the trunk.
    assert unsteady.as_json()["pass_agreement"] == {"heart": 0.6, "lung_left": 0.97}
