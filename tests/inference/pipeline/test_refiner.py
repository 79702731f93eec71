"""Outline refiner networks redraw one structure's outline at the scan's resolution, in a band."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from scipy import ndimage

import inference.pipeline.refiner as refiner
from inference.metrics import dice
from inference.pipeline.refiner import (
    cropped_tiles,
    outline_shell,
    refine_by_network,
    refiner_logits,
    run_refiner,
    spacing_fits,
)
from inference.registry import ModelCardError, default_model, load_card
from tests.inference.pipeline.tiny_models import write_outline_refiner, write_threshold_model

GUT = 10


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.fixture
def bright_refiner(tmp_path: Path) -> ort.InferenceSession:
    """Inside where the scan is above 20 HU, whatever the outline says."""
    path = tmp_path / "refine.onnx"
    write_outline_refiner(path, scan_weight=1.0, outline_weight=0.0, bias=-0.2)
    return _session(path)


def test_outline_band_holds_the_voxels_within_n_steps_on_both_sides() -> None:
    mask = np.zeros((20, 20, 20), bool)
    mask[5:15, 5:15, 5:15] = True

    band = outline_shell(mask, 2)

    assert band[5, 10, 10] and band[6, 10, 10] and not band[7, 10, 10]
    assert band[4, 10, 10] and band[3, 10, 10] and not band[2, 10, 10]
    assert not band[10, 10, 10]


def test_the_refiner_moves_only_band_voxels_between_the_structure_and_background(
    bright_refiner: ort.InferenceSession,
) -> None:
    hu = np.full((30, 30, 30), -80.0, np.float32)
    hu[8:22, 8:22, 8:22] = 50.0  # the true organ, 14 voxels across
    hu[0:3] = 50.0  # bright tissue far from the outline
    labels = np.zeros(hu.shape, np.uint8)
    labels[10:20, 10:20, 10:20] = GUT  # drawn 2 voxels too small on every side
    labels[10:20, 21:23, 10:20] = 3  # another organ at the edge keeps its voxels
    before = labels.copy()

    changed = refine_by_network(
        labels, hu, GUT, bright_refiner, margin_voxels=2, scale_hu=100.0, clip=5.0, context_voxels=0
    )

    grown = (labels == GUT) & (before != GUT)
    expected = outline_shell(before == GUT, 2) & (before == 0) & (hu > 20.0)
    assert changed == int(grown.sum()) > 0
    np.testing.assert_array_equal(grown, expected)
    assert (labels[before == GUT] == GUT).all()  # bright inside: nothing shed
    assert (labels[before == 3] == 3).all()
    assert not (labels[0:3] == GUT).any()  # beyond the band nothing changes


def test_tiles_give_the_same_logits_as_one_pass(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    committed = default_model("organs")
    rule = next(r for r in committed.refinements if "network" in r)
    session = _session(committed.folder / rule["network"])
    rng = np.random.default_rng(0)
    inputs = rng.normal(0, 1, (2, 37, 20, 24)).astype(np.float32)

    whole = session.run(None, {"scan_outline": inputs[None]})[0][0, 0]
    monkeypatch.setattr(refiner, "TILE_VOXELS", 8 * 20 * 24)  # tiles of 8 planes
    tiled = refiner_logits(session, inputs, context=int(rule["context_voxels"]))

    np.testing.assert_allclose(tiled, whole, atol=1e-4)


def test_a_winding_band_is_computed_in_cropped_slabs_with_the_logits_of_one_pass(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Only the band round the outline is read; a gut's band leaves much of its box empty, so
    # slabs cropped to it compute less, and every logit in the band is the one pass's.
    committed = default_model("organs")
    rule = next(r for r in committed.refinements if r.get("network") == "refine-intestine.onnx")
    session = _session(committed.folder / rule["network"])
    context = int(rule["context_voxels"])
    hu, truth = _tube_scan(np.random.default_rng(3))
    # A second, crossing loop makes the box wide while the band stays thin.
    x, y, z = np.indices(truth.shape)
    truth |= np.hypot(x - 12 - 0.5 * z, y - 10) <= 3.0
    inputs = refiner.refiner_input(hu, truth, scale_hu=100.0, clip=5.0)
    band = outline_shell(truth, 2)
    monkeypatch.setattr(refiner, "SLAB_PLANES", 12)

    tiles = cropped_tiles(band, context)
    assert tiles is not None and len(tiles) == 5
    read = sum(int(np.prod([r.stop - r.start for r in reach])) for reach, _ in tiles)
    assert read < 0.85 * band.size
    whole = session.run(None, {"scan_outline": inputs[None]})[0][0, 0]
    cropped = refiner_logits(session, inputs, context=context, needed=band)

    np.testing.assert_allclose(cropped[band], whole[band], atol=1e-4)
    np.testing.assert_array_equal(cropped[band] > 0, whole[band] > 0)


def test_a_compact_band_is_computed_in_one_pass() -> None:
    # A ball's band fills its box: cropped slabs would read their context planes twice.
    ball = np.linalg.norm(np.indices((30, 30, 30)) - 14.5, axis=0) <= 11.0
    assert cropped_tiles(outline_shell(ball, 3), 4) is None


def _tube_scan(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A gut loop (48 HU wall, 25 HU content) in visceral fat (-45 HU), blurred and noisy, 0.21 mm."""
    shape = (60, 60, 60)
    x, y, z = np.indices(shape)
    centre_y = 30 + 8 * np.sin(z / 9.0)
    radius = np.hypot(x - 30, y - centre_y)
    truth = radius <= 6.0
    hu = np.where(truth, 48.0, -45.0)
    hu[radius <= 3.8] = 25.0
    hu = ndimage.gaussian_filter(hu, 0.7) + rng.normal(0, 20.0, shape)
    return hu.astype(np.float32), truth


