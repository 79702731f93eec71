"""Where two organs touch, their shared outline on the edge between their levels
(``postprocess.refine_interface``), the rule's card entry and the command that writes it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from inference.metrics import dice
from inference.pipeline.postprocess import apply_outline_rule, refine_interface
from inference.registry import ModelCardError, load_card
from inference.structures import BY_NAME
from inference.training.edges import unruled
from inference.training.interfaces import main as interfaces_main
from inference.training.interfaces import parse_between, with_interfaces
from tests.inference.pipeline.conftest import WINDOW
from tests.inference.pipeline.tiny_models import write_threshold_model

LIVER = BY_NAME["liver"].id
KIDNEY = BY_NAME["kidney_right"].id
SPLEEN = BY_NAME["spleen"].id
HEART = BY_NAME["heart"].id


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    """A tiny organ model folder that draws liver, the right kidney and the spleen."""
    card = write_threshold_model(
        tmp_path / "tiny-organs" / "1.0.0",
        structures=(0, LIVER, BY_NAME["kidney_right"].id, BY_NAME["spleen"].id),
        thresholds=(0.3, 0.5, 0.7),
        normalisation=WINDOW,
    )
    return card.folder


#: The true interface: liver (62 HU) at x < EDGE, kidney (36 HU) from EDGE on.
EDGE = 15


def pressed_together(
    drawn_edge: int, *, kidney_hu: float = 36.0, noise_hu: float = 12.0, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A liver pressed against a kidney with no fat between, in muscle-like tissue (45 HU).
    Returns (hu, truth, drawn): the network's map puts their shared outline at ``drawn_edge``."""
    shape = (30, 20, 20)
    x = np.indices(shape)[0]
    body = np.zeros(shape, bool)
    body[2:28, 3:17, 3:17] = True
    truth = np.zeros(shape, np.uint8)
    truth[body & (x < EDGE)] = LIVER
    truth[body & (x >= EDGE)] = KIDNEY
    rng = np.random.default_rng(seed)
    hu = np.full(shape, 45.0, np.float32)
    hu[truth == LIVER] = 62.0
    hu[truth == KIDNEY] = kidney_hu
    hu += rng.normal(0.0, noise_hu, shape).astype(np.float32)
    drawn = np.zeros(shape, np.uint8)
    drawn[body & (x < drawn_edge)] = LIVER
    drawn[body & (x >= drawn_edge)] = KIDNEY
    return hu, truth, drawn


def interface_x(labels: np.ndarray) -> float:
    """Mean x of the liver's last voxel along each row that holds both organs."""
    rows = (labels == LIVER).any(axis=0) & (labels == KIDNEY).any(axis=0)
    last = (labels == LIVER).shape[0] - 1 - np.argmax((labels == LIVER)[::-1], axis=0)
    return float(last[rows].mean())


@pytest.mark.parametrize("drawn_edge", [EDGE - 2, EDGE + 2])
def test_a_shared_outline_drawn_off_moves_onto_the_edge_between_the_two_levels(drawn_edge: int) -> None:
    hu, truth, labels = pressed_together(drawn_edge)
    drawn = labels.copy()

    changed = refine_interface(labels, hu, LIVER, [KIDNEY], min_contrast_hu=8.0, margin_voxels=3)

    assert changed > 0
    assert abs(interface_x(labels) - (EDGE - 1)) < 0.5  # the liver ends where it truly does
    for sid in (LIVER, KIDNEY):
        assert dice(labels == sid, truth == sid) > dice(drawn == sid, truth == sid) + 0.05
    # Only the two organs trade voxels: the body's outline and the tissue round it are untouched.
    assert np.array_equal(labels > 0, drawn > 0)


def test_the_rule_reads_the_pair_from_either_side() -> None:
    hu, truth, labels = pressed_together(EDGE - 2)
    from_kidney = labels.copy()

    refine_interface(labels, hu, LIVER, [KIDNEY], min_contrast_hu=8.0, margin_voxels=3)
    refine_interface(from_kidney, hu, KIDNEY, [LIVER], min_contrast_hu=8.0, margin_voxels=3)

    assert np.array_equal(labels, from_kidney)


def test_organs_without_contrast_keep_the_networks_outline() -> None:
    # Kidney at 57 HU against the liver's 62: 5 HU apart, less than the rule's 8.
    hu, _, labels = pressed_together(EDGE - 2, kidney_hu=57.0)
    drawn = labels.copy()

    assert refine_interface(labels, hu, LIVER, [KIDNEY], min_contrast_hu=8.0, margin_voxels=3) == 0
    assert np.array_equal(labels, drawn)


def test_a_level_that_drifts_across_the_organ_keeps_the_networks_outline() -> None:
    hu, _, labels = pressed_together(EDGE - 2)
    drawn = labels.copy()

    assert (
        refine_interface(labels, hu, LIVER, [KIDNEY], min_contrast_hu=8.0, margin_voxels=3, drift_hu=30.0)
        == 0
    )
    assert np.array_equal(labels, drawn)


def test_the_outline_moves_no_further_than_the_margin() -> None:
    hu, _, labels = pressed_together(EDGE - 3, noise_hu=0.0)

    refine_interface(labels, hu, LIVER, [KIDNEY], min_contrast_hu=8.0, margin_voxels=2)

    assert interface_x(labels) == pytest.approx(EDGE - 3 - 1 + 2)


