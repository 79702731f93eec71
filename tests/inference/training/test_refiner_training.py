"""Outline refiner training: patches from the band, a short run that learns, the ONNX round trip."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from scipy import ndimage

from inference.phantom.synth import AIR, FAT, N_IDS, SOFT
from inference.pipeline.refiner import outline_shell, refiner_input
from inference.structures import BY_NAME
from inference.training.refiner import (
    CLIP,
    PATCH,
    SCALE_HU,
    Jitter,
    RefinerCase,
    RefinerNet,
    export_refiner,
    redraw_patch,
    refiner_rule,
    sample_batch,
    shifted_outline,
    train_refiner,
    with_refiner,
)


def _tube_case(seed: int) -> RefinerCase:
    """A 48 HU tube in -45 HU fat with noise, and an outline drawn one voxel too wide."""
    rng = np.random.default_rng(seed)
    x, y, z = np.indices((48, 48, 48))
    truth = np.hypot(x - 24, y - 24 - 6 * np.sin(z / 8.0)) <= 7.0
    hu = ndimage.gaussian_filter(np.where(truth, 48.0, -45.0), 0.7) + rng.normal(0, 15.0, truth.shape)
    outline = ndimage.binary_dilation(truth)
    band = outline_shell(outline, 3)
    return RefinerCase(
        name=f"tube{seed}",
        inputs=refiner_input(hu, outline, scale_hu=SCALE_HU, clip=CLIP),
        target=truth,
        band=band,
        centres=np.argwhere(band),
        spacing_mm=0.21,
        tissues=np.where(truth, BY_NAME["liver"].id, N_IDS + FAT).astype(np.uint8),
        free=np.ones(truth.shape, bool),
    )


def test_batches_are_patches_around_the_band() -> None:
    case = _tube_case(0)
    x, y, m = sample_batch([case], np.random.default_rng(0), 3)

    assert tuple(x.shape) == (3, 2, PATCH, PATCH, PATCH)
    assert tuple(y.shape) == tuple(m.shape) == (3, 1, PATCH, PATCH, PATCH)
    assert (m.sum(dim=(1, 2, 3, 4)) > 0).all()  # every patch holds band voxels
    assert set(np.unique(x[:, 1].numpy())) <= {-1.0, 1.0}


def test_the_jitter_spreads_the_scan_level_as_asked() -> None:
    """A patch's scan channel is moved by the jitter's offset (HU) and scaled by its factor; the
    outline channel never changes."""
    case = _tube_case(2)

    def levels(jitter: Jitter) -> tuple[np.ndarray, np.ndarray]:
        x, _, m = sample_batch([case], np.random.default_rng(3), 64, jitter)
        inside = (x[:, 1] > 0) & (m[:, 0] > 0)  # the outline's voxels in the band: tube, 48 HU
        mean = np.array([float(x[i, 0][inside[i]].mean()) * SCALE_HU for i in range(len(x))])
        return mean, x[:, 1].numpy()

    narrow, outline_narrow = levels(Jitter())
    wide, outline_wide = levels(Jitter(scale=0.15, offset_hu=15.0))

    assert 3.0 < float(np.std(narrow)) < 9.0  # about 5 HU of offset, 5 % of ~40 HU
    assert 12.0 < float(np.std(wide)) < 24.0  # about 15 HU of offset, 15 % of ~40 HU
    assert set(np.unique(outline_wide)) == set(np.unique(outline_narrow)) == {-1.0, 1.0}


def test_a_redrawn_patch_keeps_cts_order_and_sometimes_hides_the_organs_edge() -> None:
    """Every tissue is drawn anew in CT's order (air < lung < fat <= muscle-like body < bone), and
    in some draws the body around an organ sits at the organ's own level: no edge to follow."""
    tissues = np.full((8, 8, 40), N_IDS + SOFT, np.uint8)
    tissues[..., 0:5] = N_IDS + AIR
    tissues[..., 5:10] = BY_NAME["lung_left"].id
    tissues[..., 10:15] = N_IDS + FAT
    tissues[..., 15:20] = BY_NAME["liver"].id
    tissues[..., 25:30] = BY_NAME["bones"].id
    rng = np.random.default_rng(0)
    gaps = []
    for _ in range(60):
        hu = redraw_patch(tissues, rng)
        level = [float(np.median(hu[..., a + 1 : a + 4])) for a in (0, 5, 10, 15, 20, 25)]
        air, lung, fat, liver, body, bone = level
        assert air < lung < fat and max(fat, liver, body) < bone
        assert fat <= body + 30.0  # the noise's median error over 72 voxels stays well inside 30 HU
        gaps.append(abs(liver - body))
    assert min(gaps) < 15.0 < max(gaps)
    same = [redraw_patch(tissues, np.random.default_rng(5)) for _ in range(2)]
    np.testing.assert_array_equal(same[0], same[1])