@pytest.mark.parametrize("finer", [1, 2], ids=["0.21 mm", "0.105 mm"])
def test_the_committed_intestine_refiner_puts_a_coarse_outline_onto_the_gut_wall(finer: int) -> None:
    """On its own 0.21 mm voxels, and on voxels twice as fine (the box resampled to 0.21 mm for it,
    since its kernels count its own voxels), the refiner moves the outline onto the gut wall."""
    committed = default_model("organs")
    rule = next(r for r in committed.refinements if "network" in r)
    assert rule["structure"] == GUT
    hu, truth = _tube_scan(np.random.default_rng(1))
    # The organ model's outline: the truth at 0.63 mm (block majority), upsampled by repetition.
    coarse = truth.reshape(20, 3, 20, 3, 20, 3).mean(axis=(1, 3, 5)) > 0.5
    if finer > 1:
        hu = ndimage.zoom(hu, finer, order=1).astype(np.float32)
        truth = ndimage.zoom(truth.astype(np.float32), finer, order=1) >= 0.5
    outline = np.repeat(np.repeat(np.repeat(coarse, 3 * finer, 0), 3 * finer, 1), 3 * finer, 2)
    labels = np.where(outline, np.uint8(GUT), np.uint8(0))
    before = dice(labels == GUT, truth)

    changed = run_refiner(labels, hu, committed, rule, (0.21 / finer,) * 3, "cpu", 1)

    after = dice(labels == GUT, truth)
    assert changed > 0
    assert after > before + 0.02, (before, after)


def test_a_refiner_is_skipped_on_scans_far_from_its_training_spacing() -> None:
    committed = default_model("organs")
    rule = next(r for r in committed.refinements if "network" in r)
    labels = np.zeros((20, 20, 20), np.uint8)
    labels[5:15, 5:15, 5:15] = GUT
    before = labels.copy()

    assert spacing_fits(rule, (0.21, 0.21, 0.21)) and spacing_fits(rule, (0.2, 0.2, 0.25))
    assert not spacing_fits(rule, (0.1, 0.1, 0.1)) and not spacing_fits(rule, (0.5, 0.5, 0.5))
    # 0.1 and 0.5 mm are refined on resampled voxels (below); a 1 mm scan is not refined at all.
    assert spacing_fits(rule, (0.1, 0.1, 0.1), refiner.RESAMPLE_LIMIT)
    assert not spacing_fits(rule, (1.0, 1.0, 1.0), refiner.RESAMPLE_LIMIT)
    assert run_refiner(labels, np.zeros(labels.shape, np.float32), committed, rule, (1.0,) * 3, "cpu", 1) == 0
    np.testing.assert_array_equal(labels, before)


