"""Transposed convolutions written as 1x1x1 convolutions and a depth-to-space reshape
(``inference.training.depth_to_space``): same logits, same weights for training, same soups."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper

from inference.registry import DEFAULT_MODELS_DIR, default_model, file_sha256, load_card
from inference.training.depth_to_space import as_convolutions, main, with_depth_to_space
from inference.training.network import UNet3D
from inference.training.soup import make_soup
from inference.training.warm_start import load_exported
from tests.inference.pipeline.tiny_models import write_threshold_model

BEFORE = DEFAULT_MODELS_DIR / "mouse-organs" / "2.10.0"
AFTER = DEFAULT_MODELS_DIR / "mouse-organs" / "2.11.0"


def _ops(path: Path) -> set[str]:
    return {node.op_type for node in onnx.load(str(path)).graph.node}


def _run(path: Path, x: np.ndarray) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return list(session.run(None, {"ct": x}))


@pytest.mark.parametrize(
    ("before", "after"),
    [
        (BEFORE, AFTER),
        (DEFAULT_MODELS_DIR / "mouse-tumor" / "2.0.3", DEFAULT_MODELS_DIR / "mouse-tumor" / "2.0.4"),
    ],
    ids=["organs", "tumor"],
)
def test_the_rewritten_network_gives_the_same_logits_to_the_last_bit(before: Path, after: Path) -> None:
    assert "ConvTranspose" in _ops(before / "model.onnx")
    assert "ConvTranspose" not in _ops(after / "model.onnx")
    # An odd-sized grid (a multiple of 8, not of 16) and two scans in one batch.
    x = np.random.default_rng(0).normal(size=(2, 1, 24, 16, 40)).astype(np.float32)
    for old, new in zip(_run(before / "model.onnx", x), _run(after / "model.onnx", x), strict=True):
        assert old.shape == new.shape
        np.testing.assert_array_equal(old, new)


def test_the_command_remakes_the_committed_version_and_copies_one_already_rewritten(tmp_path: Path) -> None:
    out = with_depth_to_space(BEFORE, tmp_path / "2.11.0", version="2.11.0", command="remade by the test")
    assert file_sha256(out / "model.onnx") == load_card(AFTER).sha256
    card = json.loads((out / "model.json").read_text())
    assert card["training"]["post_processing"]["from"].startswith(
        "mouse-organs/2.10.0 (same weights, refiners and rules; the network's transposed convolutions"
    )
    assert as_convolutions(onnx.load(str(out / "model.onnx"))) == 0  # nothing left to rewrite
    # A chain of versions remade from a network exported in this form passes through unchanged.
    main(["--model", str(out), "--version", "2.12.0"])
    again = load_card(tmp_path / "2.12.0")
    assert again.sha256 == load_card(AFTER).sha256
    assert (
        "already 1x1x1 convolutions"
        in json.loads((again.folder / "model.json").read_text())["training"]["post_processing"]["from"]
    )


def test_a_network_without_transposed_convolutions_is_refused_in_words(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tiny = write_threshold_model(tmp_path / "tiny", structures=(0, 4), thresholds=(0.3,))
    with pytest.raises(SystemExit):
        main(["--model", str(tiny.folder), "--version", "9.9.9", "--out", str(tmp_path / "new")])
    assert "no kernel-2, stride-2 transposed convolution to rewrite (a network of another kind)" in (
        capsys.readouterr().err
    )
    assert not (tmp_path / "new").exists()


def test_training_starts_from_either_form_with_the_same_weights() -> None:
    card = load_card(AFTER)
    x = torch.from_numpy(np.random.default_rng(1).normal(size=(1, 1, 16, 16, 24)).astype(np.float32))
    nets = []
    for folder in (BEFORE, AFTER):
        net = UNet3D(len(card.structures), base=8, levels=4)
        assert load_exported(net, folder / "model.onnx", [x]) < 1e-3
        nets.append(net.state_dict())
    for name, value in nets[0].items():
        torch.testing.assert_close(nets[1][name], value, rtol=0, atol=0, msg=name)


def test_a_soup_pairs_a_network_written_before_the_rewrite_with_one_after(tmp_path: Path) -> None:
    # The mean of one network in its two forms is that network.
    soup = make_soup(BEFORE, AFTER, tmp_path / "soup", version="9.0.0", command="the test")
    averaged = {
        t.name: numpy_helper.to_array(t) for t in onnx.load(str(soup / "model.onnx")).graph.initializer
    }
    served = {
        t.name: numpy_helper.to_array(t) for t in onnx.load(str(AFTER / "model.onnx")).graph.initializer
    }
    assert averaged.keys() == served.keys()
    for name, value in served.items():
        np.testing.assert_allclose(averaged[name], value, rtol=1e-6, atol=1e-7, err_msg=name)


def test_the_served_networks_have_no_transposed_convolution() -> None:
    for task in ("organs", "tumor"):
        assert "ConvTranspose" not in _ops(default_model(task).onnx_path), task
