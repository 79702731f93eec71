"""Calibration on validation scans: score offsets, edge rules and the uncertainty map's outline bands."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from inference.registry import ModelCard
from inference.structures import BY_NAME
from inference.training.offsets import tune_offsets
from inference.training.outline import SMOOTHINGS_MM, tune_outline
from tests.inference.pipeline.conftest import WINDOW
from tests.inference.pipeline.tiny_models import write_threshold_model

LIVER = BY_NAME["liver"].id
LUNG = BY_NAME["lung_left"].id
AFFINE = np.diag([0.2, 0.2, 0.2, 1.0])


def _case(root: Path, name: str, shift: int) -> Path:
    """A blurred 450 HU block whose true outline lies at 225 HU (the tiny model cuts at 300 HU),
    and three annotators: one on the truth, one a voxel generous, one a voxel strict."""
    folder = root / name
    folder.mkdir(parents=True)
    truth = np.zeros((28, 28, 28), np.uint8)
    truth[7 + shift : 21, 8:20, 6 : 22 - shift] = LIVER
    ct = ndimage.gaussian_filter(np.where(truth > 0, 450.0, 0.0), 1.5).astype(np.float32)
    inside = truth > 0
    maps = {
        "A": truth,
        "B": np.where(ndimage.binary_dilation(inside), LIVER, 0),
        "C": np.where(ndimage.binary_erosion(inside), LIVER, 0),
    }
    nib.save(nib.Nifti1Image(ct, AFFINE), str(folder / "ct.nii.gz"))
    nib.save(nib.Nifti1Image(truth, AFFINE), str(folder / "labels.nii.gz"))
    for key, labels in maps.items():
        nib.save(nib.Nifti1Image(labels.astype(np.uint8), AFFINE), str(folder / f"annotator_{key}.nii.gz"))
    return folder


def test_offsets_grow_a_structure_drawn_too_small(tmp_path: Path) -> None:
    # Steepness 6: the liver's logit gains 6 per unit of the 0..1000 HU window, so an offset of
    # +0.6 moves its outline from 300 HU to 200 HU, near the true 225 HU.
    card = write_threshold_model(
        tmp_path / "m" / "1", structures=(0, LIVER), thresholds=(0.3,), normalisation=WINDOW, steepness=6.0
    )
    cases = [_case(tmp_path / "val", "a", 0), _case(tmp_path / "val", "b", 2)]

    offsets, report = tune_offsets(card, cases, threads=1)

    assert float(offsets[str(LIVER)]) > 0
    before, after = report["coarse_dice_before"][str(LIVER)], report["coarse_dice_after"][str(LIVER)]
    assert after > before


def test_outline_levels_cover_where_annotators_part(tmp_path: Path) -> None:
    card = write_threshold_model(
        tmp_path / "m" / "1", structures=(0, LIVER), thresholds=(0.225,), normalisation=WINDOW
    )
    cases = [_case(tmp_path / "val", "a", 0), _case(tmp_path / "val", "b", 2)]

    outline, report = tune_outline(card, [], {}, cases, threads=1)

    assert outline is not None and float(outline["levels"][str(LIVER)]) > 0
    sweep = [entry for key, entry in report.items() if key.startswith("smoothing")]
    assert len(outline["smoothing_mm"]) == 3 and len(sweep) == len(SMOOTHINGS_MM)
    best = max(entry["pooled_dice"] for entry in sweep)
    assert report["pooled_dice"] >= best
    assert best > 0.6  # the 2-voxel shell where the annotators part is found from the outline


def test_outline_bands_alone_are_tuned_again_with_every_other_rule_kept(tmp_path: Path) -> None:
    from inference.training.calibrate import retune_outline

    card = write_threshold_model(
        tmp_path / "m" / "1", structures=(0, LIVER), thresholds=(0.225,), normalisation=WINDOW
    )
    rule = {"structure": LIVER, "contrast_edge": 8.0, "margin_mm": 0.2}
    stale = {"smoothing_mm": [0.32, 0.32, 0.0], "levels": {str(LIVER): 0.1}}
    ruled = dataclasses.replace(
        card,
        postprocess={"refine": [rule], "uncertainty_outline": stale, "calibration": {"cases": ["x"]}},
    )
    cases = [_case(tmp_path / "val", "a", 0), _case(tmp_path / "val", "b", 2)]

    post = retune_outline(ruled, [], cases, threads=1)

    assert post["refine"] == [rule]  # every other rule as it was
    tuned = post["uncertainty_outline"]
    assert tuned != stale and float(tuned["levels"][str(LIVER)]) > 0
    assert post["calibration"]["cases"] == ["x"]
    assert post["calibration"]["uncertainty_outline_sweep"]["pooled_dice"] > 0.6
    # No annotators on any case: nothing to tune on, the bands stay as they were.
    for folder in cases:
        for extra in folder.glob("annotator_[BC].nii.gz"):
            extra.unlink()
    assert retune_outline(ruled, [], cases, threads=1)["uncertainty_outline"] == stale


def test_no_annotators_no_outline(tmp_path: Path) -> None:
    card = write_threshold_model(tmp_path / "m" / "1", structures=(0, LIVER), thresholds=(0.225,))
    folder = _case(tmp_path / "val", "a", 0)
    for extra in ("annotator_B.nii.gz", "annotator_C.nii.gz"):
        (folder / extra).unlink()

    assert tune_outline(card, [], {}, [folder], threads=1) == (None, {})


def test_the_head_threshold_is_tuned_without_the_other_models_outline_bands(tmp_path: Path) -> None:
    # Outline bands cover a combined map at 50 %: left in, every head threshold would score alike.
    from inference.training.calibrate import _without_outline

    card = write_threshold_model(tmp_path / "m" / "1", structures=(0, LIVER), thresholds=(0.225,))
    outline = {"smoothing_mm": [0.2, 0.2, 0.2], "levels": {str(LIVER): 0.3}}
    banded = dataclasses.replace(
        card, postprocess={"uncertainty_threshold": 0.2, "uncertainty_outline": outline}
    )

    heads_only = _without_outline(banded)

    assert heads_only.uncertainty_outlines == [] and banded.uncertainty_outlines != []
    assert heads_only.uncertainty_threshold == 0.2


def _organ_in_fat(
    root: Path,
    name: str,
    corner: tuple[int, int, int],
    *,
    organ: int = LIVER,
    hu: float = 40.0,
    around: float = -100.0,
) -> Path:
    """A block of ``organ`` (``hu``) in ``around`` (default: a 40 HU organ in -100 HU fat) with
    sharp faces off the 0.6 mm model grid."""
    folder = root / name
    folder.mkdir(parents=True)
    truth = np.zeros((30, 30, 30), np.uint8)
    x, y, z = corner
    truth[x : x + 13, y : y + 14, z : z + 11] = organ
    ct = np.where(truth > 0, hu, around).astype(np.float32)
    nib.save(nib.Nifti1Image(ct, AFFINE), str(folder / "ct.nii.gz"))
    nib.save(nib.Nifti1Image(truth, AFFINE), str(folder / "labels.nii.gz"))
    return folder


def _tiny_at_06_mm(folder: Path, structure: int, cut_hu: float, *, dark: bool = False) -> ModelCard:
    """A tiny model that sees the scan at 0.6 mm (window -1000..1000 HU) and draws ``structure``
    above ``cut_hu`` (below it when ``dark``): its upsampled outline misses or overshoots the
    faces that fall inside coarse voxels."""
    return write_threshold_model(
        folder,
        structures=(0, structure),
        thresholds=((cut_hu + 1000.0) / 2000.0,),
        spacing_mm=(0.6, 0.6, 0.6),
        normalisation={"kind": "window", "low_hu": -1000, "high_hu": 1000},
        dark=dark,
    )


def test_edge_rules_snap_an_organ_onto_its_fat_edge(tmp_path: Path) -> None:
    from inference.training.edges import tune_edges

    card = _tiny_at_06_mm(tmp_path / "m" / "1", LIVER, 0.0)
    cases = [
        _organ_in_fat(tmp_path / "val", "a", (7, 8, 10)),
        _organ_in_fat(tmp_path / "val", "b", (5, 10, 8)),
    ]

    rules, report = tune_edges(card, cases, threads=1)

    assert len(rules) == 1 and rules[0]["structure"] == LIVER
    assert -100.0 < rules[0]["edge_hu"] <= 40.0 and rules[0]["margin_mm"] > 0
    assert report["liver"]["kept"] and report["liver"]["best_dice"] > report["liver"]["unrefined"]
    assert report["liver"]["best_dice"] > 0.99


def test_air_edge_rules_put_a_lungs_outline_where_its_air_ends(tmp_path: Path) -> None:
    from inference.training.calibrate import _before_air_edges, add_edges
    from inference.training.edges import tune_air_edges

    # A lung (-450 HU) in soft tissue (40 HU); the tiny model draws it below -100 HU.
    card = _tiny_at_06_mm(tmp_path / "m" / "1", LUNG, -100.0, dark=True)
    cases = [
        _organ_in_fat(tmp_path / "val", name, corner, organ=LUNG, hu=-450.0, around=40.0)
        for name, corner in (("a", (7, 8, 10)), ("b", (5, 10, 8)))
    ]

    rules, report = tune_air_edges(card, cases, threads=1)

    assert rules == [
        {"structure": LUNG, "air_edge": rules[0]["air_edge"], "margin_mm": rules[0]["margin_mm"]}
    ]
    assert 0 < rules[0]["air_edge"] < 1 and rules[0]["margin_mm"] > 0
    assert report["lung_left"]["kept"] and report["lung_left"]["unrefined"] < 0.99
    assert report["lung_left"]["best_dice"] == 1.0

    # ``calibrate --add-edges``: the rule joins the rules the model has, which stay as they were,
    # and so do the outline bands.
    outline = {"smoothing_mm": [0.2, 0.2, 0.2], "levels": {str(LUNG): 0.3}}
    kept = {"structure": LUNG, "min_hu": 900.0, "margin_mm": 0.6}
    calibration = {"cases": ["x"]}
    ruled = dataclasses.replace(
        card, postprocess={"refine": [kept], "uncertainty_outline": outline, "calibration": calibration}
    )
    assert add_edges(ruled, cases, threads=1)["refine"] == [kept]  # the lung has a rule: none added
    plain = dataclasses.replace(
        card, postprocess={"uncertainty_outline": outline, "calibration": calibration}
    )
    post = add_edges(plain, cases, threads=1)
    assert post["refine"] == rules and post["uncertainty_outline"] == outline
    assert post["calibration"]["cases"] == ["x"] and post["calibration"]["air_edge_rules"] == report
    assert post["calibration"]["contrast_edge_rules"] == {}  # the lung has its rule by then

    # The nodule rule is tuned on the organ map the pipeline's lesion search sees: lungs before
    # their air edges (``predict.settle_air_edges`` runs after it).
    aired = dataclasses.replace(card, postprocess={**post, "refine": [kept, *rules]})
    assert _before_air_edges(aired).refinements == [kept]
    assert _before_air_edges(aired).uncertainty_outlines == aired.uncertainty_outlines


def test_contrast_edge_rules_put_an_organ_where_its_own_level_ends(tmp_path: Path) -> None:
    from inference.training.edges import tune_contrast_edges

    # A liver (65 HU) pressed against muscle (45 HU), no fat between: the tiny model draws it
    # above 55 HU at 0.6 mm, missing or overshooting the faces inside coarse voxels.
    card = _tiny_at_06_mm(tmp_path / "m" / "1", LIVER, 55.0)
    cases = [
        _organ_in_fat(tmp_path / "val", name, corner, hu=65.0, around=45.0)
        for name, corner in (("a", (7, 8, 10)), ("b", (5, 10, 8)))
    ]

    rules, report = tune_contrast_edges(card, cases, threads=1)

    assert [r["structure"] for r in rules] == [LIVER] and rules[0]["contrast_edge"] <= 20.0
    # The 3-voxel mean rounds the block's corners a little: not every voxel, but far closer.
    assert report["liver"]["kept"] and report["liver"]["best_dice"] > max(
        0.96, report["liver"]["unrefined"] + 0.02
    )


def test_a_structure_takes_its_own_smoothing_where_annotators_part_differently() -> None:
    from inference.pipeline.postprocess import outline_band
    from inference.training.outline import _ascend, _own_smoothings, _prepare

    # The "real" disagreement is exactly the liver's band under isotropic smoothing and the bone
    # plate's band under in-plane smoothing only (drawn slice by slice): no one smoothing fits both.
    bones = BY_NAME["bones"].id
    labels = np.zeros((30, 30, 30), np.uint8)
    labels[6:24, 6:24, 8:22] = LIVER
    labels[8:22, 8:22, 24:27] = bones
    spacing = (0.2, 0.2, 0.2)
    iso, in_plane = (0.21, 0.21, 0.21), (0.32, 0.32, 0.0)
    assert iso in SMOOTHINGS_MM and in_plane in SMOOTHINGS_MM
    real = outline_band(labels, spacing, [(list(iso), {LIVER: 0.3}), (list(in_plane), {bones: 0.3})]) >= 128
    runs = [(real, labels, spacing, np.zeros_like(real))]
    sids = [LIVER, bones]
    cases = _prepare(runs, iso, sids)
    levels, score = _ascend(cases, sids)

    own, after, report = _own_smoothings(cases, runs, levels, iso, score)

    assert own == {bones: in_plane} and str(bones) in report
    assert score < 0.99 and after > 0.99
    assert levels[LIVER] == 0.3 and levels[bones] == 0.3


def _chest(specks: bool, nodule: bool) -> tuple[np.ndarray, np.ndarray]:
    """A 40 HU body in air with a -430 HU lung inside (0.2 mm voxels): a true 3 x 3 x 3 nodule
    (0.22 mm^3) in the middle, or four 2 x 2 x 1 bright specks (0.03 mm^3, such as a real mouse's
    vessels and rib halos give) and no nodule."""
    ct = np.full((40, 40, 40), -1000.0, np.float32)
    ct[4:36, 4:36, 4:36] = 40.0
    ct[10:30, 10:30, 10:30] = -430.0
    truth = np.zeros(ct.shape, np.uint8)
    if nodule:
        ct[19:22, 19:22, 19:22] = 60.0
        truth[19:22, 19:22, 19:22] = BY_NAME["metastasis"].id
    if specks:
        for x, y in ((14, 14), (14, 24), (24, 14), (24, 24)):
            ct[x : x + 2, y : y + 2, 20] = 60.0
    # Scanner noise: a scan of four exact values would be refused as a label map.
    ct += np.random.default_rng(0).normal(0.0, 5.0, ct.shape).astype(np.float32)
    return ct, truth


def test_specks_in_tumor_free_anatomy_raise_the_nodule_rules_smallest_volume(tmp_path: Path) -> None:
    from inference.training.calibrate import tune_nodules

    lung, metastasis = BY_NAME["lung_left"].id, BY_NAME["metastasis"].id
    window = {"kind": "window", "low_hu": -1000, "high_hu": 1000}
    # Lung where -600 < HU < -200, "liver" (any solid) above: the nodule is a hole in the lung.
    organs = write_threshold_model(
        tmp_path / "organs" / "1", structures=(0, lung, LIVER), thresholds=(0.2, 0.4), normalisation=window
    )
    lesions = write_threshold_model(
        tmp_path / "lesions" / "1",
        name="tiny-lesions",
        task="tumor",
        structures=(0, BY_NAME["tumor"].id, metastasis),
        thresholds=(0.97, 0.99),  # above 940 HU: the network itself finds nothing here
        normalisation=window,
    )
    folder = tmp_path / "val" / "chest"
    folder.mkdir(parents=True)
    ct, truth = _chest(specks=False, nodule=True)
    nib.save(nib.Nifti1Image(ct, AFFINE), str(folder / "ct.nii.gz"))
    nib.save(nib.Nifti1Image(truth, AFFINE), str(folder / "labels.nii.gz"))
    negative = ("specks", *_chest(specks=True, nodule=False), AFFINE)

    alone, _ = tune_nodules(lesions, [organs], [folder], [], threads=1)
    with_negative, report = tune_nodules(lesions, [organs], [folder], [negative], threads=1)

    assert alone is not None and alone["min_volume_mm3"] < 0.03  # phantoms alone: specks allowed
    assert with_negative is not None and with_negative["min_volume_mm3"] > 0.03
    chosen = next(
        v for v in report.values() if v["detection_f05"] == max(r["detection_f05"] for r in report.values())
    )
    # The nodule is found in the case as it is and again with ``NODULE_NOISIER_HU`` more noise.
    assert chosen["found"] == 2 and chosen["false_positives_in_negatives"] == 0
    assert max(r["false_positives_in_negatives"] for r in report.values()) >= 4


def test_the_nodule_rules_negatives_include_a_sharp_quiet_render(monkeypatch: pytest.MonkeyPatch) -> None:
    # One size and one noise level here (the real lists render 16 scans): each crop as drawn, then
    # each sharp render, crisper than the default (what the blur read at the skin says).
    from inference.phantom import digimouse
    from inference.pipeline.blur import blur_mm
    from inference.training import calibrate

    if not (digimouse.DEFAULT_DIR / digimouse.FILENAME).is_file():
        pytest.skip("Digimouse atlas not present")
    monkeypatch.setattr(calibrate, "NEGATIVE_SIZES", (1.0,))
    monkeypatch.setattr(calibrate, "NEGATIVE_NOISE_HU", (20.0,))
    monkeypatch.setattr(calibrate, "NEGATIVE_SHARP", ((5.0, 0.1),))

    negatives = {name: (ct, labels, affine) for name, ct, labels, affine in calibrate.atlas_negatives()}

    assert list(negatives) == [
        "digimouse_whole_x1_seed2_noise20",
        "digimouse_torso_x1_seed2_noise20",
        "digimouse_whole_x1_seed2_noise5_blur0.1",
        "digimouse_torso_x1_seed2_noise5_blur0.1",
    ]
    plain, sharp = (
        negatives["digimouse_torso_x1_seed2_noise20"],
        negatives["digimouse_torso_x1_seed2_noise5_blur0.1"],
    )
    assert np.array_equal(plain[1], sharp[1])  # the same mouse, no tumor anywhere
    assert not np.isin(sharp[1], [BY_NAME["tumor"].id, BY_NAME["metastasis"].id]).any()
    spacing = np.sqrt((sharp[2][:3, :3] ** 2).sum(axis=0))
    crisp, default = blur_mm(sharp[0], spacing), blur_mm(plain[0], spacing)
    assert crisp is not None and default is not None and crisp < default - 0.03


def test_calibrating_on_nothing_is_refused_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from inference.training.calibrate import main

    card = write_threshold_model(tmp_path / "m" / "1", structures=(0, LIVER), thresholds=(0.225,))
    before = (card.folder / "model.json").read_bytes()
    folder = _case(tmp_path / "val", "a", 0)
    for extra in ("annotator_B.nii.gz", "annotator_C.nii.gz"):
        (folder / extra).unlink()

    for data, flags, words in (
        (tmp_path / "missing", [], "holds no validation phantoms"),
        (tmp_path / "val", ["--outline"], "no case under"),
    ):
        with pytest.raises(SystemExit) as stop:
            main(["--model", str(card.folder), "--data", str(data), *flags])
        assert stop.value.code == 2
        err = capsys.readouterr().err
        assert words in err and "nothing was written" in err
    assert (card.folder / "model.json").read_bytes() == before


def test_calibration_keeps_refiner_networks_and_their_stand_ins(tmp_path: Path) -> None:
    from inference.training.calibrate import trained_rules

    card = write_threshold_model(tmp_path / "m" / "1", structures=(0, LIVER), thresholds=(0.225,))
    network = {"structure": LIVER, "network": "refine-liver.onnx", "sha256": "0", "margin_mm": 0.63}
    stand_in = {"structure": LIVER, "contrast_edge": 8.0, "margin_mm": 0.63, "unless_refined": True}
    tuned = {"structure": LIVER, "edge_hu": -40.0, "margin_mm": 0.21}
    ruled = dataclasses.replace(card, postprocess={"refine": [tuned, network, stand_in]})

    assert trained_rules(ruled) == [network, stand_in]  # the tuned rule is tuned again
