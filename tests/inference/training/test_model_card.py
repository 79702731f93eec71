"""The model card's tables come from the evaluation summaries, with a verdict per structure."""

from __future__ import annotations

from pathlib import Path

import pytest

from inference.training.model_card import END, START, render_set, update_card

SUMMARY = {
    "structures": {
        "heart": {
            "dice": 0.83,
            "hd95_mm": 0.9,
            "msd_mm": 0.4,
            "volume_error_pct": -3.25,
            "dice_vs_annotator": {"A": 0.8, "B": 0.81},
            "annotators_pairwise_dice": 0.9,
        },
        "bladder": {
            "dice": 0.0,
            "hd95_mm": None,
            "msd_mm": None,
            "volume_error_pct": -100.0,
            "dice_vs_annotator": {"A": 0.0, "B": 0.0},
            "annotators_pairwise_dice": 0.87,
        },
        "brain": {
            "dice": 0.95,
            "hd95_mm": 0.4,
            "msd_mm": 0.1,
            "volume_error_pct": 1.0,
            "dice_vs_annotator": {"A": 0.93, "B": 0.94},
            "annotators_pairwise_dice": 0.94,
        },
    },
    "uncertainty_dice": 0.41,
    "left_right_swaps": 0,
}


def test_each_row_says_whether_its_target_and_the_human_baseline_are_met() -> None:
    table = render_set("test_native", SUMMARY)

    assert (
        "| heart | 0.830 | 0.93 | 0.90 | 0.40 | -3.2 | 0.800 / 0.810 | 0.900 "
        "| missed by 0.100; < annotators |" in table
    )
    assert "| bladder | 0.000 | 0.85 | n/a | n/a | -100.0 |" in table
    assert "| brain | 0.950 | 0.93 |" in table and "met; >= annotators" in table
    assert "Dice **0.410** (target 0.55)" in table


def test_update_card_replaces_only_the_text_between_the_markers(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(f"# card\nbefore\n{START}\nold table\n{END}\nafter\n")

    update_card(readme, {"test_native": SUMMARY})

    text = readme.read_text()
    assert text.startswith("# card\nbefore\n") and text.endswith(f"{END}\nafter\n")
    assert "old table" not in text and "**test_native**" in text


def test_update_card_refuses_a_card_without_markers(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text("# card\n")

    with pytest.raises(ValueError, match="markers"):
        update_card(readme, {"test_native": SUMMARY})