def test_resampling_to_the_refiners_voxels_and_back_keeps_an_outline_in_place(tmp_path: Path) -> None:
    """A refiner that reads the scan alone (inside where it is above 0 HU), on a scan whose level
    falls smoothly through 0 HU at an ellipsoid's surface: decided on voxels twice finer, 1.6 times
    coarser, or with slices twice as thick as its own, the outline comes back where the scan puts
    it, moved by no more than a voxel anywhere."""
    path = tmp_path / "level.onnx"
    write_outline_refiner(path, scan_weight=1.0, outline_weight=0.0, bias=0.0)
    session = _session(path)
    x, y, z = np.indices((41, 37, 50))
    level = 1.0 - np.sqrt((x - 20) ** 2 / 14**2 + (y - 18) ** 2 / 10**2 + (z - 24) ** 2 / 18**2)
    hu = (100.0 * level).astype(np.float32)
    truth = hu > 0
    near = outline_shell(truth, 1)
    for zoom in ((0.5, 0.5, 0.5), (1.6, 1.6, 1.6), (1.0, 1.0, 2.0)):
        logits = refiner.resampled_logits(session, hu, truth, zoom, scale_hu=100.0, clip=5.0, context=0)
        assert logits.shape == truth.shape
        assert not (((logits > 0) != truth) & ~near).any(), zoom
        assert dice(logits > 0, truth) > 0.98, zoom


def _card_with_refiner(folder: Path) -> dict:
    write_threshold_model(folder, structures=(0, 4, GUT))
    sha = write_outline_refiner(
        folder / "refine-intestine.onnx", scan_weight=1.0, outline_weight=0.0, bias=0.0
    )
    raw = json.loads((folder / "model.json").read_text())
    raw["postprocess"] = {
        "refine": [
            {
                "structure": GUT,
                "network": "refine-intestine.onnx",
                "sha256": sha,
                "margin_mm": 0.63,
                "spacing_mm": 0.2,
                "scale_hu": 100.0,
                "clip": 5.0,
                "context_voxels": 0,
            }
        ]
    }
    (folder / "model.json").write_text(json.dumps(raw))
    return raw


def test_the_registry_checks_a_refiner_file_and_its_sha256(tmp_path: Path) -> None:
    folder = tmp_path / "m" / "1.0.0"
    _card_with_refiner(folder)
    assert load_card(folder).refinements[0]["network"] == "refine-intestine.onnx"

    with (folder / "refine-intestine.onnx").open("ab") as handle:
        handle.write(b"\0")
    with pytest.raises(ModelCardError, match="refiner was changed"):
        load_card(folder)

    (folder / "refine-intestine.onnx").unlink()
    with pytest.raises(ModelCardError, match="not in the model folder"):
        load_card(folder)


def test_the_registry_refuses_a_refiner_outside_the_model_folder(tmp_path: Path) -> None:
    folder = tmp_path / "m" / "1.0.0"
    raw = _card_with_refiner(folder)
    shutil.copy(folder / "refine-intestine.onnx", tmp_path / "elsewhere.onnx")
    raw["postprocess"]["refine"][0]["network"] = "../../elsewhere.onnx"
    (folder / "model.json").write_text(json.dumps(raw))

    with pytest.raises(ModelCardError, match="an .onnx file in the model folder"):
        load_card(folder)


def test_the_pipeline_applies_a_card_refiner_after_the_network(tmp_path: Path) -> None:
    import dataclasses

    from inference.pipeline import predict_volume

    folder = tmp_path / "m" / "1.0.0"
    _card_with_refiner(folder)
    card = load_card(folder)
    bare = dataclasses.replace(card, postprocess={})
    rng = np.random.default_rng(3)
    hu = rng.uniform(-1000.0, 1000.0, (24, 24, 24)).astype(np.float32)
    affine = np.diag([0.2, 0.2, 0.2, 1.0])

    # Uniform noise is no mouse scan (auto would refuse it): taken as HU unchecked.
    without = predict_volume(hu, affine, [bare], threads=1, intensity="hu").labels
    with_rule = predict_volume(hu, affine, [card], threads=1, intensity="hu").labels

    assert (without == GUT).any()
    band = outline_shell(without == GUT, 3) & ((without == 0) | (without == GUT))
    expected = without.copy()
    expected[band] = np.where(hu[band] > 0, GUT, 0)
    np.testing.assert_array_equal(with_rule, expected)