def test_redrawn_batches_keep_the_outline_and_replace_the_scan() -> None:
    case = _tube_case(4)
    still = Jitter(scale=0.0, offset_hu=0.0)

    def steps(jitter: Jitter) -> np.ndarray:
        """The tube's level over its surroundings' in each patch (HU)."""
        x, y, _ = sample_batch([case], np.random.default_rng(1), 16, jitter)
        assert set(np.unique(x[:, 1].numpy())) == {-1.0, 1.0}  # the outline channel is kept
        inside = y[:, 0] > 0
        return np.array(
            [float(v[0][i].mean() - v[0][~i].mean()) * SCALE_HU for v, i in zip(x, inside, strict=True)]
        )

    # The tube is 93 HU above its fat in the phantom; redrawn, that step is anything from none
    # (a lean mouse) to the soft-tissue and fat ranges' widest.
    plain, drawn = steps(still), steps(dataclasses.replace(still, redraw=1.0))
    assert np.allclose(plain, 93.0, atol=15.0)
    assert drawn.min() < 40.0 and drawn.max() > 120.0


def test_a_shifted_true_outline_is_as_often_too_large_as_too_small() -> None:
    x, y, z = np.indices((40, 40, 40))
    truth = (x - 20) ** 2 + (y - 20) ** 2 + (z - 20) ** 2 <= 12**2
    rng = np.random.default_rng(0)
    reach = ndimage.distance_transform_edt(~truth) + ndimage.distance_transform_edt(truth)
    ratios = []
    for _ in range(40):
        given = shifted_outline(truth, rng)
        assert (reach[given ^ truth] <= 3.5).all()  # moved within the refiner's 3-voxel band only
        ratios.append(given.sum() / truth.sum())
    assert min(ratios) < 0.85 and max(ratios) > 1.15
    assert 0.9 < float(np.median(ratios)) < 1.1


def test_a_short_run_learns_to_shed_the_too_wide_outline() -> None:
    torch.set_num_threads(1)
    case = _tube_case(1)
    untrained = RefinerNet().eval()
    net, _ = train_refiner([case], minutes=0.4, seed=0, batch=2)

    def band_loss(model: RefinerNet) -> float:
        with torch.no_grad():
            logits = model(torch.from_numpy(case.inputs[None]))[0, 0]
        target = torch.from_numpy(case.target.astype(np.float32))
        losses = torch.nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="none")
        return float(losses[torch.from_numpy(case.band)].mean())

    assert band_loss(net) < 0.8 * band_loss(untrained)


def test_the_exported_refiner_matches_torch_and_makes_a_valid_rule(tmp_path: Path) -> None:
    net = RefinerNet().eval()
    path = tmp_path / "refine-intestine.onnx"

    sha = export_refiner(net, path)

    probe = np.random.default_rng(5).normal(0, 1, (1, 2, 13, 17, 11)).astype(np.float32)
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        None, {"scan_outline": probe}
    )[0]
    with torch.no_grad():
        expected = net(torch.from_numpy(probe)).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-4)
    rule = refiner_rule(10, path.name, sha, 0.21)
    assert rule["context_voxels"] == 4 and rule["margin_mm"] == pytest.approx(0.63)


