"""The size pass (``layout.size_pass``): a mouse drawn larger than those the network learned is read
once more, shrunk towards their size, and that pass's logits weigh in the answer (infer.run_model)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from onnx import helper

from inference.pipeline.geometry import channel_argmax
from inference.pipeline.infer import SIZE_MIN_CHANGE, run_model, size_scale
from inference.pipeline.manifest import build_manifest, model_entry
from inference.pipeline.runtime import get_session
from inference.registry import ModelCard, ModelCardError, load_card
from inference.training.size_pass import main as size_main
from inference.training.size_pass import with_size_pass
from tests.inference.pipeline.tiny_models import LIVER, neighbour_sum_model, write_graph_model

SIZE = {"reference_mm3": 100.0, "structures": [LIVER], "weight": 0.5, "min_scale": 0.8, "kept": []}


def _identity(tmp_path: Path, layout: dict[str, Any]) -> ModelCard:
    """The liver's logit is the image itself (1 mm voxels): liver wherever the image is above 0."""
    return write_graph_model(tmp_path, [helper.make_node("Identity", ["image"], ["fg"])], [], layout, 1.0)


def _liver_logits(volume: np.ndarray) -> np.ndarray:
    return np.stack([np.zeros_like(volume), volume])


@pytest.mark.parametrize(
    ("drawn", "animals", "expected"),
    [
        (50, 1, 1.0),  # smaller than the reference: read as learned
        (100, 1, 1.0),
        (150, 1, (100 / 150) ** (1 / 3)),
        (300, 2, (100 / 150) ** (1 / 3)),  # two mice of 150 mm^3 each
        (1000, 1, 0.8),  # never shrunk past min_scale
    ],
)
def test_the_scale_is_the_cube_root_of_the_reference_over_the_drawn_volume(
    tmp_path: Path, drawn: int, animals: int, expected: float
) -> None:
    card = _identity(tmp_path, {"size_pass": SIZE})
    volume = np.full(1000, -1.0, np.float32)
    volume[:drawn] = 1.0
    channels = channel_argmax(_liver_logits(volume.reshape(10, 10, 10)))
    assert size_scale(card, channels, animals) == pytest.approx(expected)


def test_a_mouse_no_larger_than_the_reference_is_read_once(tmp_path: Path) -> None:
    image = np.full((16, 16, 16), -1.0, np.float32)
    image[4:8, 4:8, 4:10] = 1.0  # 96 mm^3 of liver
    plain = _identity(tmp_path / "plain", {})
    sized = _identity(tmp_path / "sized", {"size_pass": SIZE})
    out = run_model(get_session(sized, threads=1), sized, image)
    assert (out.passes, out.size_scale) == (1, 1.0)
    assert np.array_equal(out.logits, run_model(get_session(plain, threads=1), plain, image).logits)


def test_the_shrunk_pass_lands_back_on_the_voxels_it_read(tmp_path: Path) -> None:
    """A linear ramp, shrunk and grown back linearly, is the same ramp away from its ends: with a
    network that answers each voxel by its own value, the size pass gives the plain answer back
    there, so nothing it reads is moved. Its weight then blends the two."""
    x, y, z = np.meshgrid(*(np.arange(n, dtype=np.float32) for n in (24, 20, 32)), indexing="ij")
    image = (x - 6.0) + 0.5 * (y - 4.0) + 0.25 * (z - 8.0)  # liver (above 0) over most of it
    plain_card = _identity(tmp_path / "plain", {})
    card = _identity(tmp_path / "sized", {"size_pass": {**SIZE, "reference_mm3": 4000.0}})
    plain = run_model(get_session(plain_card, threads=1), plain_card, image)
    out = run_model(get_session(card, threads=1), card, image)
    assert out.passes == 2 and out.size_scale < 1.0 - SIZE_MIN_CHANGE
    inner = (slice(None), slice(3, -3), slice(3, -3), slice(3, -3))
    assert np.allclose(out.logits[inner], plain.logits[inner], atol=1e-4)
    assert not np.allclose(out.logits[1, 0], plain.logits[1, 0])  # an end, read shrunk, is not


