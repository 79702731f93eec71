"""The domain-randomised generator (inference/phantom/synth.py) and training on what it draws."""

from __future__ import annotations

import itertools
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from inference.phantom import digimouse
from inference.phantom.synth import (
    AIR,
    CONTRAST_LIFT_HU,
    HU_RANGES,
    ID,
    N_IDS,
    SOFT,
    Source,
    block_fractions,
    digimouse_source,
    synth_sample,
    tissue_class,
)
from inference.training.data import case_from_arrays
from inference.training.synth_pool import SynthPool
from inference.training.tasks import ORGANS, TaskSpec
from inference.training.train import TrainConfig, train


def _ellipsoid(
    shape: tuple[int, int, int], centre: tuple[float, ...], radii: tuple[float, ...]
) -> np.ndarray:
    x, y, z = np.indices(shape, dtype=np.float32)
    r2 = sum(((a - c) / r) ** 2 for a, c, r in zip((x, y, z), centre, radii, strict=True))
    return r2 < 1.0


#: A small organ task for training runs of seconds on ``tiny_source``'s volumes.
TINY_SPEC = TaskSpec(
    name="tiny",
    task="organs",
    structures=(0, ID["heart"], ID["lung_left"], ID["lung_right"], ID["liver"], ID["bones"]),
    factor=3,
    low_hu=-1000.0,
    high_hu=1000.0,
    base_channels=4,
    crop=(16, 16, 24),
)


def tiny_source() -> Source:
    """A small mouse-like label map drawn at 3x and box-averaged: body, two lungs around a heart,
    a liver, a spine-like bone rod, a brain at the cranial end; 24 x 24 x 40 coarse voxels."""
    fine = (72, 72, 120)
    labels = np.zeros(fine, np.uint8)
    body = _ellipsoid(fine, (36, 36, 60), (22, 18, 56))
    labels[body] = 255  # unlabelled body, reset below
    labels[_ellipsoid(fine, (36, 34, 100), (12, 10, 14)) & body] = ID["brain"]
    labels[_ellipsoid(fine, (26, 36, 70), (8, 10, 14))] = ID["lung_left"]
    labels[_ellipsoid(fine, (46, 36, 70), (8, 10, 14))] = ID["lung_right"]
    labels[_ellipsoid(fine, (36, 40, 68), (6, 7, 8))] = ID["heart"]
    labels[_ellipsoid(fine, (36, 38, 46), (16, 12, 9))] = ID["liver"]
    labels[_ellipsoid(fine, (36, 20, 60), (7, 7, 50))] = ID["bones"]
    tissue_fine = np.where(labels > 0, SOFT, AIR).astype(np.uint8)
    labels[labels == 255] = 0
    fractions = block_fractions(labels, 3)
    tissue = tissue_fine[::3, ::3, ::3]
    labelled = np.zeros(N_IDS, bool)
    for name in ("brain", "lung_left", "lung_right", "heart", "liver", "bones"):
        labelled[ID[name]] = True
    labelled[0] = True
    return Source(name="tiny", fractions=fractions, labelled=labelled, tissue=tissue)


def test_the_generator_is_deterministic_per_seed() -> None:
    source = tiny_source()
    a, b = synth_sample(source, 5), synth_sample(source, 5)
    c = synth_sample(source, 6)
    assert np.array_equal(a.ct, b.ct) and np.array_equal(a.fractions, b.fractions)
    assert np.array_equal(a.disagreement, b.disagreement) and a.params == b.params
    assert not np.array_equal(a.ct, c.ct)


def test_tissue_means_keep_ct_physical_order() -> None:
    order = ["air", "lung", "fat", "soft", "bone"]
    for low, high in itertools.pairwise(order):
        assert HU_RANGES[low][1] < HU_RANGES[high][0]
    source = tiny_source()
    for seed in range(6):
        hu = synth_sample(source, seed).params["hu"]
        assert isinstance(hu, dict)
        soft = [v for k, v in hu.items() if k in ID and tissue_class(ID[k]) == "soft"] + [hu["muscle"]]
        lungs = [hu["lung_left"], hu["lung_right"]]
        assert hu["air"] < min(lungs) and max(lungs) < hu["fat"] < min(soft) and max(soft) < hu["bones"]


