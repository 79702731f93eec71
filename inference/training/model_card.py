"""The model card's figure tables, rendered from the evaluation summaries (never typed by hand).

``make_models`` calls :func:`update_card` after evaluating; the tables replace whatever stands
between the ``<!-- evaluation:start -->`` and ``<!-- evaluation:end -->`` markers of
``inference/models/README.md``. ``python -m inference.training.model_card`` re-renders them from
the committed ``evaluation_*.json`` files.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from inference.registry import DEFAULT_MODELS_DIR

START = "<!-- evaluation:start -->"
END = "<!-- evaluation:end -->"

#: The Dice targets on held-out native phantoms (the model card's "target" column).
TARGETS = {
    **dict.fromkeys(
        (
            "heart",
            "lung_left",
            "lung_right",
            "liver",
            "kidney_left",
            "kidney_right",
            "intestine",
            "bones",
            "brain",
        ),
        0.93,
    ),
    **dict.fromkeys(("spleen", "bladder", "stomach", "spinal_cord"), 0.85),
    "tumor": 0.90,
}
UNCERTAINTY_TARGET = 0.55


def _num(value: object, digits: int = 3, *, signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    number = float(value)  # type: ignore[arg-type]
    return f"{number:+.{digits}f}" if signed else f"{number:.{digits}f}"


def _verdict(name: str, row: Mapping[str, object]) -> str:
    dice = row.get("dice")
    pairwise = row.get("annotators_pairwise_dice")
    if not isinstance(dice, float):
        return "n/a"
    marks = []
    target = TARGETS.get(name)
    if target is not None:
        marks.append("met" if dice >= target else f"missed by {target - dice:.3f}")
    if isinstance(pairwise, float) and math.isfinite(pairwise):
        marks.append(">= annotators" if dice >= pairwise else "< annotators")
    return "; ".join(marks)


def render_set(name: str, summary: Mapping[str, Any]) -> str:
    structures: Mapping[str, Mapping[str, Any]] = summary["structures"]
    who = sorted({k for row in structures.values() for k in row.get("dice_vs_annotator", {})})
    lines = [
        f"**{name}**",
        "",
        "| structure | Dice | target | HD95 mm | MSD mm | volume error % | Dice vs annotators "
        + " / ".join(who)
        + " | annotators' pairwise Dice | verdict |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for structure, row in structures.items():
        versus: Mapping[str, object] = row.get("dice_vs_annotator", {})
        lines.append(
            "| "
            + " | ".join(
                [
                    structure,
                    _num(row.get("dice")),
                    _num(TARGETS.get(structure), 2) if structure in TARGETS else "",
                    _num(row.get("hd95_mm"), 2),
                    _num(row.get("msd_mm"), 2),
                    _num(row.get("volume_error_pct"), 1, signed=True),
                    " / ".join(_num(versus.get(k)) for k in who),
                    _num(row.get("annotators_pairwise_dice")),
                    _verdict(structure, row),
                ]
            )
            + " |"
        )
    lines.append("")
    unc = summary.get("uncertainty_dice")
    if unc is not None:
        lines.append(
            f"- uncertainty map at 50 % vs the annotators' real disagreement: Dice **{_num(unc)}** "
            f"(target {UNCERTAINTY_TARGET})"
        )
    for key in ("left_right_swaps", "tumors", "metastases", "seconds_median"):
        if key in summary:
            lines.append(f"- {key.replace('_', ' ')}: `{json.dumps(summary[key])}`")
    return "\n".join(lines) + "\n"


def render(summaries: Mapping[str, Mapping[str, object]]) -> str:
    return "\n".join(render_set(name, summary) for name, summary in summaries.items())


def update_card(readme: Path, summaries: Mapping[str, Mapping[str, object]]) -> None:
    """Replace the text between the markers of ``readme`` with freshly rendered tables."""
    text = readme.read_text()
    if START not in text or END not in text:
        raise ValueError(f"{readme} lacks the {START} / {END} markers")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    readme.write_text(f"{head}{START}\n\n{render(summaries)}\n{END}{tail}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m inference.training.model_card", description=__doc__)
    parser.add_argument("--models", type=Path, default=DEFAULT_MODELS_DIR)
    args = parser.parse_args(argv)
    summaries = {
        path.stem.removeprefix("evaluation_"): json.loads(path.read_text())
        for path in sorted(args.models.glob("evaluation_*.json"), key=lambda p: "contrast" in p.name)
    }
    update_card(args.models / "README.md", summaries)


if __name__ == "__main__":
    main()
