"""``python -m inference.training.shifted_passes --model DIR --version V --shift X,Y,Z [--over NAME]``.

``--shift`` and ``--over`` may each be given more than once.

A new version of a model folder whose network also reads the scan moved by whole voxels on its
grid, its logits averaged with the plain pass (``layout.shifted_passes``, ``infer.run_model``);
with ``--over``, only round those structures as the plain pass draws them
(``layout.shifted_passes_over``), which spares the passes over a whole body's head and tail.

Why: a U-Net that pools by 2 three times sees each of the 8 phases of its grid differently, and on
anatomy it never trained on its outlines move with the phase. The mean over phases is steadier
(the model card's "`mouse-organs/2.8.0`" section measures it). Same weights, refiners and rules:
the folder is copied next to ``DIR`` under ``V`` (or to ``--out``), and its ``training`` record says
how it was made, so the card stays remakeable.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from inference.structures import by_name
from inference.training.derive import command_line, derive_parser, derive_version, write_derived


def parse_shift(text: str) -> list[int]:
    """``"3,3,3"`` -> ``[3, 3, 3]``; anything else is an argparse error in words."""
    parts = text.split(",")
    try:
        shift = [int(p) for p in parts]
    except ValueError:
        shift = []
    if len(shift) != 3:
        raise argparse.ArgumentTypeError(f"a shift is three whole voxel counts such as 3,3,3, not {text!r}")
    return shift


def with_shifted_passes(
    model: Path,
    out: Path,
    *,
    version: str,
    shifts: list[list[int]],
    over: list[str] | None = None,
    command: str = "",
) -> Path:
    """Copy the model folder ``model`` to ``out`` as ``version`` with ``shifts`` as its shifted
    passes, run round the structures named in ``over`` (all of the scan when none); the
    registry's checks run on the result (``ModelCardError`` in words if one fails)."""

    def edit(card: dict[str, Any]) -> None:
        card["layout"]["shifted_passes"] = shifts
        if over:
            card["layout"]["shifted_passes_over"] = [by_name(name).id for name in over]

    made = command or command_line("inference.training.shifted_passes")
    return derive_version(model, out, version=version, edit=edit, command=made)


def main(argv: list[str] | None = None) -> None:
    parser = derive_parser("inference.training.shifted_passes", __doc__)
    parser.add_argument(
        "--shift",
        type=parse_shift,
        action="append",
        required=True,
        help="voxels on the network's grid: X,Y,Z",
    )
    parser.add_argument(
        "--over",
        action="append",
        help="structure the shifted passes run round (repeat; default: the whole scan)",
    )
    args = parser.parse_args(argv)
    written = write_derived(
        parser,
        args,
        "inference.training.shifted_passes",
        argv,
        lambda out, command: with_shifted_passes(
            args.model, out, version=args.version, shifts=args.shift, over=args.over, command=command
        ),
    )
    print(f"wrote {written}: {len(args.shift)} shifted passes beside the plain one")


if __name__ == "__main__":
    main()
