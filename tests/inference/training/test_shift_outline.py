"""One common shift of some organs' scores, chosen on the whole pipeline's Dice over two sources."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from inference.phantom import generate_phantom
from inference.phantom.writer import write_dataset
from inference.registry import ModelCard, load_card
from inference.structures import BY_NAME
from inference.training import shift_outline
from inference.training.robustness import Case
from tests.inference.pipeline.tiny_models import write_threshold_model

SPACING_MM = 0.63
WINDOW = {"kind": "window", "low_hu": -1000, "high_hu": 1000}
LIVER, BONES = BY_NAME["liver"].id, BY_NAME["bones"].id


@pytest.fixture
def organs(tmp_path: Path) -> ModelCard:
    # Voxel by voxel: soft tissue is "liver", brighter is "bones".
    return write_threshold_model(
        tmp_path / "organs",
        structures=(0, LIVER, BONES),
        thresholds=(0.45, 0.8),
        spacing_mm=(SPACING_MM,) * 3,
        normalisation=WINDOW,
        steepness=4.0,
    )


def test_a_shift_adds_to_the_offsets_a_card_has_and_drops_what_cancels(organs: ModelCard) -> None:
    first = shift_outline.shifted(organs, [LIVER, BONES], -1.0)
    assert first.postprocess["score_offsets"] == {str(LIVER): -1.0, str(BONES): -1.0}
    assert organs.postprocess.get("score_offsets") is None  # the card given is not changed
    second = shift_outline.shifted(first, [LIVER], 1.0)
    assert second.postprocess["score_offsets"] == {str(BONES): -1.0}
    assert second.score_offsets[second.structures.index(BONES)] == -1.0


def test_the_command_chooses_the_smallest_shift_near_the_best_and_writes_it(
    tmp_path: Path, organs: ModelCard, capsys: pytest.CaptureFixture[str]
) -> None:
    val = tmp_path / "val"
    write_dataset(val, n=1, seed=8000, spacing_mm=SPACING_MM)
    args = ["--model", str(organs.folder), "--structure", "liver", "--data", str(val)]
    args += ["--phantoms", "1", "--atlas", "digimouse_torso", "--threads", "1"]
    shift_outline.main(args)
    report = json.loads(capsys.readouterr().out)
    assert report["cases"] == {
        "phantoms": ["native_08000", "native_08000+60HU", "native_08000x3noise"],
        "atlas": ["digimouse_torso"],
    }
    trials = {float(k): v for k, v in report["trials"].items()}
    assert set(trials) == set(shift_outline.CANDIDATES)
    for trial in trials.values():
        assert set(trial) == {"mean_dice", "phantoms", "atlas"}
        assert 0.0 <= trial["phantoms"]["liver"] <= 1.0 and 0.0 <= trial["atlas"]["liver"] <= 1.0
    # The shift moves the outline: the candidates do not all score alike.
    assert len({t["mean_dice"] for t in trials.values()}) > 1
    best = max(t["mean_dice"] for t in trials.values())
    assert best > 0.1
    near = [s for s, t in trials.items() if t["mean_dice"] >= best - shift_outline.TOLERANCE - 1e-4]
    assert report["chosen"] == min(near, key=abs)

    card = load_card(organs.folder)  # the registry still accepts the card it wrote
    written = card.postprocess["score_offsets"]
    assert written == ({str(LIVER): report["chosen"]} if report["chosen"] else {})
    assert card.postprocess["calibration"]["outline_shift"]["liver"]["chosen"] == report["chosen"]
    # A second run, on other structures, keeps the first one's trials beside its own.
    shift_outline.main([*args[:3], "bones", *args[4:]])
    kept = load_card(organs.folder).postprocess["calibration"]["outline_shift"]
    assert set(kept) == {"liver", "bones"} and kept["liver"]["chosen"] == report["chosen"]


def test_the_command_names_what_it_cannot_use(
    tmp_path: Path, organs: ModelCard, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["--model", str(organs.folder), "--data", str(tmp_path)]
    wrong = {
        "draws no structure named spleen": ["--structure", "spleen"],
        "takes Digimouse renders": ["--structure", "liver", "--atlas", "native"],
        "no phantoms in": ["--structure", "liver", "--atlas", "digimouse_torso"],
        "--phantoms must be 1 or more": ["--structure", "liver", "--phantoms", "0"],
    }
    missing = ["--model", str(tmp_path / "none"), "--data", str(tmp_path), "--structure", "liver"]
    with pytest.raises(SystemExit) as stopped:
        shift_outline.main(missing)
    assert stopped.value.code == 2 and "no model.json" in capsys.readouterr().err
    for message, args in wrong.items():
        with pytest.raises(SystemExit) as stopped:
            shift_outline.main([*base, *args])
        assert stopped.value.code == 2
        assert message in capsys.readouterr().err
    assert "score_offsets" not in load_card(organs.folder).postprocess  # nothing written


def test_a_name_given_twice_is_shifted_once_and_an_empty_atlas_leaves_the_phantoms(
    tmp_path: Path, organs: ModelCard, capsys: pytest.CaptureFixture[str]
) -> None:
    val = tmp_path / "val"
    write_dataset(val, n=1, seed=8000, spacing_mm=SPACING_MM)
    args = ["--model", str(organs.folder), "--structure", "liver", "--structure", "liver"]
    shift_outline.main([*args, "--data", str(val), "--phantoms", "1", "--atlas", "", "--threads", "1"])
    report = json.loads(capsys.readouterr().out)
    assert report["structures"] == ["liver"]
    assert list(report["cases"]) == ["phantoms"]
    assert all(set(trial) == {"mean_dice", "phantoms"} for trial in report["trials"].values())
    written = load_card(organs.folder).postprocess["score_offsets"]
    assert written == ({str(LIVER): report["chosen"]} if report["chosen"] else {})


def test_no_shift_is_chosen_where_no_truth_holds_the_structure(organs: ModelCard) -> None:
    phantom = generate_phantom(8000, spacing_mm=SPACING_MM, n_annotators=0)
    empty = Case(
        name="p",
        ct=phantom.ct,
        labels=np.zeros_like(phantom.labels),
        affine=phantom.affine,
        meta=phantom.meta,
    )
    with pytest.raises(ValueError, match="no scan holds liver"):
        shift_outline.choose_shift(organs, ["liver"], {"phantoms": [empty], "atlas": []}, candidates=(0.0,))