def test_organs_that_do_not_touch_and_structures_not_listed_are_left_alone() -> None:
    hu, _, labels = pressed_together(EDGE - 2)
    labels[labels == KIDNEY] = HEART  # the liver's neighbour is now one the rule does not name
    labels[1, 10, 10] = SPLEEN  # a spleen voxel five voxels from the liver's nearest outline...
    labels[2:4, 3:17, 3:17] = 0  # ...once the liver's first two planes are background
    drawn = labels.copy()

    assert refine_interface(labels, hu, LIVER, [KIDNEY, SPLEEN], min_contrast_hu=8.0, margin_voxels=2) == 0
    assert np.array_equal(labels, drawn)


def test_a_voxel_whose_cube_reaches_air_keeps_its_label() -> None:
    hu, _, labels = pressed_together(EDGE - 2, noise_hu=0.0)
    hu[:, :, 3] = -1000.0  # gas along one face of both organs: its neighbours read partial volume
    drawn = labels.copy()

    refine_interface(labels, hu, LIVER, [KIDNEY], min_contrast_hu=8.0, margin_voxels=3)

    assert np.array_equal(labels[:, :, 3:5], drawn[:, :, 3:5])
    assert not np.array_equal(labels[:, :, 5:], drawn[:, :, 5:])


def test_the_card_rule_is_applied_with_its_margin_in_scan_voxels() -> None:
    rule = {"structure": LIVER, "interface_with": [KIDNEY], "min_contrast_hu": 8.0, "margin_mm": 0.42}
    hu, _, labels = pressed_together(EDGE - 3, noise_hu=0.0)

    changed = apply_outline_rule(labels, hu, rule, (0.21, 0.21, 0.21))

    assert changed > 0 and interface_x(labels) == pytest.approx(EDGE - 3 - 1 + 2)


# --- the card entry and the command that writes it ------------------------------------------------


def test_between_names_an_organ_and_its_neighbours() -> None:
    assert parse_between("liver:kidney_right, spleen") == (LIVER, [KIDNEY, SPLEEN])
    for bad in ("liver", "liver:", ":kidney_right", "liver:kidneys"):
        with pytest.raises(ValueError, match="--between|unknown structure"):
            parse_between(bad)


def test_the_command_appends_one_rule_per_organ_and_records_itself(model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "2.0.0"

    interfaces_main(
        [
            "--model",
            str(model_dir),
            "--version",
            "2.0.0",
            "--out",
            str(out),
            "--between",
            "liver:kidney_right",
        ]
    )

    card = load_card(out)
    [rule] = [r for r in card.refinements if "interface_with" in r]
    assert rule == {"structure": LIVER, "interface_with": [KIDNEY], "min_contrast_hu": 8.0, "margin_mm": 0.63}
    raw = json.loads((out / "model.json").read_text())
    assert raw["version"] == "2.0.0"
    assert "--between liver:kidney_right" in raw["training"]["post_processing"]["commands"][0]


@pytest.mark.parametrize(
    "between, words",
    [
        ([(LIVER, [LIVER])], "must list other output structures"),
        ([(LIVER, [99])], "must list other output structures"),
        ([(LIVER, [KIDNEY]), (LIVER, [SPLEEN])], "has an interface rule already"),
    ],
)
def test_a_bad_rule_is_refused_in_words_and_leaves_nothing(
    model_dir: Path, tmp_path: Path, between: list[tuple[int, list[int]]], words: str
) -> None:
    out = tmp_path / "2.0.0"
    with pytest.raises(ModelCardError, match=words):
        with_interfaces(model_dir, out, version="2.0.0", between=between)
    assert not out.exists()


def test_the_registry_refuses_a_malformed_interface_rule(model_dir: Path) -> None:
    raw = json.loads((model_dir / "model.json").read_text())
    rules = raw.setdefault("postprocess", {}).setdefault("refine", [])
    for bad, words in (
        ({"interface_with": []}, "must list other output structures"),
        ({"interface_with": "kidney_right"}, "must list other output structures"),
        ({"interface_with": [True]}, "must list other output structures"),
        ({"interface_with": [KIDNEY], "min_contrast_hu": -1.0}, "'min_contrast_hu' is a contrast in HU"),
    ):
        rule = {"structure": LIVER, "min_contrast_hu": 8.0, "margin_mm": 0.63, **bad}
        (model_dir / "model.json").write_text(
            json.dumps({**raw, "postprocess": {**raw["postprocess"], "refine": [*rules, rule]}})
        )
        with pytest.raises(ModelCardError, match=words):
            load_card(model_dir)


def test_the_command_refuses_an_unknown_organ_in_words(
    model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "2.0.0"
    with pytest.raises(SystemExit) as stopped:
        interfaces_main(
            ["--model", str(model_dir), "--version", "2.0.0", "--out", str(out), "--between", "liver:kidneys"]
        )
    assert stopped.value.code == 2
    assert "unknown structure 'kidneys'" in capsys.readouterr().err
    assert not out.exists()


def test_an_interface_rule_leaves_its_organ_to_the_edge_rule_sweeps(model_dir: Path, tmp_path: Path) -> None:
    # It places only the outline two organs share; the rest of the liver's may still get an edge rule.
    card = load_card(
        with_interfaces(model_dir, tmp_path / "2.0.0", version="2.0.0", between=[(LIVER, [KIDNEY])])
    )
    assert LIVER in unruled(card)
    raw = json.loads((card.folder / "model.json").read_text())
    raw["postprocess"]["refine"].append({"structure": LIVER, "edge_hu": -40.0, "margin_mm": 0.21})
    (card.folder / "model.json").write_text(json.dumps(raw))
    assert LIVER not in unruled(load_card(card.folder))