def test_refining_with_the_network_ahead_of_the_earlier_rules_changes_nothing() -> None:
    """``predict.refine`` runs the refiner network beside the rules before it; the labels must be
    the same as rule after rule (each rule moves only its own structure and background)."""
    from inference.pipeline.postprocess import apply_refinement
    from inference.pipeline.predict import refine

    committed = default_model("organs")
    hu, truth = _tube_scan(np.random.default_rng(2))
    coarse = truth.reshape(20, 3, 20, 3, 20, 3).mean(axis=(1, 3, 5)) > 0.5
    outline = np.repeat(np.repeat(np.repeat(coarse, 3, 0), 3, 1), 3, 2)
    labels = np.where(outline, np.uint8(GUT), np.uint8(0))
    # Bright rods beside the tube: bone for the intensity rule that runs before the refiner.
    hu[:, 5:8, 5:8] = 900.0
    labels[:, 4:9, 4:9] = 11
    scores = np.zeros((len(committed.structures), 20, 20, 20), np.float32)
    for channel, sid in enumerate(committed.structures):
        scores[channel] = (labels[::3, ::3, ::3] == sid).astype(np.float32)
    spacing, grid = (0.21, 0.21, 0.21), (0.63, 0.63, 0.63)

    coarse_argmax = np.argmax(scores, axis=0)
    ahead = labels.copy()
    refine(
        ahead, coarse_argmax, hu, hu, committed, grid, spacing, "cpu", 2
    )  # 2 threads: the network runs ahead

    one_by_one = labels.copy()
    for rule in committed.refinements:
        if "air_edge" in rule:
            continue  # applied after the lesion search (``predict.settle_air_edges``), not by ``refine``
        if "network" in rule:
            run_refiner(one_by_one, hu, committed, rule, spacing, "cpu", 1)
        else:
            apply_refinement(one_by_one, coarse_argmax, hu, rule, committed.structures, grid, spacing)
    assert not np.array_equal(ahead, labels)
    np.testing.assert_array_equal(ahead, one_by_one)


def test_a_stand_in_rule_applies_only_where_the_refiner_network_cannot(tmp_path: Path) -> None:
    """A rule marked ``unless_refined`` stands down where its structure's refiner network ran and
    stands in on a scan whose voxels the network was not trained for."""
    from inference.pipeline.postprocess import apply_refinement
    from inference.pipeline.predict import refine

    folder = tmp_path / "m" / "1.0.0"
    raw = _card_with_refiner(folder)
    stand_in = {"structure": GUT, "edge_hu": 20.0, "margin_mm": 0.63}
    raw["postprocess"]["refine"].append({**stand_in, "unless_refined": True})
    (folder / "model.json").write_text(json.dumps(raw))
    card = load_card(folder)
    hu = np.full((30, 30, 30), -80.0, np.float32)
    hu[8:22, 8:22, 8:22] = 50.0
    hu[10:20, 10:20, 14] = -80.0  # a dark slab inside: the network sheds it, the edge rule cannot reach it
    labels = np.zeros(hu.shape, np.uint8)
    labels[10:20, 10:20, 10:20] = GUT
    coarse = np.zeros((10, 10, 10), np.int64)

    def refined(spacing: float) -> np.ndarray:
        out = labels.copy()
        refine(out, coarse, hu, hu, card, (3 * spacing,) * 3, (spacing,) * 3, "cpu", 1)
        return out

    network_only = labels.copy()
    run_refiner(network_only, hu, card, card.refinements[0], (0.2,) * 3, "cpu", 1)
    edge_only = labels.copy()
    apply_refinement(edge_only, coarse, hu, stand_in, card.structures, (3.0,) * 3, (1.0,) * 3)
    assert not np.array_equal(network_only, edge_only)
    assert not np.array_equal(edge_only, labels)

    np.testing.assert_array_equal(refined(0.2), network_only)  # the network ran: no stand-in
    np.testing.assert_array_equal(refined(1.0), edge_only)  # 1 mm voxels: the stand-in only


