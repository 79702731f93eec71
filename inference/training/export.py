"""Export a trained network as a self-describing model folder (see ``inference/registry.py``).

``<out>/model.onnx``: input ``ct`` float32 ``[N, 1, X, Y, Z]`` (RAS axes, resampled to
``input_spacing_mm``, normalised per ``normalisation``), outputs ``logits [N, K, X, Y, Z]`` and
``disagreement [N, 1, X, Y, Z]``; batch and spatial axes dynamic (multiples of ``divisible_by``).
``<out>/model.json``: everything the pipeline needs to run it, plus provenance and metrics.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from inference.jsonsafe import finite_or_null
from inference.training.depth_to_space import rewrite_file
from inference.training.network import UNet3D
from inference.training.share_weights import unshare
from inference.training.tasks import TaskSpec

OPSET = 17


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def patch_size(spec: TaskSpec) -> list[int]:
    """A tile that covers a whole 192 x 192 x ~530 (0.21 mm) scan in one pass."""
    n_xy = 192 // spec.factor
    n_z = -(-560 // spec.factor // 8) * 8
    return [n_xy, n_xy, n_z]


def export_model(
    model: UNet3D,
    spec: TaskSpec,
    out: Path,
    *,
    version: str,
    training: dict[str, object],
    metrics: dict[str, object] | None = None,
    input_spacing_mm: float | None = None,
) -> Path:
    """Write ``model.onnx`` and ``model.json`` into ``out``; returns the json path.

    ``input_spacing_mm``: voxel size of the grid the model was trained on (default 0.21 x factor).
    """
    out.mkdir(parents=True, exist_ok=True)
    model = model.cpu().eval()
    example = torch.zeros(1, 1, 32, 32, 48)
    onnx_path = unshare(out / "model.onnx")
    axes = {0: "batch", 2: "x", 3: "y", 4: "z"}
    torch.onnx.export(
        model,
        (example,),
        str(onnx_path),
        input_names=["ct"],
        output_names=["logits", "disagreement"],
        dynamic_axes={"ct": axes, "logits": axes, "disagreement": axes},
        opset_version=OPSET,
        do_constant_folding=True,
        dynamo=False,
    )
    # Its up-convolutions as 1x1x1 convolutions and a reshape: the same logits, faster on the CPU.
    rewrite_file(onnx_path)
    # The tumor database and the phantoms come at 0.21 mm; the coarse grid is `factor` times that.
    spacing = round(float(input_spacing_mm or 0.21 * spec.factor), 4)
    card = {
        "name": spec.name,
        "version": version,
        "task": spec.task,
        "structures": list(spec.structures),
        "activation": "softmax",
        "input_spacing_mm": [spacing, spacing, spacing],
        "normalisation": {"kind": "window", "low_hu": spec.low_hu, "high_hu": spec.high_hu},
        "layout": {
            "kind": "3d",
            "divisible_by": model.divisible_by,
            "patch_size": patch_size(spec),
            "overlap": 0.25,
            **({"extend_cut_faces_mm": spec.extend_cut_faces_mm} if spec.extend_cut_faces_mm else {}),
        },
        "input_name": "ct",
        "output_names": {"logits": "logits", "disagreement": "disagreement"},
        "opset": OPSET,
        "sha256": sha256_of(onnx_path),
        "architecture": {
            "kind": "unet3d",
            "base_channels": spec.base_channels,
            "levels": model.levels,
            "parameters": sum(p.numel() for p in model.parameters()),
        },
        "training": training,
        "metrics": metrics or {},
    }
    path = out / "model.json"
    path.write_text(json.dumps(finite_or_null(card), indent=1, allow_nan=False) + "\n")
    return path