def test_where_the_first_reading_draws_a_kept_structure_its_answer_stands(tmp_path: Path) -> None:
    """Bone is thinner than a shrunk grid holds: where the first reading draws a ``kept``
    structure, its logits stand; elsewhere the size pass weighs in."""
    rng = np.random.default_rng(4)
    image = rng.normal(size=(24, 20, 32)).astype(np.float32) + 0.5
    plain_card = _identity(tmp_path / "plain", {})
    card = _identity(tmp_path / "kept", {"size_pass": {**SIZE, "reference_mm3": 1000.0, "kept": [LIVER]}})
    plain = run_model(get_session(plain_card, threads=1), plain_card, image)
    out = run_model(get_session(card, threads=1), card, image)
    drawn = image > 0
    assert out.passes == 2 and drawn.any() and (~drawn).any()
    assert np.array_equal(out.logits[:, drawn], plain.logits[:, drawn])
    assert not np.allclose(out.logits[1][~drawn], plain.logits[1][~drawn])


@pytest.mark.parametrize(
    ("size", "words"),
    [
        ({**SIZE, "reference_mm3": 0}, "reference_mm3"),
        ({**SIZE, "reference_mm3": True}, "reference_mm3"),
        ({**SIZE, "structures": []}, "structures"),
        ({**SIZE, "structures": [2]}, "structures"),  # a structure the model does not output
        ({**SIZE, "weight": 0}, "weight"),
        ({**SIZE, "weight": 1.5}, "weight"),
        ({**SIZE, "min_scale": 1.0}, "min_scale"),
        ({**SIZE, "min_scale": 0.3}, "min_scale"),
        ({**SIZE, "kept": [0]}, "kept"),
        ({**SIZE, "kept": LIVER}, "kept"),
        ({**SIZE, "scale": 0.9}, "an object of"),
        ([100.0], "an object of"),
    ],
)
def test_a_card_with_a_bad_size_pass_is_refused_in_words(tmp_path: Path, size: Any, words: str) -> None:
    with pytest.raises(ModelCardError, match=words):
        neighbour_sum_model(tmp_path, {"size_pass": size})


def test_a_new_version_with_a_size_pass_is_written_beside_the_old(tmp_path: Path) -> None:
    source = neighbour_sum_model(tmp_path / "tiny" / "1.0.0", {"shifted_passes": [[3, 3, 3]]})
    out = tmp_path / "tiny" / "1.1.0"
    with_size_pass(source.folder, out, version="1.1.0", reference_mm3=2300.0, over=["liver"], command="made")
    card = load_card(out)
    assert card.size_pass is not None and card.version == "1.1.0"
    assert (card.size_pass.reference_mm3, card.size_pass.structures) == (2300.0, {LIVER})
    assert (card.size_pass.weight, card.size_pass.min_scale) == (0.5, 0.8)
    assert card.shifted_passes == ((3, 3, 3),) and card.sha256 == source.sha256
    assert card.training["post_processing"]["commands"] == ["made"]
    assert load_card(source.folder).size_pass is None
    with pytest.raises(ModelCardError, match="exists already"):
        with_size_pass(source.folder, out, version="1.1.0", reference_mm3=2300.0, over=["liver"])


@pytest.mark.parametrize(
    ("extra", "words"),
    [(["--over", "livr"], "unknown structure 'livr'"), (["--over", "liver", "--weight", "0"], "weight")],
)
def test_the_command_refuses_in_words_and_leaves_no_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], words: str
) -> None:
    source = neighbour_sum_model(tmp_path / "tiny" / "1.0.0", {})
    with pytest.raises(SystemExit) as stopped:
        size_main(["--model", str(source.folder), "--version", "1.1.0", "--reference-mm3", "2300", *extra])
    assert stopped.value.code == 2
    assert words in capsys.readouterr().err
    assert not (tmp_path / "tiny" / "1.1.0").exists()


def test_the_manifest_says_whether_and_how_far_the_scan_was_shrunk(tmp_path: Path) -> None:
    plain = neighbour_sum_model(tmp_path / "plain", {})
    sized = neighbour_sum_model(tmp_path / "sized", {"size_pass": SIZE})
    assert "size_pass" not in model_entry(plain)
    assert model_entry(sized)["size_pass"] == {**SIZE, "reference_mm3": 100.0}

    def manifest(card: ModelCard, scales: dict[str, float]) -> dict[str, Any]:
        return build_manifest(
            cards=[card], providers={}, device="cpu", threads=1, seconds={}, geometry={}, size_scales=scales
        )

    assert manifest(sized, {sized.key: 0.87312})["models"][0]["size_scale"] == 0.873
    assert "size_scale" not in manifest(plain, {})["models"][0]
    json.dumps(manifest(sized, {sized.key: 1.0}))
