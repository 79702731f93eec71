"""``python -m inference.training.depth_to_space --model DIR --version V [--out DIR]``.

The U-Net (``network.UNet3D``) doubles its grid with ``ConvTranspose3d(kernel 2, stride 2)``. Such a
layer writes every output voxel from one input voxel: output ``(o, 2x+i, 2y+j, 2z+k)`` is
``sum_c W[c, o, i, j, k] * in[c, x, y, z] + b[o]``. So it is a 1 x 1 x 1 convolution to ``8 * o``
channels, each holding one of the 8 positions, and a reshape that puts each channel at its position
(depth to space). ONNX Runtime runs that form faster on the CPU: the served organ network's three
up-convolutions took 20 % of its time (50 of 200 ms on a 56 x 48 x 168 grid, 2 threads), the
rewritten network 12 % less in all. The products are the same, summed in the same order: on the
served models both forms give the same logits to the last bit.

``as_convolutions`` rewrites a graph (``export.export_model`` writes every new network so, and
``soup`` averages two networks in this form); ``transposed_weights`` gives a rewritten layer's
weights back in the transposed convolution's layout (``warm_start`` rebuilds the trainable network
from them). The command writes a new version of a model folder whose ``model.onnx`` is in this
form, with the same weights, refiners and rules; a network already in it is copied unchanged, so
a chain of versions remade from a network ``export`` wrote passes through this step.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from inference.training.derive import derive_parser, derive_version, write_derived

#: The one kind of transposed convolution the rewrite knows: each output voxel from one input voxel.
KERNEL = [2, 2, 2]


def _rewritable(node: onnx.NodeProto) -> bool:
    """A 3D transposed convolution with kernel 2, stride 2 and nothing else set (no padding,
    dilation, groups or output shape)."""
    if node.op_type != "ConvTranspose":
        return False
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    plain = {"pads": 0, "output_padding": 0, "dilations": 1}
    return (
        list(attrs.get("kernel_shape", [])) == KERNEL
        and list(attrs.get("strides", [])) == KERNEL
        and attrs.get("group", 1) == 1
        and "output_shape" not in attrs
        and all(set(attrs.get(key, [value])) == {value} for key, value in plain.items())
    )


def as_convolutions(model: onnx.ModelProto) -> int:
    """Rewrite ``model``'s kernel-2, stride-2 3D transposed convolutions in place as a 1 x 1 x 1
    ``Conv`` and a depth-to-space reshape; returns how many were rewritten (0 for a graph already
    in this form). The new ``Conv`` keeps the transposed convolution's node name (the layer's
    module path, which ``warm_start`` reads)."""
    graph = model.graph
    initialisers = {t.name: t for t in graph.initializer}
    nodes: list[onnx.NodeProto] = []
    rewritten = 0
    for node in graph.node:
        if not _rewritable(node) or node.input[1] not in initialisers:
            nodes.append(node)
            continue
        weight = numpy_helper.to_array(initialisers[node.input[1]])  # [C_in, C_out, 2, 2, 2]
        if weight.ndim != 5:
            nodes.append(node)
            continue
        c_in, c_out = int(weight.shape[0]), int(weight.shape[1])
        has_bias = len(node.input) > 2 and bool(node.input[2])
        bias = (
            numpy_helper.to_array(initialisers[node.input[2]])
            if has_bias
            else np.zeros(c_out, dtype=weight.dtype)
        )
        # Channel o * 8 + (i * 4 + j * 2 + k) holds output position (i, j, k) of channel o.
        conv_weight = weight.transpose(1, 2, 3, 4, 0).reshape(c_out * 8, c_in, 1, 1, 1)
        conv_bias = np.repeat(bias, 8)
        prefix = f"{node.name or node.output[0]}/depth_to_space"
        keys = ("w", "b", "z", "grid", "head", "split", "t", "moved", "doubled", "two", "head2", "shape")
        names = {key: f"{prefix}/{key}" for key in keys}
        graph.initializer.extend(
            [
                numpy_helper.from_array(np.ascontiguousarray(conv_weight), names["w"]),
                numpy_helper.from_array(conv_bias.astype(weight.dtype), names["b"]),
                numpy_helper.from_array(np.array([0, c_out, 2, 2, 2], np.int64), names["head"]),
                numpy_helper.from_array(np.array([0, c_out], np.int64), names["head2"]),
                numpy_helper.from_array(np.array([2], np.int64), names["two"]),
            ]
        )
        source = node.input[0]
        nodes += [
            helper.make_node(
                "Conv", [source, names["w"], names["b"]], [names["z"]], name=node.name, kernel_shape=[1, 1, 1]
            ),
            helper.make_node("Shape", [source], [names["grid"]], start=2, end=5),
            helper.make_node("Concat", [names["head"], names["grid"]], [names["split"]], axis=0),
            helper.make_node("Reshape", [names["z"], names["split"]], [names["t"]]),
            # [N, O, i, j, k, X, Y, Z] -> [N, O, X, i, Y, j, Z, k]
            helper.make_node("Transpose", [names["t"]], [names["moved"]], perm=[0, 1, 5, 2, 6, 3, 7, 4]),
            helper.make_node("Mul", [names["grid"], names["two"]], [names["doubled"]]),
            helper.make_node("Concat", [names["head2"], names["doubled"]], [names["shape"]], axis=0),
            helper.make_node("Reshape", [names["moved"], names["shape"]], [node.output[0]]),
        ]
        graph.initializer.remove(initialisers[node.input[1]])
        if has_bias:
            graph.initializer.remove(initialisers[node.input[2]])
        rewritten += 1
    if rewritten:
        del graph.node[:]
        graph.node.extend(nodes)
        onnx.checker.check_model(model)
    return rewritten


def is_rewritten(node: onnx.NodeProto, weight: np.ndarray) -> bool:
    """Whether ``node`` (with its ``weight``) is a transposed convolution ``as_convolutions`` wrote."""
    return (
        node.op_type == "Conv"
        and weight.ndim == 5
        and weight.shape[2:] == (1, 1, 1)
        and any(output.endswith("/depth_to_space/z") for output in node.output)
    )


def transposed_weights(weight: np.ndarray, bias: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
    """A rewritten layer's ``[8 * C_out, C_in, 1, 1, 1]`` weight and ``[8 * C_out]`` bias as the
    transposed convolution's ``[C_in, C_out, 2, 2, 2]`` and ``[C_out]`` (``as_convolutions`` undone)."""
    c_out, c_in = weight.shape[0] // 8, weight.shape[1]
    back = weight.reshape(c_out, 2, 2, 2, c_in).transpose(4, 0, 1, 2, 3)
    return np.ascontiguousarray(back), None if bias is None else np.ascontiguousarray(bias[::8])


