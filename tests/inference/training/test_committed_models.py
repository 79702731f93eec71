"""The models committed under inference/models/: intact, consistent with the structure table, small."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from inference.phantom.anatomy import ID
from inference.registry import DEFAULT_MODELS_DIR, load_card
from inference.structures import BY_ID, GROUPS

CARDS = sorted(DEFAULT_MODELS_DIR.glob("*/*/model.json"))


def test_both_tasks_have_a_committed_model() -> None:
    tasks = {json.loads(p.read_text())["task"] for p in CARDS}
    assert tasks == {"organs", "tumor"}


def test_all_committed_models_together_stay_under_30_mb() -> None:
    total = sum(p.stat().st_size for p in DEFAULT_MODELS_DIR.rglob("*") if p.is_file())
    assert total < 30 * 1024 * 1024


@pytest.mark.parametrize("card_path", CARDS, ids=lambda p: f"{p.parent.parent.name}-{p.parent.name}")
def test_model_json_matches_its_weights_and_the_structure_table(card_path: Path) -> None:
    card = json.loads(card_path.read_text())
    onnx = card_path.parent / "model.onnx"
    assert hashlib.sha256(onnx.read_bytes()).hexdigest() == card["sha256"]
    assert card["structures"][0] == 0
    assert all(s in BY_ID for s in card["structures"])
    assert len(set(card["structures"])) == len(card["structures"])
    assert card["opset"] == 17
    assert card["training"]["command"] and card["training"]["seeds"]
    load_card(card_path.parent)


@pytest.mark.parametrize("card_path", CARDS, ids=lambda p: f"{p.parent.parent.name}-{p.parent.name}")
def test_onnx_model_takes_dynamic_shapes_and_gives_both_heads(card_path: Path) -> None:
    card = json.loads(card_path.read_text())
    session = ort.InferenceSession(str(card_path.parent / "model.onnx"), providers=["CPUExecutionProvider"])
    k = card["layout"]["divisible_by"]
    x = np.zeros((1, 1, 2 * k, 3 * k, 4 * k), dtype=np.float32)
    logits, disagreement = session.run(
        [card["output_names"]["logits"], card["output_names"]["disagreement"]], {card["input_name"]: x}
    )
    assert logits.shape == (1, len(card["structures"]), 2 * k, 3 * k, 4 * k)
    assert disagreement.shape == (1, 1, 2 * k, 3 * k, 4 * k)


def test_phantom_labels_come_from_the_canonical_table() -> None:
    assert all(BY_ID[i].name == name for name, i in ID.items())
    assert set(GROUPS["lungs"]) == {"lung_left", "lung_right"}
    assert set(GROUPS["kidneys"]) == {"kidney_left", "kidney_right"}
