"""The robustness report: every variant moves the truth exactly with the CT, and the command runs."""

from __future__ import annotations

import itertools
import json
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from inference.phantom import generate_phantom
from inference.pipeline.blur import blur_mm
from inference.pipeline.noise import noise_hu
from inference.registry import ModelCard
from inference.structures import BY_NAME
from inference.training import robustness
from inference.training.robustness import Case, PhantomSource
from tests.conftest import SHARED
from tests.inference.pipeline.tiny_models import write_threshold_model

# Coarse voxels keep each phantom well under a second; the anatomy is the same in millimetres.
SPACING_MM = 0.63
WINDOW = {"kind": "window", "low_hu": -1000, "high_hu": 1000}


def _world(affine: np.ndarray, index: tuple[int, int, int]) -> np.ndarray:
    return (affine @ np.array([*index, 1.0]))[:3]


@pytest.fixture(scope="module")
def case() -> Case:
    phantom = generate_phantom(9000, spacing_mm=SPACING_MM, n_annotators=0)
    return Case(name="p", ct=phantom.ct, labels=phantom.labels, affine=phantom.affine, meta=phantom.meta)


def test_crops_cut_ct_and_truth_alike_and_keep_world_positions(case: Case) -> None:
    torso = robustness.torso(case)
    z_lo = round((torso.affine[2, 3] - case.affine[2, 3]) / SPACING_MM)
    nz = torso.ct.shape[2]
    assert np.array_equal(torso.ct, case.ct[:, :, z_lo : z_lo + nz])
    assert np.array_equal(torso.labels, case.labels[:, :, z_lo : z_lo + nz])
    assert np.allclose(_world(torso.affine, (3, 4, 0)), _world(case.affine, (3, 4, z_lo)))
    kept = set(np.unique(torso.labels))
    for name in ("heart", "liver", "kidney_left", "lung_right", "bladder"):
        assert BY_NAME[name].id in kept
    assert BY_NAME["brain"].id not in kept

    head = robustness.head(case)
    assert head.ct.shape[2] < 0.3 * case.ct.shape[2]
    assert BY_NAME["brain"].id in set(np.unique(head.labels))
    assert BY_NAME["liver"].id not in set(np.unique(head.labels))
    assert np.array_equal(head.ct, case.ct[:, :, -head.ct.shape[2] :])


def test_intensity_variants_leave_the_truth_and_map_hu_exactly(case: Case) -> None:
    clipped = robustness.clip_hu(case)
    assert clipped.ct.min() >= -400 and clipped.ct.max() <= 1000
    inside = (case.ct > -400) & (case.ct < 1000)
    assert np.array_equal(clipped.ct[inside], case.ct[inside])
    for delta in (60, -60):
        shifted = robustness.offset_hu(case, delta)
        assert shifted.ct.dtype == np.int16
        assert np.array_equal(shifted.ct.astype(np.int32), case.ct.astype(np.int32) + delta)
        assert shifted.labels is case.labels
    noisy = robustness.more_noise(case, 3.0, seed=1)
    added = noisy.ct.astype(np.float32) - case.ct
    expected = case.meta["scanner"]["noise_hu"] * np.sqrt(8.0)
    assert added.std() == pytest.approx(expected, rel=0.03)
    assert np.array_equal(robustness.more_noise(case, 3.0, seed=1).ct, noisy.ct)

    u8 = robustness.rescale_8bit(case)
    assert u8.ct.dtype == np.uint8 and u8.ct.min() == 0 and u8.ct.max() == 255
    low, high = u8.meta["rescale"]["low_hu"], u8.meta["rescale"]["high_hu"]
    step = (high - low) / 255
    back = u8.ct.astype(np.float64) * step + low
    assert np.abs(back - case.ct).max() <= step / 2 + 1e-6
    assert u8.labels is case.labels


