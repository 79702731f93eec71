"""Committed model versions share their networks (``inference/training/share_weights.py``)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from inference.registry import DEFAULT_MODELS_DIR, ModelCardError, file_sha256, load_card
from inference.training import share_weights as sw
from inference.training.derive import derive_version
from tests.segmentation.tiny import write_tiny_models

#: Issue 19: all committed models together.
COMMITTED_LIMIT_BYTES = 30 * 1000 * 1000


def _root(tmp_path: Path) -> Path:
    """Two versions of the tiny organ model with the same weights, and the tiny lesion model."""
    root = write_tiny_models(tmp_path / "models")
    shutil.copytree(root / "tiny-organs" / "1.0.0", root / "tiny-organs" / "1.1.0")
    card = json.loads((root / "tiny-organs" / "1.1.0" / "model.json").read_text())
    card["version"] = "1.1.0"
    (root / "tiny-organs" / "1.1.0" / "model.json").write_text(json.dumps(card))
    return root


def test_each_distinct_network_is_kept_once_and_every_version_still_loads(tmp_path: Path) -> None:
    root = _root(tmp_path)
    before = {p: file_sha256(p) for p in root.glob("*/*/model.onnx")}

    shared = sw.share_weights(root)

    assert sorted(shared) == sorted(before)
    blobs = sorted(p.name for p in sw.store_of(root).iterdir())
    assert blobs == sorted({f"{sha}.onnx" for sha in before.values()})
    assert len(blobs) == 2  # the two organ versions share one file
    for path, sha in before.items():
        assert path.is_symlink() and not Path(path.readlink()).is_absolute()
        assert load_card(path.parent).sha256 == sha
    assert sw.problems(root) == []
    assert sw.share_weights(root) == []  # a second run changes nothing


def test_a_file_written_after_unshare_leaves_the_other_versions_weights_alone(tmp_path: Path) -> None:
    root = _root(tmp_path)
    sw.share_weights(root)
    other = root / "tiny-organs" / "1.0.0" / "model.onnx"
    kept = file_sha256(other)

    target = sw.unshare(root / "tiny-organs" / "1.1.0" / "model.onnx")
    target.write_bytes(b"new weights")

    assert file_sha256(other) == kept
    assert sw.problems(root) == [f"{target} is a copy: run python -m inference.training.share_weights"]
    with pytest.raises(ModelCardError, match="sha256"):
        load_card(target.parent)


def test_what_is_amiss_is_said_in_words(tmp_path: Path) -> None:
    root = _root(tmp_path)
    sw.share_weights(root)
    organ = root / "tiny-organs" / "1.0.0" / "model.onnx"
    lesion = root / "tiny-lesions" / "1.0.0" / "model.onnx"
    lesion.resolve().write_bytes(b"written through the link")  # what unshare prevents
    blob = organ.resolve()
    (root / "tiny-organs" / "1.0.0").joinpath("model.onnx").unlink()
    shutil.rmtree(root / "tiny-organs" / "1.1.0")

    found = sw.problems(root)

    assert f"{blob} is used by no version: remove it" in found
    assert any("another sha256: it was written through a link" in line for line in found)
    assert sw.main(["--root", str(root), "--check"]) == 1


def test_a_broken_link_is_named_by_the_registry(tmp_path: Path) -> None:
    root = _root(tmp_path)
    sw.share_weights(root)
    folder = root / "tiny-lesions" / "1.0.0"
    (folder / "model.onnx").resolve().unlink()

    assert sw.problems(root) == [
        f"{folder / 'model.onnx'} links to {Path((folder / 'model.onnx').readlink()).name}, "
        "which the store does not hold"
    ]
    with pytest.raises(ModelCardError, match="model.onnx links to .*, which is missing"):
        load_card(folder)


def test_a_derived_version_links_inside_a_store_and_copies_elsewhere(tmp_path: Path) -> None:
    root = _root(tmp_path)
    sw.share_weights(root)
    source = root / "tiny-organs" / "1.0.0"

    def keep(card: dict) -> None:
        """No change to the card: only the folder is new."""

    inside = derive_version(
        source, root / "tiny-organs" / "1.2.0", version="1.2.0", edit=keep, command="test"
    )
    outside = derive_version(source, tmp_path / "lab" / "1.2.0", version="1.2.0", edit=keep, command="test")

    assert (inside / "model.onnx").is_symlink()
    assert (inside / "model.onnx").resolve() == (source / "model.onnx").resolve()
    assert not (outside / "model.onnx").is_symlink()
    assert load_card(inside).sha256 == load_card(outside).sha256 == load_card(source).sha256
    assert sw.problems(root) == []


def test_the_committed_models_share_their_networks_and_fit_the_limit() -> None:
    assert sw.problems(DEFAULT_MODELS_DIR) == []
    # Links count as links (lstat), as git stores them.
    size = sum(p.lstat().st_size for p in DEFAULT_MODELS_DIR.rglob("*") if not p.is_dir() or p.is_symlink())
    assert size <= COMMITTED_LIMIT_BYTES, f"committed models take {size / 1e6:.1f} MB"
