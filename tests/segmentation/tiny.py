"""Tiny deterministic ONNX models and a matching synthetic scan, for the service tests.

The organ model labels by the local mean intensity (7-voxel average pool), so a small bright
lesion inside an organ keeps that organ's label; the lesion model labels single voxels by their own
intensity. Intensities (window 0..1000 HU -> 0..1): liver 300, heart 600, primary tumor 750,
metastasis 900. Arrays are (X, Y, Z) in RAS order; the affine is diagonal, ``SPACING_MM`` per axis.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from inference import structures

SPACING_MM = 0.5
LIVER_HU, HEART_HU, TUMOR_HU, METASTASIS_HU = 300.0, 600.0, 750.0, 900.0
AIR_HU, BODY_HU = -1000.0, 40.0


def _write_model(
    folder: Path,
    *,
    name: str,
    version: str,
    task: str,
    ids: list[int],
    weights: list[float],
    biases: list[float],
    pool: int,
) -> Path:
    """A 1x1x1 convolution (optionally after an average pool) as ``model.onnx`` + ``model.json``."""
    folder.mkdir(parents=True, exist_ok=True)
    k = len(ids)
    nodes = []
    source = "image"
    if pool > 1:
        nodes.append(
            helper.make_node(
                "AveragePool",
                ["image"],
                ["pooled"],
                kernel_shape=[pool] * 3,
                pads=[pool // 2] * 6,
                strides=[1, 1, 1],
                count_include_pad=0,
            )
        )
        source = "pooled"
    w = numpy_helper.from_array(np.asarray(weights, np.float32).reshape(k, 1, 1, 1, 1), "w")
    b = numpy_helper.from_array(np.asarray(biases, np.float32), "b")
    nodes.append(helper.make_node("Conv", [source, "w", "b"], ["logits"]))
    graph = helper.make_graph(
        nodes,
        f"{name}-graph",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, "X", "Y", "Z"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", k, "X", "Y", "Z"])],
        initializer=[w, b],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx_path = folder / "model.onnx"
    onnx.save(model, onnx_path)
    card = {
        "name": name,
        "version": version,
        "task": task,
        "structures": ids,
        "activation": "softmax",
        "input_spacing_mm": [SPACING_MM] * 3,
        "normalisation": {"kind": "window", "low_hu": 0.0, "high_hu": 1000.0},
        "layout": {"kind": "3d", "divisible_by": 1, "patch_size": [64, 64, 64], "overlap": 0.25},
        "input_name": "image",
        "output_names": {"logits": "logits", "disagreement": None},
        "opset": 17,
        "sha256": hashlib.sha256(onnx_path.read_bytes()).hexdigest(),
        "training": {"data": "none: hand-set weights for tests", "seeds": [], "epochs": 0, "seconds": 0},
        "metrics": {},
    }
    (folder / "model.json").write_text(json.dumps(card, indent=2))
    return folder


def write_tiny_models(root: Path, *, version: str = "1.0.0") -> Path:
    """``root/tiny-organs/<version>`` and ``root/tiny-lesions/<version>``; returns ``root``."""
    liver, heart = structures.by_name("liver").id, structures.by_name("heart").id
    tumor, metastasis = structures.by_name("tumor").id, structures.by_name("metastasis").id
    # Organs by mean intensity a: background 0, liver 20a-4 (a > 0.2), heart 40a-13 (a > 0.45).
    _write_model(
        root / "tiny-organs" / version,
        name="tiny-organs",
        version=version,
        task="organs",
        ids=[0, liver, heart],
        weights=[0.0, 20.0, 40.0],
        biases=[0.0, -4.0, -13.0],
        pool=7,
    )
    # Lesions by voxel intensity x: tumor 20x-14 (x > 0.7), metastasis 40x-31 (x > 0.85).
    _write_model(
        root / "tiny-lesions" / version,
        name="tiny-lesions",
        version=version,
        task="tumor",
        ids=[0, tumor, metastasis],
        weights=[0.0, 20.0, 40.0],
        biases=[0.0, -14.0, -31.0],
        pool=1,
    )
    return root


def phantom_volume(shape: tuple[int, int, int] = (48, 40, 40)) -> np.ndarray:
    """float32 (X, Y, Z): a soft-tissue body (40 HU) in a one-voxel shell of air (-1000 HU) holding
    a liver box with one metastasis inside, a heart box, and a primary tumor outside every organ
    (subcutaneous). Air and soft tissue make it read as HU to the pipeline's intensity check; both
    lie below the models' window, as the old zero background did."""
    volume = np.full(shape, BODY_HU, np.float32)
    for axis in range(3):
        np.moveaxis(volume, axis, 0)[[0, -1]] = AIR_HU
    sx, sy, sz = shape
    volume[4 : sx // 2, 6 : sy - 6, 6 : sz - 6] = LIVER_HU
    volume[sx // 2 + 4 : sx - 4, 8 : sy - 8, 8 : sz - 8] = HEART_HU
    cx, cy, cz = sx // 4 + 2, sy // 2, sz // 2
    volume[cx - 1 : cx + 2, cy - 1 : cy + 2, cz - 1 : cz + 2] = METASTASIS_HU
    volume[sx // 2 - 1 : sx // 2 + 2, 1:4, 1:4] = TUMOR_HU
    return volume


def write_phantom(path: Path, shape: tuple[int, int, int] = (48, 40, 40), *, seed: int = 0) -> Path:
    """The phantom as NIfTI at ``SPACING_MM``; ``seed`` adds faint noise so every file differs."""
    volume = phantom_volume(shape)
    volume += np.random.default_rng(seed).normal(0.0, 1.0, shape).astype(np.float32)
    affine = np.diag([SPACING_MM, SPACING_MM, SPACING_MM, 1.0])
    nib.save(nib.Nifti1Image(volume, affine), path)
    return path


def expected_voxels(shape: tuple[int, int, int] = (48, 40, 40)) -> dict[str, int]:
    """Voxels per lesion structure the lesion model finds on ``phantom_volume(shape)`` (voxelwise)."""
    volume = phantom_volume(shape)
    return {
        "metastasis": int((volume == METASTASIS_HU).sum()),
        "tumor": int((volume == TUMOR_HU).sum()),
    }