def test_rotations_about_the_long_axis_carry_the_truth(case: Case) -> None:
    supine = robustness.rotate_long_axis(case, 2)
    assert np.array_equal(supine.affine, case.affine)  # header unchanged
    assert np.array_equal(robustness.rotate_long_axis(supine, 2).ct, case.ct)
    lateral = case
    for _ in range(4):
        lateral = robustness.rotate_long_axis(lateral, 1)
    assert np.array_equal(lateral.ct, case.ct) and np.array_equal(lateral.labels, case.labels)
    # Labels follow the CT: the same intensities under every label, and the liver (on the right,
    # +x, in the prone phantom) and the spine-side kidneys cross to the other side of the array.
    liver = BY_NAME["liver"].id
    assert np.array_equal(np.sort(supine.ct[supine.labels == liver]), np.sort(case.ct[case.labels == liver]))
    centre_x = (case.ct.shape[0] - 1) / 2
    assert np.argwhere(case.labels == liver)[:, 0].mean() > centre_x
    assert np.argwhere(supine.labels == liver)[:, 0].mean() < centre_x
    kidney = BY_NAME["kidney_left"].id
    centre_y = (case.ct.shape[1] - 1) / 2
    assert np.argwhere(case.labels == kidney)[:, 1].mean() < centre_y
    assert np.argwhere(supine.labels == kidney)[:, 1].mean() > centre_y


def test_every_axis_permutation_is_undone_by_a_header_aware_reader(case: Case) -> None:
    small = robustness.crop_z(case, 40, 70)
    for perm, flips in itertools.product(
        itertools.permutations(range(3)), itertools.product((False, True), repeat=3)
    ):
        moved = robustness.permute_axes(small, perm, flips)
        back_ct = nib.as_closest_canonical(nib.Nifti1Image(moved.ct, moved.affine))
        back_labels = nib.as_closest_canonical(nib.Nifti1Image(moved.labels, moved.affine))
        assert np.array_equal(np.asarray(back_ct.dataobj), small.ct), (perm, flips)
        assert np.array_equal(np.asarray(back_labels.dataobj), small.labels), (perm, flips)
        assert np.allclose(back_ct.affine, small.affine)
    drawn = {robustness.orientation_choice(seed) for seed in range(200)}
    assert ((0, 1, 2), (False, False, False)) not in drawn
    assert len(drawn) > 30


def test_neighbour_sits_beside_without_moving_the_first_mouse(case: Case) -> None:
    other_phantom = generate_phantom(9001, spacing_mm=SPACING_MM, n_annotators=0)
    other = Case(name="q", ct=other_phantom.ct, labels=other_phantom.labels, affine=other_phantom.affine)
    for on_right in (True, False):
        both = robustness.beside(case, other, on_right, seed=3)
        assert both.region is not None
        region = both.region[0]
        nx, ny, nz = case.ct.shape
        part = both.ct[region, -ny:, -nz:]
        assert np.array_equal(part, case.ct) and np.array_equal(both.labels[region, -ny:, -nz:], case.labels)
        start = region.start
        offset = (both.ct.shape[1] - ny, both.ct.shape[2] - nz)
        assert np.allclose(
            _world(both.affine, (start + 5, offset[0] + 6, offset[1] + 7)), _world(case.affine, (5, 6, 7))
        )
        # The neighbour's organs are in the truth, on its own side.
        rest = np.ones(both.ct.shape[0], bool)
        rest[region] = False
        assert (both.labels[rest] == BY_NAME["heart"].id).sum() == (other.labels == BY_NAME["heart"].id).sum()
        assert both.ct.shape[0] == nx + other.ct.shape[0]


def test_a_wide_field_keeps_the_mouse_where_it_was_in_the_world(case: Case) -> None:
    wide = robustness.widen(case, 2.5, seed=4)
    nx, ny, nz = case.ct.shape
    px, py = (wide.ct.shape[0] - nx) // 2, (wide.ct.shape[1] - ny) // 2

    assert wide.ct.shape[2] == nz and wide.ct.shape[0] >= 2.4 * nx and wide.ct.shape[1] >= 2.4 * ny
    assert np.array_equal(wide.ct[px : px + nx, py : py + ny], case.ct)
    assert np.array_equal(wide.labels[px : px + nx, py : py + ny], case.labels)
    assert wide.labels.sum() == case.labels.sum() and wide.region is None
    assert np.allclose(_world(wide.affine, (px + 5, py + 6, 7)), _world(case.affine, (5, 6, 7)))
    assert (wide.ct > -500).mean() < 0.2 * (case.ct > -500).mean()


