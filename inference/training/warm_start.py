"""Start training from a committed ``model.onnx`` (fine-tuning without the original checkpoint).

Checkpoints stay under ``data/`` and are not committed; the exported model is. Its convolutions
carry BatchNorm folded in (``conv + bias``), so a trainable :class:`UNet3D` is rebuilt from it:

1. each folded ``Conv`` goes back into its module (found by the node name torch gave it);
2. the BatchNorm after it is set to pass ``z + bias`` through, and a few training batches measure
   the mean ``m`` and variance ``v`` of each channel's ``z`` in that (exact) network;
3. the BatchNorm becomes ``gamma = sqrt(v + eps)``, ``beta = m + bias``, running stats ``m, v``:
   in evaluation mode it still computes ``z + bias`` exactly, and in training mode, where it uses
   the batch's own statistics, it starts close to it instead of rescaling every channel.

The rebuilt model's outputs are checked against ONNX Runtime before training starts.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import numpy_helper
from torch import nn

from inference.training.depth_to_space import is_rewritten, transposed_weights
from inference.training.network import UNet3D


class WarmStartError(ValueError):
    """The ONNX file does not fit the network being trained."""


def _folded_convolutions(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray | None]]:
    """``module path -> (weight, bias)`` of every Conv / ConvTranspose node in the file (a
    transposed convolution written as a 1x1x1 convolution, ``depth_to_space``, in its own layout)."""
    graph = onnx.load(str(path)).graph
    weights = {t.name: numpy_helper.to_array(t).copy() for t in graph.initializer}
    found = {}
    for node in graph.node:
        if node.op_type not in ("Conv", "ConvTranspose"):
            continue
        # torch names the node after its module: "/down.0/down.0.3/Conv", "/logits/Conv".
        parts = node.name.split("/")
        if len(parts) < 3:
            raise WarmStartError(f"{path.name}: cannot tell which layer node {node.name!r} is")
        weight = weights[node.input[1]]
        bias = weights[node.input[2]] if len(node.input) > 2 else None
        found[parts[-2]] = transposed_weights(weight, bias) if is_rewritten(node, weight) else (weight, bias)
    return found


def _batchnorm_after(model: nn.Module, conv_path: str) -> nn.BatchNorm3d | None:
    parent_path, _, index = conv_path.rpartition(".")
    if not index.isdigit() or not parent_path:
        return None
    parent = model.get_submodule(parent_path)
    nxt = int(index) + 1
    if isinstance(parent, nn.Sequential) and nxt < len(parent):
        following = parent[nxt]
        if isinstance(following, nn.BatchNorm3d):
            return following
    return None


def _running_stats(bn: nn.BatchNorm3d) -> tuple[torch.Tensor, torch.Tensor]:
    """The running mean and variance buffers (the network's BatchNorms track them)."""
    if bn.running_mean is None or bn.running_var is None:
        raise WarmStartError("the network's BatchNorm layers must track running statistics")
    return bn.running_mean, bn.running_var


@torch.no_grad()
def load_exported(model: UNet3D, path: Path, batches: Iterable[torch.Tensor]) -> float:
    """Load ``path`` (an exported model.onnx) into ``model``; returns the largest output difference
    against ONNX Runtime on the first batch (raises :class:`WarmStartError` if it is not tiny)."""
    batches = list(batches)
    if not batches:
        raise WarmStartError("warm start needs at least one batch of training images")
    convs = _folded_convolutions(path)
    expected = {n for n, m in model.named_modules() if isinstance(m, nn.Conv3d | nn.ConvTranspose3d)}
    if set(convs) != expected:
        missing, extra = sorted(expected - set(convs)), sorted(set(convs) - expected)
        raise WarmStartError(
            f"{path} is not this network: layers missing {missing[:3]}, unexpected {extra[:3]}"
        )
    folded_bias: dict[nn.BatchNorm3d, torch.Tensor] = {}
    for name, (weight, bias) in convs.items():
        conv = model.get_submodule(name)
        assert isinstance(conv, nn.Conv3d | nn.ConvTranspose3d)  # the names are those of `expected`
        if tuple(conv.weight.shape) != weight.shape:
            raise WarmStartError(
                f"{path}: layer {name} has weights {list(weight.shape)}, the network expects "
                f"{list(conv.weight.shape)} (other base channels?)"
            )
        conv.weight.copy_(torch.from_numpy(weight))
        bn = _batchnorm_after(model, name)
        b = torch.from_numpy(bias) if bias is not None else torch.zeros(weight.shape[0])
        if bn is None:
            if conv.bias is None:
                raise WarmStartError(f"{path}: the network's layer {name} has neither a bias nor a BatchNorm")
            conv.bias.copy_(b)
            continue
        folded_bias[bn] = b
        bn.weight.fill_(1.0)
        bn.bias.copy_(b)
        running_mean, running_var = _running_stats(bn)
        running_mean.zero_()
        running_var.fill_(1.0 - bn.eps)
    # Measure each BatchNorm's input statistics in the exact (folded) network.
    sums: dict[nn.Module, list[torch.Tensor]] = {bn: [] for bn in folded_bias}

    def record(bn: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        z = args[0].transpose(0, 1).flatten(1)
        sums[bn].append(torch.stack([z.mean(1), (z * z).mean(1)]))

    hooks = [bn.register_forward_pre_hook(record) for bn in folded_bias]
    model.eval()
    try:
        for x in batches:
            model(x)
    finally:
        for h in hooks:
            h.remove()
    for bn, b in folded_bias.items():
        mean, square = torch.stack(sums[bn]).mean(0)
        var = (square - mean * mean).clamp_min(0.0)
        running_mean, running_var = _running_stats(bn)
        running_mean.copy_(mean)
        running_var.copy_(var)
        bn.weight.copy_(torch.sqrt(var + bn.eps))
        bn.bias.copy_(mean + b)
    x = batches[0]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    ref_logits, ref_dis = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    logits, dis = model(x)
    diff = max(float(np.abs(logits.numpy() - ref_logits).max()), float(np.abs(dis.numpy() - ref_dis).max()))
    if diff > 1e-2:
        raise WarmStartError(f"{path}: the rebuilt network differs from ONNX Runtime by {diff:.3g}")
    model.train()
    return diff
