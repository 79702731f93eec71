"""Model soups (``inference.training.soup``): two networks' weights averaged into one model folder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from inference.registry import load_card
from inference.training.soup import SoupError, main, make_soup
from tests.inference.pipeline.tiny_models import write_threshold_model


def _weights(folder: Path) -> dict[str, np.ndarray]:
    model = onnx.load(str(folder / "model.onnx"))
    return {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}


def test_the_soup_is_the_mean_of_the_two_networks(tmp_path: Path) -> None:
    # The tiny model's weights are linear in its threshold: the soup of 0.3 and 0.5 is the 0.4 model.
    low = write_threshold_model(tmp_path / "low", structures=(0, 4), thresholds=(0.3,), version="1.0.0")
    high = write_threshold_model(tmp_path / "high", structures=(0, 4), thresholds=(0.5,), version="1.1.0")
    middle = write_threshold_model(tmp_path / "middle", structures=(0, 4), thresholds=(0.4,))

    out = make_soup(low.folder, high.folder, tmp_path / "soup", version="2.0.0", command="remade by the test")

    soup, expected = _weights(out), _weights(middle.folder)
    assert soup.keys() == expected.keys()
    for name, value in expected.items():
        np.testing.assert_allclose(soup[name], value, rtol=1e-6, atol=1e-5, err_msg=name)
    card = load_card(out)  # the sha256 in the card matches the written weights
    assert (card.version, card.structures) == ("2.0.0", (0, 4))
    training = json.loads((out / "model.json").read_text())["training"]
    assert training["command"] == "remade by the test"
    assert [m["model"] for m in training["soup"]["members"]] == ["tiny-organs/1.0.0", "tiny-organs/1.1.0"]
    assert training["soup"]["weight_of_second"] == 0.5


def test_a_weighted_soup_leans_towards_the_second_model(tmp_path: Path) -> None:
    low = write_threshold_model(tmp_path / "low", structures=(0, 4), thresholds=(0.2,))
    high = write_threshold_model(tmp_path / "high", structures=(0, 4), thresholds=(0.6,))
    near_high = write_threshold_model(tmp_path / "near", structures=(0, 4), thresholds=(0.5,))
    out = make_soup(low.folder, high.folder, tmp_path / "soup", version="2.0.0", weight=0.75)
    np.testing.assert_allclose(
        _weights(out)["bias"], _weights(near_high.folder)["bias"], rtol=1e-6, atol=1e-4
    )


@pytest.mark.parametrize(
    ("other", "weight", "message"),
    [
        ({"structures": (0, 4, 12), "thresholds": (0.3, 0.6)}, 0.5, "do not segment the same structures"),
        ({"structures": (0, 4), "thresholds": (0.5,), "disagreement": False}, 0.5, "not one architecture"),
        ({"structures": (0, 4), "thresholds": (0.5,)}, 1.0, "strictly between 0 and 1"),
        ({"structures": (0, 4), "thresholds": (0.5,)}, 0.0, "strictly between 0 and 1"),
    ],
)
def test_models_that_cannot_be_averaged_are_refused_and_nothing_is_written(
    tmp_path: Path, other: dict, weight: float, message: str
) -> None:
    base = write_threshold_model(tmp_path / "base", structures=(0, 4), thresholds=(0.3,))
    second = write_threshold_model(tmp_path / "other", **other)
    with pytest.raises(SoupError, match=message):
        make_soup(base.folder, second.folder, tmp_path / "soup", version="2.0.0", weight=weight)
    assert not (tmp_path / "soup").exists()


def test_the_command_line_says_why_it_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = write_threshold_model(tmp_path / "base", structures=(0, 4), thresholds=(0.3,))
    other = write_threshold_model(tmp_path / "other", structures=(0, 4, 12), thresholds=(0.3, 0.6))
    argv = [
        "--base",
        str(base.folder),
        "--other",
        str(other.folder),
        "--out",
        str(tmp_path / "s"),
        "--version",
        "2",
    ]
    with pytest.raises(SystemExit) as stopped:
        main(argv)
    assert stopped.value.code == 2
    assert "do not segment the same structures of the same task" in capsys.readouterr().err


def test_a_folder_that_is_not_a_model_is_named_not_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = write_threshold_model(tmp_path / "base", structures=(0, 4), thresholds=(0.3,))
    argv = ["--base", str(base.folder), "--other", str(tmp_path / "missing"), "--out", str(tmp_path / "s")]
    with pytest.raises(SystemExit) as stopped:
        main([*argv, "--version", "2"])
    assert stopped.value.code == 2
    assert "missing: no model.json" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()