def test_bed_is_added_under_the_mouse_only(case: Case) -> None:
    seed = next(
        s for s in range(9000, 9100) if not generate_phantom(s, spacing_mm=1.0, n_annotators=0).meta["bed"]
    )
    phantom = generate_phantom(seed, spacing_mm=SPACING_MM, n_annotators=0)
    plain = Case(name="b", ct=phantom.ct, labels=phantom.labels, affine=phantom.affine, meta=phantom.meta)
    bedded = robustness.add_bed(plain, seed=seed)
    assert bedded.meta["bed_added"] is True
    changed = bedded.ct != plain.ct
    assert changed.sum() > 1000
    assert np.all(bedded.ct[changed] > plain.ct[changed])
    assert not bedded.labels[changed].any()
    # Under the mouse: at the body's centre column the bed lies ventral to (beyond) the body.
    body_y = np.flatnonzero((plain.ct > -500).any(axis=(0, 2)))
    x_mid = plain.ct.shape[0] // 2
    bed_y = np.flatnonzero(changed[x_mid].any(axis=1) & (bedded.ct[x_mid] > 0).any(axis=1))
    assert bed_y.size and bed_y.min() > body_y.max() - 2
    # A phantom generated with a bed keeps its own.
    assert robustness.add_bed(replace_meta(plain, bed=True), seed=seed).ct is plain.ct


def _moved_back(moved: Case, case: Case) -> tuple[np.ndarray, np.ndarray]:
    """``moved``'s CT and labels over ``case``'s grid (a widened field cut back to it), after
    checking that the world positions of ``case``'s voxels did not move."""
    offset = np.rint(np.linalg.solve(moved.affine, case.affine)[:3, 3]).astype(int)
    assert np.allclose(moved.affine @ np.r_[offset, 1.0], case.affine @ np.r_[0.0, 0.0, 0.0, 1.0])
    box = tuple(slice(o, o + n) for o, n in zip(offset, case.ct.shape, strict=True))
    return moved.ct[box], moved.labels[box]


