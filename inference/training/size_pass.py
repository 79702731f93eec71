"""``python -m inference.training.size_pass --model DIR --version V --reference-mm3 MM3 --over NAME ...``.

``--over`` and ``--keep`` may be given more than once; ``--keep``, ``--weight`` (default 0.5) and
``--min-scale`` (0.8) are optional.

A new version of a model folder whose network reads a mouse drawn larger than those it learned a
second time, shrunk towards their size (``layout.size_pass``, ``infer.run_model``). After the first
reading, the drawn volume of the ``--over`` structures (per animal) is compared with
``--reference-mm3``, the volume those structures have in the largest mice the network learned. A
mouse drawn larger is shrunk by the cube root of the ratio, not below ``--min-scale``, and read
again. That pass's logits, resampled back, weigh ``--weight`` in the answer, except where the
first reading draws a ``--keep`` structure: there its answer stands (bone and the spinal cord are
thinner than a shrunk grid holds; the lungs' outline is where their air ends). A mouse drawn no
larger than the reference is read as before.

Why: the organ network learned mostly phantom mice, whose big organs hold 1,300-2,200 mm^3; the
Digimouse atlas' hold 3,100. Read shrunk, a large real mouse's kidneys, spleen and stomach come out
closer to its own (the model card's "`mouse-organs/2.9.0`" section measures it). Same weights,
refiners and rules: the folder is copied next to ``DIR`` under ``V`` (or to ``--out``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from inference.structures import by_name
from inference.training.derive import command_line, derive_parser, derive_version, write_derived


def with_size_pass(
    model: Path,
    out: Path,
    *,
    version: str,
    reference_mm3: float,
    over: list[str],
    weight: float = 0.5,
    min_scale: float = 0.8,
    keep: list[str] | None = None,
    command: str = "",
) -> Path:
    """Copy the model folder ``model`` to ``out`` as ``version`` with a size pass measured on the
    structures named in ``over``, the first reading standing where it draws one of ``keep``; the
    registry's checks run on the result (``ModelCardError`` in words if one fails, and nothing is
    left at ``out``)."""

    def edit(card: dict[str, Any]) -> None:
        card["layout"]["size_pass"] = {
            "reference_mm3": reference_mm3,
            "structures": [by_name(name).id for name in over],
            "weight": weight,
            "min_scale": min_scale,
            "kept": [by_name(name).id for name in keep or []],
        }

    made = command or command_line("inference.training.size_pass")
    return derive_version(model, out, version=version, edit=edit, command=made)


def main(argv: list[str] | None = None) -> None:
    parser = derive_parser("inference.training.size_pass", __doc__)
    parser.add_argument(
        "--reference-mm3",
        type=float,
        required=True,
        help="drawn volume of the --over structures in the largest mice the network learned (mm^3)",
    )
    parser.add_argument(
        "--over",
        action="append",
        required=True,
        help="structure whose drawn volume measures the mouse (repeat)",
    )
    parser.add_argument(
        "--weight", type=float, default=0.5, help="share of the size pass in the answer (0-1]"
    )
    parser.add_argument(
        "--min-scale", type=float, default=0.8, help="the most the scan is shrunk (0.5 to below 1)"
    )
    parser.add_argument(
        "--keep", action="append", help="structure whose first reading stands where drawn (repeat)"
    )
    args = parser.parse_args(argv)
    written = write_derived(
        parser,
        args,
        "inference.training.size_pass",
        argv,
        lambda out, command: with_size_pass(
            args.model,
            out,
            version=args.version,
            reference_mm3=args.reference_mm3,
            over=args.over,
            weight=args.weight,
            min_scale=args.min_scale,
            keep=args.keep,
            command=command,
        ),
    )
    print(f"wrote {written}: a size pass for mice drawn over {args.reference_mm3:g} mm^3")


if __name__ == "__main__":
    main()
