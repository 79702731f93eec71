"""Shifted passes (``layout.shifted_passes``): the network also reads the scan moved by whole voxels
on its grid, and the logits are the mean over the passes (infer.run_model)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from onnx import helper

from inference.pipeline.infer import SHIFTED_MARGIN_VOXELS, SHIFTED_MIN_MM3, run_model
from inference.pipeline.manifest import model_entry
from inference.pipeline.runtime import get_session
from inference.registry import ModelCard, ModelCardError, load_card
from inference.structures import BY_NAME
from inference.training.shifted_passes import main as shifted_main
from inference.training.shifted_passes import with_shifted_passes
from tests.inference.pipeline.tiny_models import neighbour_sum_model, write_graph_model

LIVER = BY_NAME["liver"].id


def _pair_means(tmp_path: Path, layout: dict[str, Any], spacing_mm: float = 0.2) -> ModelCard:
    """The mean of each 2 x 2 x 2 cell of the network's grid, given to its 8 voxels: an answer
    that depends on the grid's phase, as a pooling network's does."""
    pool = helper.make_node("AveragePool", ["image"], ["pooled"], kernel_shape=[2, 2, 2], strides=[2, 2, 2])
    scales = np.array([1, 1, 2, 2, 2], np.float32)
    up = helper.make_node("Resize", ["pooled", "", "w0"], ["fg"], mode="nearest")
    return write_graph_model(tmp_path, [pool, up], [scales], layout, spacing_mm)


def test_a_shifted_pass_is_moved_back_onto_the_voxels_it_read(tmp_path: Path) -> None:
    """With a network that answers the same wherever the scan sits, the mean over shifted passes
    is the plain pass: every shifted answer lands on the voxel it was read from. Only the planes
    at the ends differ: the front one, where the network saw a repeated plane instead of the zero
    beyond, and the last one each shift read, whose next plane it did not see."""
    rng = np.random.default_rng(0)
    image = rng.normal(size=(12, 10, 14)).astype(np.float32)
    plain_card = neighbour_sum_model(tmp_path / "plain", {})
    shifted_card = neighbour_sum_model(tmp_path / "shifted", {"shifted_passes": [[3, 1, 2], [0, 5, 1]]})
    plain = run_model(get_session(plain_card, threads=1), plain_card, image)
    shifted = run_model(get_session(shifted_card, threads=1), shifted_card, image)
    assert shifted.passes == 3 and plain.passes == 1
    inner = (slice(None), slice(1, 12 - 3 - 1), slice(1, 10 - 5 - 1), slice(1, 14 - 2 - 1))
    assert np.allclose(shifted.logits[inner], plain.logits[inner], atol=1e-5)
    assert not np.allclose(shifted.logits[1, 0], plain.logits[1, 0])  # the repeated front plane


def test_the_logits_are_the_mean_over_the_grids_phases(tmp_path: Path) -> None:
    image = np.random.default_rng(1).normal(size=(8, 8, 8)).astype(np.float32)
    card = _pair_means(tmp_path, {"shifted_passes": [[1, 1, 1]]})
    out = run_model(get_session(card, threads=1), card, image)

    def cell_means(volume: np.ndarray) -> np.ndarray:
        n = volume.shape[0] // 2
        cells = volume[: 2 * n, : 2 * n, : 2 * n].reshape(n, 2, n, 2, n, 2).mean(axis=(1, 3, 5))
        return np.repeat(np.repeat(np.repeat(cells, 2, 0), 2, 1), 2, 2)

    phase0 = cell_means(image)
    moved = np.pad(image, [(1, 0)] * 3, mode="edge")[:8, :8, :8]
    phase1 = cell_means(moved)[1:, 1:, 1:]  # read back onto the voxels it came from
    assert np.allclose(out.logits[1, :7, :7, :7], (phase0[:7, :7, :7] + phase1) / 2, atol=1e-5)
    assert np.allclose(out.logits[1, 7], phase0[7])  # past the last plane the plain pass stands in


def test_passes_over_named_structures_leave_the_rest_to_the_plain_pass(tmp_path: Path) -> None:
    """``shifted_passes_over``: the shifted passes read only the box round the structure as the
    plain pass draws it, ``SHIFTED_MARGIN_VOXELS`` wider; outside it the answer is the plain one.
    Drawn under ``SHIFTED_MIN_MM3`` (a real head's specks of "lung"), it is the plain one everywhere."""
    image = np.full((8, 8, 80), -1.0, np.float32)
    image[2:6, 2:6, 4:8] = 1.0  # the only voxels the plain pass draws as liver: 64 of 1 mm^3
    image[:, :, 60:] = np.random.default_rng(2).normal(size=(8, 8, 20)).astype(np.float32) - 3.0
    answers = {}
    for spacing in (1.0, 1.6):
        for name, layout in (
            ("plain", {}),
            ("over", {"shifted_passes": [[1, 1, 1]], "shifted_passes_over": [LIVER]}),
        ):
            card = _pair_means(tmp_path / f"{name}-{spacing}", layout, spacing_mm=spacing)
            answers[name, spacing] = run_model(get_session(card, threads=1), card, image).logits
    assert 64 * 1.0 < SHIFTED_MIN_MM3 < 64 * 1.6**3
    assert np.array_equal(answers["over", 1.0], answers["plain", 1.0])
    plain, over = answers["plain", 1.6], answers["over", 1.6]
    beyond = 8 + SHIFTED_MARGIN_VOXELS
    assert np.array_equal(over[:, :, :, beyond:], plain[:, :, :, beyond:])
    assert not np.allclose(over[1, :, :, 3:9], plain[1, :, :, 3:9])


@pytest.mark.parametrize(
    ("layout", "words"),
    [
        ({"shifted_passes": [[3, 3]]}, "shifted_passes"),
        ({"shifted_passes": [[0, 0, 0]]}, "none all 0"),
        ({"shifted_passes": [[-1, 2, 2]]}, "from 0 to"),
        ({"shifted_passes": [[True, 2, 2]]}, "whole voxels"),
        ({"shifted_passes": [[1, 1, 1]] * 8}, "at most 7"),
        (
            {"shifted_passes": [[1, 1, 1]], "shifted_passes_over": [BY_NAME["heart"].id]},
            "shifted_passes_over",
        ),
        ({"shifted_passes": [[1, 1, 1]], "shifted_passes_over": [True]}, "shifted_passes_over"),
    ],
)
def test_a_card_with_bad_shifted_passes_is_refused_in_words(
    tmp_path: Path, layout: dict[str, Any], words: str
) -> None:
    with pytest.raises(ModelCardError, match=words):
        neighbour_sum_model(tmp_path, layout)


def test_a_new_version_with_shifted_passes_is_written_beside_the_old(tmp_path: Path) -> None:
    source = neighbour_sum_model(tmp_path / "tiny" / "1.0.0", {})
    out = tmp_path / "tiny" / "1.1.0"
    with_shifted_passes(
        source.folder, out, version="1.1.0", shifts=[[3, 3, 3]], over=["liver"], command="made"
    )
    card = load_card(out)
    assert (card.version, card.shifted_passes, card.shifted_passes_over) == ("1.1.0", ((3, 3, 3),), {LIVER})
    assert card.sha256 == source.sha256 and card.training["post_processing"]["commands"] == ["made"]
    assert not load_card(source.folder).shifted_passes
    with pytest.raises(ModelCardError, match="exists already"):
        with_shifted_passes(source.folder, out, version="1.1.0", shifts=[[1, 1, 1]])


def test_the_command_names_a_bad_structure_and_leaves_no_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = neighbour_sum_model(tmp_path / "tiny" / "1.0.0", {})
    with pytest.raises(SystemExit) as stopped:
        shifted_main(
            ["--model", str(source.folder), "--version", "1.1.0", "--shift", "3,3,3", "--over", "livr"]
        )
    assert stopped.value.code == 2
    assert "unknown structure 'livr'" in capsys.readouterr().err
    assert not (tmp_path / "tiny" / "1.1.0").exists()


def test_the_manifest_says_how_the_network_read_the_scan(tmp_path: Path) -> None:
    plain = neighbour_sum_model(tmp_path / "plain", {})
    shifted = neighbour_sum_model(
        tmp_path / "shifted", {"shifted_passes": [[3, 3, 3], [5, 5, 5]], "shifted_passes_over": [LIVER]}
    )
    assert "shifted_passes" not in model_entry(plain)
    entry = model_entry(shifted)
    assert entry["shifted_passes"] == [[3, 3, 3], [5, 5, 5]] and entry["shifted_passes_over"] == [LIVER]
    json.dumps(entry)


def test_a_scan_thinner_than_a_shift_is_read_by_the_passes_that_fit(tmp_path: Path) -> None:
    """A slab of 4 planes on the network's grid cannot be moved by 5: that pass stands down (the
    plain pass answers in its place) instead of failing; the pass that fits still counts."""
    image = np.random.default_rng(3).normal(size=(10, 9, 4)).astype(np.float32)
    plain_card = neighbour_sum_model(tmp_path / "plain", {})
    card = neighbour_sum_model(tmp_path / "shifted", {"shifted_passes": [[0, 0, 5], [1, 0, 0]]})
    plain = run_model(get_session(plain_card, threads=1), plain_card, image)
    out = run_model(get_session(card, threads=1), card, image)
    assert out.logits.shape == plain.logits.shape == (2, 10, 9, 4) and out.passes == 2
    assert np.allclose(out.logits[:, 1:8], plain.logits[:, 1:8], atol=1e-5)