def rewrite_file(path: Path) -> int:
    """``as_convolutions`` on the ONNX file at ``path``, written back when anything changed."""
    model = onnx.load(str(path))
    count = as_convolutions(model)
    if count:
        onnx.save(model, str(path))
    return count


def with_depth_to_space(model: Path, out: Path, *, version: str, command: str) -> Path:
    """``model``'s folder as ``version`` at ``out``, its network's transposed convolutions
    rewritten (``as_convolutions``). A network already in this form (one ``export`` wrote, or a
    remade chain of versions) is copied as it is, and its card says so; one with neither form
    raises ``ModelCardError`` in words."""

    def rewrite(path: Path) -> str:
        if rewrite_file(path):
            return "the network's transposed convolutions as 1x1x1 convolutions and a depth-to-space reshape"
        graph = onnx.load(str(path)).graph
        weights = {t.name: t for t in graph.initializer}
        if any(
            node.op_type == "Conv" and is_rewritten(node, numpy_helper.to_array(weights[node.input[1]]))
            for node in graph.node
            if len(node.input) > 1 and node.input[1] in weights
        ):
            return "the network's up-convolutions already 1x1x1 convolutions and a depth-to-space reshape"
        raise ValueError(
            f"{model}/model.onnx has no kernel-2, stride-2 transposed convolution to rewrite "
            "(a network of another kind)"
        )

    return derive_version(
        model, out, version=version, edit=lambda card: None, command=command, weights=rewrite
    )


def main(argv: list[str] | None = None) -> None:
    parser = derive_parser("inference.training.depth_to_space", __doc__)
    args = parser.parse_args(argv)
    written = write_derived(
        parser,
        args,
        "inference.training.depth_to_space",
        argv,
        lambda out, command: with_depth_to_space(args.model, out, version=args.version, command=command),
    )
    print(
        f"wrote {written}: same weights, up-convolutions as 1x1x1 convolutions and a depth-to-space reshape"
    )


if __name__ == "__main__":
    main()
