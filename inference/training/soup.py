"""``python -m inference.training.soup --base DIR --other DIR --out DIR --version V [--weight W]``.

A "model soup" (Wortsman et al., ICML 2022): the weights of two networks fine-tuned from one
starting point, averaged. Two such networks sit in one basin of the loss, so their mean is a
network of its own (no second inference at run time, unlike an ensemble), and it tends to keep
what each learned and to hold up better than either off the data they trained on.

Both folders must hold the same graph (same initializer names and shapes: the same architecture
exported the same way; transposed convolutions are first written as ``depth_to_space`` writes them,
so a network exported before that form pairs with one exported after). The soup takes ``base``'s
card (structures, layout, post-processing and outline refiners), its own weights
(``(1 - weight) * base + weight * other`` for every float initializer; integer ones, such as
shapes, must agree) and a ``training`` record naming both members, so the card says how to
remake it.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from inference.jsonsafe import finite_or_null
from inference.registry import ModelCardError, file_sha256, load_card
from inference.training.depth_to_space import as_convolutions
from inference.training.share_weights import share_if_stored, unshare


class SoupError(ValueError):
    """The two models cannot be averaged (different graphs, or a bad weight)."""


def average_weights(base: onnx.ModelProto, other: onnx.ModelProto, weight: float) -> int:
    """Replace ``base``'s float initializers by ``(1 - weight) * base + weight * other``, in place.

    Returns how many were averaged. Raises ``SoupError`` unless both hold the same initializers.
    """
    if not 0.0 < weight < 1.0:
        raise SoupError(f"the weight of the second model must lie strictly between 0 and 1, not {weight}")
    theirs = {init.name: numpy_helper.to_array(init) for init in other.graph.initializer}
    ours = [init.name for init in base.graph.initializer]
    if sorted(ours) != sorted(theirs):
        raise SoupError("the two models do not hold the same weights: they are not one architecture")
    averaged = 0
    for init in base.graph.initializer:
        mine, their = numpy_helper.to_array(init), theirs[init.name]
        if mine.shape != their.shape:
            raise SoupError(
                f"weight {init.name!r} is {mine.shape} in one model and {their.shape} in the other"
            )
        if mine.dtype.kind != "f":
            if not np.array_equal(mine, their):
                raise SoupError(f"the two models differ in the fixed (non-float) value {init.name!r}")
            continue
        mean = ((1.0 - weight) * mine.astype(np.float64) + weight * their.astype(np.float64)).astype(
            mine.dtype
        )
        init.CopyFrom(numpy_helper.from_array(mean, init.name))
        averaged += 1
    return averaged


def _member(folder: Path) -> dict[str, Any]:
    card = json.loads((folder / "model.json").read_text())
    training = card.get("training", {})
    return {
        "model": f"{card['name']}/{card['version']}",
        "sha256": card["sha256"],
        **{k: training[k] for k in ("command", "init", "epochs", "seconds", "seeds") if k in training},
    }


def make_soup(
    base: Path, other: Path, out: Path, *, version: str, weight: float = 0.5, command: str = ""
) -> Path:
    """Write the soup of ``base`` and ``other`` (model folders) to ``out``; returns ``out``."""
    first, second = load_card(base), load_card(other)
    if (first.task, first.structures) != (second.task, second.structures):
        raise SoupError(
            f"{first.name}/{first.version} and {second.name}/{second.version} do not segment the same "
            "structures of the same task"
        )
    model, second_model = onnx.load(str(base / "model.onnx")), onnx.load(str(other / "model.onnx"))
    # Both in one graph form, whichever each was written in: their weights then pair by name.
    as_convolutions(model)
    as_convolutions(second_model)
    averaged = average_weights(model, second_model, weight)
    onnx.checker.check_model(model)
    out.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(unshare(out / "model.onnx")))
    card = json.loads((base / "model.json").read_text())
    for rule in card.get("postprocess", {}).get("refine", []):
        if "network" in rule:
            shutil.copyfile(base / rule["network"], unshare(out / rule["network"]))
    members = [_member(base), _member(other)]
    card.update(
        version=version,
        sha256=file_sha256(out / "model.onnx"),
        training={
            "data": "the mean of two networks' weights (a model soup), each trained as its member says",
            "soup": {"weight_of_second": weight, "averaged_weights": averaged, "members": members},
            "seeds": {"members": [m.get("seeds") for m in members]},
            "command": command or "python -m inference.training.soup " + " ".join(sys.argv[1:]),
        },
    )
    card.pop("metrics", None)  # measured again on the soup, not carried
    (out / "model.json").write_text(json.dumps(finite_or_null(card), indent=1, allow_nan=False) + "\n")
    load_card(out)
    share_if_stored(out)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m inference.training.soup", description=__doc__)
    parser.add_argument("--base", type=Path, required=True, help="model folder whose card the soup takes")
    parser.add_argument(
        "--other", type=Path, required=True, help="model folder fine-tuned from the same start"
    )
    parser.add_argument("--out", type=Path, required=True, help="model version folder to write")
    parser.add_argument("--version", required=True)
    parser.add_argument(
        "--weight", type=float, default=0.5, help="share of the second model (0-1, exclusive)"
    )
    args = parser.parse_args(argv)
    try:
        out = make_soup(args.base, args.other, args.out, version=args.version, weight=args.weight)
    except (SoupError, ModelCardError, OSError) as error:
        parser.exit(2, f"soup: {error}\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
