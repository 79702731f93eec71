"""``python -m inference.training.interfaces --model DIR --version V --between ORGAN:OTHER[,OTHER...] ...``.

``--between`` may be given more than once (one rule per organ); ``--min-contrast-hu`` (default 8)
and ``--margin-mm`` (0.63) are optional.

A new version of a model folder whose organ outlines, where two organs touch with no fat between
them, are moved onto the edge the scan shows between their levels (``postprocess.refine_interface``,
a ``refine`` rule ``{"structure", "interface_with", "min_contrast_hu", "margin_mm"}`` appended to the
card's rules). For each ``ORGAN:OTHER`` pair that touches in a scan and whose levels differ by
``--min-contrast-hu`` or more, the shared outline moves to the level half-way between the two,
by at most ``--margin-mm`` either way; a pair with less contrast keeps the network's outline.

Why: the organ network places an outline between two solid organs from their shapes, and on
anatomy it has not learned (the Digimouse CT) the right kidney reached into the liver and the
spleen over the left kidney by a voxel or two, where the scan shows 20-26 HU between their levels
(the model card's "`mouse-organs/2.10.0`" section measures it). Name solid organs only (heart,
liver, kidneys, spleen): a hollow one is a wall and a content of two levels. Same weights,
refiners and other rules: the folder is copied next to ``DIR`` under ``V`` (or to ``--out``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from inference.structures import by_name
from inference.training.derive import command_line, derive_parser, derive_version, write_derived

#: Default smallest contrast (HU) between two organs' levels for their shared outline to move: the
#: contrast-edge rule's (``refine_contrast_edge``, ``mouse-organs/2.4.1``).
MIN_CONTRAST_HU = 8.0
#: Default reach (mm) either way of the network's outline: one model-grid voxel (0.63 mm), the
#: most an outline upsampled from it is off by where the scan shows the edge.
MARGIN_MM = 0.63


def parse_between(text: str) -> tuple[int, list[int]]:
    """``"liver:kidney_right,spleen"`` as (organ id, [neighbour ids]); ``ValueError`` in words."""
    organ, sep, others = text.partition(":")
    names = [name for name in others.split(",") if name.strip()]
    if not sep or not organ.strip() or not names:
        raise ValueError(
            f"--between takes ORGAN:OTHER[,OTHER...], e.g. liver:kidney_right,spleen; got {text!r}"
        )
    try:
        return by_name(organ).id, [by_name(name).id for name in names]
    except KeyError as error:
        raise ValueError(str(error.args[0])) from None


def with_interfaces(
    model: Path,
    out: Path,
    *,
    version: str,
    between: list[tuple[int, list[int]]],
    min_contrast_hu: float = MIN_CONTRAST_HU,
    margin_mm: float = MARGIN_MM,
    command: str = "",
) -> Path:
    """Copy the model folder ``model`` to ``out`` as ``version`` with one interface rule per
    ``(organ id, neighbour ids)`` of ``between`` appended to its ``refine`` rules; the registry's
    checks run on the result (``ModelCardError`` in words if one fails, and nothing is left at
    ``out``)."""

    def edit(card: dict[str, Any]) -> None:
        refine = card.setdefault("postprocess", {}).setdefault("refine", [])
        for organ, others in between:
            if any("interface_with" in rule and int(rule["structure"]) == organ for rule in refine):
                raise ValueError(f"structure {organ} has an interface rule already; give its neighbours once")
            refine.append(
                {
                    "structure": organ,
                    "interface_with": others,
                    "min_contrast_hu": min_contrast_hu,
                    "margin_mm": margin_mm,
                }
            )

    made = command or command_line("inference.training.interfaces")
    return derive_version(model, out, version=version, edit=edit, command=made)


def main(argv: list[str] | None = None) -> None:
    parser = derive_parser("inference.training.interfaces", __doc__)
    parser.add_argument(
        "--between",
        action="append",
        required=True,
        help="ORGAN:OTHER[,OTHER...]: the outlines ORGAN shares with each OTHER (repeat per organ)",
    )
    parser.add_argument(
        "--min-contrast-hu",
        type=float,
        default=MIN_CONTRAST_HU,
        help="smallest difference between two organs' levels for their outline to move (HU)",
    )
    parser.add_argument(
        "--margin-mm", type=float, default=MARGIN_MM, help="how far an outline may move either way (mm)"
    )
    args = parser.parse_args(argv)
    try:
        between = [parse_between(text) for text in args.between]
    except ValueError as error:
        parser.error(str(error))
    written = write_derived(
        parser,
        args,
        "inference.training.interfaces",
        argv,
        lambda out, command: with_interfaces(
            args.model,
            out,
            version=args.version,
            between=between,
            min_contrast_hu=args.min_contrast_hu,
            margin_mm=args.margin_mm,
            command=command,
        ),
    )
    pairs = sum(len(others) for _, others in between)
    print(f"wrote {written}: {pairs} organ pairs' shared outlines put on the edge between their levels")


if __name__ == "__main__":
    main()