def test_labels_move_with_the_image() -> None:
    """Under rotation, scaling, bending and elastic warps, the drawn intensities stay where the
    labels are: bone voxels are bone-bright, lung voxels lung-dark, whatever the pose."""
    source = tiny_source()
    moved = 0
    for seed in range(6):
        s = synth_sample(source, seed)
        hu = s.params["hu"]
        assert isinstance(hu, dict)
        bone = s.fractions[ID["bones"]] > 250
        lung = s.fractions[ID["lung_left"]] > 240
        if bone.sum() < 5 or lung.sum() < 5:
            continue
        assert abs(float(np.median(s.ct[bone])) - hu["bones"]) < 0.3 * (hu["bones"] - hu["lung_left"])
        assert abs(float(np.median(s.ct[lung])) - hu["lung_left"]) < 0.3 * (hu["bones"] - hu["lung_left"])
        # The sample really was deformed: its label map differs from the source's.
        moved += not np.array_equal(s.fractions[ID["bones"]] > 127, source.fractions[ID["bones"]] > 127)
    assert moved >= 3


def test_wider_anatomy_is_deterministic_and_keeps_labels_on_the_image() -> None:
    """``variety`` (2.1.0's training) widens the shapes one source yields: more organs resized, over a
    wider range, and moved among their neighbours; still deterministic, still aligned."""
    source = tiny_source()
    a, b = synth_sample(source, 5, variety=2.0), synth_sample(source, 5, variety=2.0)
    assert np.array_equal(a.ct, b.ct) and a.params == b.params
    # variety 1 is exactly the committed 2.0.0 generator: the default.
    assert np.array_equal(synth_sample(source, 5, variety=1.0).ct, synth_sample(source, 5).ct)
    factors, differs = [], 0
    for seed in range(8):
        wide, plain = synth_sample(source, seed, variety=2.0), synth_sample(source, seed)
        organ_scale = wide.params["organ_scale"]
        assert isinstance(organ_scale, dict)
        factors += list(organ_scale.values())
        differs += not np.array_equal(wide.fractions, plain.fractions)
        hu = wide.params["hu"]
        assert isinstance(hu, dict)
        bone = wide.fractions[ID["bones"]] > 250
        if bone.sum() >= 5:
            assert abs(float(np.median(wide.ct[bone])) - hu["bones"]) < 0.3 * (hu["bones"] - hu["lung_left"])
    assert differs == 8
    assert min(factors) >= 0.7 and max(factors) <= 1.3
    assert min(factors) < 0.8 or max(factors) > 1.2  # beyond 2.0.0's 0.8-1.2


def test_plain_body_puts_the_unlabelled_tissue_at_the_organs_level() -> None:
    """``plain_body`` (tried for a 2.3.0, not shipped: see the model card) draws some volumes'
    unlabelled body as one smooth tissue near the soft organs' level with no fat inside it: the
    organs' edges then hardly show and only their shapes place them. At 0 (the default) every
    volume is drawn as before."""
    source = tiny_source()
    assert np.array_equal(synth_sample(source, 3, plain_body=0.0).ct, synth_sample(source, 3).ct)
    a, b = synth_sample(source, 3, plain_body=1.0), synth_sample(source, 3, plain_body=1.0)
    assert np.array_equal(a.ct, b.ct) and a.params == b.params
    flagged = 0
    for seed in range(6):
        sample = synth_sample(source, seed, plain_body=1.0)
        flagged += bool(sample.params.get("plain_body"))
        hu = sample.params["hu"]
        assert isinstance(hu, dict)
        soft = [hu[name] for name in ("heart", "liver") if name in hu]
        assert abs(hu["muscle"] - float(np.mean(soft))) < 45.0
        # Deep inside the body, away from every organ and the skin, no fat-like voxel is left.
        labelled = sample.fractions[1:].sum(axis=0) > 0
        inside = ndimage.binary_erosion(sample.ct > -500, iterations=3) & ~ndimage.binary_dilation(
            labelled, iterations=2
        )
        if inside.sum() >= 20:
            residual = float(sample.params["scanner"]["residual_noise_hu"])  # type: ignore[index]
            assert float(np.median(sample.ct[inside])) > hu["muscle"] - 20.0 - residual
    assert flagged == 6
    assert not any(synth_sample(source, seed).params.get("plain_body") for seed in range(6))
    with pytest.raises(ValueError, match="plain_body is a chance"):
        synth_sample(source, 3, plain_body=1.5)