def test_a_narrower_refiner_exports_and_keeps_the_receptive_field(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    net, _ = train_refiner([_tube_case(2)], minutes=0.05, seed=0, batch=2, channels=8)
    path = tmp_path / "refine-intestine.onnx"

    export_refiner(net, path)

    assert net.first.out_channels == 8 and net.last.in_channels == 8
    assert sum(p.numel() for p in net.parameters()) < sum(p.numel() for p in RefinerNet().parameters()) / 3
    # One output voxel still depends on inputs 4 voxels away and no further (context_voxels).
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    base = np.random.default_rng(6).normal(0, 1, (1, 2, 21, 21, 21)).astype(np.float32)
    moved = base.copy()
    moved[0, 0, 10 + RefinerNet.context_voxels + 1, 10, 10] += 50.0
    near = base.copy()
    near[0, 0, 10 + RefinerNet.context_voxels, 10, 10] += 50.0

    def centre(x: np.ndarray) -> float:
        return float(session.run(None, {"scan_outline": x})[0][0, 0, 10, 10, 10])

    assert centre(moved) == centre(base)
    assert centre(near) != centre(base)
    with pytest.raises(ValueError, match="at least one channel"):
        RefinerNet(0)


def test_training_without_phantoms_is_refused_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from inference.training.refiner import main
    from tests.inference.pipeline.tiny_models import write_threshold_model

    card = write_threshold_model(tmp_path / "m" / "1", structures=(0, 4), thresholds=(0.3,))

    def state() -> tuple[list[str], bytes]:
        return sorted(p.name for p in card.folder.iterdir()), (card.folder / "model.json").read_bytes()

    before = state()

    with pytest.raises(SystemExit) as stop:
        main(["--model", str(card.folder), "--structure", "liver", "--data", str(tmp_path / "none")])

    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "hold no case" in err and "python -m inference.phantom" in err
    assert state() == before
    assert not (tmp_path / "none").exists()  # not even the cache folder


def test_a_refiner_of_no_channels_is_refused_in_words(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from inference.training.refiner import main
    from tests.inference.pipeline.tiny_models import write_threshold_model

    card = write_threshold_model(tmp_path / "m" / "1", structures=(0, 4), thresholds=(0.3,))
    before = (card.folder / "model.json").read_bytes()

    with pytest.raises(SystemExit) as stop:
        main(["--model", str(card.folder), "--structure", "liver", "--channels", "0"])

    assert stop.value.code == 2
    assert "--channels must be 1 or more, not 0" in capsys.readouterr().err
    assert (card.folder / "model.json").read_bytes() == before


def test_a_new_refiner_keeps_its_structures_other_rules_as_stand_ins() -> None:
    liver, kidney = BY_NAME["liver"].id, BY_NAME["kidney_left"].id
    rules: list[dict] = [
        {"structure": liver, "contrast_edge": 8.0, "margin_mm": 0.63},
        {"structure": kidney, "edge_hu": -40.0, "margin_mm": 0.21},
        {"structure": liver, "network": "old.onnx", "sha256": "0", "margin_mm": 0.63},
        {"structure": liver, "air_edge": 0.5, "margin_mm": 0.63},  # after the lesion search: dropped
    ]
    rule = refiner_rule(liver, "refine-liver.onnx", "abc", 0.21)

    out = with_refiner(rules, rule)

    assert out == [rules[1], rule, {**rules[0], "unless_refined": True}]


def test_a_retrained_refiner_takes_the_old_networks_turn() -> None:
    gut, kidney, bone = BY_NAME["intestine"].id, BY_NAME["kidney_left"].id, BY_NAME["bones"].id
    old = refiner_rule(gut, "refine-intestine.onnx", "old", 0.21)
    rules: list[dict] = [
        {"structure": bone, "min_hu": 450.0, "margin_mm": 1.26},
        old,
        {"structure": kidney, "edge_hu": -40.0, "margin_mm": 0.21},
        {"structure": gut, "edge_hu": -30.0, "margin_mm": 0.21, "unless_refined": True},
    ]
    new = refiner_rule(gut, "refine-intestine.onnx", "new", 0.21)

    out = with_refiner(rules, new)

    assert out == [rules[0], new, rules[2], rules[3]]