def test_the_registry_refuses_a_stand_in_without_a_network_before_it(tmp_path: Path) -> None:
    folder = tmp_path / "m" / "1.0.0"
    raw = _card_with_refiner(folder)
    rules = raw["postprocess"]["refine"]
    for bad in (
        [{"structure": GUT, "edge_hu": 20.0, "margin_mm": 0.63, "unless_refined": True}, *rules],
        [*rules, {"structure": 4, "edge_hu": 20.0, "margin_mm": 0.63, "unless_refined": True}],
        [*rules, {"structure": GUT, "edge_hu": 20.0, "margin_mm": 0.63, "unless_refined": "yes"}],
        [{**rules[0], "unless_refined": True}],
        [*rules, {"structure": GUT, "air_edge": 0.5, "margin_mm": 0.63, "unless_refined": True}],
    ):
        raw["postprocess"]["refine"] = bad
        (folder / "model.json").write_text(json.dumps(raw))
        with pytest.raises(ModelCardError, match="stands in for a refiner network"):
            load_card(folder)


@pytest.mark.parametrize(
    ("spacing", "ran_on", "says"),
    [
        (0.2, refiner.ON_SCAN, None),
        (0.4, refiner.RESAMPLED, "resampled from 0.4 x 0.4 x 0.4 mm voxels to the 0.2 mm"),
        (1.0, refiner.SKIPPED, "not redrawn (the scan's 1 x 1 x 1 mm voxels are too far"),
    ],
    ids=["own voxels", "resampled", "skipped"],
)
def test_the_manifest_says_whether_each_refiner_ran_on_the_scans_voxels_resampled_ones_or_not_at_all(
    tmp_path: Path, spacing: float, ran_on: str, says: str | None
) -> None:
    """A lab reading a run's manifest (and the scan page) can tell an outline redrawn on the scan's
    own voxels from one redrawn on resampled voxels or one left as the coarse model drew it."""
    import nibabel as nib

    from inference.pipeline import segment_file

    folder = tmp_path / "m" / "1.0.0"
    _card_with_refiner(folder)
    card = load_card(folder)
    hu = np.random.default_rng(3).uniform(-1000.0, 1000.0, (24, 24, 24)).astype(np.float32)
    scan = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(hu, np.diag([spacing, spacing, spacing, 1.0])), scan)

    result = segment_file(scan, tmp_path / "out", cards=[card], threads=1, intensity="hu")

    written = json.loads(result.manifest_path.read_text())["postprocess"]["refiners"]
    assert len(written) == 1
    run = written[0]
    assert (run["structure"], run["network"], run["ran_on"]) == ("intestine", "refine-intestine.onnx", ran_on)
    assert run["scan_spacing_mm"] == [spacing] * 3 and run["trained_spacing_mm"] == 0.2
    if says is None:
        assert run["finding"] is None and run["voxels_changed"] > 0
    else:
        assert run["finding"].startswith("Intestine: ") and says in run["finding"]
    if ran_on == refiner.SKIPPED:
        assert run["voxels_changed"] == 0


def test_a_refiner_with_nothing_to_redraw_is_recorded_as_absent(tmp_path: Path) -> None:
    from inference.pipeline.predict import refine

    folder = tmp_path / "m" / "1.0.0"
    _card_with_refiner(folder)
    card = load_card(folder)
    hu = np.zeros((12, 12, 12), np.float32)
    labels = np.zeros(hu.shape, np.uint8)

    runs = refine(labels, np.zeros((4, 4, 4), np.int64), hu, hu, card, (0.6,) * 3, (0.2,) * 3, "cpu", 1)

    assert [(r.ran_on, r.voxels_changed, r.finding) for r in runs] == [("absent", 0, None)]