def test_clipped_exports_cut_the_values_off_and_keep_the_padding_air() -> None:
    """``clipped`` draws some volumes as an export clipped at both ends (the tumor database's
    [-400, 1000] HU): air inside the field of view reads -600..-300 HU, nothing above the top cut,
    while outside the scanned slab stays -1000 HU as the pipeline pads. At 0 nothing changes."""
    source = tiny_source()
    assert np.array_equal(synth_sample(source, 4, clipped=0.0).ct, synth_sample(source, 4).ct)
    for seed in range(5):
        sample = synth_sample(source, seed, clipped=1.0)
        low, high = sample.params["scanner"]["clipped_hu"]  # type: ignore[index]
        assert -600.0 <= low <= -300.0 and 700.0 <= high <= 1500.0
        inside = sample.ct > -1000.0
        floor = float(sample.ct[inside].min())  # the parameters are recorded to 0.1 HU
        assert abs(floor - low) <= 0.05 and float(sample.ct.max()) <= high + 0.05
        assert (sample.ct[inside] == floor).mean() > 0.05  # the air piles up at the cut
        # The anatomy is the unclipped draw's: same labels, same soft tissue.
        unclipped = synth_sample(source, seed)
        assert np.array_equal(sample.fractions, unclipped.fractions)
        soft = (unclipped.ct > low) & (unclipped.ct < high)
        assert np.allclose(sample.ct[soft], unclipped.ct[soft])
    assert not any("clipped_hu" in synth_sample(source, s).params["scanner"] for s in range(5))  # type: ignore[operator]
    with pytest.raises(ValueError, match="clipped is a chance"):
        synth_sample(source, 3, clipped=-0.1)


def _with_hollow_organs(source: Source) -> Source:
    """``source`` with a stomach under the liver and a bladder at the caudal end, in its body."""
    fractions, labelled = source.fractions.copy(), source.labelled.copy()
    shape = fractions.shape[1:]
    for name, centre, radii in (("stomach", (15, 13, 13), (4, 3, 3)), ("bladder", (12, 13, 5), (3, 3, 2.5))):
        organ = _ellipsoid(shape, centre, radii)
        fractions[:, organ] = 0
        fractions[ID[name], organ] = 255
        labelled[ID[name]] = True
    return replace(source, fractions=fractions, labelled=labelled)


