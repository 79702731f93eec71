"""Tiny ONNX models built with the ``onnx`` helper API (no torch), for tests of the pipeline and the
service while no trained model is needed.

``write_threshold_model`` makes a 1x1x1 3D convolution whose logits are straight lines in the
normalised intensity ``v``: class k has slope ``k * steepness``, with intercepts chosen so that class
k wins exactly on ``thresholds[k-1] < v < thresholds[k]``. Its optional disagreement head is
``4 - 40 * |v - thresholds[0]|`` (probability of disagreement near 1 at the first threshold). So a
test knows the exact expected label of every voxel.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from inference.registry import ModelCard, load_card
from inference.structures import BY_NAME

OPSET = 17
LIVER = BY_NAME["liver"].id


def _line_parameters(thresholds: Sequence[float], steepness: float) -> tuple[np.ndarray, np.ndarray]:
    count = len(thresholds) + 1
    slopes = np.array([steepness * k for k in range(count)], dtype=np.float32)
    intercepts = np.zeros(count, dtype=np.float32)
    for k in range(1, count):
        intercepts[k] = intercepts[k - 1] - steepness * thresholds[k - 1]
    return slopes, intercepts


def write_threshold_model(
    folder: Path,
    *,
    name: str = "tiny-organs",
    version: str = "0.0.1",
    task: str = "organs",
    structures: Sequence[int] = (0, 4, 12),
    thresholds: Sequence[float] = (0.3, 0.6),
    activation: str = "softmax",
    spacing_mm: Sequence[float] = (0.2, 0.2, 0.2),
    normalisation: Mapping[str, Any] | None = None,
    disagreement: bool = True,
    divisible_by: int = 1,
    patch_size: Sequence[int] = (32, 32, 32),
    steepness: float = 60.0,
    default: bool = False,
    dark: bool = False,
) -> ModelCard:
    """Write ``folder/model.onnx`` + ``model.json`` and return the checked card. ``dark`` (softmax,
    one foreground structure): the structure is where ``v`` lies *below* the threshold (a lung)."""
    if len(thresholds) != len(structures) - 1:
        raise ValueError("one threshold per foreground structure")
    if dark and (activation != "softmax" or len(structures) != 2):
        raise ValueError("a dark structure is one softmax foreground channel")
    folder.mkdir(parents=True, exist_ok=True)
    if activation == "sigmoid":
        if len(structures) != 2:
            raise ValueError("the sigmoid tiny model has one foreground channel")
        t = thresholds[0]
        slopes = np.array([-steepness, steepness], dtype=np.float32)
        intercepts = np.array([steepness * t, -steepness * t], dtype=np.float32)
    else:
        slopes, intercepts = _line_parameters(thresholds, steepness)
        if dark:  # every line mirrored: the foreground wins below the threshold
            slopes, intercepts = -slopes, -intercepts
    count = len(structures)
    weight = numpy_helper.from_array(slopes.reshape(count, 1, 1, 1, 1), "weight")
    bias = numpy_helper.from_array(intercepts, "bias")
    nodes = [helper.make_node("Conv", ["image", "weight", "bias"], ["logits"], kernel_shape=[1, 1, 1])]
    initialisers = [weight, bias]
    spatial: list[str | int | None] = ["N", 1, "X", "Y", "Z"]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", count, "X", "Y", "Z"])]
    if disagreement:
        initialisers += [
            numpy_helper.from_array(np.array(thresholds[0], dtype=np.float32), "edge"),
            numpy_helper.from_array(np.array(-40.0, dtype=np.float32), "gain"),
            numpy_helper.from_array(np.array(4.0, dtype=np.float32), "offset"),
        ]
        nodes += [
            helper.make_node("Sub", ["image", "edge"], ["distance"]),
            helper.make_node("Abs", ["distance"], ["absolute"]),
            helper.make_node("Mul", ["absolute", "gain"], ["scaled"]),
            helper.make_node("Add", ["scaled", "offset"], ["disagreement"]),
        ]
        outputs.append(helper.make_tensor_value_info("disagreement", TensorProto.FLOAT, spatial))
    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, spatial)],
        outputs,
        initialisers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx_path = folder / "model.onnx"
    onnx.save(model, str(onnx_path))
    card = {
        "name": name,
        "version": version,
        "task": task,
        "structures": list(structures),
        "activation": activation,
        "input_spacing_mm": [float(s) for s in spacing_mm],
        "normalisation": dict(normalisation or {"kind": "window", "low_hu": 0, "high_hu": 255}),
        "layout": {
            "kind": "3d",
            "divisible_by": divisible_by,
            "patch_size": list(patch_size),
            "overlap": 0.25,
        },
        "input_name": "image",
        "output_names": {"logits": "logits", "disagreement": "disagreement" if disagreement else None},
        "opset": OPSET,
        "sha256": hashlib.sha256(onnx_path.read_bytes()).hexdigest(),
        "training": {"data": "none: a hand-set threshold classifier for tests", "seeds": [], "epochs": 0},
        "metrics": {},
        "default": default,
    }
    (folder / "model.json").write_text(json.dumps(card, indent=2))
    return load_card(folder)


def write_outline_refiner(path: Path, *, scan_weight: float, outline_weight: float, bias: float) -> str:
    """An outline refiner (``pipeline.refiner``) that is one 1x1x1 convolution over its two
    input channels: logit = scan_weight * scan + outline_weight * outline + bias. Returns its
    sha256."""
    weight = numpy_helper.from_array(
        np.array([scan_weight, outline_weight], dtype=np.float32).reshape(1, 2, 1, 1, 1), "weight"
    )
    bias_init = numpy_helper.from_array(np.array([bias], dtype=np.float32), "bias")
    spatial = ["x", "y", "z"]
    graph = helper.make_graph(
        [helper.make_node("Conv", ["scan_outline", "weight", "bias"], ["logit"])],
        "outline-refiner",
        [helper.make_tensor_value_info("scan_outline", TensorProto.FLOAT, [1, 2, *spatial])],
        [helper.make_tensor_value_info("logit", TensorProto.FLOAT, [1, 1, *spatial])],
        initializer=[weight, bias_init],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_graph_model(
    tmp_path: Path,
    nodes: list[onnx.NodeProto],
    weights: list[np.ndarray],
    layout: dict[str, Any],
    spacing_mm: float = 0.2,
) -> ModelCard:
    """A one-structure (liver) card whose graph maps ``image`` to ``fg`` (the liver's logit;
    background's is 0), with ``layout`` added to its card."""
    card = write_threshold_model(
        tmp_path, structures=(0, LIVER), thresholds=(0.5,), disagreement=False, spacing_mm=(spacing_mm,) * 3
    )
    zero = np.zeros((1, 1, 1, 1, 1), np.float32)
    graph = helper.make_graph(
        [
            *nodes,
            helper.make_node("Mul", ["fg", "zero"], ["bg"]),
            helper.make_node("Concat", ["bg", "fg"], ["logits"], axis=1),
        ],
        "test-network",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, "X", "Y", "Z"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 2, "X", "Y", "Z"])],
        [
            numpy_helper.from_array(zero, "zero"),
            *(numpy_helper.from_array(w, f"w{i}") for i, w in enumerate(weights)),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.save(model, str(card.folder / "model.onnx"))
    raw = json.loads((card.folder / "model.json").read_text())
    raw["sha256"] = hashlib.sha256((card.folder / "model.onnx").read_bytes()).hexdigest()
    raw["layout"].update(layout)
    (card.folder / "model.json").write_text(json.dumps(raw))
    return load_card(card.folder)


def neighbour_sum_model(tmp_path: Path, layout: dict[str, Any]) -> ModelCard:
    """Each voxel plus its six neighbours (zero beyond the input): the same wherever the scan sits."""
    weight = np.zeros((1, 1, 3, 3, 3), np.float32)
    weight[0, 0, 1, 1, :] = weight[0, 0, 1, :, 1] = weight[0, 0, :, 1, 1] = 1.0
    conv = helper.make_node("Conv", ["image", "w0"], ["fg"], kernel_shape=[3, 3, 3], pads=[1] * 6)
    return write_graph_model(tmp_path, [conv], [weight], layout)
