"""A new version of a model folder with the same weights, refiners and rules and one change to its
card (``shifted_passes``, ``size_pass``): the folder copied, the card edited and checked by the
registry, and the command that made it recorded in ``training.post_processing``, so the card
stays remakeable."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from inference.jsonsafe import finite_or_null
from inference.registry import ModelCardError, file_sha256, load_card
from inference.training.share_weights import share_if_stored


def derive_version(
    model: Path,
    out: Path,
    *,
    version: str,
    edit: Callable[[dict[str, Any]], None],
    command: str,
    weights: Callable[[Path], str] | None = None,
) -> Path:
    """Copy the model folder ``model`` to ``out`` as ``version``, its ``model.json`` changed by
    ``edit`` (which may raise ``KeyError`` or ``ValueError`` in words); the registry's checks run
    on the result. ``weights``, when given, rewrites the copy's ``model.onnx`` (same weights in
    another graph) and says how, in words; the card then records the new file's sha256. On any
    failure nothing is left at ``out`` (``ModelCardError`` in words)."""
    source = load_card(model)
    if out.exists():
        raise ModelCardError(f"{out} exists already: a version is written once")
    shutil.copytree(model, out)  # links into the weight store are copied as files
    try:
        card: dict[str, Any] = json.loads((out / "model.json").read_text())
        card["version"] = version
        same = "same model.onnx, refiners and rules"
        try:
            if weights is not None:
                same = f"same weights, refiners and rules; {weights(out / 'model.onnx')}"
                card["sha256"] = file_sha256(out / "model.onnx")
            edit(card)
        except (KeyError, ValueError) as error:
            raise ModelCardError(str(error.args[0]) if error.args else str(error)) from None
        card.setdefault("training", {})["post_processing"] = {
            "from": f"{source.name}/{source.version} ({same}), then the commands below, in order",
            "commands": [command],
        }
        card.pop("metrics", None)  # measured again on the new version, not carried
        (out / "model.json").write_text(json.dumps(finite_or_null(card), indent=1, allow_nan=False) + "\n")
        load_card(out)
        share_if_stored(out)
    except BaseException:
        shutil.rmtree(out)
        raise
    return out


def command_line(module: str, argv: Sequence[str] | None = None) -> str:
    """The command that is running, as ``python -m module ARGS`` (recorded in the new card):
    ``argv`` as ``main`` was given it, else the process's own arguments."""
    return f"python -m {module} " + " ".join(sys.argv[1:] if argv is None else argv)


def derive_parser(module: str, description: str | None) -> argparse.ArgumentParser:
    """The arguments every derived version takes: ``--model``, ``--version`` and ``--out``."""
    parser = argparse.ArgumentParser(prog=f"python -m {module}", description=description)
    parser.add_argument("--model", type=Path, required=True, help="model folder to start from")
    parser.add_argument("--version", required=True, help="version of the new folder")
    parser.add_argument("--out", type=Path, help="folder to write (default: beside --model, named --version)")
    return parser


def derived_folder(args: argparse.Namespace) -> Path:
    """``--out``, else the folder beside ``--model`` named ``--version``."""
    return Path(args.out or Path(args.model).parent / args.version)


def write_derived(
    parser: argparse.ArgumentParser,
    args: argparse.Namespace,
    module: str,
    argv: Sequence[str] | None,
    make: Callable[[Path, str], Path],
) -> Path:
    """``make(out, command)`` for a derived-version command's parsed ``args``: ``out`` the folder to
    write (``derived_folder``), ``command`` the command line to record (``command_line``). A card
    the registry refuses ends the command with exit 2 and the reason in words."""
    try:
        return make(derived_folder(args), command_line(module, argv))
    except ModelCardError as error:
        parser.exit(2, f"error: {error}\n")