def test_contrast_fills_hollow_organs_far_above_soft_tissue_and_keeps_the_default_draws() -> None:
    """``contrast`` fills the stomach, gut or bladder of some volumes with an agent as bright as
    bone or brighter (oral barium, excreted iodine), where every other draw keeps CT's order: the
    network must learn that bright is not always bone. The labels are the plain draw's."""
    source = _with_hollow_organs(tiny_source())
    assert np.array_equal(synth_sample(source, 2, contrast=0.0).ct, synth_sample(source, 2).ct)
    a, b = synth_sample(source, 2, contrast=1.0), synth_sample(source, 2, contrast=1.0)
    assert np.array_equal(a.ct, b.ct) and a.params == b.params
    for seed in range(6):
        sample, plain = synth_sample(source, seed, contrast=1.0), synth_sample(source, seed)
        lifts = sample.params["contrast_hu"]
        assert isinstance(lifts, dict) and lifts  # at least one organ is filled
        assert np.array_equal(sample.fractions, plain.fractions)
        for name, lift in lifts.items():
            assert CONTRAST_LIFT_HU[0] <= lift <= CONTRAST_LIFT_HU[1]
            inside = sample.fractions[ID[name]] == 255
            if inside.any():
                assert float((sample.ct - plain.ct)[inside].max()) > 0.5 * lift
        unfilled = sample.fractions[[ID[n] for n in lifts]].sum(axis=0) == 0
        far = ~ndimage.binary_dilation(~unfilled, iterations=4)
        assert np.allclose(sample.ct[far], plain.ct[far], atol=1.0)
    assert not any("contrast_hu" in synth_sample(source, s).params for s in range(6))
    with pytest.raises(ValueError, match="contrast is a chance"):
        synth_sample(source, 3, contrast=2.0)


def _bone_angle_deg(sample_fractions: np.ndarray) -> float:
    """Where the bone rod lies round the box's centre, in degrees in the x-y plane."""
    bone = sample_fractions[ID["bones"]].astype(np.float64)
    x, y = np.indices(bone.shape[:2], dtype=np.float64)
    weight = bone.sum(axis=2)
    cx, cy = (float((a * weight).sum() / weight.sum()) for a in (x, y))
    half = (np.array(bone.shape[:2]) - 1) / 2.0
    return float(np.degrees(np.arctan2(cy - half[1], cx - half[0])))


def test_rolled_mice_lie_part_way_on_their_side() -> None:
    """``rolled`` turns some mice a further 10-40 degrees about the long axis, either way; the
    labels turn with the image, and at 0 nothing changes."""
    source = tiny_source()
    assert np.array_equal(synth_sample(source, 4, rolled=0.0).ct, synth_sample(source, 4).ct)
    signs = set()
    for seed in range(6):
        sample = synth_sample(source, seed, rolled=1.0)
        extra = float(sample.params["extra_roll_deg"])  # type: ignore[arg-type]
        assert 10.0 <= abs(extra) <= 40.0
        signs.add(extra > 0)
        turned = _bone_angle_deg(sample.fractions) - _bone_angle_deg(synth_sample(source, seed).fractions)
        assert abs((turned - extra + 180.0) % 360.0 - 180.0) < 5.0
    assert signs == {True, False}
    assert all(synth_sample(source, s).params["extra_roll_deg"] == 0.0 for s in range(4))
    with pytest.raises(ValueError, match="rolled is a chance"):
        synth_sample(source, 3, rolled=1.5)


