"""Orientation from the anatomy (pipeline/orientation.py): every pose of a phantom is put back, weak
evidence keeps the header, real head scans get a stable answer, and the pipeline undoes the turn."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from inference.cli import main
from inference.phantom import Phantom, generate_phantom
from inference.phantom import digimouse as atlas
from inference.pipeline import predict_volume, segment_file
from inference.pipeline.geometry import record_geometry, to_canonical
from inference.pipeline.orientation import AxisTransform, block_max, block_mean, find_orientation, pool
from inference.registry import ModelCard
from tests.conftest import SHARED
from tests.inference.pipeline.conftest import body_phantom, voxelwise_model
from tests.nifti import load_nifti

#: Coarse phantoms keep the 48 poses fast (0.2 s to paint, ~0.1 s a pose to read).
SPACING_MM = 0.84
#: Seed 2 has gas in its stomach (left/right decidable); seed 3 has none.
WITH_GAS, WITHOUT_GAS = 2, 3
IDENTITY = AxisTransform()
SUPINE = AxisTransform(((0, -1), (1, -1), (2, 1)))  # 180 degrees about the long axis
LATERAL = AxisTransform(((1, 1), (0, -1), (2, 1)))  # 90 degrees about the long axis: on its side
MIRROR_X = AxisTransform(((0, -1), (1, 1), (2, 1)))  # left and right swapped, nothing else
POSES = AxisTransform.every()
TEMPLATE, TEMPLATE_LABELS = "low_res_template_UCHAR.nii.gz", "low_res_template_UCHAR-label.nii.gz"
DIGIMOUSE = SHARED / "realdata" / "digimouse" / "digimouse_labels.nii.gz"
#: HU for Digimouse's tissues (its labels.json); everything else in the body is soft tissue.
DIGIMOUSE_HU = {0: -1000, 2: 1000, 9: 45, 13: 12, 15: 25, 18: 62, 21: -430}


@pytest.fixture(scope="module")
def phantom() -> Phantom:
    return generate_phantom(WITH_GAS, spacing_mm=SPACING_MM, n_annotators=0)


@pytest.fixture(scope="module")
def gasless() -> Phantom:
    return generate_phantom(WITHOUT_GAS, spacing_mm=SPACING_MM, n_annotators=0)


def spacing(pose: AxisTransform) -> tuple[float, float, float]:
    return pose.spacing((SPACING_MM, SPACING_MM, SPACING_MM))


def load_canonical(path: Path) -> tuple[np.ndarray, tuple[float, float, float]]:
    image = load_nifti(str(path))
    geometry = record_geometry(image.shape, image.affine)
    return np.asarray(to_canonical(np.asanyarray(image.dataobj), geometry)), geometry.spacing_mm


def centroid(mask: np.ndarray) -> np.ndarray:
    return np.argwhere(mask).mean(axis=0)


def test_there_are_48_poses_and_half_of_them_are_mirror_images() -> None:
    assert len({pose.ornt for pose in POSES}) == 48
    assert sum(pose.is_mirror for pose in POSES) == 24
    assert SUPINE in POSES and not SUPINE.is_mirror and MIRROR_X.is_mirror


def test_every_pose_round_trips_exactly_and_composes() -> None:
    array = np.arange(3 * 4 * 5).reshape(3, 4, 5)
    for pose in POSES:
        turned = pose.apply(array)
        assert turned.shape == pose.shape(array.shape)
        assert np.array_equal(pose.inverse().apply(turned), array)
        assert pose.then(pose.inverse()).is_identity
        assert np.array_equal(pose.then(LATERAL).apply(array), LATERAL.apply(turned))


@pytest.mark.parametrize("pose", POSES, ids=lambda pose: pose.describe())
def test_every_pose_of_the_phantom_is_put_back_exactly(phantom: Phantom, pose: AxisTransform) -> None:
    finding = find_orientation(pose.apply(phantom.ct), spacing(pose))

    assert finding.kept == "nothing"
    assert np.array_equal(finding.transform.apply(pose.apply(phantom.labels)), phantom.labels)
    assert finding.agrees_with_header is pose.is_identity
    assert finding.overall_confidence >= 0.5 and finding.confidence["left_right"] >= 0.6


@pytest.mark.parametrize(
    "pose", [p for p in POSES if not any(s < 0 for _, s in p.ornt)], ids=lambda pose: pose.describe()
)
def test_anisotropic_voxels_travel_with_their_axis(phantom: Phantom, pose: AxisTransform) -> None:
    # Every other slice along the body: 0.84 x 0.84 x 1.68 mm voxels, stored in any axis order.
    thick = phantom.ct[:, :, ::2]
    voxel_mm = pose.spacing((SPACING_MM, SPACING_MM, 2 * SPACING_MM))

    finding = find_orientation(pose.apply(thick), voxel_mm)

    assert finding.kept == "nothing" and pose.then(finding.transform).is_identity


def test_the_phantom_as_scanned_agrees_with_its_header(phantom: Phantom) -> None:
    finding = find_orientation(phantom.ct, spacing(IDENTITY))

    assert finding.transform.is_identity and finding.agrees_with_header is True
    assert finding.findings[-1] == "The anatomy agrees with the header: the mouse lies as the models expect."


@pytest.mark.parametrize(("pose", "words"), [(SUPINE, "on its back (supine)"), (LATERAL, "on its side")])
def test_a_supine_or_lateral_mouse_with_the_header_unchanged_is_turned_back(
    phantom: Phantom, pose: AxisTransform, words: str
) -> None:
    finding = find_orientation(pose.apply(phantom.ct), spacing(pose))

    assert finding.agrees_with_header is False
    assert finding.transform == pose.inverse()
    assert f"the mouse lies {words} in the header's frame" in finding.findings[-1]


def test_a_mirror_image_is_detected_from_the_stomach_gas(phantom: Phantom) -> None:
    finding = find_orientation(MIRROR_X.apply(phantom.ct), spacing(MIRROR_X))

    assert finding.transform == MIRROR_X and finding.transform.is_mirror
    assert "and mirrored" in finding.findings[-1]
    assert any("the stomach, on the mouse's left" in sentence for sentence in finding.findings)


def test_without_left_right_evidence_a_mirror_is_reported_not_guessed(gasless: Phantom) -> None:
    finding = find_orientation(MIRROR_X.apply(gasless.ct), spacing(MIRROR_X))

    # Long axis, back and head are certain; the handedness is the header's, so nothing turns.
    assert finding.kept == "left-right"
    assert finding.transform.is_identity and finding.confidence["left_right"] < 0.6
    assert "Left and right are taken from the header" in " ".join(finding.findings)


def test_a_supine_mouse_without_left_right_evidence_is_still_turned_over(gasless: Phantom) -> None:
    finding = find_orientation(SUPINE.apply(gasless.ct), spacing(SUPINE))

    assert finding.kept == "left-right" and not finding.transform.is_mirror
    assert np.array_equal(finding.transform.apply(SUPINE.apply(gasless.labels)), gasless.labels)


def test_a_volume_without_anatomy_keeps_the_header() -> None:
    # The pipeline tests' synthetic body: a cylinder with three balls, no spine, lungs or skull.
    finding = find_orientation(body_phantom(), (0.2, 0.2, 0.2))

    assert finding.kept == "header" and finding.transform.is_identity
    assert finding.agrees_with_header is None
    assert "the header's orientation is kept" in finding.findings[-1]


def test_an_empty_scan_keeps_the_header() -> None:
    finding = find_orientation(np.full((20, 20, 20), -1000, dtype=np.int16), (0.5, 0.5, 0.5))

    assert finding.kept == "header" and finding.transform.is_identity
    assert finding.findings == [
        "No body found (too little matter above the air level): the header's orientation is kept."
    ]


def test_the_template_head_points_where_its_label_map_says(realdata: Path) -> None:
    volume, spacing_mm = load_canonical(realdata / TEMPLATE)
    labels, _ = load_canonical(realdata / TEMPLATE_LABELS)

    finding = find_orientation(volume, spacing_mm)
    posed = finding.transform.apply(labels)

    # A head is left/right symmetric: confident on the rest, the header's handedness kept.
    assert finding.kept == "left-right" and finding.overall_confidence >= 0.5
    assert finding.agrees_with_header is False  # the template's header has the snout along +y
    braincase = centroid(posed == 15)  # the endocranial cavity (README: mean intensity ~ air)
    skull = centroid(posed == 1)
    paired_low = centroid((posed == 2) | (posed == 21))  # the paired structures below the skull
    assert braincase[1] < paired_low[1] - 20  # y is ventral: the braincase is dorsal
    assert braincase[2] < skull[2] - 10  # z is cranial: the braincase sits behind the snout


def test_the_template_gets_one_pose_from_every_rotation(realdata: Path) -> None:
    volume, spacing_mm = load_canonical(realdata / TEMPLATE)
    expected = find_orientation(volume, spacing_mm).transform

    for pose in (p for p in POSES if not p.is_mirror):
        finding = find_orientation(pose.apply(volume), pose.spacing(spacing_mm))
        assert pose.then(finding.transform) == expected, pose.describe()


@pytest.mark.parametrize(("name", "poses"), [("C57BL6_J_.nii.gz", 2), ("BALB_CJ_.nii.gz", 1)])
def test_an_oblique_raw_head_scan_is_turned_the_same_way_from_every_rotation(
    realdata: Path, name: str, poses: int
) -> None:
    # These heads lie obliquely (no clear long axis), but a head's own landmarks (the braincase up,
    # the teeth and snout forward) name its nearest axis-aligned pose, and the models find its
    # brain there (inference/models/README.md). C57BL6_J_ lies about 45 degrees between two
    # such poses: its braincase is as far up-and-back along x as along y, so either is as near.
    volume, spacing_mm = load_canonical(realdata / name)

    found = set()
    for pose in (p for p in POSES if not p.is_mirror):
        finding = find_orientation(pose.apply(volume), pose.spacing(spacing_mm))
        assert finding.head_only and finding.kept == "left-right", pose.describe()
        assert not finding.transform.is_mirror
        assert "no clear long axis" in finding.findings[0]
        found.add(pose.then(finding.transform))
    assert len(found) == poses


@pytest.fixture(scope="module")
def digimouse() -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """A CT drawn from the real Digimouse anatomy (0.2 mm, its header says where its nose and back
    are): HU per tissue plus 20 HU noise; and the same with gas in the top third of the stomach."""
    labels, spacing_mm = load_canonical(DIGIMOUSE)
    ct = np.full(labels.shape, 40.0, dtype=np.float32)
    for label, hu in DIGIMOUSE_HU.items():
        ct[labels == label] = hu
    ct += np.random.default_rng(0).normal(0.0, 20.0, ct.shape).astype(np.float32)
    stomach = labels == 15
    # y is ventral: gas rises to the back (low y) of the stomach in a prone mouse.
    top = np.quantile(np.nonzero(stomach)[1], 0.35)
    gassy = ct.copy()
    gassy[stomach & (np.arange(labels.shape[1]) < top)[None, :, None]] = -1000
    return ct.astype(np.int16), gassy.astype(np.int16), spacing_mm


@pytest.mark.parametrize(
    "pose",
    [IDENTITY, SUPINE, LATERAL, AxisTransform(((2, 1), (1, 1), (0, -1)))],
    ids=["as stored", "supine", "lateral", "long axis across"],
)
def test_real_anatomy_is_put_back_with_the_header_handedness(
    digimouse: tuple[np.ndarray, np.ndarray, tuple[float, float, float]], pose: AxisTransform
) -> None:
    ct, _, spacing_mm = digimouse
    assert not pose.is_mirror

    finding = find_orientation(pose.apply(ct), pose.spacing(spacing_mm))

    # Digimouse's stomach holds no gas: its left cannot be read, so the header's handedness is kept.
    assert finding.kept == "left-right" and pose.then(finding.transform).is_identity
    assert finding.measures["braincase_mm3"] > 200 and finding.measures["lungs_mm3"] > 200


@pytest.mark.parametrize("length_mm", [24, 30, 36])
def test_a_real_head_and_neck_is_never_turned_head_down(
    digimouse: tuple[np.ndarray, np.ndarray, tuple[float, float, float]], length_mm: int
) -> None:
    # The nose end of the real anatomy, cut 24-36 mm long: the whole head, then with the neck and
    # shoulders, whose bone reaches further from the braincase than the snout (that vote, with the
    # teeth's, turned such cuts head-down); the taper to the nose and the volume centre outvote
    # them. At 36 mm the top of the thorax is in view and no head vote is sure: the header stays.
    ct, _, spacing_mm = digimouse
    body = np.nonzero((ct > -500).any(axis=(0, 1)))[0]
    cut = ct[:, :, body.max() + 1 - round(length_mm / spacing_mm[2]) : body.max() + 1]

    for pose in (p for p in POSES if not p.is_mirror):
        finding = find_orientation(pose.apply(cut), pose.spacing(spacing_mm))
        if length_mm <= 30:
            assert finding.kept == "left-right" and finding.head_only, pose.describe()
            assert pose.then(finding.transform).is_identity, pose.describe()
        else:
            assert finding.kept == "header" or pose.then(finding.transform).is_identity, pose.describe()


@pytest.mark.parametrize(
    "pose", [MIRROR_X, AxisTransform(((1, -1), (2, 1), (0, 1)))], ids=["mirror", "mirror turned"]
)
def test_real_anatomy_with_stomach_gas_shows_a_mirror_image(
    digimouse: tuple[np.ndarray, np.ndarray, tuple[float, float, float]], pose: AxisTransform
) -> None:
    _, gassy, spacing_mm = digimouse

    finding = find_orientation(pose.apply(gassy), pose.spacing(spacing_mm))

    assert pose.is_mirror and finding.kept == "nothing"
    assert pose.then(finding.transform).is_identity


@pytest.fixture(scope="module")
def voxelwise(tmp_path_factory: pytest.TempPathFactory) -> ModelCard:
    return voxelwise_model(tmp_path_factory.mktemp("orientation-model"), SPACING_MM)


@pytest.mark.parametrize("pose", [SUPINE, LATERAL, MIRROR_X], ids=["supine", "lateral", "mirrored"])
def test_the_pipeline_turns_a_scan_and_puts_its_maps_back_on_the_scan_grid(
    phantom: Phantom, voxelwise: ModelCard, pose: AxisTransform
) -> None:
    affine = np.diag([SPACING_MM, SPACING_MM, SPACING_MM, 1.0])
    prone = predict_volume(phantom.ct, affine, [voxelwise], threads=1, orient="header")

    turned = predict_volume(pose.apply(phantom.ct), affine, [voxelwise], threads=1)

    assert turned.orientation is not None and turned.orientation.transform == pose.inverse()
    assert turned.labels.shape == pose.shape(phantom.ct.shape)
    assert np.array_equal(turned.labels, pose.apply(prone.labels))
    assert np.array_equal(turned.uncertainty, pose.apply(prone.uncertainty))
    assert turned.geometry.canonical_shape == pose.shape(phantom.ct.shape)  # the header's, not the pose


def test_orient_header_trusts_the_header(phantom: Phantom, voxelwise: ModelCard) -> None:
    affine = np.diag([SPACING_MM, SPACING_MM, SPACING_MM, 1.0])

    output = predict_volume(SUPINE.apply(phantom.ct), affine, [voxelwise], threads=1, orient="header")

    assert output.orientation is None
    with pytest.raises(ValueError, match="orient must be one of anatomy, header"):
        predict_volume(phantom.ct, affine, [voxelwise], orient="sideways")


def test_the_manifest_says_when_header_and_anatomy_disagree(
    phantom: Phantom, voxelwise: ModelCard, tmp_path: Path
) -> None:
    scan = tmp_path / "supine.nii.gz"
    nib.save(
        nib.Nifti1Image(SUPINE.apply(phantom.ct), np.diag([SPACING_MM, SPACING_MM, SPACING_MM, 1])), scan
    )

    result = segment_file(scan, tmp_path / "anatomy", cards=[voxelwise])
    header_only = segment_file(scan, tmp_path / "header", cards=[voxelwise], orient="header")

    entry = json.loads(result.manifest_path.read_text())["orientation"]
    assert entry["header"] == "RAS" and entry["agrees_with_header"] is False
    assert entry["summary"].startswith("Header and anatomy disagree.")
    assert "on its back (supine)" in entry["summary"]
    assert entry["applied"]["ornt"] == [list(row) for row in SUPINE.inverse().ornt]
    assert entry["confidence"] >= 0.5 and entry["findings"]
    assert load_nifti(str(result.labels_path)).shape == phantom.ct.shape
    assert header_only.manifest["orientation"]["mode"] == "header"


def test_a_head_without_a_closed_braincase_keeps_the_header(phantom: Phantom) -> None:
    # The phantom's skull is left open where skin and fat come close: its head alone (the first
    # 28 mm from the nose) has no braincase to read its top and nose from.
    head = phantom.ct[:, :, -round(28 / SPACING_MM) :]

    finding = find_orientation(LATERAL.apply(head), spacing(LATERAL))

    assert finding.kept == "header" and finding.transform.is_identity
    assert "no braincase found" in finding.findings[1]


def test_the_command_line_says_when_it_turned_a_scan_and_can_be_told_not_to(
    phantom: Phantom, voxelwise: ModelCard, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    scan = tmp_path / "lateral.nii.gz"
    nib.save(
        nib.Nifti1Image(LATERAL.apply(phantom.ct), np.diag([SPACING_MM, SPACING_MM, SPACING_MM, 1])), scan
    )
    common = ["segment", str(scan), "--model", str(voxelwise.folder), "--task", "organs", "--quiet"]

    turned = main([*common, "--out", str(tmp_path / "anatomy")])
    said = capsys.readouterr().out
    kept = main([*common, "--out", str(tmp_path / "header"), "--orient", "header"])

    assert turned == 0 and kept == 0
    assert "orientation: Header and anatomy disagree." in said and "on its side" in said
    assert "orientation:" not in capsys.readouterr().out
    manifest = json.loads((tmp_path / "header" / "manifest.json").read_text())
    assert manifest["orientation"]["mode"] == "header"


@pytest.fixture(scope="module")
def real_torso() -> Phantom:
    """CT of the real Digimouse anatomy cut shoulders to hips (44 mm: shorter than a whole body, no
    skull in view), the field of view of a torso scan, at 0.28 mm."""
    return atlas.render_ct(atlas.load(DIGIMOUSE.parent), seed=0, crop="torso", spacing_mm=0.28)


def test_a_real_torso_is_put_back_from_every_rotation(real_torso: Phantom) -> None:
    # Read as a head before (it is under 45 mm), with no braincase: the header was kept, and a
    # supine torso reached the models upside down (kidneys Dice 0.00, 117 mm3 of "tumor").
    spacing_mm = (0.28, 0.28, 0.28)
    for pose in (p for p in POSES if not p.is_mirror):
        finding = find_orientation(pose.apply(real_torso.ct), pose.spacing(spacing_mm))

        assert finding.kept == "left-right", pose.describe()
        assert pose.then(finding.transform).is_identity, pose.describe()
        assert "A trunk without its head" in finding.findings[1]


@pytest.mark.parametrize("length_mm", [25, 30])
def test_a_trunk_cut_mostly_through_the_thorax_keeps_the_header(real_torso: Phantom, length_mm: int) -> None:
    # The torso's cranial 25-30 mm: its sternum is in as many cross-sections as its spine and its
    # lungs fill the middle, so which end and side is which is not sure; the header stays.
    cut = real_torso.ct[:, :, -round(length_mm / 0.28) :]
    spacing_mm = (0.28, 0.28, 0.28)
    for pose in (p for p in POSES if not p.is_mirror):
        finding = find_orientation(pose.apply(cut), pose.spacing(spacing_mm))

        assert finding.kept == "header" and finding.transform.is_identity, pose.describe()


@pytest.mark.parametrize("layout", ["C", "F", "turned view"])
def test_block_means_and_maxima_alone_are_those_of_the_pool(layout: str) -> None:
    # The tilt finder reads one of the two: computed alone they must be the same numbers.
    rng = np.random.default_rng(4)
    volume = rng.normal(0.0, 300.0, (23, 17, 30)).astype(np.float32)
    if layout == "F":
        volume = np.asfortranarray(volume)
    elif layout == "turned view":
        volume = np.asfortranarray(volume).transpose(2, 0, 1)[::-1]
    factors = (3, 2, 4)
    mean, peak = pool(volume, factors)

    np.testing.assert_array_equal(block_mean(volume, factors), mean)
    np.testing.assert_array_equal(block_max(volume, factors), peak)
    assert peak.shape == tuple(n // f for n, f in zip(volume.shape, factors, strict=True))
    np.testing.assert_allclose(peak[1, 2, 3], volume[3:6, 4:6, 12:16].max())
    np.testing.assert_allclose(mean[1, 2, 3], volume[3:6, 4:6, 12:16].mean(), rtol=1e-5)