def test_a_holder_tube_rings_the_mouse_and_touches_it(case: Case) -> None:
    held = robustness.holder_tube(case, seed=5)
    _, labels = _moved_back(held, case)
    pads = [((m - n) // 2,) * 2 for m, n in zip(held.ct.shape, case.ct.shape, strict=True)]
    body = np.pad(case.ct > -500, pads)

    assert np.array_equal(labels, case.labels) and held.labels.sum() == case.labels.sum()
    assert held.meta["holder_mm"] > 0
    # Only the tube was added, never over the mouse; every slice has its ring of plastic.
    raised = held.ct > np.pad(case.ct, pads, constant_values=-1000) + 300
    assert not (raised & (held.labels > 0)).any()
    wall = (held.ct > 0) & ~body
    assert wall.any(axis=(0, 1)).all()
    # The tube is round about the body (as wide in x as in y) and touches it.
    xs, ys = np.nonzero(wall.any(axis=2))
    assert abs((xs.max() - xs.min()) - (ys.max() - ys.min())) <= 2
    assert (ndimage.binary_dilation(body, iterations=2) & wall).any()
    assert np.array_equal(robustness.holder_tube(case, seed=5).ct, held.ct)


def test_a_calibration_rod_lies_beside_the_mouse_not_in_it(case: Case) -> None:
    rodded = robustness.calibration_rod(case, seed=5)
    ct, labels = _moved_back(rodded, case)

    assert np.array_equal(labels, case.labels) and rodded.meta["rod_hu"] == robustness.ROD_HU
    dense = np.argwhere(rodded.ct > 600)
    rod = dense[dense[:, 0] >= case.ct.shape[0]] if rodded.ct.shape[0] > case.ct.shape[0] else dense
    body_x = np.flatnonzero((case.ct > -500).any(axis=(1, 2))).max()
    beside = dense[dense[:, 0] > body_x + 0.5 / SPACING_MM]
    assert len(beside) and len(rod)
    # 1 mm of air between the body and the rod, and the rod spans the middle of the field only.
    assert beside[:, 0].min() * SPACING_MM >= (body_x + 1) * SPACING_MM + 0.5
    zs = np.unique(beside[:, 2])
    assert zs.min() >= 0.15 * case.ct.shape[2] and zs.max() <= 0.85 * case.ct.shape[2]
    # The mouse itself reads as before, away from the rod's blur.
    assert np.array_equal(ct[: body_x - 2], case.ct[: body_x - 2])


def test_contrast_agents_brighten_the_gut_and_bladder_and_leave_the_truth(case: Case) -> None:
    gut_ids = [BY_NAME["stomach"].id, BY_NAME["intestine"].id]
    gut = np.isin(case.labels, gut_ids)
    oral = robustness.gut_contrast(case, seed=5)
    lift = oral.ct.astype(np.float32) - case.ct.astype(np.float32)

    assert oral.labels is case.labels and oral.meta["gut_contrast_hu"] == robustness.GUT_CONTRAST_HU
    bright = lift > 0.5 * robustness.GUT_CONTRAST_HU
    assert 0.2 < bright[gut].mean() < 0.8  # about half the gut, in patches
    assert not bright[~ndimage.binary_dilation(gut, iterations=2)].any()
    assert np.array_equal(robustness.gut_contrast(case, seed=5).ct, oral.ct)

    iodine = robustness.bladder_contrast(case)
    lift = iodine.ct.astype(np.float32) - case.ct.astype(np.float32)
    bladder = case.labels == BY_NAME["bladder"].id
    assert (
        iodine.labels is case.labels and iodine.meta["bladder_contrast_hu"] == robustness.BLADDER_CONTRAST_HU
    )
    assert lift[bladder].max() > 0.5 * robustness.BLADDER_CONTRAST_HU
    assert not (lift[~ndimage.binary_dilation(bladder, iterations=2)] > 1.0).any()


def test_cupping_darkens_the_body_towards_its_centre_and_leaves_the_truth(case: Case) -> None:
    cupped = robustness.cupping(case, 50.0)
    drop = case.ct.astype(np.float32) - cupped.ct.astype(np.float32)

    assert cupped.labels is case.labels and cupped.meta["cupping"] == 50.0
    assert drop.min() >= -0.5 and 49.0 <= drop.max() <= 50.5
    assert np.all(np.abs(drop[[0, -1]]) <= 0.5)  # the air round the mouse is untouched
    z = int(np.argmax((case.labels == BY_NAME["liver"].id).sum(axis=(0, 1))))
    body = np.argwhere(case.ct[:, :, z] > -400)
    centre = tuple(int(v) for v in np.round(body.mean(axis=0)))
    rim = tuple(int(v) for v in body[np.argmin(body[:, 1])])
    assert drop[(*centre, z)] > drop[(*rim, z)] + 20.0


def test_rings_are_the_same_in_every_slice_and_leave_the_truth(case: Case) -> None:
    ringed = robustness.rings(case, 60.0, seed=3)
    added = ringed.ct.astype(np.float32) - case.ct.astype(np.float32)
    inside = (case.ct > -32000) & (case.ct < 32000)

    assert ringed.labels is case.labels and ringed.meta["rings"] == 60.0
    assert 20.0 < np.abs(added[inside]).max() <= 61.0
    assert np.allclose(added[:, :, 0], added[:, :, -1], atol=1.0)
    assert np.array_equal(ringed.ct, robustness.rings(case, 60.0, seed=3).ct)


def test_streaks_run_through_dense_bone_in_a_few_slices_and_leave_the_truth(case: Case) -> None:
    streaked = robustness.streaks(case, 120.0, seed=3)
    added = streaked.ct.astype(np.float32) - case.ct.astype(np.float32)
    slices = np.flatnonzero(np.abs(added).max(axis=(0, 1)) > 30.0)

    assert streaked.labels is case.labels and streaked.meta["streaks"] == 120.0
    assert 60.0 <= np.abs(added).max() <= 2 * 120.0 + 1.0  # two streaks may cross
    assert 0 < slices.size < case.ct.shape[2] // 2  # a few slabs, not the whole mouse
    assert np.array_equal(streaked.ct, robustness.streaks(case, 120.0, seed=3).ct)
    no_bone = replace(case, ct=np.where(case.ct > 600, 500, case.ct).astype(case.ct.dtype))
    assert np.array_equal(robustness.streaks(no_bone, 120.0, seed=3).ct, no_bone.ct)


def test_breathing_blurs_the_diaphragm_s_region_only_and_leaves_the_truth(case: Case) -> None:
    breathed = robustness.breathing(case, 2.0)  # two voxels each way at 0.63 mm
    changed = np.flatnonzero((breathed.ct != case.ct).any(axis=(0, 1)))
    dome = int(np.flatnonzero((case.labels == BY_NAME["liver"].id).any(axis=(0, 1))).max())
    reach = robustness.BREATHING_REACH_MM / SPACING_MM

    assert breathed.labels is case.labels and breathed.meta["breathing_mm"] == 2.0
    assert changed.size and dome - reach <= changed.min() and changed.max() <= dome + reach

    # Averaging along the long axis smooths the lungs' edge at the dome: fewer steep steps there.
    def steep(ct: np.ndarray) -> int:
        return int((np.abs(np.diff(ct[:, :, dome - 3 : dome + 4].astype(np.float32), axis=2)) > 300).sum())

    assert steep(breathed.ct) < steep(case.ct)


def replace_meta(case: Case, **changes: object) -> Case:
    return Case(
        name=case.name, ct=case.ct, labels=case.labels, affine=case.affine, meta={**case.meta, **changes}
    )


def test_false_positive_volume_counts_components_touching_no_truth() -> None:
    truth = np.zeros((20, 20, 20), bool)
    truth[2:6, 2:6, 2:6] = True
    pred = np.zeros_like(truth)
    pred[1:6, 2:6, 2:6] = True  # the true lesion, a little too big: not a false positive
    pred[12:14, 12:14, 12:14] = True  # 8 voxels away from anything true
    assert robustness.false_positive_mm3(pred, truth, 0.5) == pytest.approx(4.0)
    assert robustness.false_positive_mm3(pred, np.zeros_like(truth), 0.5) == pytest.approx(0.5 * pred.sum())
    pred[16, 16, 16] = True  # a one-voxel speck: a lab counts it as one more metastasis
    assert robustness.false_positives(pred, truth)[1] == 2
    assert robustness.false_positives(pred, np.zeros_like(truth))[1] == 3
    assert robustness.false_positives(np.zeros_like(truth), truth)[1] == 0


def test_other_voxel_sizes_are_the_same_mouse(tmp_path: Path) -> None:
    source = PhantomSource(tmp_path / "data", tmp_path / "cache", spacing_mm=SPACING_MM)
    base = source.native(9000)
    coarse = source.at_spacing(9000, 0.84)
    assert (tmp_path / "cache" / "native_09000_0.84mm" / "meta.json").is_file()
    assert coarse.spacing_mm == pytest.approx([0.84] * 3)
    for name in ("liver", "heart", "brain"):
        sid = BY_NAME[name].id
        v_base = (base.labels == sid).sum() * SPACING_MM**3
        v_coarse = (coarse.labels == sid).sum() * 0.84**3
        assert v_coarse == pytest.approx(v_base, rel=0.15), name


@pytest.fixture
def tiny_models(tmp_path: Path) -> list[ModelCard]:
    spacing = (SPACING_MM,) * 3
    # Voxel by voxel: soft tissue (-100..600 HU) is "liver", brighter is "bones"; the tumor model
    # calls everything above 980 HU tumor (the densest bone: false positives to count).
    organs = write_threshold_model(
        tmp_path / "organs",
        structures=(0, 4, 11),
        thresholds=(0.45, 0.8),
        spacing_mm=spacing,
        normalisation=WINDOW,
    )
    tumor = write_threshold_model(
        tmp_path / "tumor",
        name="tiny-tumor",
        task="tumor",
        structures=(0, 14),
        thresholds=(0.99,),
        activation="sigmoid",
        spacing_mm=spacing,
        normalisation=WINDOW,
        disagreement=False,
    )
    return [organs, tumor]


def test_command_runs_end_to_end_and_writes_the_json(
    tmp_path: Path, tiny_models: list[ModelCard], capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "report.json"
    variants = "native,supine,permuted,torso,8bit,neighbour,digimouse_torso"
    args = ["--n", "1", "--variants", variants, "--spacing", str(SPACING_MM), "--threads", "1"]
    args += ["--data", str(tmp_path / "data"), "--cache", str(tmp_path / "cache"), "--json", str(out)]
    args += ["--digimouse", str(SHARED / "realdata" / "digimouse")]
    for card in tiny_models:
        args += ["--model", str(card.folder)]
    robustness.main(args)
    printed = capsys.readouterr().out
    report = json.loads(out.read_text())
    assert list(report["variants"]) == variants.split(",")
    assert [m["name"] for m in report["models"]] == ["tiny-organs", "tiny-tumor"]
    native = report["variants"]["native"]
    assert native["summary"]["cases"] == 1 and native["cases"][0]["case"] == "native_09000_0.63mm"
    assert set(native["cases"][0]["dice"]) == {"liver", "bones"}
    assert native["summary"]["dice"]["bones"] > 0.3
    # A voxel-wise model gives the same answer whatever the array's orientation, when the
    # pipeline reads the header (permuted) and when the rotation is exact (supine).
    for variant in ("supine", "permuted"):
        assert report["variants"][variant]["cases"][0]["dice"] == native["cases"][0]["dice"], variant
    assert native["cases"][0]["tumor_fp_mm3"] > 0  # bone called tumor: counted
    assert report["variants"]["8bit"]["cases"][0]["dtype"] == "uint8"
    perm, flips = robustness.orientation_choice(9000)
    assert report["variants"]["permuted"]["cases"][0]["transform"] == {
        "permutation": list(perm),
        "flips": list(flips),
    }
    assert report["variants"]["neighbour"]["cases"][0]["transform"]["neighbour"] == "native_09001_0.63mm"
    digi = report["variants"]["digimouse_torso"]["cases"][0]
    assert "intestine" not in digi["dice"] and digi["true_tumor_mm3"] == 0
    assert report["verdict"]["pass"] is False  # a threshold model finds no heart
    assert "native" in printed and "digimouse_torso" in printed and "verdict" in printed
    markdown = robustness.markdown_table(report).splitlines()
    assert len(markdown) == 2 + len(report["variants"])
    assert markdown[2].startswith("| native | 1 | ") and markdown[-1].endswith("| FAIL |")


def test_a_part_way_roll_turns_the_truth_with_the_image(case: Case) -> None:
    rolled = robustness.roll_long_axis(case, 20.0)
    assert np.array_equal(rolled.affine, case.affine)  # header unchanged
    assert rolled.ct.dtype == case.ct.dtype and rolled.ct.shape[2] == case.ct.shape[2]

    def centre(c: Case, name: str) -> np.ndarray:
        return np.argwhere(c.labels == BY_NAME[name].id)[:, :2].mean(axis=0)

    def angle(c: Case) -> float:
        d = centre(c, "lung_right") - centre(c, "lung_left")
        return float(np.degrees(np.arctan2(d[1], d[0])))

    # The lungs' left-right line turns by the roll (sign: ndimage.rotate's, axes (0, 1)).
    assert abs(abs(angle(rolled) - angle(case)) - 20.0) < 2.0
    liver = BY_NAME["liver"].id
    kept = (rolled.labels == liver).sum() / (case.labels == liver).sum()
    assert 0.97 < kept < 1.03  # nothing cut off by the turn
    assert abs(np.median(rolled.ct[rolled.labels == liver]) - np.median(case.ct[case.labels == liver])) < 10


@pytest.mark.skipif(not (SHARED / "realdata" / "digimouse").is_dir(), reason="Digimouse atlas not present")
def test_small_and_large_mice_scale_every_organ_with_the_body() -> None:
    atlas = SHARED / "realdata" / "digimouse"
    cases = {v: robustness.digimouse_case(v, SPACING_MM, atlas) for v in robustness.DIGIMOUSE_VARIANTS[1:2]}
    for size in robustness.MOUSE_SIZES:
        cases[size] = robustness.digimouse_case(f"digimouse_torso_{size}", SPACING_MM, atlas)
    assert cases["small"].name == "digimouse_torso_small" and cases["large"].name == "digimouse_torso_large"
    plain = cases["digimouse_torso"]
    for size, factor in robustness.MOUSE_SIZES.items():
        for name in ("liver", "heart", "lung_left"):
            sid = BY_NAME[name].id
            ratio = (cases[size].labels == sid).sum() / (plain.labels == sid).sum()
            # Volumes go with the cube of the length (on a 0.63 mm grid, to within a few %).
            assert ratio == pytest.approx(factor**3, rel=0.08), (size, name)


ATLAS = SHARED / "realdata" / "digimouse"


@pytest.fixture(scope="module")
def atlas_torso() -> Case:
    """The atlas torso at the report's own 0.21 mm (on a coarser grid the tissue edges add to the
    noise and blur estimates)."""
    if not ATLAS.is_dir():
        pytest.skip("Digimouse atlas not present")
    return robustness.digimouse_case("digimouse_torso", 0.21, ATLAS)


def test_the_noisy_atlas_torso_is_the_torso_at_a_low_dose_scans_noise(atlas_torso: Case) -> None:
    plain = atlas_torso
    noisy = robustness.digimouse_case("digimouse_torso_noisy", 0.21, ATLAS)

    assert noisy.name == "digimouse_torso_noisy" and np.array_equal(noisy.labels, plain.labels)
    assert noise_hu(noisy.ct.astype(np.float32)) == pytest.approx(robustness.NOISY_HU, rel=0.1)
    assert noise_hu(plain.ct.astype(np.float32)) == pytest.approx(20.0, rel=0.15)


def test_a_softer_reconstruction_blurs_the_scan_and_leaves_the_truth(case: Case) -> None:
    blurred = robustness.blur(case, 0.3)

    assert blurred.labels is case.labels and blurred.meta["blurred_mm"] == 0.3
    assert blurred.ct.dtype == case.ct.dtype and blurred.ct.shape == case.ct.shape
    # Blur keeps the levels and softens the steps: the skin's steepest steps are gentler.
    steps = np.abs(np.diff(case.ct.astype(np.float32), axis=0)).max()
    assert np.abs(np.diff(blurred.ct.astype(np.float32), axis=0)).max() < 0.8 * steps
    assert abs(float(blurred.ct.mean()) - float(case.ct.mean())) < 5.0


def test_the_blurred_atlas_torso_reads_as_blurred(atlas_torso: Case) -> None:
    plain = atlas_torso
    blurred = robustness.digimouse_case("digimouse_torso_blurred", 0.21, ATLAS)

    assert blurred.name == "digimouse_torso_blurred" and np.array_equal(blurred.labels, plain.labels)
    read = blur_mm(blurred.ct.astype(np.float32), blurred.spacing_mm)
    assert read == pytest.approx(robustness.BLURRED_MM, abs=0.04)
    assert blur_mm(plain.ct.astype(np.float32), plain.spacing_mm) == pytest.approx(0.15, abs=0.04)


def test_thick_slices_average_runs_of_slices_and_keep_each_runs_place(case: Case) -> None:
    thick = robustness.thicken(case, 2)
    nz = case.ct.shape[2] // 2

    assert thick.ct.shape == (*case.ct.shape[:2], nz) and thick.ct.dtype == np.int16
    assert thick.meta["thick_slices"] == 2
    assert thick.spacing_mm == pytest.approx([SPACING_MM, SPACING_MM, 2 * SPACING_MM])
    mean = case.ct[:, :, 6:8].astype(np.float32).mean(axis=2)
    assert np.abs(thick.ct[:, :, 3] - mean).max() <= 0.5
    assert np.array_equal(thick.labels[:, :, 3], case.labels[:, :, 6])
    # A thick slice lies at the middle of the slices it averages.
    middle = (_world(case.affine, (3, 4, 6)) + _world(case.affine, (3, 4, 7))) / 2
    assert np.allclose(_world(thick.affine, (3, 4, 3)), middle)


def test_the_thick_atlas_torso_is_the_fine_torso_in_pairs() -> None:
    if not ATLAS.is_dir():
        pytest.skip("Digimouse atlas not present")
    thick = robustness.digimouse_case("digimouse_torso_thick", 0.21, ATLAS)

    assert thick.name == "digimouse_torso_thick"
    assert thick.spacing_mm == pytest.approx([0.14, 0.14, 0.28])
    assert thick.meta["thick_slices"] == robustness.THICK_SLICES
    # The blur read is in-plane: averaging slices leaves it at the render's 0.15 mm.
    assert blur_mm(thick.ct.astype(np.float32), thick.spacing_mm) == pytest.approx(0.15, abs=0.04)


def test_the_fine_and_coarse_atlas_torsos_are_the_torso_on_other_voxels(atlas_torso: Case) -> None:
    def organ_mm3(case: Case, name: str) -> float:
        return float((case.labels == BY_NAME[name].id).sum() * np.prod(case.spacing_mm))

    for variant, voxel in (("digimouse_torso_fine", 0.1), ("digimouse_torso_coarse", 0.4)):
        other = robustness.digimouse_case(variant, 0.21, ATLAS)

        assert other.name == variant
        assert other.spacing_mm == pytest.approx([voxel] * 3)
        # The same mouse, cut at the same landmarks: each organ's volume within a few per cent.
        for name in ("heart", "liver", "kidney_left"):
            assert organ_mm3(other, name) == pytest.approx(organ_mm3(atlas_torso, name), rel=0.08)


def test_the_sharp_atlas_torso_is_the_torso_crisper_and_quieter(atlas_torso: Case) -> None:
    sharp = robustness.digimouse_case("digimouse_torso_sharp", 0.21, ATLAS)

    assert sharp.name == "digimouse_torso_sharp" and np.array_equal(sharp.labels, atlas_torso.labels)
    assert noise_hu(sharp.ct.astype(np.float32)) < 10.0
    read = blur_mm(sharp.ct.astype(np.float32), sharp.spacing_mm)
    default = blur_mm(atlas_torso.ct.astype(np.float32), atlas_torso.spacing_mm)
    assert read is not None and default is not None
    assert read == pytest.approx(robustness.SHARP_BLUR_MM, abs=0.04)
    assert read < default


def test_dim_bone_brings_bright_voxels_down_and_leaves_soft_tissue(case: Case) -> None:
    dim = robustness.dim_bone(case, 0.4)
    ct, before = dim.ct.astype(np.float32), case.ct.astype(np.float32)
    soft = before <= robustness.DIM_FROM_HU
    bright = before > 400.0

    assert np.array_equal(dim.labels, case.labels) and dim.ct.dtype == case.ct.dtype
    assert np.array_equal(ct[soft], before[soft])
    expected = robustness.DIM_FROM_HU + 0.4 * (before[bright] - robustness.DIM_FROM_HU)
    assert np.abs(ct[bright] - expected).max() <= 0.5  # whole HU, as stored
    assert dim.meta["dim_bone"] == 0.4


def test_each_tissue_draw_is_its_own_renderers_tissue_model_and_repeats_for_its_seed() -> None:
    first, again, other = robustness.tissue_model(0), robustness.tissue_model(0), robustness.tissue_model(1)

    assert first == again and first != other
    for draw in (first, other):
        hu, noise, blur = draw
        assert set(hu) == set(robustness.TISSUE_RANGES_HU)
        for tissue, (low, high) in robustness.TISSUE_RANGES_HU.items():
            assert low <= hu[tissue] <= high
        # CT's order: lungs below soft tissue, soft tissue below bone, whatever the draw.
        assert hu["lung"] < min(hu["soft_tissue"], hu["liver"], hu["heart"]) and hu["bone"] > 450.0
        assert robustness.TISSUE_NOISE_HU[0] <= noise <= robustness.TISSUE_NOISE_HU[1]
        assert robustness.TISSUE_BLUR_MM[0] <= blur <= robustness.TISSUE_BLUR_MM[1]


@pytest.mark.skipif(not ATLAS.is_dir(), reason="Digimouse atlas not present")
def test_the_tissue_draws_render_the_same_torso_with_other_intensities(atlas_torso: Case) -> None:
    draws = [robustness.digimouse_case("digimouse_torso_tissues", 0.21, ATLAS, seed) for seed in (0, 1)]
    dim = robustness.digimouse_case("digimouse_torso_dimbone", 0.21, ATLAS)

    assert [d.name for d in draws] == ["digimouse_torso_tissues_0", "digimouse_torso_tissues_1"]
    liver = BY_NAME["liver"].id
    for seed, drawn in enumerate(draws):
        assert np.array_equal(drawn.labels, atlas_torso.labels)
        hu = robustness.tissue_model(seed)[0]
        assert np.median(drawn.ct[drawn.labels == liver]) == pytest.approx(hu["liver"], abs=3.0)
    bones = BY_NAME["bones"].id
    assert (
        np.percentile(dim.ct[dim.labels == bones], 90)
        < 560.0
        < np.percentile(atlas_torso.ct[atlas_torso.labels == bones], 90)
    )


def test_the_report_names_the_organs_the_qc_would_call_unstable() -> None:
    """As ``qc.check_run`` reads them: organs the run drew, not cut by the field, under 0.80."""
    labels = np.zeros((40, 40, 40), np.uint8)
    labels[10:20, 10:20, 10:20] = BY_NAME["liver"].id
    labels[25:35, 25:35, 0:8] = BY_NAME["heart"].id  # cut by the field's first plane
    agreement = {"liver": 0.6, "heart": 0.5, "kidney_left": 0.4, "lung_left": 0.95}

    assert robustness._unstable(labels, agreement, 0.21**3) == ["liver"]