def test_mouse_size_scales_the_whole_mouse_and_keeps_the_default_draws() -> None:
    """``sizes`` sets the overall scale: a mouse drawn at 1.3 has about (1.3 / 0.8)^3 the body of
    one drawn at 0.8 (the per-axis spread aside), and the default range draws as before."""
    source = tiny_source()
    assert np.array_equal(synth_sample(source, 4, sizes=(0.85, 1.15)).ct, synth_sample(source, 4).ct)
    for seed in range(3):
        small, big = (synth_sample(source, seed, shape=(40, 40, 64), sizes=(s, s)) for s in (0.8, 1.3))
        # The brain, heart, lungs and liver, which the box never cuts at either size.
        inner = [ID[n] for n in ("heart", "lung_left", "lung_right", "liver")]
        ratio = big.fractions[inner].astype(float).sum() / small.fractions[inner].astype(float).sum()
        assert 0.75 * (1.3 / 0.8) ** 3 < ratio < 1.25 * (1.3 / 0.8) ** 3
    with pytest.raises(ValueError, match="sizes is a range"):
        synth_sample(source, 3, sizes=(1.2, 0.9))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--mouse-size", "1.3,0.8"], "--mouse-size 1.3,0.8: give two scales"),
        (["--mouse-size", "big"], "--mouse-size big: give two scales"),
        (["--plain-body", "35"], "--plain-body is the share"),
        (["--clipped", "2"], "--clipped is the share"),
        (["--rolled", "-0.2"], "--rolled is the share"),
        (["--contrast", "1.5"], "--contrast is the share"),
        (["--variety", "0.5"], "--variety widens"),
        (["--batch", "0"], "--batch is a count: give 1 or more, not 0"),
        (["--workers", "-2"], "--workers is a count: give 0 or more, not -2"),
        (["--no-phantoms", "--no-digimouse"], "leave nothing to train on"),
        ([], "--init x/model.onnx: no such file"),
    ],
)
def test_finetune_refuses_settings_out_of_range(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from inference.training.finetune_synth import main

    base = ["--task", "organs", "--init", "x/model.onnx", "--out", "y", "--version", "9.9.9"]
    with pytest.raises(SystemExit) as exit_info:
        main(base + args)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.skipif(
    not (digimouse.DEFAULT_DIR / digimouse.FILENAME).is_file(), reason="Digimouse atlas not present"
)
def test_the_atlas_alone_trains_a_network_from_random_weights(tmp_path: Path) -> None:
    """The held-out direction opposite to --no-digimouse: no phantom source, no warm start."""
    from inference.registry import load_card
    from inference.training.finetune_synth import finetune

    def run(out: Path, *, digimouse: bool) -> Path:
        return finetune(
            "organs",
            None,
            out,
            pool=tmp_path / "no-pool",  # never read: the phantoms are held out
            version="0.0.1-atlas",
            minutes=0.05,
            lr=1e-3,
            seed=5,
            threads=1,
            digimouse=digimouse,
            digimouse_weight=0.3,
            synth_rate=0.65,
            phantoms=False,
        )

    out = run(tmp_path / "model", digimouse=True)

    card = load_card(out)
    training = json.loads((out / "model.json").read_text())["training"]
    assert card.version == "0.0.1-atlas" and (out / "model.onnx").is_file()
    assert training["phantoms"] is False and training["seeds"]["phantoms"] == []
    assert training["init"] == "random weights" and "atlas alone" in training["data"]
    assert training["synth_rate"] == 1.0 and training["steps"] >= 1
    with pytest.raises(ValueError, match="nothing to train on"):
        run(tmp_path / "none", digimouse=False)


def test_beds_are_background_and_never_tumor() -> None:
    source = tiny_source()
    with_bed = [s for s in (synth_sample(source, seed) for seed in range(12)) if s.bed.any()]
    assert with_bed, "no bed drawn in 12 seeds"
    for s in with_bed:
        # Mostly background wherever the bed is (a body outline it touches may share a voxel).
        assert (s.fractions.argmax(axis=0)[s.bed] == 0).all()
        assert (s.fractions[0][s.bed] >= 128).all()
        assert (s.fractions[ID["tumor"]][s.bed] == 0).all()
        # The bed is visible: it is not air.
        assert float(np.median(s.ct[s.bed])) > HU_RANGES["air"][1] + 100


@pytest.mark.skipif(
    not (digimouse.DEFAULT_DIR / digimouse.FILENAME).is_file(), reason="Digimouse atlas not present"
)
def test_digimouse_samples_mark_its_unlabelled_structures() -> None:
    source = digimouse_source()
    assert not source.labelled[ID["intestine"]] and not source.labelled[ID["spinal_cord"]]
    assert source.labelled[ID["liver"]] and source.labelled[ID["tumor"]]
    s = synth_sample(source, 0, shape=(40, 33, 60))
    case = case_from_arrays("d", ORGANS, s.ct, s.fractions, s.labelled)
    assert case.labelled is not None
    flags = dict(zip(ORGANS.structures, case.labelled, strict=True))
    assert not flags[ID["intestine"]] and not flags[ID["spinal_cord"]]
    assert flags[ID["heart"]] and flags[ID["kidney_left"]] and flags[0]


def test_a_short_run_on_synthetic_data_lowers_the_loss() -> None:
    spec = TINY_SPEC
    source = tiny_source()
    # Four synthetic volumes, kept (no refresh): the network must learn them within a minute.
    pool = SynthPool([source], spec, seed=0, size=4, shape=(20, 20, 32), refresh_every=10**6)
    cfg = TrainConfig(
        epochs=40, batch=2, lr=1e-2, seed=0, threads=1, device="cpu", max_minutes=0.8, synth_rate=1.0
    )
    cfg.partial_label_rate = 0.0
    train(spec, pool.fill(), cfg, synth=pool)
    losses = [float(h["loss"]) for h in cfg.history]
    assert len(losses) >= 10
    assert np.mean(losses[-5:]) < 0.9 * np.mean(losses[:5])


def test_batches_made_by_worker_processes_train_with_seeds_of_their_own() -> None:
    spec = TINY_SPEC
    pool = SynthPool([tiny_source()], spec, seed=3, size=2, shape=(20, 20, 32), refresh_every=2)
    # Two workers draw interleaved seeds, never the same volume, and none of the one-pool stream's
    # order is disturbed: worker 0 of 1 is the pool itself.
    assert {pool.for_worker(0, 2).seed_of(k) for k in range(50)}.isdisjoint(
        {pool.for_worker(1, 2).seed_of(k) for k in range(50)}
    )
    assert [pool.for_worker(0, 1).seed_of(k) for k in range(3)] == [pool.seed_of(k) for k in range(3)]
    cfg = TrainConfig(
        epochs=2, batch=4, lr=1e-3, seed=0, threads=1, device="cpu", max_minutes=2.0, synth_rate=1.0
    )
    cfg.loader_workers, cfg.steps_per_epoch = 2, 3
    drawn = synth_sample(tiny_source(), 99)
    native = case_from_arrays("native", spec, drawn.ct, drawn.fractions, drawn.labelled)
    train(spec, [native], cfg, synth=pool)
    assert [h["epoch"] for h in cfg.history] == [1, 2]
    assert all(np.isfinite(float(h["loss"])) for h in cfg.history)
    # Both workers filled their own pool of 2 and refreshed it at the one-pool rate per crop.
    assert sorted(cfg.synth_drawn) == [0, 1]
    assert all(n >= 2 for n in cfg.synth_drawn.values())


def test_a_continued_network_keeps_the_rules_and_the_passes_of_the_one_it_continues(tmp_path: Path) -> None:
    """A fine-tune from a served card is measured and served with that card's post-processing and
    read settings (shifted passes, size pass): without them its figures would not compare with
    the card's own."""
    from inference.training.finetune_synth import carry_postprocess

    served = json.loads(Path("inference/models/mouse-organs/2.11.0/model.json").read_text())
    old, new = tmp_path / "old", tmp_path / "new"
    old.mkdir()
    new.mkdir()
    rules = [r for r in served["postprocess"]["refine"] if "network" not in r]
    (old / "model.json").write_text(json.dumps({**served, "postprocess": {"refine": rules}}))
    exported = {"layout": {"kind": "3d", "divisible_by": 8, "patch_size": [64, 64, 192], "overlap": 0.25}}
    (new / "model.json").write_text(json.dumps(exported))

    carry_postprocess(old, new)

    card = json.loads((new / "model.json").read_text())
    assert card["postprocess"] == {"refine": rules}
    for key in ("shifted_passes", "shifted_passes_over", "size_pass"):
        assert card["layout"][key] == served["layout"][key]
    assert card["layout"]["patch_size"] == [64, 64, 192]  # the new export's own grid stays
