"""``python -m inference.training.share_weights [--root DIR] [--check]``: committed versions share
their networks instead of each holding a copy.

A new model version often changes only its card (``derive.py``: passes, size pass, outline rules)
and keeps its networks byte for byte. Every such copy counted against the committed models' size
limit (issue 19: 30 MB for all of them). Here each distinct ``.onnx`` file of
``<root>/<name>/<version>/`` lives once in ``<root>/weights/<sha256>.onnx``, and the version folders
hold relative symbolic links to it. Everything that reads a model folder (the registry, the
runtime, ``lab_finetune``'s copies) follows the links; the registry still checks each file's
sha256 against the card. A folder outside a root with a store keeps plain files.

Writers of ``.onnx`` files call ``unshare`` first: writing through a link would change the weights
of every version that shares them.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

from inference.registry import DEFAULT_MODELS_DIR, file_sha256

#: The store's folder name under the models root (not a ``<name>/<version>/`` folder: the registry
#: only reads ``*/*/model.json``).
STORE = "weights"


def store_of(root: Path) -> Path:
    return Path(root) / STORE


def version_folders(root: Path) -> list[Path]:
    """Every ``<root>/<name>/<version>/`` that holds a ``model.json``."""
    return sorted(path.parent for path in Path(root).glob("*/*/model.json"))


def share_weights(root: Path, folders: Iterable[Path] | None = None) -> list[Path]:
    """Move every plain ``.onnx`` file of ``folders`` (default: all of ``root``'s versions) into the
    store and link it back; a file whose bytes the store holds already is replaced by a link.
    Returns the files that became links. Running it twice changes nothing."""
    store = store_of(root)
    shared = []
    for folder in version_folders(root) if folders is None else [Path(f) for f in folders]:
        for path in sorted(folder.glob("*.onnx")):
            if path.is_symlink() or not path.is_file():
                continue
            store.mkdir(exist_ok=True)
            target = store / f"{file_sha256(path)}.onnx"
            if target.exists():
                path.unlink()
            else:
                os.replace(path, target)
            path.symlink_to(os.path.relpath(target, path.parent))
            shared.append(path)
    return shared


def share_if_stored(folder: Path) -> None:
    """Share ``folder``'s networks when it is a version folder of a root that has a store (the
    committed models); a folder anywhere else keeps its plain files."""
    folder = Path(folder)
    if store_of(folder.parent.parent).is_dir():
        share_weights(folder.parent.parent, [folder])


def unshare(path: Path) -> Path:
    """``path`` ready to be written: a link into the store is removed, so the write makes a new
    file instead of changing weights other versions share."""
    if path.is_symlink():
        path.unlink()
    return path


def problems(root: Path) -> list[str]:
    """What is wrong with ``root``'s sharing, in words: links that lead nowhere or outside the
    store, store files whose name is not their sha256, store files no version uses, copies left."""
    store = store_of(root)
    found, used = [], set()
    for folder in version_folders(root):
        for path in sorted(folder.glob("*.onnx")):
            if not path.is_symlink():
                found.append(f"{path} is a copy: run python -m inference.training.share_weights")
                continue
            target = path.resolve()
            if target.parent != store.resolve():
                found.append(f"{path} links outside {store}: to {os.readlink(path)}")
            elif not target.is_file():
                found.append(f"{path} links to {target.name}, which the store does not hold")
            else:
                used.add(target.name)
    if store.is_dir():
        for blob in sorted(store.iterdir()):
            if blob.name not in used:
                found.append(f"{blob} is used by no version: remove it")
            elif blob.name != f"{file_sha256(blob)}.onnx":
                found.append(f"{blob}'s bytes have another sha256: it was written through a link")
    return found


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m inference.training.share_weights",
        description="Keep each distinct network of the committed model versions once, in <root>/weights.",
    )
    parser.add_argument(
        "--root", type=Path, default=DEFAULT_MODELS_DIR, help="models root (default: the registry's)"
    )
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if anything is amiss")
    args = parser.parse_args(argv)
    if not args.check:
        for path in share_weights(args.root):
            print(f"shared {path.relative_to(args.root)}")
    found = problems(args.root)
    for line in found:
        print(line, file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    raise SystemExit(main())
